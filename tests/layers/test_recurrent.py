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
