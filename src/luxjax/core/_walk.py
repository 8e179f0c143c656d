"""The one walker over a model's layers, and abstract initialisation (shapes without arrays).

Everything that visits a model's layers (display, counts, `layer_at`, `layer_map`, freezing,
debug mode) goes through `iter_layers` or `map_layers`; everything that needs the shapes a
layer initialises goes through `abstract_init`. Both rely only on the layer protocol
(`children()`, `is_wrapper`, `replace_children`, `init_params`, `init_state`), so this module
imports no layer class.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._keypath import KeyPath
from ._state import Training

What = Literal["params", "state"]
_INIT = {"params": "init_params", "state": "init_state"}


@functools.cache
def _dummy_key() -> jax.Array:
    """The key abstract initialisation traces with; made on first use, so importing luxjax starts no backend."""
    return jax.random.key(0)


_ASSEMBLED: set[Callable] = set()


def assembled(init: Callable) -> Callable:
    """Marks an `init_params`/`init_state` that only assembles the children's trees.

    `abstract_init` and the counts then work child by child (each distinct leaf traced once)
    instead of tracing the whole container.
    """
    _ASSEMBLED.add(init)
    return init


# -- walking the layer tree ---------------------------------------------------------------------


def iter_layers(model: Any, path: KeyPath | None = None) -> Iterator[tuple[KeyPath, Any]]:
    """Every layer of `model` with its path, depth-first in child order, a container before its children.

    A wrapper and the layer inside it share one path (the wrapper comes first), as paths
    follow `ps`, where a wrapper adds no level.

    Example:
        >>> import luxjax as lx
        >>> from luxjax.core import iter_layers
        >>> [str(path) for path, _ in iter_layers(lx.Chain(a=lx.Dense(2, 2), b=lx.Dense(2, 1)))]
        ['', 'a', 'b']
    """
    path = KeyPath() if path is None else path
    yield path, model
    for name, child in model.children().items():
        yield from iter_layers(child, path if model.is_wrapper else path / name)


def map_layers(
    fn: Callable[[Any, KeyPath], Any],
    model: Any,
    path: KeyPath | None = None,
    *,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """`fn(layer, path)` on every leaf layer (one with no child layers), rebuilding the model from the results.

    `is_leaf(layer)`, as in `jax.tree.map`, makes more layers leaves: `fn` gets them whole.
    Containers whose children all come back unchanged (`is`) are kept as they are.

    Example:
        >>> import luxjax as lx
        >>> from luxjax.core import map_layers
        >>> map_layers(lambda layer, path: lx.Dense(2, 3) if path == ("b",) else layer,
        ...            lx.Chain(a=lx.Dense(2, 2), b=lx.Dense(2, 1)))
        Chain(a=Dense(2 => 2), b=Dense(2 => 3))
    """
    path = KeyPath() if path is None else path
    children = model.children()
    if not children or (is_leaf is not None and is_leaf(model)):
        return fn(model, path)
    new = {
        name: map_layers(fn, child, path if model.is_wrapper else path / name, is_leaf=is_leaf)
        for name, child in children.items()
    }
    return model.replace_children(new) if any(new[n] is not c for n, c in children.items()) else model


# -- abstract initialisation --------------------------------------------------------------------


def _trace(layer: Any, what: What) -> Any:
    init = getattr(layer, _INIT[what])
    traced: list[Any] = []

    def run(key: jax.Array) -> Any:
        traced.append(tree := init(key))
        return tree

    shapes = jax.eval_shape(run, _dummy_key())
    return in_order(traced[0], shapes)  # eval_shape sorts dict keys; keep the layer's own order


def in_order(order: Any, tree: Any) -> Any:
    """`tree` with its dicts' keys in the order of `order`'s (JAX's pytree functions sort them)."""
    if isinstance(order, Mapping) and isinstance(tree, Mapping):
        return {k: in_order(order[k], tree[k]) for k in order if k in tree}
    return tree


@functools.lru_cache(maxsize=4096)
def _cached(layer: Any, what: What) -> Any:
    return _trace(layer, what)


def _hashable(layer: Any) -> bool:
    try:
        hash(layer)
    except TypeError:
        return False
    return True


def _assembled(layer: Any, what: What) -> bool:
    return getattr(type(layer), _INIT[what]) in _ASSEMBLED


def abstract_init(layer: Any, what: What) -> Any:
    """The tree `layer.init_params` (`"params"`) or `layer.init_state` (`"state"`) makes, as shapes.

    Leaves are `jax.ShapeDtypeStruct`s (the training flag stays a `Training`), dict keys keep
    the layer's own order, and no array is made. Each distinct leaf layer is traced once
    (`jax.eval_shape`, in a bounded cache); containers and wrappers that only assemble their
    children's trees are assembled from those.

    Example:
        >>> import luxjax as lx
        >>> from luxjax.core import abstract_init
        >>> abstract_init(lx.Chain(lx.Dense(2, 3)), "params")["layer_1"]["weight"].shape
        (3, 2)
    """
    if _assembled(layer, what):
        children = layer.children()
        if layer.is_wrapper:
            return abstract_init(next(iter(children.values())), what)
        return {name: abstract_init(child, what) for name, child in children.items()}
    return _cached(layer, what) if _hashable(layer) else _trace(layer, what)


def holds_own_entries(layer: Any) -> bool:
    """Whether a container's `ps` or `st` holds entries of its own beside its children's (debug mode checks them).

    Example:
        >>> import luxjax as lx
        >>> from luxjax.core import holds_own_entries
        >>> holds_own_entries(lx.Chain(lx.Dense(2, 2)))
        False
    """
    names = set(layer.children())
    for what in ("params", "state"):
        if _assembled(layer, what):
            continue
        tree = abstract_init(layer, what)
        if isinstance(tree, Mapping) and set(tree) - names:
            return True
    return False


def _count_tree(tree: Any) -> int:
    """The number of scalars in a tree of arrays or shapes; a training flag counts 1."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, Training))
    return sum(1 if isinstance(leaf, Training) else int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves)


@functools.lru_cache(maxsize=4096)
def _cached_count(layer: Any, what: What) -> int:
    return count(layer, what)


def count(layer: Any, what: What) -> int:
    """The number of scalars `layer` initialises (`"params"` or `"state"`), from shapes alone.

    A layer that runs several copies of its child (`copies() > 1`, a `Stacked`) counts as that
    many copies, so a stack counts what the unrolled chain of its blocks counts.
    """
    if layer.copies() > 1:
        (child,) = layer.children().values()
        return layer.copies() * count(child, what)
    if _assembled(layer, what):
        return sum(
            _cached_count(child, what) if _hashable(child) else count(child, what)
            for child in layer.children().values()
        )
    return _count_tree(abstract_init(layer, what))


def frozen_count(layer: Any) -> int:
    """The frozen parameters (kept in states by `FrozenLayer` or `LoRA`) of `layer` and every layer in it."""
    inside = sum(frozen_count(child) for child in layer.children().values())
    return layer.frozen_parameters() + layer.copies() * inside


# -- does a tree fit a template? ----------------------------------------------------------------


def _skeleton(tree: Any) -> Any:
    return jax.tree.structure(jax.tree.map(lambda _: 0, tree, is_leaf=lambda x: isinstance(x, Training)))


def _shapes(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Training))[0]
    return {
        KeyPath.from_jax(path).label(): "flag" if isinstance(leaf, Training) else tuple(jnp.shape(leaf))
        for path, leaf in leaves
    }


_KINDS = (("float", jnp.floating), ("complex", jnp.complexfloating), ("integer", jnp.integer), ("bool", jnp.bool_))


def _dtype(leaf: Any) -> Any:
    return leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)


def kind(leaf: Any) -> str:
    """The kind of a leaf's dtype: `float`, `complex`, `integer`, `bool`, `key` (a PRNG key) or `flag` (`Training`).

    Trees are checked by kind, not exact dtype, so a model may run in another precision.
    """
    if isinstance(leaf, Training):
        return "flag"
    dtype = _dtype(leaf)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return "key"
    return next((name for name, base in _KINDS if jnp.issubdtype(dtype, base)), str(dtype))


def _kinds(tree: Any) -> dict[str, tuple[str, str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Training))[0]
    return {
        KeyPath.from_jax(path).label(): (kind(leaf), "flag" if isinstance(leaf, Training) else str(_dtype(leaf)))
        for path, leaf in leaves
    }


def misfit(template: Any, tree: Any) -> str:
    """Empty if `tree` has `template`'s structure, shapes and dtype kinds, else what differs.

    Dtypes of one kind may differ (float16 for float32), kinds may not (an integer array where a
    float one belongs).
    """
    expected, got = _shapes(template), _shapes(tree)
    if _skeleton(template) == _skeleton(tree):
        wrong = [f"{k!r} has shape {got[k]}, expected {v}" for k, v in expected.items() if got[k] != v]
        if not wrong:
            kinds, got_kinds = _kinds(template), _kinds(tree)
            wrong = [
                f"{k!r} has dtype {got_kinds[k][1]}, expected a {v[0]} dtype such as {v[1]}"
                for k, v in kinds.items()
                if got_kinds[k][0] != v[0]
            ]
        return "; ".join(wrong[:5]) + ("." if wrong else "")
    missing = [repr(k) for k in expected if k not in got]
    extra = [repr(k) for k in got if k not in expected]
    parts = [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"unexpected {', '.join(extra)}"] if extra else []
    if not parts:  # the leaves agree: the difference is in empty dicts or containers
        missing, extra = _key_difference(template, tree, KeyPath())
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(extra)}"] if extra else []
        parts = parts or [f"expected the tree {_skeleton(template)}, got {_skeleton(tree)}"]
    return "; ".join(parts) + "."


def _key_difference(template: Any, tree: Any, path: KeyPath) -> tuple[list[str], list[str]]:
    """Dict keys only one of two trees has (`missing` from `tree`, `unexpected` in it), as dotted paths."""
    if not (isinstance(template, Mapping) and isinstance(tree, Mapping)):
        return [], []
    missing = [repr(str(path / k)) for k in template if k not in tree]
    extra = [repr(str(path / k)) for k in tree if k not in template]
    for k in template:
        if k in tree:
            more_missing, more_extra = _key_difference(template[k], tree[k], path / k)
            missing, extra = missing + more_missing, extra + more_extra
    return missing, extra


# -- do the trees a model is called with fit it? ------------------------------------------------


def _signature(tree: Any) -> tuple[Any, tuple[Any, ...]]:
    leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, Training))
    return treedef, tuple("flag" if isinstance(leaf, Training) else (jnp.shape(leaf), kind(leaf)) for leaf in leaves)


def _problem(layer: Any, ps: Any, st: Any) -> str:
    params, state = abstract_init(layer, "params"), abstract_init(layer, "state")
    wrong_ps, wrong_st = misfit(params, ps), misfit(state, st)
    if not (wrong_ps or wrong_st):
        return ""
    if not misfit(params, st) and not misfit(state, ps):
        return "`ps` and `st` are swapped: call it as `model(x, ps, st)`, parameters first."
    what, wrong = ("`ps`", wrong_ps) if wrong_ps else ("`st`", wrong_st)
    return f"{what} does not fit the layer: {wrong} Build the trees with `luxjax.setup(key, model)`."


_FITS: collections.OrderedDict[Any, str] = collections.OrderedDict()  # the last 1,024 answers
_FITS_LOCK = threading.Lock()


def fit_problem(layer: Any, ps: Any, st: Any) -> str:
    """What is wrong with `ps`/`st` for `layer` (structure, shapes, dtype kinds), or `""`; cached per signature."""
    if not _hashable(layer):
        return _problem(layer, ps, st)
    key = (layer, _signature(ps), _signature(st))
    with _FITS_LOCK:
        known = _FITS.get(key)
    if known is None:
        known = _problem(layer, ps, st)
        with _FITS_LOCK:
            _FITS[key] = known
            while len(_FITS) > 1024:
                _FITS.popitem(last=False)
    return known
