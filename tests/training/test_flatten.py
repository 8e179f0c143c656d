import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import luxjax as lx
from luxjax.experimental import share_parameters
from luxjax.training import TrainState, flatten_parameters, single_train_step


@pytest.fixture
def tied(key, seed_model):
    ps, st = lx.setup(key, seed_model)
    return share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1"))), st


def test_untied_tree_flattens_like_ravel_pytree(key, seed_model):
    ps, _ = lx.setup(key, seed_model)
    vector, unflatten = flatten_parameters(ps)
    expected, _ = ravel_pytree(ps)
    np.testing.assert_array_equal(vector, expected)
    back = unflatten(vector)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(ps)):
        np.testing.assert_array_equal(a, b)


def test_each_tie_group_is_in_the_vector_once(tied):
    ps, _ = tied
    vector, unflatten = flatten_parameters(ps)
    assert vector.shape == (12 + 10,)  # d1 (tied with d3.l2) and d2 (tied with d3.l1)
    back = unflatten(vector + 1.0)
    assert back["d1"]["weight"] is back["d3"]["l2"]["weight"]
    assert back["d2"]["bias"] is back["d3"]["l1"]["bias"]
    np.testing.assert_allclose(back["d3"]["l2"]["weight"], ps["d1"]["weight"] + 1.0)
    assert jax.tree.structure(back) == jax.tree.structure(ps)


def test_explicit_ties_are_applied_first(key, seed_model):
    ps, _ = lx.setup(key, seed_model)
    vector, unflatten = flatten_parameters(ps, ties=(("d3.l2", "d1"),))
    assert vector.shape == (44 - 12,)
    back = unflatten(vector)
    assert back["d1"]["weight"] is back["d3"]["l2"]["weight"]
    np.testing.assert_array_equal(back["d1"]["weight"], ps["d3"]["l2"]["weight"])


def test_vector_gradient_descent_keeps_ties_and_matches_training(tied, seed_model):
    # plain gradient descent on the vector equals luxjax's sgd on the tied tree
    ps, st = tied
    model = seed_model
    x = jax.random.normal(jax.random.key(2), (8, 2))
    y = jnp.cos(x)

    def loss_of_tree(model, ps, st, data):
        out, st = model(data[0], ps, st)
        return jnp.mean((out - data[1]) ** 2), st, {}

    vector, unflatten = flatten_parameters(ps)
    loss_of_vector = jax.jit(lambda v: loss_of_tree(model, unflatten(v), st, (x, y))[0])
    ts = TrainState(model, jax.tree.map(jnp.copy, ps), st, optax.sgd(0.1), ties=(("d3.l2", "d1"), ("d2", "d3.l1")))
    for _ in range(5):
        vector = vector - 0.1 * jax.grad(loss_of_vector)(vector)
        _, _, _, ts = single_train_step(loss_of_tree, (x, y), ts)
    back = unflatten(vector)
    assert back["d1"]["weight"] is back["d3"]["l2"]["weight"]
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(ts.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the trained tree flattens back to the same vector
    np.testing.assert_allclose(flatten_parameters(ts.parameters)[0], vector, rtol=1e-5, atol=1e-6)
