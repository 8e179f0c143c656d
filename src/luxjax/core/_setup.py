"""`setup`, `apply`, `stateless_apply`, `outputsize` and the parameter and state counts.

`setup` gives exactly what `model.init_params(k1), model.init_state(k2)` give for
`k1, k2 = jax.random.split(key)`, bit for bit, in fewer dispatches: it walks the containers
itself (an `assembled` init splits its key into one key per child, in child order, as
`ContainerLayer` does; a wrapper passes its key on), splits each container's key in one
compiled call, and runs each distinct leaf layer's init compiled, once per instance. The
keys travel as NumPy key data, so handing one to a child costs no dispatch. A 1,000-layer
Chain takes about one compiled call per layer instead of five or six eager operations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.sharding import Mesh

from ._errors import NotALayerError
from ._layer import Layer
from ._place import Rules, sharded_setup
from ._state import Training
from ._stateful import StatefulLuxLayer
from ._walk import What, _assembled, _count_tree, abstract_init, count

Models = Layer | tuple | list | dict  # `setup` takes a layer or a (nested) tuple, list or dict of them


def _check_model(fn: str, model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise NotALayerError(f"{fn}: `model` must be a luxjax Layer, got {model!r} of type {type(model).__name__}.")
    return model


def _as_key(fn: str, key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and (jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)):
        return key
    raise TypeError(f"{fn}: `key` must be a PRNG key such as `jax.random.key(0)`, got {key!r}.")


def setup(key: jax.Array, model: Models, *, mesh: Mesh | None = None, rules: Rules | None = None) -> tuple[Any, Any]:
    """Builds the parameter and state trees of `model`.

    Args:
        key: a PRNG key, e.g. `jax.random.key(0)`.
        model: any luxjax layer, or a tuple, list or dict of layers (for instance a generator
            and a discriminator); then `ps` and `st` are a tuple, list or dict of the same
            shape, holding what a `Chain` of those layers would hold for its children.
        mesh: optional `jax.sharding.Mesh`. With it, `ps` and `st` are made by one compiled
            init whose outputs are created already sharded as `luxjax.sharding.shardings(model,
            mesh, rules)` says: no device ever holds a full copy of a split parameter. The
            values are those `setup` gives without a mesh.
        rules: sharding rules (see `luxjax.sharding.shardings`); without them, under a mesh,
            everything is replicated.

    Returns:
        `(ps, st)`: nested dicts with one entry per child layer.

    Example:
        >>> import jax, luxjax as lx
        >>> model = lx.Chain(lx.Dense(2, 4), lx.Dense(4, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["layer_1"]["weight"].shape
        (4, 2)
        >>> (ps_g, ps_d), _ = lx.setup(jax.random.key(0), (lx.Dense(2, 4), lx.Dense(4, 1)))
        >>> ps_d["weight"].shape
        (1, 4)
    """
    if isinstance(key, Layer) and not isinstance(model, Layer):
        raise TypeError("setup: the arguments are swapped: call it as `luxjax.setup(key, model)`, the key first.")
    model = _check_models(model)
    key = _as_key("setup", key)
    if mesh is not None:
        if not isinstance(model, Layer):
            raise TypeError("setup: under a `mesh`, `model` must be one layer; put the layers in an `lx.Chain`.")
        return sharded_setup(key, model, mesh, rules)
    if rules is not None:
        raise TypeError("setup: `rules` say how to split parameters over a mesh; pass the `mesh` too.")
    if isinstance(key, Tracer):  # inside the user's own jit or eval_shape: one trace anyway
        key_ps, key_st = jax.random.split(key)
        return _init_traced(model, "params", key_ps), _init_traced(model, "state", key_st)
    impl = jax.random.key_impl(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else None
    data = np.asarray(jax.random.key_data(key) if impl is not None else key)
    data_ps, data_st = _split(data, 2, impl)
    return _init(model, "params", data_ps, impl), _init(model, "state", data_st, impl)


def _check_models(model: Any, where: str = "") -> Any:
    """`model` if it is a layer or a (nested) tuple, list or dict of layers, else an error naming the entry."""
    if isinstance(model, Layer):
        return model
    if type(model) in (tuple, list, dict):
        items = model.items() if isinstance(model, dict) else enumerate(model)
        for name, value in items:
            _check_models(value, f"{where}[{name!r}]")
        return model
    what = f"`model{where}`" if where else "`model`"
    raise NotALayerError(
        f"setup: {what} must be a luxjax Layer, or a tuple, list or dict of them; got {model!r} of type "
        f"{type(model).__name__}."
    )


def _entries(models: tuple | list | dict) -> list[tuple[Any, Any]]:
    return list(models.items()) if isinstance(models, dict) else list(enumerate(models))


def _collect(models: tuple | list | dict, trees: list) -> Any:
    if isinstance(models, dict):
        return dict(zip(models, trees))
    return type(models)(trees)


def _init_traced(model: Any, what: What, key: jax.Array) -> Any:
    if isinstance(model, Layer):
        return getattr(model, _INIT[what])(key)
    entries = _entries(model)
    keys = jax.random.split(key, len(entries)) if entries else []
    return _collect(model, [_init_traced(value, what, k) for (_, value), k in zip(entries, keys)])


_INIT = {"params": "init_params", "state": "init_state"}


def _key(data: Any, impl: Any) -> jax.Array:
    return jnp.asarray(data) if impl is None else jax.random.wrap_key_data(data, impl=impl)


@functools.lru_cache(maxsize=256)
def _splitter(n: int, impl: Any) -> Callable:
    def split(data: jax.Array) -> jax.Array:
        keys = jax.random.split(_key(data, impl), n)
        return keys if impl is None else jax.random.key_data(keys)

    return jax.jit(split)


def _split(data: np.ndarray, n: int, impl: Any) -> np.ndarray:
    """`jax.random.split` of the key with this key data into `n` keys, as key data on the host."""
    return np.asarray(_splitter(n, impl)(data))


def _init(layer: Any, what: What, data: np.ndarray, impl: Any) -> Any:
    if not isinstance(layer, Layer):  # a tuple, list or dict of models: split the key as a container does
        entries = _entries(layer)
        keys = _split(data, len(entries), impl) if entries else []
        return _collect(layer, [_init(value, what, k, impl) for (_, value), k in zip(entries, keys)])
    if _assembled(layer, what):
        children = layer.children()
        if layer.is_wrapper:
            return _init(next(iter(children.values())), what, data, impl)
        if not children:
            return {}
        keys = _split(data, len(children), impl)
        return {name: _init(child, what, k, impl) for (name, child), k in zip(children.items(), keys)}
    try:
        init = _compiled_init(layer, what, impl)
    except TypeError:  # an unhashable layer
        return getattr(layer, _INIT[what])(_key(data, impl))
    return init(data)


@functools.lru_cache(maxsize=4096)
def _compiled_init(layer: Layer, what: What, impl: Any) -> _CompiledInit:
    return _CompiledInit(getattr(layer, _INIT[what]), impl)


class _CompiledInit:
    """One leaf layer's `init_params` or `init_state`, compiled on its first call.

    The output's dicts are put back in the layer's own key order (a jit output's dict keys
    are sorted). An init whose output holds no array is rebuilt on the host without a call;
    one that cannot be traced (it reads the key's value, or returns Python numbers or NumPy
    arrays, which a jit output would turn into JAX arrays) runs eagerly, as before.
    """

    def __init__(self, init: Callable, impl: Any):
        self.init = init
        self.impl = impl
        self.mode = "first call"
        self.order: Any = None
        self.fn = jax.jit(self._traced)

    def _traced(self, data: jax.Array) -> Any:
        tree = self.init(_key(data, self.impl))
        leaves = jax.tree.leaves(tree)
        self.order = _skeleton(tree)
        if not all(isinstance(leaf, Tracer) for leaf in leaves):
            self.mode = "eager"
        else:
            self.mode = "compiled" if leaves else "no arrays"
        return tree

    def __call__(self, data: np.ndarray) -> Any:
        if self.mode == "first call":
            try:
                out = self.fn(data)  # traces, and so sets `mode`
            except TypeError:  # not traceable; if it is a real error, the eager call raises it again
                self.mode = "eager"
            else:
                if self.mode == "compiled":
                    return _in_order(self.order, out)
        if self.mode == "compiled":
            return _in_order(self.order, self.fn(data))
        if self.mode == "no arrays":
            return _skeleton(self.order)
        return self.init(_key(data, self.impl))


def _skeleton(tree: Any) -> Any:
    """A copy of the dicts, lists and tuples of `tree`, in their own order, with `None` for leaves."""
    if type(tree) is dict:
        return {k: _skeleton(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(_skeleton(v) for v in tree)
    return None if jax.tree.leaves(tree) else tree


def _in_order(order: Any, tree: Any) -> Any:
    """`tree` with its dicts in the key order of `order`'s (a jit output's dict keys are sorted)."""
    if type(order) is dict and type(tree) is dict:
        return {k: _in_order(order[k], tree[k]) for k in order}
    return tree


def apply(model: Layer, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
    """Runs `model` on `x`: the same as `model(x, ps, st)`, returning `(y, new_st)`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, st = lx.apply(model, jnp.ones((5, 2)), ps, st)
        >>> y.shape
        (5, 3)
    """
    return _check_model("apply", model)(x, ps, st)


def _empty_state(model: Layer) -> Any:
    if state_count(model):
        raise ValueError(
            f"stateless_apply: {model!r} has {state_count(model)} states; use `apply(model, x, ps, st)` "
            "with the states from `setup`."
        )
    return abstract_init(model, "state")  # only empty dicts: no arrays to make


def stateless_apply(model: Layer, x: Any, ps: dict) -> Any:
    """Runs a model that has no states and returns only its output.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Dense(2, 3)
        >>> ps, _ = lx.setup(jax.random.key(0), model)
        >>> lx.stateless_apply(model, jnp.ones((5, 2)), ps).shape
        (5, 3)
    """
    model = _check_model("stateless_apply", model)
    return model(x, ps, _empty_state(model))[0]


def parameter_count(model: Any) -> int:
    """The number of trainable scalars of a model, or of a parameter tree (Lux's `parameterlength`).

    Args:
        model: a layer (counted from shapes alone, without materialising arrays), or a tree of
            arrays such as `ps` (or a tuple of them), or a `StatefulLuxLayer` (its `ps`).

    Example:
        >>> import jax, luxjax as lx
        >>> lx.parameter_count(lx.Dense(2, 4))
        12
        >>> ps, st = lx.setup(jax.random.key(0), lx.Dense(2, 4))
        >>> lx.parameter_count(ps)
        12
    """
    if isinstance(model, StatefulLuxLayer):
        model = model.ps
    return count(model, "params") if isinstance(model, Layer) else _count_leaves("parameter_count", model)


def state_count(model: Any) -> int:
    """The number of state scalars of a model, or of a state tree (Lux's `statelength`); a training flag counts 1.

    Example:
        >>> import jax, luxjax as lx
        >>> lx.state_count(lx.Dense(2, 4))
        0
        >>> _, st = lx.setup(jax.random.key(0), lx.BatchNorm(3))
        >>> lx.state_count(st)
        7
    """
    if isinstance(model, StatefulLuxLayer):
        model = model.st
    return count(model, "state") if isinstance(model, Layer) else _count_leaves("state_count", model)


def _count_leaves(fn: str, tree: Any) -> int:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Training))
    wrong = [leaf for leaf in leaves if not (isinstance(leaf, Training) or hasattr(leaf, "shape"))]
    if wrong:
        raise TypeError(
            f"{fn}: expected a layer or a tree of arrays such as `ps` or `st`, got a tree with the leaf "
            f"{wrong[0]!r} of type {type(wrong[0]).__name__}."
        )
    return _count_tree(tree)


def outputsize(model: Layer, x: Any, *, dtype: Any = jnp.float32) -> Any:
    """The shape of `model`'s output for the input `x`, from shapes alone (Lux's `outputsize`).

    Nothing is computed: the parameters, states and the call are traced with
    `jax.eval_shape`. Unlike Lux, the result keeps every axis, the batch axis included.

    Args:
        model: any luxjax layer.
        x: an input, a `jax.ShapeDtypeStruct`, an input shape (a tuple of ints, with the
            batch axis, read as an array of `dtype`), or a tuple of these for a model with
            several inputs.
        dtype: the dtype of inputs given as shapes.

    Returns:
        The output's shape, or a tree of shapes (a tuple for a model with several outputs).

    Example:
        >>> import luxjax as lx
        >>> model = lx.Chain(lx.Conv((3, 3), 1, 8), lx.FlattenLayer(), lx.Dense(8 * 26 * 26, 10))
        >>> lx.outputsize(model, (32, 28, 28, 1))
        (32, 10)
        >>> lx.outputsize(lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 5)), (4, 2))
        ((4, 3), (4, 5))
    """
    model = _check_model("outputsize", model)

    def is_shape(value: Any) -> bool:
        return type(value) in (tuple, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

    def spec(value: Any) -> Any:
        if is_shape(value):
            return jax.ShapeDtypeStruct(tuple(value), dtype)
        return jax.ShapeDtypeStruct(jnp.shape(value), jnp.result_type(value))

    specs = jax.tree.map(spec, x, is_leaf=is_shape)

    def run(key: jax.Array, x: Any) -> Any:
        return model(x, *setup(key, model))[0]

    out = jax.eval_shape(run, jax.random.key(0), specs)
    return jax.tree.map(lambda leaf: tuple(leaf.shape), out)
