"""Embeddings: the lookup table `Embedding` and the positional `Sinusoidal`/`RotaryPositionalEmbedding`."""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..core import ConfigError, Layer, ShapeError, field
from ._util import Initializer, check_positive, standard_normal


def _vocabulary(value: Any) -> Any:
    """Field converter: a list of sizes becomes a tuple (a 1-tuple stays a tuple)."""
    return tuple(value) if isinstance(value, list) else value


class Embedding(Layer):
    """Maps integer indices in `[0, vocab_size)` to rows of a `(vocab_size, dims)` table.

    Args:
        vocab_size: number of rows in the table (valid indices are `0 .. vocab_size - 1`), or
            a tuple of sizes `(a, b, ...)` for a multi-dimensional vocabulary (Lux's
            `Embedding((a, b) => dims)`), indexed by a tuple of index arrays.
        dims: length of each embedding vector.
        init_weight: `init(key, shape, dtype)` for the table of shape `(vocab_size, dims)`;
            default standard normal, as Lux's `randn32` (and PyTorch's `nn.Embedding`).

    Inputs: integer indices `x` of any shape; with a tuple `vocab_size`, a tuple `(i, j, ...)`
    of integer arrays of one shape, one per vocabulary axis (0-based; Lux's are 1-based).
    Returns `y` of shape `x.shape + (dims,)`.

    `ps`: `{"weight": (vocab_size, dims)}` (or `(a, b, ..., dims)`): row `i` is the vector of
    index `i`. This is the transpose of Lux's column layout, chosen so that the table has
    exactly the shape of the weight of `Dense(dims, vocab_size)`, and an output projection
    can be tied to the embedding without transposing. `st`: `{}`.

    Bad indices: for concrete inputs (eager calls) a float input or an index outside
    `[0, vocab_size)` raises `ShapeError` naming the vocabulary size. Under `jax.jit` (or
    `vmap` over the indices) the values are not known while tracing, so an out-of-range
    index (negative ones included) gives a row of NaN instead; debug mode reports it.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Embedding(10, 4)
        >>> model
        Embedding(10 => 4)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["weight"].shape
        (10, 4)
        >>> model(jnp.array([[1, 2, 3], [4, 5, 6]]), ps, st)[0].shape
        (2, 3, 4)
        >>> grid = lx.Embedding((3, 5), 4)
        >>> ps, st = lx.setup(jax.random.key(0), grid)
        >>> grid((jnp.array([0, 2]), jnp.array([4, 1])), ps, st)[0].shape
        (2, 4)
    """

    vocab_size: int | tuple[int, ...] = field(converter=_vocabulary)
    dims: int
    _: dataclasses.KW_ONLY
    init_weight: Initializer | None = None

    def __post_init__(self) -> None:
        check_positive(self, "dims")
        sizes = self.vocab_size if isinstance(self.vocab_size, tuple) else (self.vocab_size,)
        if not sizes or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
            raise ConfigError(
                f"Embedding: `vocab_size` must be a positive int or a tuple of them, got {self.vocab_size!r}."
            )

    @property
    def _sizes(self) -> tuple[int, ...]:
        return self.vocab_size if isinstance(self.vocab_size, tuple) else (self.vocab_size,)

    def init_params(self, key: jax.Array) -> dict:
        init = self.init_weight or standard_normal
        return {"weight": init(key, (*self._sizes, self.dims), jnp.float32)}

    def _indices(self, x: Any) -> tuple[jax.Array, ...]:
        if not isinstance(self.vocab_size, tuple):
            return (x,)
        n = len(self.vocab_size)
        if not isinstance(x, tuple | list) or len(x) != n:
            raise ShapeError(
                self, f"expected a tuple of {n} index arrays, one per vocabulary axis {self.vocab_size}, got {x!r}."
            )
        shapes = {jnp.shape(i) for i in x}
        if len(shapes) != 1:
            raise ShapeError(self, f"expected index arrays of one shape, got shapes {[jnp.shape(i) for i in x]}.")
        return tuple(x)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        indices = self._indices(x)
        for i, size in zip(indices, self._sizes):
            dtype = jnp.result_type(i)
            if not jnp.issubdtype(dtype, jnp.integer):
                raise ShapeError(
                    self, f"expected integer indices in [0, {size}), got dtype {dtype} of shape {jnp.shape(i)}."
                )
            if not isinstance(i, Tracer):
                values = np.asarray(i)
                bad = values[(values < 0) | (values >= size)]
                if bad.size:
                    raise ShapeError(
                        self,
                        f"expected indices in [0, {size}) (`vocab_size` is {self.vocab_size}), "
                        f"got {bad.size} out of range, e.g. {int(bad.flat[0])}.",
                    )
        # Negative indices would wrap around in JAX; send them out of range so they give NaN.
        indices = tuple(jnp.where(jnp.asarray(i) < 0, size, jnp.asarray(i)) for i, size in zip(indices, self._sizes))
        y = jnp.asarray(ps["weight"]).at[indices].get(mode="fill", fill_value=jnp.nan)
        return y, st

    def __repr__(self) -> str:
        return f"Embedding({self.vocab_size} => {self.dims})"


def _float_dtype(x: Any) -> Any:
    """The dtype to compute in: the input's if it is floating point, else float32."""
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


class SinusoidalPositionalEmbedding(Layer):
    """The sinusoidal embedding of positions (Vaswani et al.), as Lux's `SinusoidalPositionalEmbedding`.

    For a position `x` and `dims // 2` frequencies `sigmas` spaced geometrically from
    `max_freq` down to `min_freq` (times `2 pi` with `full_turns`)::

        y = concat(sin(x * sigmas), cos(x * sigmas)) * scale

    Args:
        dims: length of each embedding; must be even.
        min_freq: the lowest frequency. Default `1e-4`.
        max_freq: the highest frequency. Default `1.0`.
        scale: multiplies the embedding; default `sqrt(2 / dims)` (each vector then has norm 1).
        full_turns: if `True` the frequencies are multiplied by `2 pi` (positions in turns).

    Inputs: positions `x` of any shape (integers or floats). Returns `y` of shape
    `x.shape + (dims,)` (Lux's is `(dims, size(x)...)`), in `x`'s dtype when it is floating
    point, else float32.

    `ps`: `{}`. `st`: `{"sigmas": (dims // 2,)}`, the frequencies, as Lux's.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.SinusoidalPositionalEmbedding(8)
        >>> model
        SinusoidalPositionalEmbedding(8)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, _ = model(jnp.arange(5), ps, st)
        >>> y.shape, float(jnp.linalg.norm(y[3]))
        ((5, 8), 1.0)
    """

    dims: int
    _: dataclasses.KW_ONLY
    min_freq: float = 1e-4
    max_freq: float = 1.0
    scale: float | None = None
    full_turns: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "dims")
        if self.dims % 2:
            raise ConfigError(f"SinusoidalPositionalEmbedding: `dims` must be even (sin, cos halves), got {self.dims}.")
        if not 0 < self.min_freq <= self.max_freq:
            raise ConfigError(
                f"SinusoidalPositionalEmbedding: expected 0 < `min_freq` <= `max_freq`, "
                f"got min_freq={self.min_freq!r}, max_freq={self.max_freq!r}."
            )

    def init_state(self, key: jax.Array) -> dict:
        del key
        log_min, log_max = math.log(self.min_freq), math.log(self.max_freq)
        sigmas = jnp.exp(jnp.linspace(1.0, 0.0, self.dims // 2) * (log_max - log_min) + log_min)
        return {"sigmas": sigmas * (2 * math.pi) if self.full_turns else sigmas}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        dtype = _float_dtype(x)
        x = jnp.asarray(x, dtype)
        angles = x[..., None] * jnp.reshape(st["sigmas"].astype(dtype), (1,) * x.ndim + (-1,))
        scale = math.sqrt(2 / self.dims) if self.scale is None else self.scale
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1) * jnp.asarray(scale, dtype), st

    def __repr__(self) -> str:
        defaults = {"min_freq": 1e-4, "max_freq": 1.0, "scale": None, "full_turns": False}
        options = [f", {k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return f"SinusoidalPositionalEmbedding({self.dims}{''.join(options)})"


class RotaryPositionalEmbedding(Layer):
    """Rotary positional embedding (RoFormer, Su et al.), with Lux's half-split layout.

    Feature `k` of the first half and feature `k` of the second half form a pair that is
    rotated by the angle `position * theta_k`, `theta_k = base ** (-2k / dims)`::

        x1, x2 = x[..., :dims // 2], x[..., dims // 2:]
        y = concat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)

    This is Lux's (and Hugging Face's "rotate half") layout; the original paper's
    interleaved pairs `(x[2k], x[2k + 1])` are a permutation of the features away.

    Args:
        dims: the head size (the last axis of the input); must be even.
        max_sequence_length: the number of positions in the cached tables. Default 4096.
        base: the base of the angular frequencies. Default 10000.

    Inputs: `x` of shape `(batch, seq_len, num_heads, dims)` (the layout of
    `jax.nn.dot_product_attention`; Lux's `(dims, nheads, seq_len, batch)` read backwards),
    positions `0 .. seq_len - 1`; or `(x, positions)` with integer `positions` of shape
    `(seq_len,)`, 0-based (Lux's `input_pos` is 1-based), e.g. the offset of a decoding step.
    Returns an array of `x`'s shape and dtype.

    `ps`: `{}`. `st`: `{"cos_cache": (max_sequence_length, dims // 2), "sin_cache": ...}`:
    row `m` holds `cos(m * theta)`, `sin(m * theta)` (the transpose of Lux's layout).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.RotaryPositionalEmbedding(8, max_sequence_length=16)
        >>> model
        RotaryPositionalEmbedding(8, max_sequence_length=16)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> q = jnp.ones((2, 5, 3, 8))
        >>> model(q, ps, st)[0].shape
        (2, 5, 3, 8)
        >>> model((q[:, :1], jnp.array([4])), ps, st)[0].shape  # one decoding step at position 4
        (2, 1, 3, 8)
    """

    dims: int
    _: dataclasses.KW_ONLY
    max_sequence_length: int = 4096
    base: int = 10000

    def __post_init__(self) -> None:
        check_positive(self, "dims", "max_sequence_length", "base")
        if self.dims % 2:
            raise ConfigError(f"RotaryPositionalEmbedding: `dims` must be even (pairs of features), got {self.dims}.")

    def init_state(self, key: jax.Array) -> dict:
        del key
        theta = 1.0 / (self.base ** (jnp.arange(0, self.dims, 2, dtype=jnp.float32) / self.dims))
        angles = jnp.arange(self.max_sequence_length, dtype=jnp.float32)[:, None] * theta[None, :]
        return {"cos_cache": jnp.cos(angles), "sin_cache": jnp.sin(angles)}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        positions = None
        if isinstance(x, tuple | list):
            if len(x) != 2:
                raise ShapeError(self, f"expected `x` or `(x, positions)`, got a tuple of length {len(x)}.")
            x, positions = x
        shape = jnp.shape(x)
        if len(shape) != 4 or shape[-1] != self.dims:
            raise ShapeError(
                self, f"expected input of shape (batch, seq_len, num_heads, {self.dims}), got shape {shape}."
            )
        seq_len = shape[1]
        if positions is None:
            if seq_len > self.max_sequence_length:
                raise ShapeError(
                    self,
                    f"expected seq_len <= max_sequence_length ({self.max_sequence_length}), got shape {shape}; "
                    "raise `max_sequence_length`.",
                )
            cos, sin = st["cos_cache"][:seq_len], st["sin_cache"][:seq_len]
        else:
            if jnp.shape(positions) != (seq_len,) or not jnp.issubdtype(jnp.result_type(positions), jnp.integer):
                raise ShapeError(
                    self,
                    f"expected integer positions of shape ({seq_len},) for input of shape {shape}, "
                    f"got {jnp.result_type(positions)} of shape {jnp.shape(positions)}.",
                )
            cos, sin = st["cos_cache"][positions], st["sin_cache"][positions]
        dtype = jnp.result_type(x)
        cos, sin = cos[None, :, None, :].astype(dtype), sin[None, :, None, :].astype(dtype)
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1), st

    def __repr__(self) -> str:
        options = "" if self.max_sequence_length == 4096 else f", max_sequence_length={self.max_sequence_length}"
        options += "" if self.base == 10000 else f", base={self.base}"
        return f"RotaryPositionalEmbedding({self.dims}{options})"
