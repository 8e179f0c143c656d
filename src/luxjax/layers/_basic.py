"""Small stateless layers: `WrappedFunction`, `NoOpLayer`, `ReshapeLayer`, `FlattenLayer`."""

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
