"""Pooling: `MaxPool`, `MeanPool`, `LPPool`, their global and adaptive forms (channels-last)."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, field
from ._util import (
    Padding,
    as_padding,
    as_tuple,
    check_spatial_input,
    check_window_fits,
    explicit_padding,
    int_tuple,
    padding_repr,
    tuple_repr,
)


class _Pool(Layer):
    """A window reduction over the spatial axes; `MaxPool` and `MeanPool` differ in the reduction."""

    # Ints are accepted for the tuple fields (an int or a 1-tuple means the same in every axis);
    # `stride=None` means the window.
    window: tuple[int, ...] = field(converter=int_tuple)
    _: dataclasses.KW_ONLY
    stride: tuple[int, ...] = field(default=None, converter=int_tuple)
    padding: Padding | Any = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.window, tuple) or not self.window:
            raise ConfigError(f"{name}: `window` must be an int or a non-empty tuple of ints, got {self.window!r}.")
        n = len(self.window)
        self.window = as_tuple(name, "window", self.window, n)
        self.stride = self.window if self.stride is None else as_tuple(name, "stride", self.stride, n)
        self.padding = as_padding(name, self.padding, n)

    def _reduce(self, x: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
        raise NotImplementedError

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        check_spatial_input(self, x, len(self.window), None)
        shape = jnp.shape(x)
        pads = explicit_padding(self.padding, shape[1:-1], self.window, self.stride)
        check_window_fits(self, shape, pads, self.window, "window")
        return self._reduce(x, pads), st

    def _window_args(self, pads: tuple[tuple[int, int], ...]) -> dict:
        return {
            "window_dimensions": (1, *self.window, 1),
            "window_strides": (1, *self.stride, 1),
            "padding": ((0, 0), *pads, (0, 0)),
        }

    def __repr__(self) -> str:
        extra = ""
        if self.padding != ((0, 0),) * len(self.window):
            extra += f", padding={padding_repr(self.padding)}"
        if self.stride != self.window:
            extra += f", stride={tuple_repr(self.stride)}"
        return f"{type(self).__name__}({self.window}{extra})"


class MaxPool(_Pool):
    """The maximum over each window of the spatial axes, channel by channel.

    Args:
        window: an int or a tuple; its length is the number of spatial axes.
        stride: an int or one per spatial axis; default the window (non-overlapping windows).
        padding: as for `Conv` (an int, ints or `(lo, hi)` pairs per axis, "SAME" or "VALID");
            padded positions never win the maximum.

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *pooled, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.MaxPool((2, 2))
        >>> model
        MaxPool((2, 2))
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> model(x, {}, {})[0][0, :, :, 0]
        Array([[ 5.,  7.],
               [13., 15.]], dtype=float32)
    """

    def _reduce(self, x: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, **self._window_args(pads))


class MeanPool(_Pool):
    """The mean over each window of the spatial axes, channel by channel.

    Padded positions count as zeros in the mean (the sum is divided by the window size), as
    Lux's `MeanPool` and PyTorch's `AvgPool` with `count_include_pad=True` do.

    Args:
        window: an int or a tuple; its length is the number of spatial axes.
        stride: an int or one per spatial axis; default the window (non-overlapping windows).
        padding: as for `Conv` (an int, ints or `(lo, hi)` pairs per axis, "SAME" or "VALID").

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *pooled, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.MeanPool(2)
        >>> model(jnp.array([[[1.0], [3.0], [5.0], [7.0]]]), {}, {})[0][0, :, 0]
        Array([2., 6.], dtype=float32)
    """

    def _reduce(self, x: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, **self._window_args(pads))
        return total / math.prod(self.window)


class _GlobalPool(Layer):
    _reduce: ClassVar[Callable[..., jax.Array]]

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if jnp.ndim(x) < 3:
            raise ShapeError(
                self, f"expected input (batch, *spatial, channels) with a spatial axis, got shape {jnp.shape(x)}."
            )
        axes = tuple(range(1, jnp.ndim(x) - 1))
        return self._reduce(x, axis=axes, keepdims=True), st

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GlobalMaxPool(_GlobalPool):
    """The maximum over all spatial axes, keeping them as size 1 (as Lux).

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, 1, ..., 1, channels)`; follow with
    `FlattenLayer()` for `(batch, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.GlobalMaxPool()(jnp.ones((2, 5, 5, 3)), {}, {})[0].shape
        (2, 1, 1, 3)
    """

    _reduce = staticmethod(jnp.max)


class GlobalMeanPool(_GlobalPool):
    """The mean over all spatial axes, keeping them as size 1 (as Lux).

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, 1, ..., 1, channels)`; follow with
    `FlattenLayer()` for `(batch, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.GlobalMeanPool()(jnp.ones((2, 5, 5, 3)), {}, {})[0].shape
        (2, 1, 1, 3)
    """

    _reduce = staticmethod(jnp.mean)


class _AdaptivePool(Layer):
    _reduce: ClassVar[Callable[..., jax.Array]]
    out_size: tuple[int, ...] = field(converter=int_tuple)  # an int is a 1-D size

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.out_size, tuple) or not self.out_size:
            raise ConfigError(f"{name}: `out_size` must be an int or a non-empty tuple of ints, got {self.out_size!r}.")
        self.out_size = as_tuple(name, "out_size", self.out_size, len(self.out_size))

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        check_spatial_input(self, x, len(self.out_size), None)
        # A window is a product of one interval per axis, so max and mean are separable:
        # pool one spatial axis at a time.
        for axis, out in enumerate(self.out_size, start=1):
            size = jnp.shape(x)[axis]
            pieces = []
            for i in range(out):
                start, end = (i * size) // out, -((-(i + 1) * size) // out)
                piece = jax.lax.slice_in_dim(x, start, end, axis=axis)
                pieces.append(self._reduce_axis(piece, axis))
            x = jnp.concatenate(pieces, axis=axis)
        return x, st

    def _reduce_axis(self, x: jax.Array, axis: int) -> jax.Array:
        return self._reduce(x, axis=axis, keepdims=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.out_size})"


class AdaptiveMaxPool(_AdaptivePool):
    """Max pooling to a fixed spatial output size, whatever the input size (PyTorch's windows).

    Output position `i` along an axis of input size `L` covers
    `[floor(i * L / out), ceil((i + 1) * L / out))`, as PyTorch's `AdaptiveMaxPool`
    (Lux instead uses one window size and stride, which differs when `out` does not divide `L`).

    Args:
        out_size: an int or a tuple; its length is the number of spatial axes.

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *out_size, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.AdaptiveMaxPool((2, 2))
        >>> model
        AdaptiveMaxPool((2, 2))
        >>> model(jnp.ones((1, 5, 7, 3)), {}, {})[0].shape
        (1, 2, 2, 3)
    """

    _reduce = staticmethod(jnp.max)


class AdaptiveMeanPool(_AdaptivePool):
    """Mean pooling to a fixed spatial output size, whatever the input size (PyTorch's windows).

    Output position `i` along an axis of input size `L` covers
    `[floor(i * L / out), ceil((i + 1) * L / out))`, as PyTorch's `AdaptiveAvgPool`.

    Args:
        out_size: an int or a tuple; its length is the number of spatial axes.

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *out_size, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.AdaptiveMeanPool(2)(jnp.array([[[1.0], [2.0], [4.0]]]), {}, {})[0][0, :, 0]
        Array([1.5, 3. ], dtype=float32)
    """

    _reduce = staticmethod(jnp.mean)


def _lp_norm(x: jax.Array, p: float, axis: Any, keepdims: bool = True) -> jax.Array:
    return jnp.sum(jnp.abs(x) ** p, axis=axis, keepdims=keepdims) ** (1 / p)


def _check_p(layer: Any) -> None:
    if not (isinstance(layer.p, (int, float)) and not isinstance(layer.p, bool) and layer.p > 0):
        raise ConfigError(f"{type(layer).__name__}: `p` must be a positive number, got {layer.p!r}.")


def _p_repr(p: float) -> str:
    return "" if p == 2 else f", p={p}"


class LPPool(_Pool):
    """The p-norm of each window of the spatial axes, `sum(|x| ** p) ** (1 / p)`, channel by channel (Lux's `LPPool`).

    The same as PyTorch's `LPPool` and NNlib's `lpnormpool` wherever those are defined (they
    raise `x` itself to the power `p`, so they need `x >= 0` unless `p` is an even integer).
    Padded positions count as zeros.

    Args:
        window: an int or a tuple; its length is the number of spatial axes.
        stride: an int or one per spatial axis; default the window.
        padding: as for `Conv`.
        p: the norm's exponent (default 2, as Lux).

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *pooled, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.LPPool(2)
        >>> model
        LPPool((2,))
        >>> model(jnp.array([[[3.0], [4.0]]]), {}, {})[0][0, :, 0]
        Array([5.], dtype=float32)
    """

    _: dataclasses.KW_ONLY
    p: float = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_p(self)

    def _reduce(self, x: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
        total = jax.lax.reduce_window(jnp.abs(x) ** self.p, 0.0, jax.lax.add, **self._window_args(pads))
        return total ** (1 / self.p)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f"{_p_repr(self.p)})"


class GlobalLPPool(Layer):
    """The p-norm over all spatial axes, keeping them as size 1, as Lux's `GlobalLPPool`.

    Args:
        p: the norm's exponent (default 2).

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, 1, ..., 1, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.GlobalLPPool(p=1)(jnp.array([[[1.0], [-2.0]]]), {}, {})[0]
        Array([[[3.]]], dtype=float32)
    """

    _: dataclasses.KW_ONLY
    p: float = 2

    def __post_init__(self) -> None:
        _check_p(self)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        if jnp.ndim(x) < 3:
            raise ShapeError(
                self, f"expected input (batch, *spatial, channels) with a spatial axis, got shape {jnp.shape(x)}."
            )
        return _lp_norm(x, self.p, tuple(range(1, jnp.ndim(x) - 1))), st

    def __repr__(self) -> str:
        return f"GlobalLPPool({'' if self.p == 2 else f'p={self.p}'})"


class AdaptiveLPPool(_AdaptivePool):
    """The p-norm pooled to a fixed spatial output size, with `AdaptiveMaxPool`'s windows (Lux's `AdaptiveLPPool`).

    Args:
        out_size: an int or a tuple; its length is the number of spatial axes.
        p: the norm's exponent (default 2).

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *out_size, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.AdaptiveLPPool(1)(jnp.array([[[3.0], [4.0]]]), {}, {})[0][0, :, 0]
        Array([5.], dtype=float32)
    """

    _: dataclasses.KW_ONLY
    p: float = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_p(self)

    def _reduce_axis(self, x: jax.Array, axis: int) -> jax.Array:
        # The p-norm is separable: pooling one axis at a time gives the norm over the window.
        return _lp_norm(x, self.p, axis)

    def __repr__(self) -> str:
        return f"AdaptiveLPPool({self.out_size}{_p_repr(self.p)})"
