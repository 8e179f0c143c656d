"""Sharding rules: where each parameter of a model lives on a device mesh, and setup under a mesh.

`shardings(model, mesh, rules)` gives one `NamedSharding` per leaf of `ps` and of `st`. A rule
names parameters with the `where=` selectors (`freeze` takes the same: dotted path patterns,
layer types) and says how to split them (a `PartitionSpec`, or a function of a `Parameter`).
Each parameter is resolved to the layer that owns it, through wrappers, stacks and frozen
layers, so one rule places a weight alike wherever it lives: trained in `ps`, frozen in
`st["frozen_params"]`, or one block of a `Stacked` (whose leading block axis is never split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._errors import ConfigError
from ._keypath import KeyPath
from ._layer import Layer
from ._select import selector
from ._tree import leaves_with_paths
from ._walk import What, abstract_init


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter as a sharding rule function sees it.

    Fields: `path`, where it lives in `ps` (for a frozen one, where it lived before freezing:
    `"head.weight"`, not `"head.frozen_params.weight"`); `name`, its path inside its layer
    (`("weight",)`); `layer`, the layer that owns it; `shape` and `dtype` of one block (a
    `Stacked`'s leading block axis left out); `mesh`; `frozen`, whether it is a frozen value
    kept in `st`.

    Example:
        >>> import jax, luxjax as lx
        >>> from jax.sharding import PartitionSpec as P
        >>> from luxjax.sharding import shardings
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> by_rows = lambda p: P("data", None) if len(p.shape) == 2 else None
        >>> ps_sh, _ = shardings(lx.Dense(2, 4), mesh, {lx.Dense: by_rows})
        >>> ps_sh["weight"].spec, ps_sh["bias"].spec
        (P('data', None), P())
    """

    path: KeyPath
    name: KeyPath
    layer: Layer
    shape: tuple[int, ...]
    dtype: Any
    mesh: Mesh
    frozen: bool


Rule = PartitionSpec | Callable[[Parameter], PartitionSpec | None] | None
Rules = Mapping[Any, Rule]


def _owner(layer: Layer, what: What, rest: KeyPath, here: KeyPath, stacks: int) -> tuple[Layer, What, KeyPath, int]:
    """The layer that owns the leaf at `rest` of `layer`'s `what` tree: `(owner, what, name, stacked axes)`.

    Wrappers are passed through (a stack adds a leading axis); a frozen layer's `frozen_params`
    belong to the parameters of the layer it wraps, and its `states` to that layer's states.
    """
    children = layer.children()
    if layer.is_wrapper:
        (child,) = children.values()
        return _owner(child, what, rest, here, stacks + (layer.copies() > 1))
    if rest and rest[0] in children:
        return _owner(children[rest[0]], what, KeyPath(*rest[1:]), here / rest[0], stacks)
    inner = getattr(layer, "layer", None)
    if isinstance(inner, Layer) and not children and rest:
        if what == "state" and rest[0] in ("frozen_params", "states"):
            inner_what: What = "params" if rest[0] == "frozen_params" else "state"
            return _owner(inner, inner_what, KeyPath(*rest[1:]), here, stacks)
        if what == "params" and _holds(abstract_init(inner, "params"), rest):
            return _owner(inner, "params", rest, here, stacks)
    return layer, what, rest, stacks


def _holds(tree: Any, path: KeyPath) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return True


def _checked_rules(rules: Any) -> list[tuple[Any, Callable[[KeyPath, Layer], Any], Rule]]:
    if rules is None:
        return []
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"shardings: `rules` must be a dict from path patterns or layer types to PartitionSpecs, "
            f'such as {{"*.attn.q_proj.weight": P("model", None)}}, got {rules!r}.'
        )
    checked = []
    for where, rule in rules.items():
        if not (rule is None or isinstance(rule, PartitionSpec) or callable(rule)):
            raise TypeError(
                f"shardings: the rule for {where!r} must be a PartitionSpec, None (replicated) or a function "
                f"of a `Parameter` returning one, got {rule!r}."
            )
        checked.append((where, selector("shardings", where), rule))
    return checked


def _spec(rules: list, param: Parameter) -> tuple[Any, PartitionSpec]:
    """The first rule that matches `param` and gives a spec (a function may return None: no opinion)."""
    for where, select, rule in rules:
        if not select(param.path, param.layer):
            continue
        if not callable(rule):
            return where, PartitionSpec() if rule is None else rule
        spec = rule(param)
        if spec is None:
            continue
        if not isinstance(spec, PartitionSpec):
            raise TypeError(
                f"shardings: the rule for {where!r} returned {spec!r} for {str(param.path)!r}; "
                "return a PartitionSpec, or None to leave the parameter to the next rule."
            )
        return where, spec
    return None, PartitionSpec()


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def _check_spec(where: Any, spec: PartitionSpec, param: Parameter) -> None:
    rule = f"the rule for {where!r}"
    name, shape = str(param.path), param.shape
    if len(spec) > len(shape):
        raise ConfigError(f"shardings: {rule} gives {spec} for {name!r} of shape {shape}, which has {len(shape)} axes.")
    for axis, entry in enumerate(spec):
        size = 1
        for mesh_axis in _axes(entry):
            if mesh_axis not in param.mesh.shape:
                raise ConfigError(
                    f"shardings: {rule} gives {spec} for {name!r}, but the mesh has no axis {mesh_axis!r}; "
                    f"its axes are {tuple(param.mesh.axis_names)}."
                )
            size *= param.mesh.shape[mesh_axis]
        if shape[axis] % size:
            raise ConfigError(
                f"shardings: {rule} splits axis {axis} of {name!r} (shape {shape}) over {entry!r} ({size} devices), "
                f"but {shape[axis]} is not divisible by {size}."
            )


def specs(model: Layer, mesh: Mesh, rules: Rules | None, what: What) -> Any:
    """The `PartitionSpec` of every leaf of `model`'s `what` tree (`"params"` or `"state"`), as a tree."""
    checked = _checked_rules(rules)
    tree = abstract_init(model, what)

    def place(path: KeyPath, leaf: Any) -> PartitionSpec:
        owner, owner_what, name, stacks = _owner(model, what, path, KeyPath(), 0)
        if owner_what == "state":  # states (running statistics, keys) are replicated
            return PartitionSpec()
        full = KeyPath(*path[: len(path) - len(name)]) + name
        if what == "state":  # a frozen parameter: named where it lived in `ps`
            full = KeyPath(*(k for k in full if k != "frozen_params"))
        param = Parameter(full, name, owner, tuple(leaf.shape[stacks:]), leaf.dtype, mesh, what == "state")
        where, spec = _spec(checked, param)
        _check_spec(where, spec, param)
        return PartitionSpec(*([None] * stacks), *spec) if stacks else spec

    return _rebuild(tree, dict(leaves_with_paths(tree)), place, KeyPath())


def _rebuild(tree: Any, leaves: dict[KeyPath, Any], place: Callable, path: KeyPath) -> Any:
    if isinstance(tree, Mapping):
        return {k: _rebuild(v, leaves, place, path / str(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_rebuild(v, leaves, place, path / str(i)) for i, v in enumerate(tree))
    return place(path, tree) if path in leaves else tree


def shardings(
    model: Layer, mesh: Mesh, rules: Rules | None = None, *, ties: Sequence[Sequence[str]] = ()
) -> tuple[Any, Any]:
    """Where each parameter and state of `model` lives on `mesh`: `(ps_shardings, st_shardings)`.

    Args:
        model: any luxjax layer.
        mesh: a `jax.sharding.Mesh`.
        rules: a dict from selectors to how to split what they select. A selector is a dotted
            pattern of parameter paths (`"*.attn.q_proj.weight"`, `*` matching any run of
            characters; a stack's block indices are left out), a layer type (every parameter
            that layer owns), or a tuple of those. A rule is a `PartitionSpec` for one block's
            parameter, `None` (replicated), or a function of a `Parameter` that returns a
            `PartitionSpec` or `None` to leave the parameter to the next rule. The first rule
            that gives a spec wins; parameters no rule places are replicated. Ready-made rule
            sets are in `luxjax.sharding`.
        ties: groups of dotted accessors that will be tied (`share_parameters`); every place of
            a group must get the same shardings, or this raises.

    Returns:
        Two trees of `NamedSharding` shaped like `setup`'s `ps` and `st`. Frozen parameters (in
        `st`) follow the rule of the parameter they were; other states are replicated; a
        `Stacked`'s leading block axis is never split.

    Example:
        >>> import jax, luxjax as lx
        >>> from jax.sharding import PartitionSpec as P
        >>> from luxjax.sharding import shardings
        >>> mesh = jax.make_mesh((1,), ("model",))
        >>> model = lx.Chain(a=lx.Dense(2, 4), b=lx.Dense(4, 2))
        >>> ps_sh, st_sh = shardings(model, mesh, {"a.weight": P("model", None)})
        >>> ps_sh["a"]["weight"].spec, ps_sh["b"]["weight"].spec
        (P('model', None), P())
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"shardings: `mesh` must be a jax.sharding.Mesh, such as jax.make_mesh((8,), ('data',)), got {mesh!r}."
        )
    ps_specs = specs(model, mesh, rules, "params")
    _check_ties(ps_specs, ties)
    st_specs = specs(model, mesh, rules, "state")
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    return jax.tree.map(named, ps_specs, is_leaf=is_spec), jax.tree.map(named, st_specs, is_leaf=is_spec)


def _check_ties(ps_specs: Any, ties: Sequence[Sequence[str]]) -> None:
    for group in ties:
        paths = [KeyPath.of(accessor, "shardings", "each accessor of `ties`") for accessor in group]
        first = dict(leaves_with_paths(paths[0].get(ps_specs)))
        for path in paths[1:]:
            for inner, spec in leaves_with_paths(path.get(ps_specs)):
                if first.get(inner) != spec:
                    raise ConfigError(
                        f"shardings: {str(path + inner)!r} and {str(paths[0] + inner)!r} are tied, so they must be "
                        f"sharded alike, but the rules give {spec} and {first.get(inner)}; give both places one rule."
                    )


def sharded_setup(key: jax.Array, model: Layer, mesh: Mesh, rules: Rules | None) -> tuple[Any, Any]:
    """`setup` under a mesh: one compiled init whose outputs are created sharded (no device holds a full copy)."""
    ps_sh, st_sh = shardings(model, mesh, rules)

    def init(key: jax.Array) -> tuple[Any, Any]:
        key_ps, key_st = jax.random.split(key)
        return model.init_params(key_ps), model.init_state(key_st)

    ps, st = jax.jit(init, out_shardings=(ps_sh, st_sh))(key)
    return _in_order(abstract_init(model, "params"), ps), _in_order(abstract_init(model, "state"), st)


def _in_order(order: Any, tree: Any) -> Any:
    """`tree` with its dicts in the key order of `order`'s (a jit output's dict keys are sorted)."""
    if isinstance(order, Mapping) and isinstance(tree, Mapping):
        return {k: _in_order(order[k], tree[k]) for k in order}
    return tree
