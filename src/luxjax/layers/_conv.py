"""`Conv` and `ConvTranspose`: channels-last convolutions over any number of spatial axes."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, field
from ._util import (
    Initializer,
    Padding,
    activation_repr,
    as_padding,
    as_tuple,
    bias_activation,
    check_activation,
    check_positive,
    check_spatial_input,
    check_window_fits,
    explicit_padding,
    fan_in_uniform,
    int_tuple,
    padding_repr,
    tuple_repr,
)


class _ConvBase(Layer):
    """The configuration `Conv` and `ConvTranspose` share."""

    # Ints are accepted for the tuple fields (an int or a 1-tuple means the same in every axis).
    kernel_size: tuple[int, ...] = field(converter=int_tuple)
    in_channels: int
    out_channels: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    stride: tuple[int, ...] = field(default=1, converter=int_tuple)
    padding: Padding | Any = 0
    dilation: tuple[int, ...] = field(default=1, converter=int_tuple)
    groups: int = 1
    use_bias: bool = True
    init_weight: Initializer | None = None
    init_bias: Initializer | None = None
    cross_correlation: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.cross_correlation, bool):
            raise ConfigError(f"{name}: `cross_correlation` must be True or False, got {self.cross_correlation!r}.")
        kernel = self.kernel_size
        if not isinstance(kernel, tuple) or not kernel:
            raise ConfigError(f"{name}: `kernel_size` must be an int or a non-empty tuple of ints, got {kernel!r}.")
        n = len(kernel)
        self.kernel_size = as_tuple(name, "kernel_size", kernel, n)
        self.stride = as_tuple(name, "stride", self.stride, n)
        self.dilation = as_tuple(name, "dilation", self.dilation, n)
        self.padding = as_padding(name, self.padding, n)
        check_positive(self, "in_channels", "out_channels", "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ConfigError(
                f"{name}: `groups` ({self.groups}) must divide both `in_channels` ({self.in_channels}) "
                f"and `out_channels` ({self.out_channels})."
            )
        check_activation(self)

    def weight_shape(self) -> tuple[int, ...]:
        """The shape of `ps["weight"]`."""
        return (*self.kernel_size, self.in_channels // self.groups, self.out_channels)

    def fan_in(self) -> int:
        """`in_channels // groups * prod(kernel_size)`, the default initialisers' fan-in."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    def init_params(self, key: jax.Array) -> dict:
        key_w, key_b = jax.random.split(key)
        init_w = self.init_weight or fan_in_uniform(self.fan_in())
        ps = {"weight": init_w(key_w, self.weight_shape(), jnp.float32)}
        if self.use_bias:
            init_b = self.init_bias or fan_in_uniform(self.fan_in())
            ps["bias"] = init_b(key_b, (self.out_channels,), jnp.float32)
        return ps

    def _kernel(self, ps: dict, dtype: Any) -> jax.Array:
        """The weight in `dtype`, flipped along the spatial axes for a true convolution (`cross_correlation=False`)."""
        w = ps["weight"].astype(dtype)
        return w if self.cross_correlation else jnp.flip(w, axis=tuple(range(len(self.kernel_size))))

    def _finish(self, y: jax.Array, ps: dict) -> jax.Array:
        return bias_activation(y, ps["bias"] if self.use_bias else None, self.activation)

    def _dimension_numbers(self, n: int) -> jax.lax.ConvDimensionNumbers:
        spatial = "".join(chr(ord("D") + i) for i in range(n))  # D, E, F, ...: never N, C, I or O
        lhs = f"N{spatial}C"
        return jax.lax.conv_dimension_numbers((1,) * (n + 2), (1,) * (n + 2), (lhs, f"{spatial}IO", lhs))

    def _extra_repr(self) -> list[str]:
        extra = activation_repr(self.activation)
        if self.padding != ((0, 0),) * len(self.kernel_size):
            extra.append(f"padding={padding_repr(self.padding)}")
        if set(self.stride) != {1}:
            extra.append(f"stride={tuple_repr(self.stride)}")
        if set(self.dilation) != {1}:
            extra.append(f"dilation={tuple_repr(self.dilation)}")
        if self.groups != 1:
            extra.append(f"groups={self.groups}")
        if not self.use_bias:
            extra.append("use_bias=False")
        return extra

    def __repr__(self) -> str:
        extra = "".join(f", {e}" for e in self._extra_repr())
        if self.cross_correlation:  # Lux shows the flag, last, when it is not Lux's default (false)
            extra += ", cross_correlation=True"
        return f"{type(self).__name__}({self.kernel_size}, {self.in_channels} => {self.out_channels}{extra})"


class Conv(_ConvBase):
    """A convolution over the spatial axes of a channels-last input, as `Conv` in Lux.

    Args:
        kernel_size: an int or a tuple; its length is the number of spatial axes (an int
            means one spatial axis, i.e. a 1D convolution).
        in_channels: size of the input's last axis.
        out_channels: size of the output's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        stride: an int or one int per spatial axis.
        padding: an int, one int per spatial axis, one `(lo, hi)` pair per spatial axis, or
            "SAME" (output size `ceil(input / stride)`) or "VALID" (no padding), any case.
        dilation: an int or one int per spatial axis.
        groups: split the channels into this many groups, convolved separately; it must
            divide `in_channels` and `out_channels`.
        use_bias: whether to add a bias.
        init_weight: `init(key, shape, dtype)` for the weight; default uniform on
            `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` with `fan_in = in_channels // groups * prod(kernel_size)`.
        init_bias: `init(key, shape, dtype)` for the bias; default the same uniform.
        cross_correlation: `True` (the default, as `jax.lax.conv` and PyTorch) slides the
            kernel as it is; `False` flips it along the spatial axes first: a true
            convolution, which is Lux's default. Lux's default display therefore differs:
            luxjax shows `cross_correlation=True` as Lux does whenever it is on. To run a
            Lux-trained `Conv` (same weight layout), build it with `cross_correlation=False`.

    Inputs: `x` of shape `(batch, *spatial, in_channels)`. Returns `(batch, *out_spatial, out_channels)`.

    `ps`: `{"weight": (*kernel_size, in_channels // groups, out_channels), "bias": (out_channels,)}`
    (the "HWIO" layout; no `bias` when `use_bias=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Conv((3, 3), 1, 16, jax.nn.relu, padding=1, stride=2)
        >>> model
        Conv((3, 3), 1 => 16, relu, padding=1, stride=2, cross_correlation=True)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["weight"].shape
        (3, 3, 1, 16)
        >>> model(jnp.ones((4, 28, 28, 1)), ps, st)[0].shape
        (4, 14, 14, 16)
    """

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n = len(self.kernel_size)
        check_spatial_input(self, x, n, self.in_channels)
        shape = jnp.shape(x)
        window = tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation))
        pads = explicit_padding(self.padding, shape[1:-1], window, self.stride)
        check_window_fits(self, shape, pads, window, "kernel (dilated size)")
        y = jax.lax.conv_general_dilated(
            x,
            self._kernel(ps, x.dtype),
            window_strides=self.stride,
            padding=pads,
            rhs_dilation=self.dilation,
            dimension_numbers=self._dimension_numbers(n),
            feature_group_count=self.groups,
        )
        return self._finish(y, ps), st


class ConvTranspose(_ConvBase):
    """A transposed convolution (the gradient of `Conv` with respect to its input), as in Lux and PyTorch.

    Each spatial output size is
    `(size - 1) * stride - lo - hi + dilation * (kernel - 1) + 1 + output_padding`, where
    `(lo, hi)` is the padding, which here crops the output (PyTorch's `ConvTranspose`
    convention). "SAME" makes the output `size * stride` (the cropping split as evenly as
    possible, the extra on the high side); "VALID" means no cropping.

    Args:
        kernel_size: an int or a tuple; its length is the number of spatial axes.
        in_channels: size of the input's last axis.
        out_channels: size of the output's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        stride: an int or one int per spatial axis.
        padding: as for `Conv`.
        dilation: an int or one int per spatial axis.
        groups: it must divide `in_channels` and `out_channels`.
        output_padding: an int or one int per spatial axis, added on the high side; each must
            be smaller than the stride or the dilation.
        use_bias: whether to add a bias.
        init_weight: `init(key, shape, dtype)` for the weight; default uniform on
            `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` with `fan_in = in_channels // groups * prod(kernel_size)`.
        init_bias: `init(key, shape, dtype)` for the bias; default the same uniform.
        cross_correlation: `True` (the default, PyTorch's `ConvTranspose`) is the transpose of
            a cross-correlating `Conv`; `False` is the transpose of a true convolution (the
            kernel flipped along the spatial axes), Lux's default. Use `False` for Lux-trained
            weights; the display shows `cross_correlation=True` when it is on, as Lux's does.

    Inputs: `x` of shape `(batch, *spatial, in_channels)`. Returns `(batch, *out_spatial, out_channels)`.

    `ps`: `{"weight": (*kernel_size, out_channels // groups, in_channels), "bias": (out_channels,)}`
    (Lux's layout: the transpose of a `Conv` from `out_channels` to `in_channels`; PyTorch's
    weight is this one moved to `(in_channels, out_channels // groups, *kernel_size)`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.ConvTranspose((2, 2), 8, 4, stride=2)
        >>> model
        ConvTranspose((2, 2), 8 => 4, stride=2, cross_correlation=True)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["weight"].shape
        (2, 2, 4, 8)
        >>> model(jnp.ones((1, 7, 7, 8)), ps, st)[0].shape
        (1, 14, 14, 4)
    """

    _: dataclasses.KW_ONLY
    output_padding: tuple[int, ...] = field(default=0, converter=int_tuple)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.kernel_size)
        outpad = as_tuple("ConvTranspose", "output_padding", self.output_padding, n, minimum=0)
        if any(o >= max(s, d) for o, s, d in zip(outpad, self.stride, self.dilation)):
            raise ConfigError(
                f"ConvTranspose: `output_padding` {outpad} must be smaller than the stride {self.stride} "
                f"or the dilation {self.dilation} in every axis."
            )
        self.output_padding = outpad

    def weight_shape(self) -> tuple[int, ...]:
        return (*self.kernel_size, self.out_channels // self.groups, self.in_channels)

    def _crops(self, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        if not isinstance(self.padding, str):
            return self.padding
        if self.padding == "VALID":
            return ((0, 0),) * len(spatial)
        total = [(k - 1) * d + 1 - s for k, d, s in zip(self.kernel_size, self.dilation, self.stride)]
        return tuple((t // 2, t - t // 2) for t in total)

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        n, g = len(self.kernel_size), self.groups
        check_spatial_input(self, x, n, self.in_channels)
        shape = jnp.shape(x)
        crops = self._crops(shape[1:-1])
        out = [
            (size - 1) * s - lo - hi + d * (k - 1) + 1 + o
            for size, s, (lo, hi), d, k, o in zip(
                shape[1:-1], self.stride, crops, self.dilation, self.kernel_size, self.output_padding
            )
        ]
        if any(size < 1 for size in out):
            raise ShapeError(
                self,
                f"the padding {crops} crops away the whole output (size {tuple(out)}) for input shape {shape}.",
            )
        # As a direct convolution: dilate the input by the stride, flip the kernel, and
        # regroup the weight (*k, out/g, in) into HWIO (*k, in/g, out).
        w = jnp.flip(self._kernel(ps, x.dtype), axis=tuple(range(n)))
        w = jnp.reshape(w, (*self.kernel_size, self.out_channels // g, g, self.in_channels // g))
        w = jnp.moveaxis(w, (n, n + 1, n + 2), (n + 2, n + 1, n))
        w = jnp.reshape(w, (*self.kernel_size, self.in_channels // g, self.out_channels))
        pads = [
            (d * (k - 1) - lo, d * (k - 1) - hi + o)
            for d, k, (lo, hi), o in zip(self.dilation, self.kernel_size, crops, self.output_padding)
        ]
        y = jax.lax.conv_general_dilated(
            x,
            w,
            window_strides=(1,) * n,
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.dilation,
            dimension_numbers=self._dimension_numbers(n),
            feature_group_count=g,
        )
        return self._finish(y, ps), st

    def _extra_repr(self) -> list[str]:
        extra = super()._extra_repr()
        if set(self.output_padding) != {0}:
            extra.append(f"output_padding={tuple_repr(self.output_padding)}")
        return extra
