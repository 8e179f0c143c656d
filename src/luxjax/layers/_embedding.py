"""`Embedding`: a lookup table from integer indices to vectors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..core import Layer, ShapeError
from ._util import Initializer, check_positive, standard_normal


class Embedding(Layer):
    """Maps integer indices in `[0, vocab_size)` to rows of a `(vocab_size, dims)` table.

    Args:
        vocab_size: number of rows in the table (valid indices are `0 .. vocab_size - 1`).
        dims: length of each embedding vector.
        init_weight: `init(key, shape, dtype)` for the table of shape `(vocab_size, dims)`;
            default standard normal, as Lux's `randn32` (and PyTorch's `nn.Embedding`).

    Inputs: integer indices `x` of any shape. Returns `y` of shape `x.shape + (dims,)`.

    `ps`: `{"weight": (vocab_size, dims)}`: row `i` is the vector of index `i`. This is the
    transpose of Lux's column layout, chosen so that the table has exactly the shape of the
    weight of `Dense(dims, vocab_size)`, and an output projection can be tied to the
    embedding without transposing. `st`: `{}`.

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
    """

    vocab_size: int
    dims: int
    _: dataclasses.KW_ONLY
    init_weight: Initializer | None = None

    def __post_init__(self) -> None:
        check_positive(self, "vocab_size", "dims")

    def init_params(self, key: jax.Array) -> dict:
        init = self.init_weight or standard_normal
        return {"weight": init(key, (self.vocab_size, self.dims), jnp.float32)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ShapeError(
                self,
                f"expected integer indices in [0, {self.vocab_size}), got dtype {dtype} of shape {jnp.shape(x)}.",
            )
        if not isinstance(x, Tracer):
            values = np.asarray(x)
            bad = values[(values < 0) | (values >= self.vocab_size)]
            if bad.size:
                raise ShapeError(
                    self,
                    f"expected indices in [0, {self.vocab_size}) (`vocab_size` is {self.vocab_size}), "
                    f"got {bad.size} out of range, e.g. {int(bad.flat[0])}.",
                )
        x = jnp.asarray(x)
        # Negative indices would wrap around in JAX; send them out of range so they give NaN.
        x = jnp.where(x < 0, self.vocab_size, x)
        y = jnp.asarray(ps["weight"]).at[x].get(mode="fill", fill_value=jnp.nan)
        return y, st

    def __repr__(self) -> str:
        return f"Embedding({self.vocab_size} => {self.dims})"
