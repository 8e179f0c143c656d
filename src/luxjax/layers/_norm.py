"""Normalisation: `BatchNorm`, `InstanceNorm` (with running statistics), `LayerNorm`, `GroupNorm`, `RMSNorm`."""

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


def _check_momentum(layer: Any) -> None:
    if not (isinstance(layer.momentum, (int, float)) and 0 <= layer.momentum <= 1):
        raise ConfigError(f"{type(layer).__name__}: `momentum` must be a number in [0, 1], got {layer.momentum!r}.")


def _stats_state(layer: Any) -> dict:
    """The state of a norm that may track running statistics per channel (float32, as Lux)."""
    if not layer.track_stats:
        return {"training": Training(True)}
    return {
        "running_mean": jnp.zeros((layer.channels,), jnp.float32),
        "running_var": jnp.ones((layer.channels,), jnp.float32),
        "training": Training(True),
    }


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
        _check_momentum(self)

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, (self.channels,))

    def init_state(self, key: jax.Array) -> dict:
        del key
        return _stats_state(self)

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
    """Layer normalisation over the trailing `shape` axes of each sample (PyTorch's `LayerNorm`), or over `axes`.

    Args:
        shape: an int or a tuple: the trailing axes to normalise over, e.g. `64` for a
            `(batch, seq, 64)` input or `(8, 8, 3)` for whole `(batch, 8, 8, 3)` images.
            With `axes`, it is only the shape of `scale` and `bias`, broadcast against the
            input's trailing axes (a 1 broadcasts), as Lux's `shape`.
        activation: elementwise function applied to the output (`None`: identity).
        epsilon: added to the variance before the square root.
        affine: whether to learn an elementwise `scale` and `bias` of shape `shape`.
        axes: the input axes the mean and variance are taken over (ints, 0-based, negative
            counts from the end; Lux's `dims`). `None` (the default): the trailing
            `len(shape)` axes. For example `LayerNorm((1, 1, 16), axes=(1, 2))` normalises each
            channel of `(batch, h, w, 16)` images over its pixels with a per-channel affine.

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
    axes: tuple[int, ...] | None = field(default=None, converter=int_tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple) or not self.shape:
            raise ConfigError(f"LayerNorm: `shape` must be a positive int or a tuple of them, got {self.shape!r}.")
        self.shape = as_tuple("LayerNorm", "shape", self.shape, len(self.shape))
        _check_config(self, ())
        axes = self.axes
        if axes is not None and (
            not isinstance(axes, tuple)
            or not axes
            or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
            or len(set(axes)) != len(axes)
        ):
            raise ConfigError(f"LayerNorm: `axes` must be None, an int or a tuple of distinct ints, got {axes!r}.")

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, self.shape)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        k, shape, ndim = len(self.shape), jnp.shape(x), jnp.ndim(x)
        if self.axes is None:
            if ndim < k or tuple(shape[-k:]) != self.shape:
                raise ShapeError(self, f"expected input with trailing axes {self.shape}, got shape {shape}.")
            axes = tuple(range(ndim - k, ndim))
        else:
            if ndim < k or any(p not in (1, n) for p, n in zip(self.shape, shape[ndim - k :])):
                raise ShapeError(
                    self, f"expected input whose trailing axes broadcast with {self.shape}, got shape {shape}."
                )
            if any(not -ndim <= a < ndim for a in self.axes):
                raise ShapeError(self, f"`axes` {self.axes} are out of range for an input of shape {shape}.")
            axes = tuple(sorted(a % ndim for a in self.axes))
        dtype, x = in_dtype_of(x), x.astype(float_dtype(x))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
        return _finish(self, (x - mean) * jax.lax.rsqrt(var + self.epsilon), ps, k).astype(dtype), st

    def __repr__(self) -> str:
        shape = self.shape[0] if len(self.shape) == 1 else self.shape
        return f"LayerNorm({shape}{_extra_repr(self, {'epsilon': 1e-5, 'affine': True, 'axes': None})})"


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


class InstanceNorm(Layer):
    """Instance normalisation: each sample and channel over its spatial axes, as Lux's `InstanceNorm`.

    With `track_stats=True`, training mode also updates running statistics (the batch's mean
    of the per-instance means and of the unbiased per-instance variances, weighted by
    `momentum`, as Lux and PyTorch), and test mode (`lx.testmode(st)`) normalises with them.
    Gradients do not flow into the running statistics. The defaults are Lux's: no affine
    transform, no running statistics.

    Args:
        channels: size of the input's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        momentum: weight of the new batch in the running statistics.
        epsilon: added to the variance before the square root.
        affine: whether to learn a per-channel `scale` and `bias`.
        track_stats: whether to keep running statistics.

    Inputs: `(batch, *spatial, channels)` with at least one spatial axis. Returns the same shape.

    `ps`: `{"scale": (channels,), "bias": (channels,)}` (`{}` when `affine=False`).
    `st`: `{"running_mean": (channels,), "running_var": (channels,), "training": Training(True)}`
    (only `training` when `track_stats=False`).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.InstanceNorm(2, affine=True)
        >>> model
        InstanceNorm(2, affine=True)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, st = model(jnp.arange(12.0).reshape(1, 3, 2, 2), ps, st)
        >>> y[0, :, :, 0].mean().round(5), y[0, :, :, 0].std().round(3)
        (Array(0., dtype=float32), Array(1., dtype=float32))
    """

    channels: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    momentum: float = 0.1
    epsilon: float = 1e-5
    affine: bool = False
    track_stats: bool = False

    def __post_init__(self) -> None:
        _check_config(self, ("channels",))
        _check_momentum(self)

    def init_params(self, key: jax.Array) -> dict:
        del key
        return _affine_params(self, (self.channels,))

    def init_state(self, key: jax.Array) -> dict:
        del key
        return _stats_state(self)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        shape = jnp.shape(x)
        if len(shape) < 3 or shape[-1] != self.channels:
            raise ShapeError(
                self,
                f"expected input (batch, *spatial, channels) with a spatial axis and {self.channels} channels "
                f"in the last axis, got shape {shape}.",
            )
        axes = tuple(range(1, len(shape) - 1))
        lead = (1,) * (len(shape) - 1)
        dtype, x = in_dtype_of(x), x.astype(float_dtype(x))  # statistics in float32 under a bf16 policy
        if st["training"] or not self.track_stats:
            mean = jnp.mean(x, axis=axes, keepdims=True)
            var = jnp.var(x, axis=axes, keepdims=True)
        else:
            mean = jnp.reshape(st["running_mean"], lead + (-1,)).astype(x.dtype)
            var = jnp.reshape(st["running_var"], lead + (-1,)).astype(x.dtype)
        y = _finish(self, (x - mean) * jax.lax.rsqrt(var + self.epsilon), ps, 1).astype(dtype)
        if st["training"] and self.track_stats:
            n = math.prod(shape[1:-1])
            batch_mean = jax.lax.stop_gradient(jnp.mean(mean, axis=0)).reshape(-1)
            batch_var = jax.lax.stop_gradient(jnp.mean(var, axis=0) * (n / max(n - 1, 1))).reshape(-1)
            m = self.momentum
            st = {
                **st,
                "running_mean": (1 - m) * st["running_mean"] + m * batch_mean.astype(st["running_mean"].dtype),
                "running_var": (1 - m) * st["running_var"] + m * batch_var.astype(st["running_var"].dtype),
            }
        return y, st

    def __repr__(self) -> str:
        defaults = {"momentum": 0.1, "epsilon": 1e-5, "affine": False, "track_stats": False}
        return f"InstanceNorm({self.channels}{_extra_repr(self, defaults)})"


class RMSNorm(Layer):
    """Root-mean-square normalisation over the trailing `shape` axes, as Lux's and PyTorch's `RMSNorm`.

    `y = x / sqrt(mean(x ** 2) + epsilon) * scale`, the mean over the trailing `shape` axes
    of each sample; no centring and no bias.

    Args:
        shape: an int or a tuple: the trailing axes to normalise over.
        epsilon: added to the mean square before the square root.
        affine: whether to learn an elementwise `scale` of shape `shape`.

    Inputs: `(..., *shape)`. Returns the same shape.

    `ps`: `{"scale": shape}` (`{}` when `affine=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.RMSNorm(2)
        >>> model
        RMSNorm(2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.array([[3.0, 4.0]]), ps, st)[0]  # the root mean square is sqrt(12.5)
        Array([[0.8485278, 1.1313704]], dtype=float32)
    """

    shape: tuple[int, ...] = field(converter=int_tuple)  # an int is accepted
    _: dataclasses.KW_ONLY
    epsilon: float = 1e-5
    affine: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple) or not self.shape:
            raise ConfigError(f"RMSNorm: `shape` must be a positive int or a tuple of them, got {self.shape!r}.")
        self.shape = as_tuple("RMSNorm", "shape", self.shape, len(self.shape))
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
            raise ConfigError(f"RMSNorm: `epsilon` must be a positive number, got {self.epsilon!r}.")

    def init_params(self, key: jax.Array) -> dict:
        del key
        return {"scale": jnp.ones(self.shape, jnp.float32)} if self.affine else {}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        k, shape = len(self.shape), jnp.shape(x)
        if len(shape) < k or tuple(shape[-k:]) != self.shape:
            raise ShapeError(self, f"expected input with trailing axes {self.shape}, got shape {shape}.")
        axes = tuple(range(len(shape) - k, len(shape)))
        dtype, x = in_dtype_of(x), x.astype(float_dtype(x))  # the mean square in float32 under a bf16 policy
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + self.epsilon)
        if self.affine:
            y = y * jnp.reshape(ps["scale"], (1,) * (len(shape) - k) + self.shape).astype(y.dtype)
        return y.astype(dtype), st

    def __repr__(self) -> str:
        shape = self.shape[0] if len(self.shape) == 1 else self.shape
        defaults = (("epsilon", 1e-5), ("affine", True))
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, v in defaults if getattr(self, k) != v)
        return f"RMSNorm({shape}{extra})"
