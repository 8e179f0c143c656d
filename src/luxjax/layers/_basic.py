"""Small stateless layers: `WrappedFunction`, `NoOpLayer`, reshaping, `SelectDim`, `ReverseSequence`."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, field, function_name
from ._util import int_tuple


class WrappedFunction(Layer):
    """Turns a function of the input into a layer with no parameters or states.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.WrappedFunction(jax.nn.relu)
        >>> model
        WrappedFunction(relu)
        >>> model(jnp.array([-1.0, 2.0]), {}, {})[0]
        Array([0., 2.], dtype=float32)
    """

    fn: Callable

    def __post_init__(self) -> None:
        if not callable(self.fn) or isinstance(self.fn, Layer):
            raise ConfigError(f"WrappedFunction: `fn` must be a plain function of the input, got {self.fn!r}.")

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        del ps
        return self.fn(x), st

    def __repr__(self) -> str:
        return f"WrappedFunction({function_name(self.fn)})"


class NoOpLayer(Layer):
    """Returns its input unchanged; useful as a placeholder in model surgery.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.NoOpLayer()(jnp.ones(2), {}, {})[0]
        Array([1., 1.], dtype=float32)
    """

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        del ps
        return x, st

    def __repr__(self) -> str:
        return "NoOpLayer()"


class ReshapeLayer(Layer):
    """Reshapes each sample to `dims`, keeping the batch axis: `(batch, ...) -> (batch, *dims)`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.ReshapeLayer((2, 3))(jnp.ones((4, 6)), {}, {})[0].shape
        (4, 2, 3)
    """

    dims: tuple[int, ...] = field(converter=int_tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.dims, tuple) or not all(isinstance(d, int) and d >= 1 for d in self.dims):
            raise ConfigError(f"ReshapeLayer: `dims` must be positive ints, got {self.dims!r}.")

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        shape = jnp.shape(x)
        if len(shape) < 1 or math.prod(shape[1:]) != math.prod(self.dims):
            raise ShapeError(
                self, f"expected samples of {math.prod(self.dims)} elements (batch first), got shape {shape}."
            )
        return jnp.reshape(x, (shape[0], *self.dims)), st

    def __repr__(self) -> str:
        return f"ReshapeLayer({self.dims})"


class FlattenLayer(Layer):
    """Flattens every axis but the batch axis: `(batch, ...) -> (batch, prod(...))`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.FlattenLayer()(jnp.ones((4, 2, 3)), {}, {})[0].shape
        (4, 6)
    """

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        shape = jnp.shape(x)
        if len(shape) < 1:
            raise ShapeError(self, f"expected an input with a batch axis, got shape {shape}.")
        return jnp.reshape(x, (shape[0], -1)), st

    def __repr__(self) -> str:
        return "FlattenLayer()"


class SelectDim(Layer):
    """Selects `index` along axis `dim` of the input, as Lux's `SelectDim`, with 0-based `dim` and `index`.

    Lux counts both from 1 and in Julia's axis order (batch last); here `dim` is a 0-based
    axis of the batch-first input (negative counts from the end) and `index` is 0-based. An
    int `index` drops the axis; a tuple of ints keeps it with those entries.

    Args:
        dim: the axis to index.
        index: an int or a tuple of ints.

    Inputs: any array with that axis. Returns the selection.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> model = lx.SelectDim(1, -1)  # the last time step of (batch, time, features)
        >>> model
        SelectDim(dim=1, index=-1)
        >>> model(jnp.arange(12.0).reshape(2, 3, 2), {}, {})[0]
        Array([[ 4.,  5.],
               [10., 11.]], dtype=float32)
    """

    dim: int
    index: int | tuple[int, ...] = field(converter=lambda i: tuple(i) if isinstance(i, list) else i)

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.dim):
            raise ConfigError(f"SelectDim: `dim` must be an int (a 0-based axis), got {self.dim!r}.")
        if not (is_int(self.index) or (isinstance(self.index, tuple) and all(map(is_int, self.index)))):
            raise ConfigError(f"SelectDim: `index` must be an int or a tuple of ints, got {self.index!r}.")

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        shape = jnp.shape(x)
        if not -len(shape) <= self.dim < len(shape):
            raise ShapeError(self, f"axis {self.dim} is out of range for an input of shape {shape}.")
        size = shape[self.dim]
        indices = (self.index,) if isinstance(self.index, int) else self.index
        if any(not -size <= i < size for i in indices):
            raise ShapeError(self, f"index {self.index} is out of range for axis {self.dim} of size {size}.")
        return jnp.take(x, jnp.asarray(self.index), axis=self.dim), st

    def __repr__(self) -> str:
        return f"SelectDim(dim={self.dim}, index={self.index})"


class ReverseSequence(Layer):
    """Reverses the input along one axis, as Lux's `ReverseSequence`.

    Args:
        dim: the axis to reverse (0-based; negative counts from the end). `None` (the
            default) is the time axis of a batch-first sequence: axis 1, or axis 0 of a
            1-D input, which is where Lux's default (its `ndims(x) - 1`, or 1 for a vector)
            lands in luxjax's layout.

    Inputs: any array with that axis. Returns the same shape.

    `ps`: `{}`. `st`: `{}`.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.ReverseSequence()(jnp.array([1.0, 2.0, 3.0]), {}, {})[0]
        Array([3., 2., 1.], dtype=float32)
        >>> lx.ReverseSequence()(jnp.arange(6.0).reshape(1, 3, 2), {}, {})[0][0, :, 0]
        Array([4., 2., 0.], dtype=float32)
    """

    dim: int | None = None

    def __post_init__(self) -> None:
        if self.dim is not None and (not isinstance(self.dim, int) or isinstance(self.dim, bool)):
            raise ConfigError(f"ReverseSequence: `dim` must be None or an int (a 0-based axis), got {self.dim!r}.")

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        del ps
        ndim = jnp.ndim(x)
        dim = (1 if ndim > 1 else 0) if self.dim is None else self.dim
        if not -ndim <= dim < ndim:
            raise ShapeError(self, f"axis {dim} is out of range for an input of shape {jnp.shape(x)}.")
        return jnp.flip(x, axis=dim), st

    def __repr__(self) -> str:
        return "ReverseSequence()" if self.dim is None else f"ReverseSequence({self.dim})"
