"""Recurrent cells (`RNNCell`, `LSTMCell`, `GRUCell`) and the layers that run them over time."""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, ContainerLayer, Layer, ShapeError, WrapperLayer, check_layer_argument, function_name
from ._util import bias_activation, check_positive


def _init_cell(layer: Any, key: jax.Array, gates: int) -> dict:
    """PyTorch's and Lux's initialisation: every array uniform on `[-1/sqrt(out), 1/sqrt(out)]`.

    A trainable initial hidden state (`train_state`) or memory (`train_memory`) starts at zeros,
    as Lux's default `init_state=zeros32`.
    """
    bound = 1.0 / math.sqrt(layer.out_dims)
    shapes = {
        "weight_ih": (gates * layer.out_dims, layer.in_dims),
        "weight_hh": (gates * layer.out_dims, layer.out_dims),
    }
    if layer.use_bias:
        shapes |= {"bias_ih": (gates * layer.out_dims,), "bias_hh": (gates * layer.out_dims,)}
    keys = jax.random.split(key, len(shapes))
    ps = {
        name: jax.random.uniform(k, shape, jnp.float32, -bound, bound) for (name, shape), k in zip(shapes.items(), keys)
    }
    for name in _trained_carry(layer):
        ps[name] = jnp.zeros((layer.out_dims,), jnp.float32)
    return ps


def _trained_carry(layer: Any) -> tuple[str, ...]:
    """The names in `ps` of the initial carry entries that are trained, in carry order."""
    names = ("hidden_state",) if layer.train_state else ()
    return names + (("memory",) if getattr(layer, "train_memory", False) else ())


def _cell_options(layer: Any) -> str:
    """The options of a cell's repr that differ from the defaults."""
    options = [] if layer.use_bias else ["use_bias=False"]
    options += [f"{name}=True" for name in ("train_state", "train_memory") if getattr(layer, name, False)]
    return "".join(f", {option}" for option in options)


def _affine(a: jax.Array, weight: jax.Array, ps: dict, bias: str) -> jax.Array:
    return bias_activation(a @ weight.T, ps.get(bias), None)


def _split_input(layer: Any, x: Any, ps: dict, carry_names: tuple[str, ...]) -> tuple[jax.Array, tuple]:
    """Returns `(x, carry)`, with the initial carry when the input is `x` alone, checking shapes.

    The initial carry is zeros, or the trained vectors `ps["hidden_state"]`/`ps["memory"]`
    broadcast over the batch when the cell has `train_state`/`train_memory`.
    """
    name = type(layer).__name__
    n_carry = len(carry_names)
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
        dtype = jnp.result_type(x)
        return x, tuple(
            jnp.broadcast_to(jnp.asarray(ps[n], dtype), expected) if n in ps else jnp.zeros(expected, dtype)
            for n in carry_names
        )
    if len(carry) != n_carry or any(jnp.shape(c) != expected for c in carry):
        what = "(h, c)" if n_carry == 2 else "(h,)"
        raise ShapeError(
            layer,
            f"expected a carry {what} of arrays of shape {expected} for input of shape {jnp.shape(x)}, "
            f"got shapes {tuple(jnp.shape(c) for c in carry)}. {name} takes `x` or `(x, carry)`.",
        )
    return x, carry


class RNNCell(Layer):
    """One step of an Elman recurrent cell, with PyTorch's and Lux's equations.

    The new hidden state is::

        h' = activation(x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh)

    Args:
        in_dims: size of the input's last axis.
        out_dims: size of the hidden state.
        activation: applied to the sum; default `jnp.tanh` (`jax.nn.relu` is PyTorch's
            other choice).
        use_bias: whether to add `bias_ih` and `bias_hh`.
        train_state: if `True` the initial hidden state is the trained vector
            `ps["hidden_state"]` (broadcast over the batch) instead of zeros, as Lux's
            `train_state=true`.

    Inputs: `x` of shape `(..., in_dims)` (the hidden state starts at its initial value) or
    `(x, (h,))` (a bare `(x, h)` is accepted too) with `h` of shape `(..., out_dims)`.
    Returns `(h', (h',))`, as Lux's cells: the output and the carry for the next step.

    `ps`: `{"weight_ih": (out_dims, in_dims), "weight_hh": (out_dims, out_dims),
    "bias_ih": (out_dims,), "bias_hh": (out_dims,)}`, plus `"hidden_state": (out_dims,)`
    (zeros at first) with `train_state`. Weights and biases start uniform on
    `[-1/sqrt(out_dims), 1/sqrt(out_dims)]`; names and layout are PyTorch's `nn.RNNCell`.
    Lux keeps the trained state as an `(out_dims, 1)` column; here it is a vector. `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> cell = lx.RNNCell(3, 5)
        >>> cell
        RNNCell(3 => 5, tanh)
        >>> ps, st = lx.setup(jax.random.key(0), cell)
        >>> (h, carry), st = cell(jnp.ones((2, 3)), ps, st)
        >>> (h, carry), st = cell((jnp.ones((2, 3)), carry), ps, st)
        >>> h.shape
        (2, 5)
    """

    in_dims: int
    out_dims: int
    activation: Callable | None = jnp.tanh
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    train_state: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")
        if self.activation is not None and not callable(self.activation):
            raise ConfigError(f"RNNCell: `activation` must be callable or None, got {self.activation!r}.")

    def init_params(self, key: jax.Array) -> dict:
        return _init_cell(self, key, 1)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        x, (h,) = _split_input(self, x, ps, ("hidden_state",))
        z = _affine(x, ps["weight_ih"], ps, "bias_ih") + _affine(h, ps["weight_hh"], ps, "bias_hh")
        h = z if self.activation is None else self.activation(z)
        return (h, (h,)), st

    def __repr__(self) -> str:
        activation = "" if self.activation is None else f", {function_name(self.activation)}"
        return f"RNNCell({self.in_dims} => {self.out_dims}{activation}{_cell_options(self)})"


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
        train_state: if `True` the initial hidden state `h` is the trained vector
            `ps["hidden_state"]` (broadcast over the batch) instead of zeros, as Lux's.
        train_memory: likewise for the initial memory `c`, `ps["memory"]`.

    Inputs: `x` of shape `(..., in_dims)` (the carry starts at its initial value) or `(x, (h, c))` with
    `h` and `c` of shape `(..., out_dims)`.
    Returns `(h', (h', c'))`, as Lux's cells: the output and the carry for the next step.

    `ps`: `{"weight_ih": (4 * out_dims, in_dims), "weight_hh": (4 * out_dims, out_dims),
    "bias_ih": (4 * out_dims,), "bias_hh": (4 * out_dims,)}` (no biases when
    `use_bias=False`), initialised uniform on `[-1/sqrt(out_dims), 1/sqrt(out_dims)]` as in
    PyTorch and Lux, plus `"hidden_state": (out_dims,)` with `train_state` and
    `"memory": (out_dims,)` with `train_memory` (both zeros at first). The names and layout
    are PyTorch's, so its weights copy in as they are. `st`: `{}`.

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
    train_state: bool = False
    train_memory: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")

    def init_params(self, key: jax.Array) -> dict:
        return _init_cell(self, key, 4)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        x, (h, c) = _split_input(self, x, ps, ("hidden_state", "memory"))
        z = _affine(x, ps["weight_ih"], ps, "bias_ih") + _affine(h, ps["weight_hh"], ps, "bias_hh")
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, (h, c)), st

    def __repr__(self) -> str:
        return f"LSTMCell({self.in_dims} => {self.out_dims}{_cell_options(self)})"


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
        train_state: if `True` the initial hidden state is the trained vector
            `ps["hidden_state"]` (broadcast over the batch) instead of zeros, as Lux's.

    Inputs: `x` of shape `(..., in_dims)` (the hidden state starts at its initial value) or `(x, (h,))`
    (a bare `(x, h)` is accepted too) with `h` of shape `(..., out_dims)`.
    Returns `(h', (h',))`, as Lux's cells: the output and the carry for the next step.

    `ps`: `{"weight_ih": (3 * out_dims, in_dims), "weight_hh": (3 * out_dims, out_dims),
    "bias_ih": (3 * out_dims,), "bias_hh": (3 * out_dims,)}` (no biases when
    `use_bias=False`), initialised uniform on `[-1/sqrt(out_dims), 1/sqrt(out_dims)]` as in
    PyTorch and Lux, plus `"hidden_state": (out_dims,)` (zeros at first) with `train_state`.
    The names and layout are PyTorch's. `st`: `{}`.

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
    train_state: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "in_dims", "out_dims")

    def init_params(self, key: jax.Array) -> dict:
        return _init_cell(self, key, 3)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        x, (h,) = _split_input(self, x, ps, ("hidden_state",))
        r_i, z_i, n_i = jnp.split(_affine(x, ps["weight_ih"], ps, "bias_ih"), 3, axis=-1)
        r_h, z_h, n_h = jnp.split(_affine(h, ps["weight_hh"], ps, "bias_hh"), 3, axis=-1)
        r = jax.nn.sigmoid(r_i + r_h)
        z = jax.nn.sigmoid(z_i + z_h)
        n = jnp.tanh(n_i + r * n_h)
        h = (1 - z) * n + z * h
        return (h, (h,)), st

    def __repr__(self) -> str:
        return f"GRUCell({self.in_dims} => {self.out_dims}{_cell_options(self)})"


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


def _concatenate(forward: jax.Array, backward: jax.Array) -> jax.Array:
    """`BidirectionalRNN`'s default merge: the two outputs side by side in the feature axis (Lux's `vcat`)."""
    return jnp.concatenate([forward, backward], axis=-1)


def _check_time_axis(owner: str, time_axis: Any) -> None:
    if time_axis not in (0, 1) or isinstance(time_axis, bool):
        raise ConfigError(
            f"{owner}: `time_axis` must be 1 for (batch, time, features) or 0 for (time, batch, features), "
            f"got {time_axis!r}."
        )


class Recurrence(WrapperLayer):
    """Runs a recurrent cell over the time axis of a sequence.

    The first step calls the cell on the first time step alone (so the cell makes its initial
    carry: zeros, or its trained `hidden_state`) or, when an initial carry is given, on
    `(x_0, carry)`; the remaining steps run in one `jax.lax.scan`, feeding each step's carry
    and state to the next.

    Args:
        cell: a layer taking `x` or `(x, carry)` and returning `(y, carry)`, such as
            `RNNCell`, `LSTMCell` or `GRUCell`.
        return_sequence: `False` returns the last output `(batch, out_dims)`; `True` returns
            every step's output stacked along the time axis.
        time_axis: `1` (default) for `(batch, time, features)` inputs, `0` for
            `(time, batch, features)`. Lux's `ordering=BatchLastIndex()` (its default,
            `(features, time, batch)` in Julia's column-major order) is `time_axis=1`;
            `TimeLastIndex()` (`(features, batch, time)`) is `time_axis=0`.

    Inputs: `x` of rank 3 laid out as `time_axis` says, with at least one time step; a list
    of per-step arrays `(batch, features)` (Lux's vector of arrays), stacked along the time
    axis; or `(x, carry)` with an initial carry for the cell, e.g. `(h, c)` for an
    `LSTMCell`.

    `ps` and `st`: the cell's own (a wrapper adds no level), e.g. `weight_ih`, `weight_hh`,
    `bias_ih`, `bias_hh` for an `LSTMCell`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Recurrence(lx.LSTMCell(3, 5), return_sequence=True)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((2, 7, 3)), ps, st)[0].shape
        (2, 7, 5)
        >>> h0 = c0 = jnp.zeros((2, 5))
        >>> model((jnp.ones((2, 7, 3)), (h0, c0)), ps, st)[0].shape
        (2, 7, 5)
    """

    cell: Layer
    _: dataclasses.KW_ONLY
    return_sequence: bool = False
    time_axis: int = 1

    def __post_init__(self) -> None:
        check_layer_argument("Recurrence", self.cell, "`cell`")
        _check_time_axis("Recurrence", self.time_axis)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        carry = None
        if isinstance(x, tuple):
            if len(x) != 2:
                raise ShapeError(self, f"expected `x`, a list of steps or `(x, carry)`, got a {len(x)}-tuple.")
            x, carry = x
        if isinstance(x, list):
            x = jnp.stack(x, axis=self.time_axis) if x else jnp.zeros((0, 0, 0))
        layout = "(batch, time, features)" if self.time_axis == 1 else "(time, batch, features)"
        if jnp.ndim(x) != 3 or jnp.shape(x)[self.time_axis] == 0:
            raise ShapeError(self, f"expected input of shape {layout} with time >= 1, got shape {jnp.shape(x)}.")
        xs = jnp.moveaxis(x, self.time_axis, 0)
        out, st = self.cell(xs[0] if carry is None else (xs[0], carry), ps, st)
        if not (isinstance(out, tuple) and len(out) == 2):
            got = f"an array of shape {out.shape}" if isinstance(out, jax.Array) else type(out).__name__
            raise ShapeError(
                self,
                f"the cell must return `(y, carry)` and take `(x, carry)`, as LSTMCell and GRUCell do; "
                f"{self.cell!r} returned {got}.",
            )
        y, carry = out
        (carry, st), ys = _scan_cell(self.cell, (carry, st), ps, xs[1:])
        if not self.return_sequence:
            return (ys[-1] if ys.shape[0] else y), st
        return jnp.moveaxis(jnp.concatenate([y[None], ys], axis=0), 0, self.time_axis), st

    def __repr__(self) -> str:
        seq = ", return_sequence=True" if self.return_sequence else ""
        axis = f", time_axis={self.time_axis}" if self.time_axis != 1 else ""
        return f"Recurrence({self.cell!r}{seq}{axis})"


class BidirectionalRNN(ContainerLayer):
    """Runs one cell forward and another backward over a sequence, and merges their outputs.

    As Lux's `BidirectionalRNN`: the forward cell runs over the sequence, the backward cell
    over the time-reversed sequence (its outputs are reversed back, so step `t` of both lines
    up), and `merge_mode(forward, backward)` combines the two full sequences. The default
    concatenates the feature axes, which is also the layout of PyTorch's bidirectional
    `nn.RNN`/`nn.LSTM`/`nn.GRU` outputs.

    Args:
        cell: the forward cell, e.g. `LSTMCell(in_dims, out_dims)`.
        backward_cell: the backward cell; default `None` uses a cell of the same configuration
            as `cell` (with its own parameters).
        merge_mode: a function of the two sequences; default concatenation along the feature
            axis; `None` returns the pair `(forward, backward)`.
        time_axis: `1` for `(batch, time, features)` (default), `0` for `(time, batch, features)`,
            as in `Recurrence`.

    Inputs: `x` as for `Recurrence`. Returns `merge_mode(forward, backward)`, by default of
    shape `(batch, time, forward_out + backward_out)`.

    `ps`: `{"forward_rnn": the forward cell's ps, "backward_rnn": the backward cell's ps}`;
    `st` likewise. Each is a `Recurrence(cell, return_sequence=True)` (a wrapper, so the
    cell's entries sit right under the name). In Lux the backward branch is a `Chain` of
    `ReverseSequence`, `Recurrence` and `ReverseSequence`, one level deeper.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.BidirectionalRNN(lx.GRUCell(3, 4))
        >>> model
        BidirectionalRNN(GRUCell(3 => 4))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> sorted(ps)
        ['backward_rnn', 'forward_rnn']
        >>> model(jnp.ones((2, 6, 3)), ps, st)[0].shape
        (2, 6, 8)
    """

    forward_rnn: Layer
    backward_rnn: Layer | None = None
    _: dataclasses.KW_ONLY
    merge_mode: Callable | None = _concatenate
    time_axis: int = 1

    def __post_init__(self) -> None:
        _check_time_axis("BidirectionalRNN", self.time_axis)
        forward = check_layer_argument("BidirectionalRNN", self.forward_rnn, "`cell`")
        backward = forward if self.backward_rnn is None else self.backward_rnn
        backward = check_layer_argument("BidirectionalRNN", backward, "`backward_cell`")
        self.forward_rnn, self.backward_rnn = (self._sequence(forward), self._sequence(backward))
        if self.merge_mode is not None and not callable(self.merge_mode):
            raise ConfigError(f"BidirectionalRNN: `merge_mode` must be callable or None, got {self.merge_mode!r}.")

    def _sequence(self, cell: Layer) -> Layer:
        """`cell` in a `Recurrence` returning the whole sequence (a given such `Recurrence` is kept)."""
        if isinstance(cell, Recurrence):
            if not cell.return_sequence or cell.time_axis != self.time_axis:
                raise ConfigError(
                    f"BidirectionalRNN: a `Recurrence` given as a cell must have return_sequence=True and "
                    f"time_axis={self.time_axis}, got {cell!r}; pass the bare cell instead."
                )
            return cell
        return Recurrence(cell, return_sequence=True, time_axis=self.time_axis)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        forward, st_forward = self.call("forward_rnn", x, ps, st)
        reverse = functools.partial(jnp.flip, axis=self.time_axis)
        backward, st_backward = self.call("backward_rnn", reverse(x), ps, st)
        backward = reverse(backward)
        y = (forward, backward) if self.merge_mode is None else self.merge_mode(forward, backward)
        return y, {"forward_rnn": st_forward, "backward_rnn": st_backward}

    def __repr__(self) -> str:
        assert isinstance(self.forward_rnn, Recurrence) and isinstance(self.backward_rnn, Recurrence)
        args = [repr(self.forward_rnn.cell)]
        if self.backward_rnn.cell != self.forward_rnn.cell:
            args.append(f"backward_cell={self.backward_rnn.cell!r}")
        if self.merge_mode is not _concatenate:
            args.append(f"merge_mode={'None' if self.merge_mode is None else function_name(self.merge_mode)}")
        if self.time_axis != 1:
            args.append(f"time_axis={self.time_axis}")
        return f"BidirectionalRNN({', '.join(args)})"


def _in_dims(cell: Layer) -> int | None:
    """The cell's `in_dims`, looking through wrappers (a frozen or debugged cell); None if it has none."""
    while not isinstance(getattr(cell, "in_dims", None), int) and cell.is_wrapper:
        cell = next(iter(cell.children().values()))
    in_dims = getattr(cell, "in_dims", None)
    return in_dims if isinstance(in_dims, int) else None


class StatefulRecurrentCell(ContainerLayer):
    """A cell that keeps its carry in the state, so each call continues where the last one stopped.

    As Lux's `StatefulRecurrentCell`: call it on one time step at a time with the state it
    returned last; it returns only the cell's output, and the carry goes into `st["carry"]`.
    The first call (and any call after `st = lx.update_state(st, "reset_carry", jnp.array(True))`)
    starts from the cell's own initial carry (zeros, or its trained `hidden_state`).

    Difference from Lux: Lux's `st.carry` is `nothing` until the first call. JAX needs the
    state to keep one structure (to pass it through `jax.jit`, `lax.cond` or `lax.scan`), so
    the carry is allocated by `setup` with the shape `batch_shape + (out_dims,)`, and a flag
    `st["reset_carry"]` says whether to start afresh. Hence `batch_shape`, the input's leading
    axes, is part of the configuration.

    Args:
        cell: a cell with an `in_dims` field, such as `RNNCell`, `LSTMCell` or `GRUCell`.
        batch_shape: the leading axes of each step's input; the input is
            `batch_shape + (cell.in_dims,)`. Default `()`: one unbatched sequence.

    Inputs: one time step `x` of shape `batch_shape + (in_dims,)`. Returns the cell's output
    `y` (for the cells here, the new hidden state).

    `ps`: `{"cell": the cell's ps}`. `st`: `{"cell": the cell's st, "carry": the carry (a
    tuple of float32 arrays, e.g. `(h, c)` for an `LSTMCell`), "reset_carry": a boolean
    scalar array (True until the first call)}`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.StatefulRecurrentCell(lx.LSTMCell(3, 5), batch_shape=(2,))
        >>> model
        StatefulRecurrentCell(LSTMCell(3 => 5), batch_shape=(2,))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> for t in range(4):
        ...     y, st = model(jnp.ones((2, 3)), ps, st)
        >>> y.shape, st["carry"][1].shape
        ((2, 5), (2, 5))
    """

    cell: Layer
    _: dataclasses.KW_ONLY
    batch_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_layer_argument("StatefulRecurrentCell", self.cell, "`cell`")
        if _in_dims(self.cell) is None:
            raise ConfigError(
                f"StatefulRecurrentCell: the cell must have an int `in_dims` to size its carry, got {self.cell!r}."
            )
        shape = self.batch_shape
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise ConfigError(f"StatefulRecurrentCell: `batch_shape` must be a tuple of ints, got {shape!r}.")

    def _step_shape(self) -> tuple[int, ...]:
        in_dims = _in_dims(self.cell)
        assert in_dims is not None  # checked in __post_init__
        return (*self.batch_shape, in_dims)

    def init_state(self, key: jax.Array) -> dict:
        cell_st = self.cell.init_state(key)
        ps_shapes = jax.eval_shape(self.cell.init_params, key)
        x = jax.ShapeDtypeStruct(self._step_shape(), jnp.float32)
        (_, carry), _ = jax.eval_shape(self.cell, x, ps_shapes, cell_st)
        carry = jax.tree.map(lambda c: jnp.zeros(c.shape, c.dtype), carry)
        return {"cell": cell_st, "carry": carry, "reset_carry": jnp.array(True)}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[Any, dict]:
        if jnp.shape(x) != self._step_shape():
            raise ShapeError(
                self,
                f"expected one time step of shape batch_shape + (in_dims,) = {self._step_shape()}, "
                f"got shape {jnp.shape(x)}; set `batch_shape` to the input's leading axes.",
            )
        dtype = jnp.result_type(x)
        stored = st["carry"]

        def fresh() -> tuple:
            return self.call("cell", x, ps, st)

        def resume() -> tuple:
            carry = jax.tree.map(lambda c: c.astype(dtype), stored)
            return self.call("cell", (x, carry), ps, st)

        (y, carry), cell_st = jax.lax.cond(st["reset_carry"], fresh, resume)
        carry = jax.tree.map(lambda c, old: c.astype(old.dtype), tuple(carry), stored)
        return y, {"cell": cell_st, "carry": carry, "reset_carry": jnp.zeros_like(st["reset_carry"])}

    def __repr__(self) -> str:
        return f"StatefulRecurrentCell({self.cell!r}, batch_shape={self.batch_shape})"
