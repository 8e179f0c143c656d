"""Dropout layers: `Dropout`, `AlphaDropout` and `VariationalHiddenDropout`, with their PRNG keys in the state."""

import jax
import jax.numpy as jnp

from ..core import Layer, Training
from ._util import check_probability, keep_mask


class Dropout(Layer):
    """Zeroes each element with probability `p` in training mode, scaling the rest by `1 / (1 - p)`.

    The random key lives in the state: every training-mode call splits `st["key"]`, uses one
    half for the mask and returns the other as the new `st["key"]`, so threading the state
    through a training loop gives a fresh mask each step while a call with a given `st` is
    deterministic (gradients and finite differences agree). In test mode (`lx.testmode(st)`)
    the input is returned unchanged and so is the state (the key does not advance).

    Args:
        p: the probability of dropping an element, in `[0, 1)`.

    Inputs: any array. Returns the same shape.

    `ps`: `{}`. `st`: `{"key": a PRNG key (jax.random.key), "training": Training(True)}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Dropout(0.5)
        >>> model
        Dropout(0.5)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, st = model(jnp.ones(6), ps, st)
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
        >>> model(jnp.ones(3), ps, lx.testmode(st))[0]
        Array([1., 1., 1.], dtype=float32)
    """

    p: float

    def __post_init__(self) -> None:
        check_probability(self)

    def init_state(self, key: jax.Array) -> dict:
        return {"key": key, "training": Training(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if not st["training"]:
            return x, st
        key, mask_key = jax.random.split(st["key"])
        if self.p == 0:
            return x, {**st, "key": key}
        keep = keep_mask(mask_key, self.p, jnp.shape(x))
        y = jnp.where(keep, x / jnp.asarray(1 - self.p, jnp.result_type(x)), jnp.zeros_like(x))
        return y, {**st, "key": key}

    def __repr__(self) -> str:
        return f"Dropout({self.p})"


# SELU's negative saturation value, -scale * alpha: what a dropped unit is set to (PyTorch's and Lux's).
_SELU_SATURATION = -1.7580993408473766


class AlphaDropout(Layer):
    """Dropout that keeps a SELU network's mean and variance: dropped units take SELU's saturation value.

    In training mode each element is dropped with probability `p`; dropped elements are set to
    `alpha = -1.7580993408473766` (SELU's `-scale * alpha`), then everything goes through the
    affine map that restores zero mean and unit variance::

        A = 1 / sqrt((1 - p) * (1 + p * alpha**2)),  B = -A * alpha * p
        y = A * where(keep, x, alpha) + B

    as PyTorch's `nn.AlphaDropout` and Lux's `AlphaDropout`. The key lives in the state and
    advances on every training-mode call, as in `Dropout`. In test mode (`lx.testmode(st)`)
    the input is returned unchanged.

    Args:
        p: the probability of dropping an element, in `[0, 1)`.

    Inputs: any float array. Returns the same shape and dtype.

    `ps`: `{}`. `st`: `{"key": a PRNG key, "training": Training(True)}` (Lux's `rng` is `key`).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.AlphaDropout(0.2)
        >>> model
        AlphaDropout(0.2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, st = model(jnp.zeros(1000), ps, st)
        >>> len(set(y.tolist()))  # kept zeros map to B, dropped ones to A * alpha + B
        2
    """

    p: float

    def __post_init__(self) -> None:
        check_probability(self)

    def init_state(self, key: jax.Array) -> dict:
        return {"key": key, "training": Training(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if not st["training"]:
            return x, st
        key, mask_key = jax.random.split(st["key"])
        if self.p == 0:
            return x, {**st, "key": key}
        dtype = jnp.result_type(x)
        a = 1 / ((1 - self.p) * (1 + self.p * _SELU_SATURATION**2)) ** 0.5
        b = -a * _SELU_SATURATION * self.p
        keep = keep_mask(mask_key, self.p, jnp.shape(x))
        y = jnp.where(keep, x, jnp.asarray(_SELU_SATURATION, dtype)) * jnp.asarray(a, dtype) + jnp.asarray(b, dtype)
        return y, {**st, "key": key}

    def __repr__(self) -> str:
        return f"AlphaDropout({self.p})"


class VariationalHiddenDropout(Layer):
    """Dropout whose mask is drawn once and then reused on every call, as for an RNN's hidden state.

    The first training-mode call draws a mask (each element kept with probability `1 - p`,
    kept ones scaled by `1 / (1 - p)`) and sets `st["update_mask"]` to `False`; later calls
    with the returned state apply the same mask, so every time step of a sequence sees the
    same dropped units (Gal and Ghahramani's variational dropout). To draw a new mask, e.g.
    for the next batch, set the flag again:
    `st = lx.update_state(st, "update_mask", jnp.array(True))`.

    Difference from Lux: Lux keeps the mask array itself in `st.mask` (`nothing` before the
    first call). Here the state keeps the key the mask is drawn from, `st["mask_key"]`, so the
    state has one structure before and after the first call (it can go through `jax.jit`,
    `lax.cond` and `lax.scan` unchanged) and the mask is the same for every input of the same
    shape. In test mode the input is returned unchanged and so is the state.

    Args:
        p: the probability of dropping an element, in `[0, 1)`.

    Inputs: any array. Returns the same shape.

    `ps`: `{}`. `st`: `{"key": a PRNG key (advances when a mask is drawn), "mask_key": the
    key of the current mask, "update_mask": a boolean scalar array (True before the first
    call), "training": Training(True)}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.VariationalHiddenDropout(0.5)
        >>> model
        VariationalHiddenDropout(0.5)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y1, st = model(jnp.ones(8), ps, st)
        >>> y2, st = model(jnp.ones(8), ps, st)
        >>> bool((y1 == y2).all()), bool(st["update_mask"])
        (True, False)
    """

    p: float

    def __post_init__(self) -> None:
        check_probability(self)

    def init_state(self, key: jax.Array) -> dict:
        key, mask_key = jax.random.split(key)
        return {"key": key, "mask_key": mask_key, "update_mask": jnp.array(True), "training": Training(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if not st["training"]:
            return x, st
        update = st["update_mask"]
        next_key, fresh = jax.random.split(st["key"])
        key = jnp.where(update, next_key, st["key"])
        mask_key = jnp.where(update, fresh, st["mask_key"])
        st = {**st, "key": key, "mask_key": mask_key, "update_mask": jnp.zeros_like(update)}
        if self.p == 0:
            return x, st
        keep = keep_mask(mask_key, self.p, jnp.shape(x))
        return jnp.where(keep, x / jnp.asarray(1 - self.p, jnp.result_type(x)), jnp.zeros_like(x)), st

    def __repr__(self) -> str:
        return f"VariationalHiddenDropout({self.p})"
