"""`layer_map` and `layer_at`: walk a model's leaf layers together with their `ps`, `st` and path."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ContainerLayer, KeyPath, Layer, NotALayerError, StructureError, Training, WrapperLayer

LayerFn = Callable[[Layer, Any, Any, KeyPath], tuple[Layer, Any, Any]]


def layer_map(f: LayerFn, model: Layer, ps: Any, st: Any) -> tuple[Layer, Any, Any]:
    """Calls `f(layer, ps, st, path)` on every leaf layer and rebuilds the model from the results.

    `f` sees each leaf layer (a layer with no child layers, or a `FrozenLayer`, whose inner
    layer is not visited) together with its own entries of `ps` and `st` and its `KeyPath`,
    depth-first in child order, and returns `(layer, ps, st)`. Paths follow `ps`: a wrapper
    layer adds no level, so `f` sees the layer inside it at the wrapper's path. Entries that a
    container holds beside its children pass through unchanged.

    `f` may return a different layer with a different parameter structure (a `FrozenLayer`, an
    adapter): the result is checked against the returned layer's own `init_params` and
    `init_state` (tree structure and shapes, from `jax.eval_shape`, cached per layer value), and
    a mismatch is a `StructureError` naming the path. When `f` returns exactly what it was
    given, nothing is checked and nothing is copied, so the identity map is cheap.

    Args:
        f: called as `f(layer, ps, st, path)`, returns `(layer, ps, st)`.
        model: the model to walk.
        ps: its parameters.
        st: its states.

    Returns:
        `(model, ps, st)` rebuilt from `f`'s results, keeping child order.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import layer_map
        >>> model = lx.Chain(enc=lx.Dense(2, 3), dec=lx.Dense(3, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> def zero_bias(layer, ps, st, path):
        ...     print(repr(path), repr(layer))
        ...     return layer, {**ps, "bias": jnp.zeros_like(ps["bias"])}, st
        >>> model, ps, st = layer_map(zero_bias, model, ps, st)
        KeyPath('enc') Dense(2 => 3)
        KeyPath('dec') Dense(3 => 2)
        >>> ps["dec"]["bias"]
        Array([0., 0.], dtype=float32)
    """
    if not isinstance(model, Layer):
        raise NotALayerError(
            f"layer_map: `model` must be a luxjax Layer, got {model!r} of type {type(model).__name__}."
        )
    if not callable(f):
        raise TypeError(f"layer_map: `f` must be a function (layer, ps, st, path) -> (layer, ps, st), got {f!r}.")
    return _map(f, model, ps, st, KeyPath())


def _entry(layer: Layer, tree: Any, name: str, what: str, path: KeyPath) -> Any:
    if isinstance(tree, Mapping) and name in tree:
        return tree[name]
    found = ", ".join(map(repr, tree)) if isinstance(tree, Mapping) else f"a {type(tree).__name__}"
    error = StructureError(layer, f"{what} have no entry {name!r} for child {layer.children()[name]!r}; found {found}.")
    error.path = path
    raise error


def _map(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    children = layer.children()
    if not children:
        return _call_leaf(f, layer, ps, st, path)
    if layer.is_wrapper:
        ((name, child),) = children.items()
        new_child, ps, st = _map(f, child, ps, st, path)
        return (layer if new_child is child else layer.replace_children({name: new_child})), ps, st
    entries = {
        name: (_entry(layer, ps, name, "parameters", path), _entry(layer, st, name, "states", path))
        for name in children
    }
    new_children, new_ps, new_st = {}, dict(ps), dict(st)
    changed = False
    for name, child in children.items():
        new_children[name], new_ps[name], new_st[name] = _map(f, child, *entries[name], path / name)
        changed = changed or new_children[name] is not child
    return (layer.replace_children(new_children) if changed else layer), new_ps, new_st


def _where(path: KeyPath) -> str:
    return str(path) or "the root"


def _call_leaf(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    result = f(layer, ps, st, path)
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], Layer)):
        raise TypeError(
            f"layer_map: `f` must return a tuple (layer, ps, st), but at {_where(path)} ({layer!r}) it returned "
            f"{type(result).__name__} {result!r:.200}."
        )
    new_layer, new_ps, new_st = result
    same_layer = new_layer is layer
    for new, old, what in ((new_ps, ps, "parameters"), (new_st, st, "states")):
        if same_layer and new is old:
            continue
        problem = _misfit(_template(new_layer, what), new)
        if problem:
            error = StructureError(new_layer, f"`f` of layer_map returned {what} that do not fit the layer: {problem}")
            error.path = path
            raise error
    return result


# -- does a tree fit a layer? ----------------------------------------------------------------


_DUMMY_KEY: list[jax.Array] = []


def _key() -> jax.Array:
    if not _DUMMY_KEY:
        _DUMMY_KEY.append(jax.random.key(0))
    return _DUMMY_KEY[0]


def _abstract_init(layer: Layer, what: str) -> Any:
    init = layer.init_params if what == "parameters" else layer.init_state
    traced: list[Any] = []

    def run(key: jax.Array) -> Any:
        traced.append(tree := init(key))
        return tree

    shapes = jax.eval_shape(run, _key())
    return _in_order(traced[0], shapes)  # eval_shape sorts dict keys; keep the layer's own order


def _in_order(order: Any, tree: Any) -> Any:
    if isinstance(order, Mapping) and isinstance(tree, Mapping):
        return {k: _in_order(order[k], tree[k]) for k in order if k in tree}
    return tree


@functools.lru_cache(maxsize=4096)
def _cached_template(layer: Layer, what: str) -> Any:
    return _abstract_init(layer, what)


def _template(layer: Layer, what: str) -> Any:
    """The shapes of what `layer` initialises (`parameters` or `states`), in its key order, without arrays."""
    # Wrappers and containers that keep the default init are assembled from their children, so
    # wrapping many distinct layers (debug mode gives each its own location) traces no init.
    init = "init_params" if what == "parameters" else "init_state"
    if isinstance(layer, WrapperLayer) and getattr(type(layer), init) is getattr(WrapperLayer, init):
        return _template(layer.wrapped, what)
    if isinstance(layer, ContainerLayer) and getattr(type(layer), init) is getattr(ContainerLayer, init):
        return {name: _template(child, what) for name, child in layer.children().items()}
    try:
        return _cached_template(layer, what)
    except TypeError as error:  # an unhashable field: no cache
        if "unhashable" not in str(error):
            raise
        return _abstract_init(layer, what)


def _shapes(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Training))[0]
    out = {}
    for key_path, leaf in leaves:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path) or "(the root)"
        out[name] = "flag" if isinstance(leaf, Training) else tuple(jnp.shape(leaf))
    return out


def _misfit(template: Any, tree: Any) -> str:
    """Empty if `tree` has `template`'s structure and shapes, else what differs (dtypes may differ)."""
    if _skeleton(template) == _skeleton(tree):
        expected, got = _shapes(template), _shapes(tree)
        wrong = [f"{k!r} has shape {got[k]}, expected {v}" for k, v in expected.items() if got[k] != v]
        return "; ".join(wrong[:5]) + ("." if wrong else "")
    expected, got = _shapes(template), _shapes(tree)
    missing = [repr(k) for k in expected if k not in got]
    extra = [repr(k) for k in got if k not in expected]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"unexpected {', '.join(extra)}"] if extra else []
    if not parts:
        parts = [f"expected the tree {_skeleton(template)}, got {_skeleton(tree)}"]
    return "; ".join(parts) + "."


def _skeleton(tree: Any) -> Any:
    return jax.tree.structure(jax.tree.map(lambda _: 0, tree, is_leaf=lambda x: isinstance(x, Training)))


# -- structure only (no trees) ----------------------------------------------------------------


def map_leaves(fn: Callable[[Layer, KeyPath], Layer], model: Layer, path: KeyPath | None = None) -> Layer:
    """Like `layer_map` on the model alone: `fn(layer, path)` on every leaf, rebuilding the model."""
    path = KeyPath() if path is None else path
    children = model.children()
    if not children:
        return fn(model, path)
    new = {name: map_leaves(fn, child, path if model.is_wrapper else path / name) for name, child in children.items()}
    return model.replace_children(new) if any(new[n] is not c for n, c in children.items()) else model


# -- from a path to the layer there -------------------------------------------------------------


def layer_at(model: Layer, ps: Any, st: Any, path: KeyPath | str | tuple[str, ...]) -> tuple[Layer, Any, Any]:
    """Returns `(layer, ps, st)` at `path` in the model: the layer there with its own entries.

    `path` is a `KeyPath`, a tuple of names or a dotted string (`"chain.dense_1"`, `""` for the
    root), the same paths `layer_map`, debug mode and error messages use. A wrapper layer
    shares its path with the layer inside it; `layer_at` returns the outermost one (the
    wrapper; its `.wrapped` is the layer inside). `ps` and `st` may be `None` to look up only
    the layer. A path that leads nowhere is a `KeyError` listing the children that exist
    where it went wrong.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.experimental import layer_at
        >>> model = lx.Chain(enc=lx.Chain(lx.Dense(2, 3), lx.Dense(3, 3)), head=lx.Dense(3, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> layer, layer_ps, layer_st = layer_at(model, ps, st, "enc.layer_2")
        >>> layer, layer_ps["weight"].shape
        (Dense(3 => 3), (3, 3))
    """
    if isinstance(path, str):
        path = KeyPath.parse(path)
    elif not isinstance(path, KeyPath):
        path = KeyPath(*path)
    layer, here = model, KeyPath()
    for name in path:
        while layer.is_wrapper:  # a wrapper adds no level: the name belongs to the layer inside
            layer = next(iter(layer.children().values()))
        children = layer.children()
        if name not in children:
            where = f" at {here}" if here else ""
            have = f"it has children {', '.join(map(repr, children))}" if children else "it has no child layers"
            if isinstance(ps, Mapping) and name in ps:
                have = f"{name!r} is a parameter of it, not a layer"
            raise KeyError(f"layer_at: no layer at {str(path)!r}: {layer!r}{where} has no child {name!r}; {have}.")
        if ps is not None:
            ps = _entry(layer, ps, name, "parameters", here)
        if st is not None:
            st = _entry(layer, st, name, "states", here)
        layer, here = children[name], here / name
    return layer, ps, st
