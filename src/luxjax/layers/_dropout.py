"""`Dropout`, whose PRNG key lives in the state and advances on every call."""

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, Training


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
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p < 1:
            raise ConfigError(f"Dropout: `p` must be in [0, 1), got {self.p!r}.")

    def init_state(self, key: jax.Array) -> dict:
        return {"key": key, "training": Training(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if not st["training"]:
            return x, st
        key, mask_key = jax.random.split(st["key"])
        if self.p == 0:
            return x, {**st, "key": key}
        keep = jax.random.bernoulli(mask_key, 1 - self.p, jnp.shape(x))
        y = jnp.where(keep, x / jnp.asarray(1 - self.p, jnp.result_type(x)), jnp.zeros_like(x))
        return y, {**st, "key": key}

    def __repr__(self) -> str:
        return f"Dropout({self.p})"
