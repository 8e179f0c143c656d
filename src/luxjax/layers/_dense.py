"""`Dense`, the fully connected layer, and its relatives `Scale` (elementwise) and `Bilinear` (two inputs)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, ShapeError, field, function_name
from ._util import (
    Initializer,
    activation_repr,
    as_tuple,
    bias_activation,
    check_activation,
    check_positive,
    fan_in_uniform,
    int_tuple,
    ones,
    zeros,
)


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


class Scale(Layer):
    """An elementwise affine layer: `y = activation(x * weight + bias)`, as Lux's `Scale`.

    Args:
        dims: an int or a tuple: the shape of `weight` and `bias`, broadcast against the
            input's trailing axes.
        activation: elementwise function applied to the output (`None`: identity).
        use_bias: whether to add a bias.
        init_weight: `init(key, shape, dtype)` for the weight; default ones (the
            initialiser Lux's docstring names; Lux's code draws Glorot-uniform values).
        init_bias: `init(key, shape, dtype)` for the bias; default zeros.

    Inputs: `(..., *dims)`. Returns the same shape.

    `ps`: `{"weight": dims, "bias": dims}` (no `bias` when `use_bias=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Scale(3, jnp.tanh)
        >>> model
        Scale(3, tanh)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> jax.tree.map(jnp.shape, ps)
        {'bias': (3,), 'weight': (3,)}
    """

    dims: tuple[int, ...] = field(converter=int_tuple)  # an int is accepted
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    init_weight: Initializer | None = None
    init_bias: Initializer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dims, tuple) or not self.dims:
            raise ConfigError(f"Scale: `dims` must be a positive int or a tuple of them, got {self.dims!r}.")
        self.dims = as_tuple("Scale", "dims", self.dims, len(self.dims))
        check_activation(self)

    def init_params(self, key: jax.Array) -> dict:
        key_w, key_b = jax.random.split(key)
        ps = {"weight": (self.init_weight or ones)(key_w, self.dims, jnp.float32)}
        if self.use_bias:
            ps["bias"] = (self.init_bias or zeros)(key_b, self.dims, jnp.float32)
        return ps

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        k, shape = len(self.dims), jnp.shape(x)
        if len(shape) < k or any(n not in (1, d) for n, d in zip(shape[len(shape) - k :], self.dims)):
            raise ShapeError(self, f"expected input whose trailing axes broadcast with {self.dims}, got shape {shape}.")
        lead = (1,) * (len(shape) - k)
        y = x * jnp.reshape(ps["weight"], lead + self.dims).astype(x.dtype)
        if self.use_bias:
            y = y + jnp.reshape(ps["bias"], lead + self.dims).astype(x.dtype)
        return (y if self.activation is None else self.activation(y)), st

    def __repr__(self) -> str:
        dims = self.dims[0] if len(self.dims) == 1 else self.dims
        extra = "".join(f", {e}" for e in activation_repr(self.activation))
        return f"Scale({dims}{extra}{'' if self.use_bias else ', use_bias=False'})"


class Bilinear(Layer):
    """A bilinear map of two inputs: `z[..., o] = activation(x @ weight[o] @ y + bias[o])`, as Lux's `Bilinear`.

    Args:
        in_dims: an int (both inputs have that size) or a pair `(in1_dims, in2_dims)`.
        out_dims: size of the output's last axis.
        activation: elementwise function applied to the output (`None`: identity).
        use_bias: whether to add a bias.
        init_weight: `init(key, shape, dtype)` for the weight; default uniform on
            `[-1/sqrt(in1_dims), 1/sqrt(in1_dims)]` (PyTorch's; Lux's bound is the same).
        init_bias: `init(key, shape, dtype)` for the bias; default the same uniform.

    Inputs: a pair `(x, y)` of shapes `(..., in1_dims)` and `(..., in2_dims)`, or one array
    used as both. Returns `(..., out_dims)`.

    `ps`: `{"weight": (out_dims, in1_dims, in2_dims), "bias": (out_dims,)}` (PyTorch's and
    Lux's layout; no `bias` when `use_bias=False`). `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Bilinear((3, 4), 2)
        >>> model
        Bilinear((3, 4) => 2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model((jnp.ones((5, 3)), jnp.ones((5, 4))), ps, st)[0].shape
        (5, 2)
    """

    in_dims: tuple[int, ...] = field(converter=int_tuple)  # an int means both inputs
    out_dims: int
    activation: Callable | None = None
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    init_weight: Initializer | None = None
    init_bias: Initializer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.in_dims, tuple) or len(self.in_dims) not in (1, 2):
            raise ConfigError(f"Bilinear: `in_dims` must be an int or a pair of ints, got {self.in_dims!r}.")
        self.in_dims = as_tuple("Bilinear", "in_dims", self.in_dims, 2)
        check_positive(self, "out_dims")
        check_activation(self)

    def init_params(self, key: jax.Array) -> dict:
        key_w, key_b = jax.random.split(key)
        default = fan_in_uniform(self.in_dims[0])
        ps = {"weight": (self.init_weight or default)(key_w, (self.out_dims, *self.in_dims), jnp.float32)}
        if self.use_bias:
            ps["bias"] = (self.init_bias or default)(key_b, (self.out_dims,), jnp.float32)
        return ps

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        pair = x if isinstance(x, (tuple, list)) and len(x) == 2 else (x, x)
        a, b = jnp.asarray(pair[0]), jnp.asarray(pair[1])
        shapes = (jnp.shape(a), jnp.shape(b))
        if any(len(s) == 0 or s[-1] != d for s, d in zip(shapes, self.in_dims)) or shapes[0][:-1] != shapes[1][:-1]:
            raise ShapeError(
                self,
                f"expected inputs of shapes (..., {self.in_dims[0]}) and (..., {self.in_dims[1]}) with the same "
                f"leading axes, got {shapes[0]} and {shapes[1]}.",
            )
        z = jnp.einsum("...i,oij,...j->...o", a, ps["weight"].astype(a.dtype), b)
        return bias_activation(z, ps["bias"] if self.use_bias else None, self.activation), st

    def __repr__(self) -> str:
        extra = "".join(f", {e}" for e in activation_repr(self.activation))
        return f"Bilinear({self.in_dims} => {self.out_dims}{extra}{'' if self.use_bias else ', use_bias=False'})"
