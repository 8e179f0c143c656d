import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def _x(*shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def _copy_into(torch, module, ps, suffix=""):
    with torch.no_grad():
        for name, value in ps.items():
            getattr(module, name + suffix).copy_(torch.tensor(np.asarray(value)))


@pytest.mark.parametrize("cell", [lx.LSTMCell(3, 4), lx.GRUCell(3, 4), lx.LSTMCell(3, 2, use_bias=False)])
def test_cell_contract(cell, key):
    check_layer(cell, _x(2, 3))
    ps, st = lx.setup(key, cell)
    (_, carry), _ = cell(_x(2, 3), ps, st)
    check_layer(cell, (_x(2, 3, seed=2), carry))


@pytest.mark.parametrize(
    ("model", "time"),
    [(lx.Recurrence(lx.GRUCell(2, 3)), 3), (lx.Recurrence(lx.LSTMCell(2, 2), return_sequence=True), 2)],
)
def test_recurrence_contract(model, time):
    check_layer(model, _x(2, time, 2))


def test_cell_parameter_names_and_shapes(key):
    ps, st = lx.setup(key, lx.LSTMCell(3, 5))
    assert {k: v.shape for k, v in ps.items()} == {
        "weight_ih": (20, 3),
        "weight_hh": (20, 5),
        "bias_ih": (20,),
        "bias_hh": (20,),
    }
    assert st == {}
    ps, _ = lx.setup(key, lx.GRUCell(3, 5, use_bias=False))
    assert {k: v.shape for k, v in ps.items()} == {"weight_ih": (15, 3), "weight_hh": (15, 5)}
    assert float(jnp.abs(ps["weight_hh"]).max()) <= 1 / np.sqrt(5)
    assert repr(lx.Recurrence(lx.LSTMCell(3, 5), return_sequence=True)) == (
        "Recurrence(LSTMCell(3 => 5), return_sequence=True)"
    )


def test_zero_carry_equals_no_carry_and_gru_takes_bare_h(key):
    cell = lx.GRUCell(3, 4)
    ps, st = lx.setup(key, cell)
    x = _x(2, 3)
    (h, carry), _ = cell(x, ps, st)
    (h0, _), _ = cell((x, (jnp.zeros((2, 4)),)), ps, st)
    (h1, _), _ = cell((x, jnp.zeros((2, 4))), ps, st)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(h, h1)
    assert carry[0] is h


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_cell_matches_torch_cell(kind, key):
    torch = pytest.importorskip("torch")
    cell = lx.LSTMCell(3, 4) if kind == "LSTM" else lx.GRUCell(3, 4)
    ps, st = lx.setup(key, cell)
    ref = getattr(torch.nn, kind + "Cell")(3, 4)
    _copy_into(torch, ref, ps)
    x, h0, c0 = _x(5, 3), _x(5, 4, seed=2), _x(5, 4, seed=3)
    tx, th, tc = (torch.tensor(np.asarray(a)) for a in (x, h0, c0))
    if kind == "LSTM":
        (h, (_, c)), _ = cell((x, (h0, c0)), ps, st)
        h_ref, c_ref = ref(tx, (th, tc))
        np.testing.assert_allclose(c, c_ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    else:
        (h, _), _ = cell((x, (h0,)), ps, st)
        h_ref = ref(tx, th)
    np.testing.assert_allclose(h, h_ref.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrence_matches_torch_sequence_and_gradients(kind, key):
    torch = pytest.importorskip("torch")
    cell = lx.LSTMCell(3, 4) if kind == "LSTM" else lx.GRUCell(3, 4)
    model = lx.Recurrence(cell, return_sequence=True)
    ps, st = lx.setup(key, model)
    ref = getattr(torch.nn, kind)(3, 4, batch_first=True)
    _copy_into(torch, ref, ps, suffix="_l0")
    x = _x(2, 6, 3)
    out, _ = ref(torch.tensor(np.asarray(x)))
    y, _ = model(x, ps, st)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-6)
    last, _ = lx.Recurrence(cell)(x, ps, st)
    np.testing.assert_allclose(last, out[:, -1].detach().numpy(), rtol=1e-5, atol=1e-6)

    direction = np.asarray(_x(2, 6, 4, seed=7))
    (out * torch.tensor(direction)).sum().backward()
    grads = jax.jit(jax.grad(lambda ps: jnp.vdot(model(x, ps, st)[0], direction)))(ps)
    for name, g in grads.items():
        np.testing.assert_allclose(g, getattr(ref, name + "_l0").grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_cell_rejects_wrong_feature_size(key):
    cell = lx.LSTMCell(3, 4)
    ps, st = lx.setup(key, cell)
    with pytest.raises(lx.ShapeError, match=r"LSTMCell\(3 => 4\): expected input with last axis 3, got shape \(2, 5\)"):
        cell(jnp.ones((2, 5)), ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected a carry \(h, c\) of arrays of shape \(2, 4\)"):
        cell((jnp.ones((2, 3)), (jnp.ones((2, 4)),)), ps, st)


def test_recurrence_errors_name_the_cell_and_the_expected_shape(key):
    model = lx.Chain(lx.Recurrence(lx.GRUCell(3, 4)))
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"GRUCell\(3 => 4\) at layer_1: expected input with last axis 3"):
        model(jnp.ones((2, 5, 2)), ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected input of shape \(batch, time, features\) with time >= 1"):
        model(jnp.ones((2, 3)), ps, st)


def test_cells_reject_bad_sizes():
    with pytest.raises(lx.ConfigError, match=r"GRUCell: `out_dims` must be a positive int, got 0"):
        lx.GRUCell(3, 0)
    with pytest.raises(TypeError, match=r"Recurrence: `cell` must be a luxjax Layer"):
        lx.Recurrence(jnp.tanh)


@pytest.mark.torch
@pytest.mark.parametrize("activation", [jnp.tanh, jax.nn.relu])
def test_rnn_cell_matches_torch(activation, key):
    torch = pytest.importorskip("torch")
    cell = lx.RNNCell(3, 4, activation)
    ps, st = lx.setup(key, cell)
    ref = torch.nn.RNNCell(3, 4, nonlinearity="tanh" if activation is jnp.tanh else "relu")
    _copy_into(torch, ref, ps)
    x, h0 = _x(5, 3), _x(5, 4, seed=2)
    (h, (h_carry,)), _ = cell((x, h0), ps, st)
    expected = ref(torch.tensor(np.asarray(x)), torch.tensor(np.asarray(h0))).detach().numpy()
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-6)
    assert h_carry is h
    assert repr(lx.RNNCell(3, 4, None, use_bias=False)) == "RNNCell(3 => 4, use_bias=False)"


@pytest.mark.torch
def test_bidirectional_rnn_matches_torch_bidirectional_gru(key):
    torch = pytest.importorskip("torch")
    model = lx.BidirectionalRNN(lx.GRUCell(3, 4))
    ps, st = lx.setup(key, model)
    ref = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True)
    _copy_into(torch, ref, ps["forward_rnn"], suffix="_l0")
    _copy_into(torch, ref, ps["backward_rnn"], suffix="_l0_reverse")
    x = _x(2, 5, 3)
    y, _ = model(x, ps, st)
    expected, _ = ref(torch.tensor(np.asarray(x)))
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    # (time, batch, features) with the pair unmerged.
    split = lx.BidirectionalRNN(lx.GRUCell(3, 4), merge_mode=None, time_axis=0)
    assert repr(split) == "BidirectionalRNN(GRUCell(3 => 4), merge_mode=None, time_axis=0)"
    forward, backward = split(jnp.swapaxes(x, 0, 1), ps, st)[0]
    np.testing.assert_allclose(jnp.concatenate([forward, backward], -1), jnp.swapaxes(y, 0, 1), rtol=1e-6)
    with pytest.raises(lx.ConfigError, match=r"must have return_sequence=True and time_axis=1"):
        lx.BidirectionalRNN(lx.Recurrence(lx.GRUCell(3, 4)))


@pytest.mark.torch
def test_recurrence_time_axis_list_input_and_initial_carry_match_torch(key):
    torch = pytest.importorskip("torch")
    model = lx.Recurrence(lx.LSTMCell(3, 4), return_sequence=True, time_axis=0)
    assert repr(model) == "Recurrence(LSTMCell(3 => 4), return_sequence=True, time_axis=0)"
    ps, st = lx.setup(key, model)
    ref = torch.nn.LSTM(3, 4)  # PyTorch's default layout is (time, batch, features)
    _copy_into(torch, ref, ps, suffix="_l0")
    x, h0, c0 = _x(6, 2, 3), _x(2, 4, seed=2), _x(2, 4, seed=3)
    y, _ = model((x, (h0, c0)), ps, st)
    tx, th, tc = (torch.tensor(np.asarray(a)) for a in (x, h0[None], c0[None]))
    expected, _ = ref(tx, (th, tc))
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model(list(x), ps, st)[0], model(x, ps, st)[0])
    batch_major = lx.Recurrence(lx.LSTMCell(3, 4), return_sequence=True)
    np.testing.assert_allclose(batch_major(jnp.swapaxes(x, 0, 1), ps, st)[0], jnp.swapaxes(model(x, ps, st)[0], 0, 1))
    with pytest.raises(lx.ConfigError, match=r"`time_axis` must be 1 for \(batch, time, features\) or 0"):
        lx.Recurrence(lx.LSTMCell(3, 4), time_axis=2)


def test_trained_initial_state_and_memory(key):
    cell = lx.LSTMCell(3, 4, train_state=True, train_memory=True)
    assert repr(cell) == "LSTMCell(3 => 4, train_state=True, train_memory=True)"
    ps, st = lx.setup(key, cell)
    np.testing.assert_array_equal(ps["hidden_state"], np.zeros(4))
    ps = {**ps, "hidden_state": _x(4, seed=4), "memory": _x(4, seed=5)}
    x = _x(2, 3)
    carry = (jnp.broadcast_to(ps["hidden_state"], (2, 4)), jnp.broadcast_to(ps["memory"], (2, 4)))
    np.testing.assert_allclose(cell(x, ps, st)[0][0], cell((x, carry), ps, st)[0][0], rtol=1e-6)
    model = lx.Recurrence(lx.GRUCell(3, 4, train_state=True))
    ps, st = lx.setup(key, model)
    grads = jax.grad(lambda ps: model(_x(2, 5, 3), ps, st)[0].sum())(ps)
    assert float(jnp.abs(grads["hidden_state"]).sum()) > 0
    assert lx.parameter_count(lx.RNNCell(3, 4, train_state=True)) == 12 + 16 + 8 + 4


def test_stateful_recurrent_cell_steps_like_recurrence(key):
    cell = lx.GRUCell(3, 4, train_state=True)
    model = lx.StatefulRecurrentCell(cell, batch_shape=(2,))
    ps, st = lx.setup(key, model)
    ps = {"cell": {**ps["cell"], "hidden_state": _x(4, seed=3)}}
    x = _x(2, 5, 3)
    expected, _ = lx.Recurrence(cell, return_sequence=True)(x, ps["cell"], st["cell"])
    step = jax.jit(model.__call__)
    ys = []
    for t in range(5):
        y, st = step(x[:, t], ps, st)
        ys.append(y)
    np.testing.assert_allclose(jnp.stack(ys, 1), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(st["carry"][0], ys[-1])
    # Resetting starts again from the trained initial state.
    restarted, _ = model(x[:, 0], ps, lx.update_state(st, "reset_carry", jnp.array(True)))
    np.testing.assert_allclose(restarted, expected[:, 0], rtol=1e-6)
    with pytest.raises(lx.ShapeError, match=r"expected one time step of shape batch_shape \+ \(in_dims,\) = \(2, 3\)"):
        model(x, ps, st)
    with pytest.raises(lx.ConfigError, match=r"the cell must have an int `in_dims`"):
        lx.StatefulRecurrentCell(lx.NoOpLayer())
