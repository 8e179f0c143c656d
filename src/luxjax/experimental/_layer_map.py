"""`layer_map` and `layer_at`: walk a model's leaf layers together with their `ps`, `st` and path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..core import (
    KeyPath,
    Layer,
    NotALayerError,
    StructureError,
    What,
    abstract_init,
    iter_layers,
    misfit,
    same_leaves,
    stack_blocks,
)

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
    detail = f"{what} have no entry {name!r} for child {layer.children()[name]!r}; found {found}."
    raise StructureError(layer, detail, path=path)


def _map(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    children = layer.children()
    if not children:
        return _call_leaf(f, layer, ps, st, path)
    if layer.copies() > 1:
        return _map_blocks(f, layer, ps, st, path)
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


def _map_blocks(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    """A stack (`Stacked`): `f` sees each block with its slice of the trees, at `path / index`."""
    ((name, block),) = layer.children().items()
    slices = [(KeyPath(i).get(ps), KeyPath(i).get(st)) for i in range(layer.copies())]
    results = [_map(f, block, *trees, path / i) for i, trees in enumerate(slices)]
    first = results[0][0]
    for i, (new_block, _, _) in enumerate(results):
        if new_block != first:
            raise StructureError(
                layer,
                "`f` of layer_map must give every block of a stack the same layer (the blocks share one "
                f"description), but it gave {first!r} at index 0 and {new_block!r} at index {i}; to change "
                "some blocks only, unroll the stack first with `Stacked.to_chain(ps, st)`.",
                path=path,
            )
    new_layer = layer if first is block else layer.replace_children({name: first})
    if new_layer is layer and all(same_leaves(r[1:], s) for r, s in zip(results, slices)):
        return layer, ps, st  # nothing changed: keep the stacked arrays as they are
    return new_layer, stack_blocks([r[1] for r in results]), stack_blocks([r[2] for r in results])


def _call_leaf(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    result = f(layer, ps, st, path)
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], Layer)):
        raise TypeError(
            f"layer_map: `f` must return a tuple (layer, ps, st), but at {path.label()} ({layer!r}) it returned "
            f"{type(result).__name__} {result!r:.200}."
        )
    new_layer, new_ps, new_st = result
    if new_layer is not layer or new_ps is not ps:
        _check_fit(new_layer, new_ps, "params", path)
    if new_layer is not layer or new_st is not st:
        _check_fit(new_layer, new_st, "state", path)
    return result


def _check_fit(layer: Layer, tree: Any, what: What, path: KeyPath) -> None:
    problem = misfit(abstract_init(layer, what), tree)
    if problem:
        named = "parameters" if what == "params" else "states"
        raise StructureError(
            layer, f"`f` of layer_map returned {named} that do not fit the layer: {problem}", path=path
        )


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
    path = KeyPath.of(path, "layer_at")
    outer: dict[KeyPath, Layer] = {}
    inner: dict[KeyPath, Layer] = {}  # the layer inside any wrappers: the one whose children a path names
    for here, layer in iter_layers(model):
        outer.setdefault(here, layer)
        inner[here] = layer
    if path and isinstance(path[-1], int):  # one block of a stack: the block, with its slices
        ps, st = _at(model, ps, path, "parameters"), _at(model, st, path, "states")
        return next(iter(layer_at(model, None, None, path[:-1])[0].children().values())), ps, st
    names = KeyPath(*(key for key in path if not isinstance(key, int)))  # block indices add no level
    if names not in outer:
        asked, path = str(path), names
        here = next(path[:depth] for depth in range(len(path), -1, -1) if path[:depth] in inner)
        layer, name = inner[here], path[len(here)]
        children = layer.children()
        have = f"it has children {', '.join(map(repr, children))}" if children else "it has no child layers"
        own = _at(model, ps, here, "parameters")
        if isinstance(own, Mapping) and name in own:
            have = f"{name!r} is a parameter of it, not a layer"
        where = f" at {here}" if here else ""
        raise KeyError(f"layer_at: no layer at {asked!r}: {layer!r}{where} has no child {name!r}; {have}.")
    return outer[names], _at(model, ps, path, "parameters"), _at(model, st, path, "states")


def _at(model: Layer, tree: Any, path: KeyPath, what: str) -> Any:
    """The entry of `tree` at `path` (`None` for no tree); an int takes a block of the stack there."""
    if tree is None:
        return None
    layer = model
    for depth, key in enumerate(path):
        stack = None
        while layer.is_wrapper:
            stack = layer if layer.copies() > 1 else stack
            layer = next(iter(layer.children().values()))
        if isinstance(key, int):
            if stack is None or key >= stack.copies():
                what_is = f"{stack!r} has {stack.copies()} blocks" if stack else f"{layer!r} is not a stack"
                raise KeyError(f"layer_at: no block {key} at {path[:depth].label()}: {what_is}.")
            tree = KeyPath(key).get(tree)
            continue
        tree = _entry(layer, tree, key, what, path[:depth])
        layer = layer.children()[key]
    return tree
