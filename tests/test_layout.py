"""The package's layering: what imports what, and what importing costs (issue 12)."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import luxjax

PACKAGE = pathlib.Path(luxjax.__file__).parent


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every `from ... import` in a module, also inside functions: (level, module)."""
    tree = ast.parse(path.read_text())
    return [(node.level, node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]


def test_core_imports_no_sibling_package():
    for path in (PACKAGE / "core").glob("*.py"):
        for level, module in imports(path):
            assert level < 2, f"core/{path.name} imports from luxjax.{module}: the core must stand alone"


def test_core_has_no_import_circle():
    graph = {
        path.stem: {module for level, module in imports(path) if level == 1 and module}
        for path in (PACKAGE / "core").glob("_*.py")
    }

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import circle in core: {' -> '.join((*stack, name))}"
        for other in graph.get(name, ()):
            visit(other, (*stack, name))

    for name in graph:
        visit(name, ())


def test_training_imports_nothing_from_experimental():
    for path in (PACKAGE / "training").glob("*.py"):
        for level, module in imports(path):
            assert not (level == 2 and module.startswith("experimental")), f"training/{path.name} imports {module}"


def test_layers_assign_their_own_fields():
    for path in (PACKAGE / "layers").glob("*.py"):
        source = path.read_text()
        assert "object.__setattr__" not in source and "object.__new__" not in source, path.name
        assert "type: ignore" not in source, path.name


def test_layer_files_share_helpers_through_one_module():
    # attention is built from Dense and Dropout layers, Stacked converts to Chain
    allowed = {"_util", "_dense", "_dropout", "_containers"}
    for path in (PACKAGE / "layers").glob("_[!_]*.py"):
        for level, module in imports(path):
            if level == 1 and module:
                assert module in allowed, f"layers/{path.name} imports layers/{module}; put shared helpers in _util"


def test_importing_luxjax_starts_no_backend():
    # Setting the CPU device count fails once a backend is up: luxjax must leave it to the user.
    script = textwrap.dedent(
        """
        import luxjax as lx
        import jax, jax.numpy as jnp
        jax.config.update("jax_num_cpu_devices", 4)
        model = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1))
        print(model)
        ps, st = lx.setup(jax.random.key(0), model)
        mesh = jax.make_mesh((4,), ("data",))
        x = jax.device_put(jnp.ones((8, 2)), jax.NamedSharding(mesh, jax.P("data")))
        y, _ = jax.jit(model)(x, ps, st)
        print(len(jax.devices()), y.shape, len(y.sharding.device_set))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "4 (8, 1) 4"
