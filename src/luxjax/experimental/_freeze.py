"""Parameter freezing: `FrozenLayer`, `freeze` and `unfreeze`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from ..core import (
    KeyPath,
    Layer,
    StructureError,
    Where,
    abstract_init,
    cast_floating,
    check_fit,
    check_layer_argument,
    compute_dtype,
    field,
    map_layers,
    parameter_count,
    selector,
)
from ._layer_map import _entry, layer_map

Names = tuple[str, ...] | None


class _Missing:
    """The default of `which_params` when it is not given: freeze everything."""

    def __repr__(self) -> str:
        return "None"


_MISSING: Any = _Missing()


class FrozenLayer(Layer):
    """Runs `layer` with the parameters named in `which_params` frozen (Lux's `FrozenLayer`).

    Frozen values live in the state, so no optimizer sees them (no gradient, no optimizer
    memory), and they go through `jax.lax.stop_gradient` in the forward pass. Prefer
    `freeze`, which also moves the current values and reaches inside containers.

    Args:
        layer: the layer to run.
        which_params: names of entries of `layer`'s `ps` to freeze, e.g. `("weight",)`;
            dotted names reach into nested entries (`"layer_2.weight"`); `None` freezes all.

    `ps`: `layer`'s parameters without the frozen ones. `st`: `{"frozen_params": the frozen
    values, "states": layer's own state}`.

    `FrozenLayer` is a leaf for `layer_map` and debug mode: the layer inside is not visited.
    Freezing is not eval mode: a frozen layer that behaves differently in training (a
    BatchNorm's running statistics, Dropout) still does so; use `lx.testmode(st)` for that.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import FrozenLayer
        >>> model = FrozenLayer(lx.Dense(2, 2), ("weight",))
        >>> print(model)
        FrozenLayer(Dense(2 => 2), ('weight',))  # 2 parameters, plus 4 non-trainable
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> list(ps), list(st), list(st["frozen_params"])
        (['bias'], ['frozen_params', 'states'], ['weight'])
    """

    layer: Layer
    which_params: Names = field(default=None, converter=lambda names: _normalise("FrozenLayer", names))

    def __post_init__(self) -> None:
        check_layer_argument("FrozenLayer", self.layer, "`layer`")
        if self.which_params is not None:
            _check_names("FrozenLayer", self.layer, abstract_init(self.layer, "params"), self.which_params, KeyPath())

    def frozen_parameters(self) -> int:
        return parameter_count(self.layer) - parameter_count(self)

    def _paths(self) -> list[KeyPath] | None:
        return None if self.which_params is None else [KeyPath.parse(n) for n in self.which_params]

    def init_params(self, key: jax.Array) -> dict:
        return _split(self.layer.init_params(key), self._paths())[0]

    def init_state(self, key: jax.Array) -> dict:
        key_ps, key_st = jax.random.split(key)
        frozen = _split(self.layer.init_params(key_ps), self._paths())[1]
        return {"frozen_params": frozen, "states": self.layer.init_state(key_st)}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        _check_frozen_state(self, st)
        # Under a precision policy the frozen values are cast as the policy casts `ps`.
        frozen = cast_floating(jax.lax.stop_gradient(st["frozen_params"]), compute_dtype())
        merged = _merge(abstract_init(self.layer, "params"), ps, frozen)
        y, inner_st = self.layer(x, merged, st["states"])
        return y, {"frozen_params": st["frozen_params"], "states": inner_st}

    def __repr__(self) -> str:
        return f"FrozenLayer({self.layer!r}, {self.which_params!r})"


def freeze(layer: Layer, *args: Any, which_params: Names = _MISSING, where: Where | None = None) -> Any:
    """Freezes parameters of `layer`: `freeze(layer, which_params=None)` or `freeze(layer, ps, st, which_params=None)`.

    The two-argument form returns the frozen model; the four-argument form returns
    `(model, ps, st)` with the current values moved: frozen ones into the state as
    `{"frozen_params": ..., "states": ...}`, trainable ones left in `ps`.

    `which_params` is a tuple of names (`("weight",)`; `None` freezes everything). Dotted
    names select inside containers: `freeze(chain, ps, st, ("layer_2.weight",))` returns the
    chain with its `layer_2` replaced by `FrozenLayer(layer_2, ("weight",))`, and
    `"layer_2"` alone freezes that whole child (`FrozenLayer(layer_2, None)`), so the chain's
    structure, paths and `ps` keys stay as they were. A `FrozenLayer` wraps the layer that
    owns the frozen parameter: the leaf, or a container for parameters it holds beside its
    children. Freezing more of an already frozen layer extends its `which_params`.

    `where=` freezes whole leaf layers chosen by a selector instead: a dotted path pattern
    (`"blocks.*.attn.*"`, `*` matches within one part; a stack's block indices are left out), a
    layer type, a list of those, or a predicate `lambda path, layer: ...` called on every leaf
    layer (as `layer_map` visits them) that returns `True` (freeze the layer's parameters),
    `False`/`None` (leave it) or a tuple of names to freeze. Leaves without parameters are
    left as they are. Precision policies and sharding rules take the same selectors.

    A name the layer does not have is a `ValueError` listing the names it has. `freeze(layer,
    ())` returns `layer` itself and `freeze(layer, ps, st, ())` returns `(layer, ps, st)`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import freeze
        >>> model = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> frozen, ps_f, st_f = freeze(model, ps, st, ("layer_2.weight",))
        >>> frozen
        Chain(Dense(2 => 3), FrozenLayer(Dense(3 => 1), ('weight',)))
        >>> list(ps_f["layer_2"]), list(st_f["layer_2"]["frozen_params"])
        (['bias'], ['weight'])
        >>> freeze(model, where=lambda path, layer: path == ("layer_1",))
        Chain(FrozenLayer(Dense(2 => 3), None), Dense(3 => 1))
    """
    if len(args) > 3:
        raise TypeError(
            f"freeze takes (layer, which_params) or (layer, ps, st, which_params), got {1 + len(args)} arguments."
        )
    if len(args) in (1, 3):
        if which_params is not _MISSING:
            raise TypeError("freeze: `which_params` given twice, by position and by name.")
        which_params = args[len(args) - 1]
    check_layer_argument("freeze", layer, "`layer`")
    four = len(args) >= 2
    if four:
        check_fit("freeze", layer, args[0], args[1])
    # The two-argument form is the four-argument one on the trees' shapes.
    ps, st = (args[0], args[1]) if four else (abstract_init(layer, "params"), abstract_init(layer, "state"))
    if where is not None:
        if which_params is not _MISSING and which_params is not None:
            raise TypeError("freeze: give either `which_params` or `where`, not both.")
        result = _freeze_where(layer, ps, st, where)
    else:
        names = _normalise("freeze", None if which_params is _MISSING else which_params)
        paths = None if names is None else [KeyPath.parse(n) for n in names]
        result = (layer, ps, st) if names == () else _freeze(layer, ps, st, paths, KeyPath())
    return result if four else result[0]


def unfreeze(model: Layer, ps: Any = None, st: Any = None) -> Any:
    """Undoes `freeze`: `unfreeze(model)` or `unfreeze(model, ps, st) -> (model, ps, st)`.

    Every `FrozenLayer` in `model` (the model itself or any inside it) is replaced by the layer
    it wraps, and in the three-argument form the frozen values move back into `ps`, in the
    key order the layer's `init_params` gives (the order `setup` builds), with the very same
    arrays. `unfreeze(FrozenLayer(layer, ...))` returns `layer` itself.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.experimental import freeze, unfreeze
        >>> model = lx.Dense(2, 2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> frozen, ps_f, st_f = freeze(model, ps, st, ("weight",))
        >>> layer, ps_u, st_u = unfreeze(frozen, ps_f, st_f)
        >>> layer is model, list(ps_u), ps_u["weight"] is ps["weight"], st_u
        (True, ['weight', 'bias'], True, {})
    """
    check_layer_argument("unfreeze", model, "`model`")
    if ps is None and st is None:
        return map_layers(lambda layer, path: unfreeze(layer.layer) if isinstance(layer, FrozenLayer) else layer, model)
    if ps is None or st is None:
        raise TypeError("unfreeze takes (model) or (model, ps, st); give both `ps` and `st`.")
    check_fit("unfreeze", model, ps, st)

    def f(layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
        if not isinstance(layer, FrozenLayer):
            return layer, ps, st
        _check_frozen_state(layer, st, path)
        merged = _merge(abstract_init(layer.layer, "params"), ps, st["frozen_params"])
        return unfreeze(layer.layer, merged, st["states"])

    return layer_map(f, model, ps, st)


# -- freezing, structurally ----------------------------------------------------------------------


def _freeze(layer: Layer, ps: Any, st: Any, paths: list[KeyPath] | None, here: KeyPath) -> tuple[Layer, Any, Any]:
    whole = paths is None or any(not p for p in paths)
    if isinstance(layer, FrozenLayer):
        if layer.which_params is None:
            return layer, ps, st
        inner, ps, st = unfreeze(layer, ps, st)
        old = [KeyPath.parse(n) for n in layer.which_params]
        return _freeze_here(inner, ps, st, None if whole or paths is None else old + paths, here)
    if whole or paths is None:
        return _freeze_here(layer, ps, st, None, here)
    children = layer.children()
    if layer.is_wrapper:
        ((name, child),) = children.items()
        _check_whole_stack(layer, paths, here)
        new_child, ps, st = _freeze(child, ps, st, paths, here)
        return layer.replace_children({name: new_child}), ps, st
    own, by_child = [], {}
    for path in paths:
        if path[0] in children:
            by_child.setdefault(path[0], []).append(path[1:])
        else:
            own.append(path)
    if not children:
        return _freeze_here(layer, ps, st, own, here)
    new_ps, new_st, new_children = dict(ps), dict(st), {}
    for name, sub in by_child.items():
        child_ps = _entry(layer, ps, name, "parameters", here)
        child_st = _entry(layer, st, name, "states", here)
        new_children[name], new_ps[name], new_st[name] = _freeze(children[name], child_ps, child_st, sub, here / name)
    layer = layer.replace_children(new_children)
    return _freeze_here(layer, new_ps, new_st, own, here) if own else (layer, new_ps, new_st)


def _check_whole_stack(layer: Layer, paths: list[KeyPath], here: KeyPath) -> None:
    """A stack holds one block description for all its blocks: it can freeze a layer in all of them only."""
    for path in paths:
        if layer.copies() > 1 and isinstance(path[0], int):
            raise ValueError(
                f"freeze: {layer!r} at {here.label()} runs one block description for all {layer.copies()} blocks, "
                f"so {str(here + path)!r} cannot freeze block {path[0]} alone. Freeze {str(here + path[1:])!r} to "
                "freeze it in every block, or unroll the stack with `Stacked.to_chain(ps, st)` and freeze one "
                "block of the chain."
            )


def _freeze_here(layer: Layer, ps: Any, st: Any, paths: list[KeyPath] | None, here: KeyPath) -> tuple:
    names = None if paths is None else tuple(dict.fromkeys(str(p) for p in paths))
    if names is not None:
        _check_names("freeze", layer, ps, names, here)
    frozen = FrozenLayer(layer, names)
    trainable, frozen_ps = _split(ps, None if names is None else [KeyPath.parse(n) for n in names])
    return frozen, trainable, {"frozen_params": frozen_ps, "states": st}


def _freeze_where(model: Layer, ps: Any, st: Any, where: Where) -> tuple[Layer, Any, Any]:
    select = selector("freeze", where)

    def choose(layer: Layer, path: KeyPath) -> Names:
        choice = select(path, layer)
        if isinstance(choice, (tuple, list, str)):
            return _normalise("freeze", choice)
        return None if choice and parameter_count(layer) else ()

    return layer_map(lambda layer, ps, st, path: freeze(layer, ps, st, choose(layer, path)), model, ps, st)


# -- names and trees -------------------------------------------------------------------------------


def _normalise(fn: str, which_params: Any) -> Names:
    if which_params is None:
        return None
    if isinstance(which_params, str):
        raise TypeError(
            f"{fn}: `which_params` must be a tuple of names, got the string {which_params!r}; "
            f"write ({which_params!r},) with the trailing comma."
        )
    if isinstance(which_params, Mapping) or not isinstance(which_params, (tuple, list)):
        raise TypeError(
            f"{fn}: `which_params` must be a tuple of names such as ('weight',) or None, got {which_params!r:.100}. "
            "To freeze the current values, call freeze(layer, ps, st, which_params)."
        )
    names = []
    for name in which_params:
        if not isinstance(name, str) or not all(name.split(".")):
            raise TypeError(f"{fn}: `which_params` must hold names such as 'weight' or 'layer_2.bias', got {name!r}.")
        names.append(name)
    # drop repeats and names inside another frozen name ("layer_1.weight" inside "layer_1")
    unique = tuple(dict.fromkeys(names))
    return tuple(n for n in unique if not any(n.startswith(other + ".") for other in unique))


def _check_names(fn: str, layer: Layer, tree: Any, names: tuple[str, ...], here: KeyPath) -> None:
    where = f" at {here}" if here else ""
    for name in names:
        node, walked = tree, KeyPath()
        for key in KeyPath.parse(name):
            if not isinstance(node, Mapping) or key not in node:
                prefix = f"{walked}." if walked else ""
                have = ", ".join(repr(prefix + str(k)) for k in node) if isinstance(node, Mapping) else ""
                has = f"it has {have}" if have else "it has no parameters there"
                raise ValueError(f"{fn}: {layer!r}{where} has no parameter {name!r}; {has}.")
            node, walked = node[key], walked / key


def _split(tree: Any, paths: list[KeyPath] | None) -> tuple[dict, dict]:
    """Splits a parameter tree into (trainable, frozen) by the frozen paths (`None`: all)."""
    if paths is None:
        return {}, tree
    whole = {p[0] for p in paths if len(p) == 1}
    deeper: dict[str, list[KeyPath]] = {}
    for p in paths:
        if len(p) > 1 and p[0] not in whole:
            deeper.setdefault(p[0], []).append(p[1:])
    trainable, frozen = {}, {}
    for key, value in tree.items():
        if key in whole:
            frozen[key] = value
        elif key in deeper:
            trainable[key], frozen[key] = _split(value, deeper[key])
        else:
            trainable[key] = value
    return trainable, frozen


def _merge(order: Any, trainable: Any, frozen: Any) -> Any:
    """Merges (trainable, frozen) back into one tree in the key order of `order` (a template)."""
    if not isinstance(frozen, Mapping) or not frozen:
        return trainable
    if not isinstance(trainable, Mapping) or not trainable:
        return frozen
    keys = dict.fromkeys([*(order if isinstance(order, Mapping) else ()), *trainable, *frozen])
    merged = {}
    for key in keys:
        if key in trainable and key in frozen:
            sub = order.get(key) if isinstance(order, Mapping) else None
            merged[key] = _merge(sub, trainable[key], frozen[key])
        elif key in trainable:
            merged[key] = trainable[key]
        elif key in frozen:
            merged[key] = frozen[key]
    return merged


def _check_frozen_state(layer: Layer, st: Any, path: KeyPath | None = None) -> None:
    if isinstance(st, Mapping) and "frozen_params" in st and "states" in st:
        return
    got = f"keys {', '.join(map(repr, st))}" if isinstance(st, Mapping) else f"a {type(st).__name__}"
    raise StructureError(
        layer,
        "states must be {'frozen_params': ..., 'states': ...} as `setup` or `freeze(layer, ps, st)` make them, "
        f"got {got}.",
        path=path or KeyPath(),
    )
