"""`layer_map`: map a function over every leaf layer with its parameters, states and path."""

from collections.abc import Callable
from typing import Any

from ..core import KeyPath, Layer, StructureError

LayerFn = Callable[[Layer, Any, Any, KeyPath], tuple[Layer, Any, Any]]


def layer_map(f: LayerFn, model: Layer, ps: Any, st: Any) -> tuple[Layer, Any, Any]:
    """Calls `f(layer, ps, st, path)` on every leaf layer and rebuilds the model from the results.

    `f` sees each leaf layer (a layer with no child layers, or a `FrozenLayer`) together with
    its own entries of `ps` and `st` and its `KeyPath`, depth-first in child order, and returns
    `(layer, ps, st)`. Paths follow `ps`: a wrapper layer adds no level. Entries that a
    container holds beside its children pass through unchanged.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import layer_map
        >>> model = lx.Chain(enc=lx.Dense(2, 3), dec=lx.Dense(3, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> def show(layer, ps, st, path):
        ...     print(repr(path), repr(layer))
        ...     return layer, ps, st
        >>> _ = layer_map(show, model, ps, st)
        KeyPath('enc') Dense(2 => 3)
        KeyPath('dec') Dense(3 => 2)
    """
    return _map(f, model, ps, st, KeyPath())


def _map(f: LayerFn, layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
    children = layer.children()
    if not children:
        result = f(layer, ps, st, path)
        if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], Layer)):
            raise TypeError(
                f"layer_map: `f` must return a tuple (layer, ps, st) but for {layer!r} at {path} "
                f"it returned {type(result).__name__} {result!r:.200}."
            )
        return result
    if layer.is_wrapper:
        ((name, child),) = children.items()
        new_child, ps, st = _map(f, child, ps, st, path)
        return layer.replace_children({name: new_child}), ps, st
    new_children, new_ps, new_st = {}, dict(ps), dict(st)
    for name, child in children.items():
        for tree, what in ((ps, "parameters"), (st, "states")):
            if name not in tree:
                error = StructureError(layer, f"{what} have no entry {name!r}; found {', '.join(map(repr, tree))}.")
                error.path = path
                raise error
        new_children[name], new_ps[name], new_st[name] = _map(f, child, ps[name], st[name], path / name)
    return layer.replace_children(new_children), new_ps, new_st
