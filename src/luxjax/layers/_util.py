"""What the layer files share: initialisers, argument checks, padding and windows, bias-then-activation."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, compute_dtype, function_name

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]
Padding = str | tuple[tuple[int, int], ...]

# -- initialisers --------------------------------------------------------------------------------


def fan_in_uniform(fan_in: int) -> Initializer:
    """Lux's default Dense/Conv initialiser: uniform on `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.

    This is `kaiming_uniform` with gain `sqrt(1/3)`, the same default as PyTorch.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def zeros(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """All zeros (a module-level function, so layers using it stay equal by value)."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """All ones (a module-level function, so layers using it stay equal by value)."""
    del key
    return jnp.ones(shape, dtype)


def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Standard normal, as Lux's `randn32`."""
    return jax.random.normal(key, shape, dtype)


# -- argument checks and field converters ------------------------------------------------------


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_positive(owner: Any, *names: str) -> None:
    """Raises a `ConfigError` unless each named field of `owner` is a positive int."""
    for name in names:
        value = getattr(owner, name)
        if not _is_int(value, 1):
            raise ConfigError(f"{type(owner).__name__}: `{name}` must be a positive int, got {value!r}.")


def check_activation(owner: Any) -> None:
    """Raises a `ConfigError` unless `owner.activation` is callable or None."""
    if owner.activation is not None and not callable(owner.activation):
        raise ConfigError(f"{type(owner).__name__}: `activation` must be callable or None, got {owner.activation!r}.")


def int_tuple(value: int | Sequence[int] | None) -> Any:
    """Field converter: an int becomes a 1-tuple, a list a tuple; anything else is left for the checks."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return tuple(value) if isinstance(value, (tuple, list)) else value


def as_tuple(owner: str, name: str, value: Any, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """`value` (an int, a 1-tuple, or a tuple of `n` ints, each at least `minimum`) as a tuple of `n` ints."""
    values = (value,) if isinstance(value, int) else value
    if isinstance(values, (tuple, list)) and len(values) == 1:
        values = tuple(values) * n
    if not isinstance(values, (tuple, list)) or len(values) != n or not all(_is_int(v, minimum) for v in values):
        raise ConfigError(f"{owner}: `{name}` must be an int >= {minimum} or a tuple of {n} such ints, got {value!r}.")
    return tuple(values)


# -- padding and windows (convolutions and pooling) --------------------------------------------


def as_padding(owner: str, padding: Any, n: int) -> Padding:
    """Normalises a padding argument to "SAME", "VALID" or `n` `(lo, hi)` pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(
                f"{owner}: unknown `padding` mode {padding!r}; use 'SAME', 'VALID' (any case), an int, "
                f"a tuple of {n} ints or a tuple of {n} (lo, hi) pairs."
            )
        return padding.upper()
    if isinstance(padding, (tuple, list)) and padding and all(isinstance(p, (tuple, list)) for p in padding):
        pairs = tuple(tuple(p) for p in padding)
        if len(pairs) == n and all(len(p) == 2 for p in pairs):
            flat = as_tuple(owner, "padding", tuple(v for p in pairs for v in p), 2 * n, minimum=0)
            return tuple(zip(flat[::2], flat[1::2]))
        raise ConfigError(f"{owner}: `padding` must have one (lo, hi) pair per spatial axis ({n}), got {padding!r}.")
    return tuple((p, p) for p in as_tuple(owner, "padding", padding, n, minimum=0))


def padding_repr(padding: Padding) -> str:
    """How padding shows in a repr: `1`, `(1, 2)`, `((0, 1), (1, 1))` or `"SAME"`."""
    if isinstance(padding, str):
        return f'"{padding}"'
    if all(lo == hi for lo, hi in padding):
        sides = tuple(lo for lo, _ in padding)
        return str(sides[0]) if len(set(sides)) == 1 else str(sides)
    return str(padding)


def tuple_repr(values: tuple[int, ...]) -> str:
    """`2` when every entry is 2, else the tuple."""
    return str(values[0]) if len(set(values)) == 1 else str(values)


def check_spatial_input(layer: Layer, x: jax.Array, n: int, channels: int | None) -> None:
    """Raises a `ShapeError` unless `x` is `(batch, *n spatial axes, channels)`."""
    shape = jnp.shape(x)
    if len(shape) != n + 2:
        raise ShapeError(
            layer, f"expected input of rank {n + 2} (batch, {n} spatial axes, channels), got shape {shape}."
        )
    if channels is not None and shape[-1] != channels:
        raise ShapeError(layer, f"expected input with {channels} channels in the last axis, got shape {shape}.")


def explicit_padding(
    padding: Padding, spatial: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """The `(lo, hi)` pairs a padding mode means for `spatial` input sizes and (dilated) `window`."""
    if not isinstance(padding, str):
        return padding
    if padding == "VALID":
        return ((0, 0),) * len(spatial)
    return tuple(jax.lax.padtype_to_pads(spatial, window, stride, "SAME"))


def check_window_fits(
    layer: Layer, shape: tuple[int, ...], pads: tuple[tuple[int, int], ...], window: tuple[int, ...], what: str
) -> None:
    """Raises a `ShapeError` if the (dilated) window is larger than the padded input anywhere."""
    padded = tuple(size + lo + hi for size, (lo, hi) in zip(shape[1:-1], pads))
    if any(w > p for w, p in zip(window, padded)):
        raise ShapeError(
            layer,
            f"{what} {window} is larger than the padded input's spatial size {padded} (input shape {shape}); "
            "use a smaller window, more padding or a larger input.",
        )


# -- outputs ------------------------------------------------------------------------------------


def bias_activation(y: jax.Array, bias: jax.Array | None, activation: Callable | None) -> jax.Array:
    """`activation(y + bias)`, the bias (if any) broadcast along the last axis and cast to `y`'s dtype."""
    if bias is not None:
        y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,)).astype(y.dtype)
    return y if activation is None else activation(y)


def activation_repr(activation: Callable | None) -> list[str]:
    """The activation's entry in a repr: `["relu"]`, or nothing."""
    return [] if activation is None else [function_name(activation)]


# -- dropout ------------------------------------------------------------------------------------


def check_probability(owner: Any, name: str = "p") -> None:
    """Raises a `ConfigError` unless `owner.<name>` is a number in `[0, 1)`."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{type(owner).__name__}: `{name}` must be in [0, 1), got {value!r}.")


def keep_mask(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """A boolean mask of `shape`, each entry `True` (keep) with probability `1 - p`."""
    return jax.random.bernoulli(key, 1 - p, shape)


# -- dtypes (mixed precision) -------------------------------------------------------------------


def in_dtype_of(x: Any) -> Any:
    """The floating dtype a layer computes in for input `x`.

    `x`'s own dtype when it is floating (a `MixedPrecision` policy has cast it already);
    otherwise (integer indices, booleans) the running policy's compute dtype, or float32.
    """
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.floating):
        return dtype
    return compute_dtype() or jnp.dtype(jnp.float32)


def float_dtype(x: Any) -> Any:
    """float32, or `x`'s dtype if it is wider: the dtype for statistics, softmax and long sums.

    bfloat16 and float16 have 8 and 11 bits of mantissa; normalisation statistics and
    softmax computed in them lose most of their digits, so layers compute those in
    `float_dtype(x)` and cast the result back to `in_dtype_of(x)`.
    """
    dtype = in_dtype_of(x)
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype
