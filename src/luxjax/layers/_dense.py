"""`Dense`: the fully connected layer."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..core import Layer, ShapeError, function_name
from ._util import Initializer, bias_activation, check_activation, check_positive, fan_in_uniform


class Dense(Layer):
    """A fully connected layer: `y = activation(x @ weight.T + bias)`.

    Args:
        in_dims: size of the input's last axis.
        out_dims: size of the output's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        use_bias: whether to add a bias.
        init_weight: `init(key, shape, dtype)` for the weight of shape `(out_dims, in_dims)`;
            default (as in Lux and PyTorch) uniform on `[-1/sqrt(in_dims), 1/sqrt(in_dims)]`.
            For `jax.nn.initializers`, pass `in_axis=-1, out_axis=-2`.
        init_bias: `init(key, shape, dtype)` for the bias; default the same uniform.

    Inputs: `x` of shape `(..., in_dims)`. Returns `y` of shape `(..., out_dims)`.

    `ps`: `{"weight": (out_dims, in_dims), "bias": (out_dims,)}` (no `bias` when
    `use_bias=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Dense(2, 4, jnp.tanh)
        >>> model
        Dense(2 => 4, tanh)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((8, 2)), ps, st)[0].shape
        (8, 4)
    """

    in_dims: int
    out_dims: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    init_weight: Initializer | None = None
    init_bias: Initializer | None = None

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")
        check_activation(self)

    def init_params(self, key: jax.Array) -> dict:
        key_w, key_b = jax.random.split(key)
        init_w = self.init_weight or fan_in_uniform(self.in_dims)
        ps = {"weight": init_w(key_w, (self.out_dims, self.in_dims), jnp.float32)}
        if self.use_bias:
            init_b = self.init_bias or fan_in_uniform(self.in_dims)
            ps["bias"] = init_b(key_b, (self.out_dims,), jnp.float32)
        return ps

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if isinstance(x, (tuple, list, dict)):
            raise ShapeError(self, f"expected one array of shape (..., {self.in_dims}), got a {type(x).__name__}.")
        if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != self.in_dims:
            raise ShapeError(self, f"expected input with last axis {self.in_dims}, got shape {jnp.shape(x)}.")
        return bias_activation(x @ ps["weight"].T, ps["bias"] if self.use_bias else None, self.activation), st

    def __repr__(self) -> str:
        extra = f", {function_name(self.activation)}" if self.activation is not None else ""
        bias = ", use_bias=False" if not self.use_bias else ""
        return f"Dense({self.in_dims} => {self.out_dims}{extra}{bias})"
