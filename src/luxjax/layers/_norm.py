"""Normalisation: `BatchNorm` (with running statistics), `LayerNorm` and `GroupNorm`."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, Training, field
from ._util import activation_repr, as_tuple, check_activation, check_positive, float_dtype, in_dtype_of, int_tuple


def _check_config(layer: Any, ints: tuple[str, ...]) -> None:
    check_positive(layer, *ints)
    if not (isinstance(layer.epsilon, (int, float)) and layer.epsilon > 0):
        raise ConfigError(f"{type(layer).__name__}: `epsilon` must be a positive number, got {layer.epsilon!r}.")
    check_activation(layer)


def _affine_params(layer: Any, shape: tuple[int, ...]) -> dict:
    if not layer.affine:
        return {}
    return {"scale": jnp.ones(shape, jnp.float32), "bias": jnp.zeros(shape, jnp.float32)}


def _finish(layer: Any, x_hat: jax.Array, ps: dict, n_param_axes: int) -> jax.Array:
    """Applies the affine transform (parameters on the trailing axes) and the activation."""
    if layer.affine:
        lead = (1,) * (x_hat.ndim - n_param_axes)
        scale = jnp.reshape(ps["scale"], lead + jnp.shape(ps["scale"])).astype(x_hat.dtype)
        bias = jnp.reshape(ps["bias"], lead + jnp.shape(ps["bias"])).astype(x_hat.dtype)
        x_hat = x_hat * scale + bias
    return layer.activation(x_hat) if layer.activation is not None else x_hat


def _extra_repr(layer: Any, defaults: dict) -> str:
    extra = activation_repr(layer.activation)
    extra += [f"{k}={getattr(layer, k)!r}" for k, v in defaults.items() if getattr(layer, k) != v]
    return "".join(f", {e}" for e in extra)


def _channels_last(layer: Layer, x: jax.Array, channels: int) -> None:
    shape = jnp.shape(x)
    if len(shape) < 2 or shape[-1] != channels:
        raise ShapeError(
            layer,
            f"expected input (batch, ..., channels) with {channels} channels in the last axis, got shape {shape}.",
        )


class BatchNorm(Layer):
    """Batch normalisation over every axis but the last (the channels), as in Lux and PyTorch.

    In training mode (`st["training"]` is `Training(True)`, the default) the output is
    normalised with the batch's mean and (biased) variance, and the running statistics are
    updated as `running = (1 - momentum) * running + momentum * batch`, where the batch
    variance is the unbiased one (as Lux and PyTorch). In test mode (`lx.testmode(st)`) the
    running statistics are used and the state is returned unchanged. With `track_stats=False`
    there are no running statistics and the batch statistics are used in both modes.
    Gradients do not flow into the running statistics.

    Args:
        channels: size of the input's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        momentum: weight of the new batch in the running statistics.
        epsilon: added to the variance before the square root.
        affine: whether to learn a per-channel `scale` and `bias`.
        track_stats: whether to keep running statistics.

    Inputs: `(batch, ..., channels)`. Returns the same shape.

    `ps`: `{"scale": (channels,), "bias": (channels,)}` (none when `affine=False`).
    `st`: `{"running_mean": (channels,), "running_var": (channels,), "training": Training(True)}`
    (only `training` when `track_stats=False`).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.BatchNorm(3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> lx.parameter_count(model), lx.state_count(model)
        (6, 7)
        >>> y, st = model(jnp.arange(6.0).reshape(2, 3), ps, st)
        >>> y.round(3)
        Array([[-1., -1., -1.],
               [ 1.,  1.,  1.]], dtype=float32)
        >>> st["running_mean"]
        Array([0.15, 0.25, 0.35], dtype=float32)
        >>> st["running_var"]  # 0.9 * 1 + 0.1 * 4.5 (the unbiased batch variance)
        Array([1.35, 1.35, 1.35], dtype=float32)
        >>> y, _ = model(jnp.zeros((2, 3)), ps, lx.testmode(st))  # uses the running statistics
    """

    channels: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    momentum: float = 0.1
    epsilon: float = 1e-5
    affine: bool = True
    track_stats: bool = True

    def __post_init__(self) -> None:
        _check_config(self, ("channels",))
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum <= 1):
            raise ConfigError(f"BatchNorm: `momentum` must be a number in [0, 1], got {self.momentum!r}.")

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, (self.channels,))

    def init_state(self, key: jax.Array) -> dict:
        del key
        if not self.track_stats:
            return {"training": Training(True)}
        return {
            "running_mean": jnp.zeros((self.channels,), jnp.float32),
            "running_var": jnp.ones((self.channels,), jnp.float32),
            "training": Training(True),
        }

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        _channels_last(self, x, self.channels)
        axes = tuple(range(jnp.ndim(x) - 1))
        lead = (1,) * len(axes)
        dtype, x = in_dtype_of(x), x.astype(float_dtype(x))
        if st["training"] or not self.track_stats:
            mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
        else:
            mean, var = st["running_mean"].astype(x.dtype), st["running_var"].astype(x.dtype)
        x_hat = (x - jnp.reshape(mean, lead + (-1,))) * jax.lax.rsqrt(jnp.reshape(var, lead + (-1,)) + self.epsilon)
        y = _finish(self, x_hat, ps, 1).astype(dtype)
        if st["training"] and self.track_stats:
            n = math.prod(jnp.shape(x)[:-1])
            batch_mean = jax.lax.stop_gradient(mean).astype(st["running_mean"].dtype)
            batch_var = jax.lax.stop_gradient(var * (n / max(n - 1, 1))).astype(st["running_var"].dtype)
            m = self.momentum
            st = {
                **st,
                "running_mean": (1 - m) * st["running_mean"] + m * batch_mean,
                "running_var": (1 - m) * st["running_var"] + m * batch_var,
            }
        return y, st

    def __repr__(self) -> str:
        defaults = {"momentum": 0.1, "epsilon": 1e-5, "affine": True, "track_stats": True}
        return f"BatchNorm({self.channels}{_extra_repr(self, defaults)})"


class LayerNorm(Layer):
    """Layer normalisation over the trailing `shape` axes of each sample (PyTorch's `LayerNorm`).

    Args:
        shape: an int or a tuple: the trailing axes to normalise over, e.g. `64` for a
            `(batch, seq, 64)` input or `(8, 8, 3)` for whole `(batch, 8, 8, 3)` images.
        activation: elementwise function applied to the output (`None`: identity).
        epsilon: added to the variance before the square root.
        affine: whether to learn an elementwise `scale` and `bias` of shape `shape`.

    Inputs: `(..., *shape)`. Returns the same shape.

    `ps`: `{"scale": shape, "bias": shape}` (none when `affine=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.LayerNorm(4)
        >>> model
        LayerNorm(4)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, _ = model(jnp.arange(8.0).reshape(2, 4), ps, st)
        >>> y.mean(axis=-1)
        Array([0., 0.], dtype=float32)
    """

    shape: tuple[int, ...] = field(converter=int_tuple)  # an int is accepted
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    epsilon: float = 1e-5
    affine: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple) or not self.shape:
            raise ConfigError(f"LayerNorm: `shape` must be a positive int or a tuple of them, got {self.shape!r}.")
        self.shape = as_tuple("LayerNorm", "shape", self.shape, len(self.shape))
        _check_config(self, ())

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, self.shape)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        k = len(self.shape)
        if tuple(jnp.shape(x)[-k:]) != self.shape or jnp.ndim(x) < k:
            raise ShapeError(self, f"expected input with trailing axes {self.shape}, got shape {jnp.shape(x)}.")
        axes = tuple(range(jnp.ndim(x) - k, jnp.ndim(x)))
        dtype, x = in_dtype_of(x), x.astype(float_dtype(x))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
        return _finish(self, (x - mean) * jax.lax.rsqrt(var + self.epsilon), ps, k).astype(dtype), st

    def __repr__(self) -> str:
        shape = self.shape[0] if len(self.shape) == 1 else self.shape
        return f"LayerNorm({shape}{_extra_repr(self, {'epsilon': 1e-5, 'affine': True})})"


class GroupNorm(Layer):
    """Group normalisation: per sample, over the spatial axes and each group of channels.

    The channels (last axis) are split into `groups` consecutive groups; each sample is
    normalised with the mean and variance of each group over all its non-batch axes, as
    Lux's and PyTorch's `GroupNorm`. `groups=1` normalises each whole sample, `groups=channels`
    is instance normalisation.

    Args:
        channels: size of the input's last axis.
        groups: number of groups; it must divide `channels`.
        activation: elementwise function applied to the output (`None`: identity).
        epsilon: added to the variance before the square root.
        affine: whether to learn a per-channel `scale` and `bias`.

    Inputs: `(batch, ..., channels)`. Returns the same shape.

    `ps`: `{"scale": (channels,), "bias": (channels,)}` (none when `affine=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.GroupNorm(4, 2)
        >>> model
        GroupNorm(4, 2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((3, 5, 5, 4)), ps, st)[0].shape
        (3, 5, 5, 4)
    """

    channels: int
    groups: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    epsilon: float = 1e-5
    affine: bool = True

    def __post_init__(self) -> None:
        _check_config(self, ("channels", "groups"))
        if self.channels % self.groups:
            raise ConfigError(f"GroupNorm: `groups` ({self.groups}) must divide `channels` ({self.channels}).")

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, (self.channels,))

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        _channels_last(self, x, self.channels)
        shape, dtype = jnp.shape(x), in_dtype_of(x)
        grouped = jnp.reshape(x.astype(float_dtype(x)), (*shape[:-1], self.groups, self.channels // self.groups))
        axes = (*range(1, len(shape) - 1), len(shape))
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.var(grouped, axis=axes, keepdims=True)
        x_hat = jnp.reshape((grouped - mean) * jax.lax.rsqrt(var + self.epsilon), shape)
        return _finish(self, x_hat, ps, 1).astype(dtype), st

    def __repr__(self) -> str:
        return f"GroupNorm({self.channels}, {self.groups}{_extra_repr(self, {'epsilon': 1e-5, 'affine': True})})"
