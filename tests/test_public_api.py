"""Every public name is documented with an example, and the core imports no sibling package."""

import ast
import pathlib

import pytest

import luxjax
import luxjax.experimental
import luxjax.testing
import luxjax.training

MODULES = [luxjax, luxjax.experimental, luxjax.testing, luxjax.training]
PUBLIC = [
    (module.__name__, name, getattr(module, name))
    for module in MODULES
    for name in dir(module)
    if not name.startswith("_") and not isinstance(getattr(module, name), type(luxjax))
]


@pytest.mark.parametrize(("module", "name", "obj"), PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_public_name_has_docstring_with_example(module, name, obj):
    if isinstance(obj, str):
        return
    doc = obj.__doc__ or ""
    assert doc.strip(), f"{module}.{name} has no docstring"
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        assert "Example" in doc, f"{module}.{name}'s docstring has no example"


def test_core_imports_no_sibling_package():
    core = pathlib.Path(luxjax.__file__).parent / "core"
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                raise AssertionError(f"{path.name} imports from luxjax.{node.module}: the core must stand alone")
