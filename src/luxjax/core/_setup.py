"""`setup`, `apply`, `stateless_apply` and the parameter and state counts."""

from __future__ import annotations

from typing import Any

import jax

from ._errors import NotALayerError
from ._layer import Layer
from ._walk import abstract_init, count


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
    model = _check_model("setup", model)
    key = _as_key("setup", key)
    key_ps, key_st = jax.random.split(key)
    return model.init_params(key_ps), model.init_state(key_st)


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
