"""Spatial resampling: `Upsample` (nearest, bilinear) and `PixelShuffle` (channels-last)."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import ConfigError, Layer, ShapeError, field
from ._util import as_tuple, check_spatial_input, int_tuple

_MODES = ("nearest", "bilinear")


class Upsample(Layer):
    """Enlarges the spatial axes by `scale` or to `size`, as Lux's `Upsample` (keyword arguments only).

    `mode="nearest"` repeats pixels (output position `i` reads input `floor(i * in / out)`,
    as NNlib and PyTorch), for any number of spatial axes. `mode="bilinear"` interpolates
    linearly in each of 2 spatial axes. With `align_corners=True` (the default, what Lux
    computes: Lux's `align_corners` keyword defaults to false but is not passed on, and
    NNlib's bilinear upsampling aligns corners) the corner pixels of input and output
    coincide and position `i` reads `i * (in - 1) / (out - 1)`; `align_corners=False` is
    PyTorch's default, `(i + 0.5) * in / out - 0.5` clamped at 0.

    Args:
        mode: "nearest" or "bilinear".
        scale: an int or one int per spatial axis: the output is `scale` times the input.
        size: an int or one int per spatial axis: the output's spatial size. Give exactly
            one of `scale` and `size`.
        align_corners: for "bilinear", as above.

    Inputs: `(batch, *spatial, channels)`. Returns `(batch, *spatial * scale, channels)` or
    `(batch, *size, channels)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.Upsample(mode="bilinear", scale=2)
        >>> model
        Upsample("bilinear", scale=2)
        >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
        >>> model(x, {}, {})[0][0, 0, :, 0].round(4)
        Array([1.    , 1.3333, 1.6667, 2.    ], dtype=float32)
        >>> lx.Upsample(scale=(2, 1))(x, {}, {})[0].shape
        (1, 4, 2, 1)
    """

    _: dataclasses.KW_ONLY
    mode: str = "nearest"
    scale: tuple[int, ...] | None = field(default=None, converter=int_tuple)
    size: tuple[int, ...] | None = field(default=None, converter=int_tuple)
    align_corners: bool = True

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ConfigError(f"Upsample: `mode` must be one of {', '.join(map(repr, _MODES))}, got {self.mode!r}.")
        if (self.scale is None) == (self.size is None):
            raise ConfigError(
                f"Upsample: give exactly one of `scale` and `size`, got scale={self.scale!r}, size={self.size!r}."
            )
        for name in ("scale", "size"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, tuple) or not value:
                    raise ConfigError(f"Upsample: `{name}` must be a positive int or a tuple of them, got {value!r}.")
                setattr(self, name, as_tuple("Upsample", name, value, len(value)))
        if self.mode == "bilinear" and len(self.scale or self.size or ()) > 2:
            raise ConfigError(
                f"Upsample: bilinear upsampling takes 2 spatial axes, got scale={self.scale!r}, size={self.size!r}."
            )
        if not isinstance(self.align_corners, bool):
            raise ConfigError(f"Upsample: `align_corners` must be True or False, got {self.align_corners!r}.")

    def _out_sizes(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        given = self.scale or self.size or ()
        given = given * len(spatial) if len(given) == 1 else given
        if self.scale is not None:
            return tuple(s * k for s, k in zip(spatial, given))
        return given

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        given = self.scale or self.size or ()
        n = 2 if self.mode == "bilinear" else (len(given) if len(given) > 1 else max(jnp.ndim(x) - 2, 1))
        check_spatial_input(self, x, n, None)
        spatial = tuple(jnp.shape(x)[1:-1])
        for axis, (size_in, size_out) in enumerate(zip(spatial, self._out_sizes(spatial)), start=1):
            x = self._resample(x, axis, size_in, size_out)
        return x, st

    def _resample(self, x: jax.Array, axis: int, size_in: int, size_out: int) -> jax.Array:
        i = np.arange(size_out)
        if self.mode == "nearest":
            return jnp.take(x, np.minimum(i * size_in // size_out, size_in - 1), axis=axis)
        if self.align_corners:
            src = i * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(size_out)
        else:
            src = np.maximum((i + 0.5) * (size_in / size_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
        hi = np.minimum(lo + 1, size_in - 1)
        shape = [1] * jnp.ndim(x)
        shape[axis] = size_out
        w = jnp.asarray(np.reshape(src - lo, shape), x.dtype)
        return jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w

    def __repr__(self) -> str:
        def show(t: tuple[int, ...]) -> Any:
            return t[0] if len(t) == 1 else t

        extra = f", scale={show(self.scale)}" if self.scale is not None else ""
        extra += f", size={show(self.size)}" if self.size is not None else ""
        if self.mode == "bilinear" and not self.align_corners:
            extra += ", align_corners=False"
        return f'Upsample("{self.mode}"{extra})'


class PixelShuffle(Layer):
    """Moves channels into space: `(batch, *spatial, c * r**d) -> (batch, *spatial * r, c)`, as Lux's `PixelShuffle`.

    `d` is the number of spatial axes. Input channel `c * r**d + sum_k i_k * r**(d - 1 - k)`
    becomes output channel `c` at offset `(i_1, ..., i_d)` inside each `r`-by-`r` block:
    PyTorch's `pixel_shuffle` order (and NNlib's, whose column-major layout lists the spatial
    axes in the opposite order).

    Args:
        r: the upscale factor.

    Inputs: `(batch, *spatial, channels)` with `channels` divisible by `r**d`.
    Returns `(batch, *(s * r for s in spatial), channels // r**d)`.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.PixelShuffle(2)
        >>> model
        PixelShuffle(2)
        >>> model(jnp.arange(4.0).reshape(1, 1, 1, 4), {}, {})[0][0, :, :, 0]
        Array([[0., 1.],
               [2., 3.]], dtype=float32)
    """

    r: int

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1):
            raise ConfigError(f"PixelShuffle: `r` must be a positive int, got {self.r!r}.")

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        shape = jnp.shape(x)
        d, r = len(shape) - 2, self.r
        if d < 1 or shape[-1] % r**d:
            raise ShapeError(
                self,
                f"expected input (batch, *spatial, channels) with a spatial axis and channels divisible by "
                f"r**d = {r}**{max(d, 1)}, got shape {shape}.",
            )
        batch, spatial, c = shape[0], shape[1:-1], shape[-1] // r**d
        y = jnp.reshape(x, (batch, *spatial, c, *(r,) * d))
        # (batch, s_1, ..., s_d, c, r_1, ..., r_d) -> (batch, s_1, r_1, ..., s_d, r_d, c)
        order = [0, *(i for k in range(d) for i in (1 + k, d + 2 + k)), d + 1]
        y = jnp.transpose(y, order)
        return jnp.reshape(y, (batch, *(s * r for s in spatial), c)), st

    def __repr__(self) -> str:
        return f"PixelShuffle({self.r})"
