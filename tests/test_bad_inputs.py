"""Bad inputs found by probing (issue 13): each is an error naming what went wrong and the fix."""

import jax
import jax.numpy as jnp
import optax
import pytest

import luxjax as lx
from luxjax import experimental as lxe
from luxjax.training import TrainState, single_train_step


def test_a_tuple_into_dense(key):
    model = lx.Dense(2, 3)
    with pytest.raises(lx.ShapeError, match=r"Dense\(2 => 3\): expected one array of shape \(\.\.\., 2\), got a tuple"):
        model((jnp.ones((1, 2)), jnp.ones((1, 2))), *lx.setup(key, model))


def test_a_recurrence_of_a_layer_that_is_not_a_cell(key):
    model = lx.Recurrence(lx.Dense(2, 3))
    with pytest.raises(lx.ShapeError, match=r"the cell must return `\(y, carry\)` .* returned an array of shape"):
        model(jnp.ones((1, 4, 2)), *lx.setup(key, model))


def test_toolkit_arguments_of_the_wrong_kind(key):
    with pytest.raises(lx.NotALayerError, match=r"debug_mode: `model` must be a luxjax Layer, got None"):
        lxe.debug_mode(None)
    with pytest.raises(TypeError, match=r"DebugLayer: `location` must be a KeyPath, a dotted string .* got 5"):
        lxe.DebugLayer(lx.Dense(2, 2), location=5)
    ps, st = lx.setup(key, lx.Dense(2, 2))
    with pytest.raises(TypeError, match=r"layer_at: `path` must be a KeyPath, a dotted string .* got 5"):
        lxe.layer_at(lx.Dense(2, 2), ps, st, 5)
    with pytest.raises(ValueError, match=r"share_parameters: group 0 of `sharing` is empty"):
        lxe.share_parameters({"a": jnp.ones(2)}, ((),))


def test_an_objective_that_returns_only_the_loss(key):
    model = lx.Dense(2, 1)
    ts = TrainState(model, *lx.setup(key, model), optax.sgd(0.1))

    def loss_only(model, ps, st, x):
        return jnp.sum(model(x, ps, st)[0])

    with pytest.raises(TypeError, match=r"`objective` must return `\(loss, st, stats\)` .* returned an array of shape"):
        single_train_step(loss_only, jnp.ones((2, 2)), ts)
    assert jax.tree.leaves(ts.parameters)  # the state is still usable
