"""`setup`, `apply`, `stateless_apply` and the parameter and state counts.

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

from ._errors import NotALayerError
from ._layer import Layer
from ._walk import What, _assembled, abstract_init, count


def _check_model(fn: str, model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise NotALayerError(f"{fn}: `model` must be a luxjax Layer, got {model!r} of type {type(model).__name__}.")
    return model


def _as_key(fn: str, key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and (jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)):
        return key
    raise TypeError(f"{fn}: `key` must be a PRNG key such as `jax.random.key(0)`, got {key!r}.")


def setup(key: jax.Array, model: Layer) -> tuple[dict, dict]:
    """Builds the parameter and state trees of `model`.

    Args:
        key: a PRNG key, e.g. `jax.random.key(0)`.
        model: any luxjax layer.

    Returns:
        `(ps, st)`: nested dicts with one entry per child layer.

    Example:
        >>> import jax, luxjax as lx
        >>> model = lx.Chain(lx.Dense(2, 4), lx.Dense(4, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["layer_1"]["weight"].shape
        (4, 2)
    """
    if isinstance(key, Layer) and not isinstance(model, Layer):
        raise TypeError("setup: the arguments are swapped: call it as `luxjax.setup(key, model)`, the key first.")
    model = _check_model("setup", model)
    key = _as_key("setup", key)
    if isinstance(key, Tracer):  # inside the user's own jit or eval_shape: one trace anyway
        key_ps, key_st = jax.random.split(key)
        return model.init_params(key_ps), model.init_state(key_st)
    impl = jax.random.key_impl(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else None
    data = np.asarray(jax.random.key_data(key) if impl is not None else key)
    data_ps, data_st = _split(data, 2, impl)
    return _init(model, "params", data_ps, impl), _init(model, "state", data_st, impl)


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


def _init(layer: Layer, what: What, data: np.ndarray, impl: Any) -> Any:
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


def parameter_count(model: Layer) -> int:
    """The number of trainable scalars of `model` (Lux's `parameterlength`).

    Computed from shapes alone, without materialising arrays.

    Example:
        >>> import luxjax as lx
        >>> lx.parameter_count(lx.Dense(2, 4))
        12
    """
    return count(_check_model("parameter_count", model), "params")


def state_count(model: Layer) -> int:
    """The number of state scalars of `model` (Lux's `statelength`); a training flag counts 1.

    Example:
        >>> import luxjax as lx
        >>> lx.state_count(lx.Dense(2, 4))
        0
    """
    return count(_check_model("state_count", model), "state")
