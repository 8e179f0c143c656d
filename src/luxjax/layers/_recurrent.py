"""Recurrent layers: `LSTMCell`, `GRUCell` and `Recurrence`, which runs a cell over time."""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from ..core import Layer, ShapeError, WrapperLayer, check_layer_argument
from ._util import bias_activation, check_positive


def _init_cell(layer: Any, key: jax.Array, gates: int) -> dict:
    """PyTorch's and Lux's initialisation: every array uniform on `[-1/sqrt(out), 1/sqrt(out)]`."""
    bound = 1.0 / math.sqrt(layer.out_dims)
    shapes = {
        "weight_ih": (gates * layer.out_dims, layer.in_dims),
        "weight_hh": (gates * layer.out_dims, layer.out_dims),
    }
    if layer.use_bias:
        shapes |= {"bias_ih": (gates * layer.out_dims,), "bias_hh": (gates * layer.out_dims,)}
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, jnp.float32, -bound, bound) for (name, shape), k in zip(shapes.items(), keys)
    }


def _affine(a: jax.Array, weight: jax.Array, ps: dict, bias: str) -> jax.Array:
    return bias_activation(a @ weight.T, ps.get(bias), None)


def _split_input(layer: Any, x: Any, n_carry: int) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Returns `(x, carry)`, with a zero carry when the input is `x` alone, checking shapes."""
    name = type(layer).__name__
    if isinstance(x, tuple | list):
        if len(x) != 2:
            raise ShapeError(layer, f"expected `x` or `(x, carry)`, got a tuple of length {len(x)}.")
        x, carry = x
        carry = (carry,) if n_carry == 1 and not isinstance(carry, tuple | list) else tuple(carry)
    else:
        carry = None
    if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != layer.in_dims:
        raise ShapeError(layer, f"expected input with last axis {layer.in_dims}, got shape {jnp.shape(x)}.")
    expected = jnp.shape(x)[:-1] + (layer.out_dims,)
    if carry is None:
        return x, tuple(jnp.zeros(expected, jnp.result_type(x)) for _ in range(n_carry))
    if len(carry) != n_carry or any(jnp.shape(c) != expected for c in carry):
        what = "(h, c)" if n_carry == 2 else "(h,)"
        raise ShapeError(
            layer,
            f"expected a carry {what} of arrays of shape {expected} for input of shape {jnp.shape(x)}, "
            f"got shapes {tuple(jnp.shape(c) for c in carry)}. {name} takes `x` or `(x, carry)`.",
        )
    return x, carry


class LSTMCell(Layer):
    """One step of a long short-term memory cell, with PyTorch's gate equations.

    With gates `i, f, g, o` stacked in that order (as PyTorch's `nn.LSTMCell`)::

        i, f, g, o = split(x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh, 4)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Args:
        in_dims: size of the input's last axis.
        out_dims: size of the hidden and cell states.
        use_bias: whether to add `bias_ih` and `bias_hh`.

    Inputs: `x` of shape `(..., in_dims)` (the carry starts at zeros) or `(x, (h, c))` with
    `h` and `c` of shape `(..., out_dims)`.
    Returns `(h', (h', c'))`, as Lux's cells: the output and the carry for the next step.

    `ps`: `{"weight_ih": (4 * out_dims, in_dims), "weight_hh": (4 * out_dims, out_dims),
    "bias_ih": (4 * out_dims,), "bias_hh": (4 * out_dims,)}` (no biases when
    `use_bias=False`), initialised uniform on `[-1/sqrt(out_dims), 1/sqrt(out_dims)]` as in
    PyTorch and Lux. The names and layout are PyTorch's, so its weights copy in as they are.
    `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> cell = lx.LSTMCell(3, 5)
        >>> ps, st = lx.setup(jax.random.key(0), cell)
        >>> (h, (h, c)), st = cell(jnp.ones((2, 3)), ps, st)
        >>> (h, (h, c)), st = cell((jnp.ones((2, 3)), (h, c)), ps, st)
        >>> h.shape, c.shape
        ((2, 5), (2, 5))
    """

    in_dims: int
    out_dims: int
    _: dataclasses.KW_ONLY
    use_bias: bool = True

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")

    def init_params(self, key: jax.Array) -> dict:
        return _init_cell(self, key, 4)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        x, (h, c) = _split_input(self, x, 2)
        z = _affine(x, ps["weight_ih"], ps, "bias_ih") + _affine(h, ps["weight_hh"], ps, "bias_hh")
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, (h, c)), st

    def __repr__(self) -> str:
        bias = ", use_bias=False" if not self.use_bias else ""
        return f"LSTMCell({self.in_dims} => {self.out_dims}{bias})"


class GRUCell(Layer):
    """One step of a gated recurrent unit, with PyTorch's gate equations.

    With gates `r, z, n` stacked in that order (as PyTorch's `nn.GRUCell`)::

        r_i, z_i, n_i = split(x @ weight_ih.T + bias_ih, 3)
        r_h, z_h, n_h = split(h @ weight_hh.T + bias_hh, 3)
        r, z = sigmoid(r_i + r_h), sigmoid(z_i + z_h)
        n = tanh(n_i + r * n_h)
        h' = (1 - z) * n + z * h

    Args:
        in_dims: size of the input's last axis.
        out_dims: size of the hidden state.
        use_bias: whether to add `bias_ih` and `bias_hh`.

    Inputs: `x` of shape `(..., in_dims)` (the hidden state starts at zeros) or `(x, (h,))`
    (a bare `(x, h)` is accepted too) with `h` of shape `(..., out_dims)`.
    Returns `(h', (h',))`, as Lux's cells: the output and the carry for the next step.

    `ps`: `{"weight_ih": (3 * out_dims, in_dims), "weight_hh": (3 * out_dims, out_dims),
    "bias_ih": (3 * out_dims,), "bias_hh": (3 * out_dims,)}` (no biases when
    `use_bias=False`), initialised uniform on `[-1/sqrt(out_dims), 1/sqrt(out_dims)]` as in
    PyTorch and Lux. The names and layout are PyTorch's. `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> cell = lx.GRUCell(3, 5)
        >>> ps, st = lx.setup(jax.random.key(0), cell)
        >>> (h, carry), st = cell(jnp.ones((2, 3)), ps, st)
        >>> (h, carry), st = cell((jnp.ones((2, 3)), carry), ps, st)
        >>> h.shape
        (2, 5)
    """

    in_dims: int
    out_dims: int
    _: dataclasses.KW_ONLY
    use_bias: bool = True

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")

    def init_params(self, key: jax.Array) -> dict:
        return _init_cell(self, key, 3)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        x, (h,) = _split_input(self, x, 1)
        r_i, z_i, n_i = jnp.split(_affine(x, ps["weight_ih"], ps, "bias_ih"), 3, axis=-1)
        r_h, z_h, n_h = jnp.split(_affine(h, ps["weight_hh"], ps, "bias_hh"), 3, axis=-1)
        r = jax.nn.sigmoid(r_i + r_h)
        z = jax.nn.sigmoid(z_i + z_h)
        n = jnp.tanh(n_i + r * n_h)
        h = (1 - z) * n + z * h
        return (h, (h,)), st

    def __repr__(self) -> str:
        bias = ", use_bias=False" if not self.use_bias else ""
        return f"GRUCell({self.in_dims} => {self.out_dims}{bias})"


@functools.partial(jax.jit, static_argnums=0)
def _scan_cell(cell: Layer, init: tuple, ps: dict, xs: jax.Array) -> tuple[tuple, jax.Array]:
    """Runs `cell` over the leading axis of `xs` from `init = (carry, st)`.

    Jitted with the (hashable) cell static, so eager calls reuse one compiled loop instead of
    tracing and compiling the scan body again on every call; under an outer `jit` it inlines.
    """

    def step(loop: tuple, x_t: jax.Array) -> tuple[tuple, jax.Array]:
        carry, st = loop
        (y, carry), st = cell((x_t, carry), ps, st)
        return (carry, st), y

    return jax.lax.scan(step, init, xs)


class Recurrence(WrapperLayer):
    """Runs a recurrent cell over the time axis (axis 1) of a `(batch, time, features)` input.

    The first step calls the cell on `x[:, 0]` alone (so the cell makes its zero carry); the
    remaining steps run in one `jax.lax.scan`, feeding each step's carry and state to the next.

    Args:
        cell: a layer taking `x` or `(x, carry)` and returning `(y, carry)`, such as
            `LSTMCell` or `GRUCell`.
        return_sequence: `False` returns the last output `(batch, out_dims)`; `True` returns
            every step's output stacked along axis 1, `(batch, time, out_dims)`.

    Inputs: `x` of shape `(batch, time, features)` with `time >= 1`.

    `ps` and `st`: the cell's own (a wrapper adds no level), e.g. `weight_ih`, `weight_hh`,
    `bias_ih`, `bias_hh` for an `LSTMCell`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Recurrence(lx.LSTMCell(3, 5), return_sequence=True)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((2, 7, 3)), ps, st)[0].shape
        (2, 7, 5)
    """

    cell: Layer
    _: dataclasses.KW_ONLY
    return_sequence: bool = False

    def __post_init__(self) -> None:
        check_layer_argument("Recurrence", self.cell, "`cell`")

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        if jnp.ndim(x) != 3 or jnp.shape(x)[1] == 0:
            raise ShapeError(
                self, f"expected input of shape (batch, time, features) with time >= 1, got shape {jnp.shape(x)}."
            )
        out, st = self.cell(x[:, 0], ps, st)
        if not (isinstance(out, tuple) and len(out) == 2):
            got = f"an array of shape {out.shape}" if isinstance(out, jax.Array) else type(out).__name__
            raise ShapeError(
                self,
                f"the cell must return `(y, carry)` and take `(x, carry)`, as LSTMCell and GRUCell do; "
                f"{self.cell!r} returned {got}.",
            )
        y, carry = out
        (carry, st), ys = _scan_cell(self.cell, (carry, st), ps, jnp.moveaxis(x[:, 1:], 1, 0))
        if not self.return_sequence:
            return (ys[-1] if ys.shape[0] else y), st
        return jnp.concatenate([y[:, None], jnp.moveaxis(ys, 0, 1)], axis=1), st

    def __repr__(self) -> str:
        seq = ", return_sequence=True" if self.return_sequence else ""
        return f"Recurrence({self.cell!r}{seq})"
