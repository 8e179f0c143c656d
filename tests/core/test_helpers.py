"""Lux's helpers (issue 18): `StatefulLuxLayer`, `outputsize`, counts of trees, `setup` of several models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx


def test_stateful_layer_nested_grad_matches_the_closed_form(key):
    model = lx.Dense(1, 1, jnp.tanh)
    ps, st = lx.setup(key, model)
    f = lx.StatefulLuxLayer(model, ps, st)
    w, b = float(ps["weight"][0, 0]), float(ps["bias"][0])

    def u(t):
        return f(jnp.reshape(t, (1, 1)))[0, 0]

    t = 0.3
    h = np.tanh(w * t + b)
    np.testing.assert_allclose(jax.grad(u)(t), w * (1 - h**2), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(jax.grad(u))(t), -2 * w**2 * h * (1 - h**2), rtol=1e-5)


def test_stateful_layer_is_a_pytree_of_its_trees(key):
    model = lx.Chain(lx.Dense(2, 4, jnp.tanh), lx.Dense(4, 1))
    ps, st = lx.setup(key, model)
    f = lx.StatefulLuxLayer(model, ps, st)
    x = jnp.linspace(-1, 1, 6).reshape(3, 2)

    def loss_of_f(f):
        return jnp.sum(f(x) ** 2)

    def loss_of_ps(ps):
        return jnp.sum(model(x, ps, st)[0] ** 2)

    grads = jax.grad(loss_of_f)(f)
    assert isinstance(grads, lx.StatefulLuxLayer) and grads.model == model
    jax.tree.map(np.testing.assert_allclose, grads.ps, jax.grad(loss_of_ps)(ps))
    np.testing.assert_allclose(jax.jit(lambda f, x: f(x))(f, x), model(x, ps, st)[0], rtol=1e-6)
    other = jax.tree.map(jnp.zeros_like, ps)
    np.testing.assert_array_equal(f(x, other), jnp.zeros((3, 1)))  # Lux's f(x, ps)
    assert lx.parameter_count(f) == lx.parameter_count(model) == 17
    assert [str(lx.KeyPath.from_jax(p)) for p, _ in jax.tree_util.tree_flatten_with_path(f)[0]][:2] == [
        "ps.layer_1.bias",
        "ps.layer_1.weight",
    ]


def test_stateful_layer_apply_returns_the_new_state(key):
    model = lx.BatchNorm(2)
    ps, st = lx.setup(key, model)
    f = lx.StatefulLuxLayer(model, ps, st)
    x = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    y, g = f.apply(x)
    expected, expected_st = model(x, ps, st)
    np.testing.assert_allclose(y, expected)
    np.testing.assert_allclose(g.st["running_mean"], expected_st["running_mean"])
    np.testing.assert_array_equal(f.st["running_mean"], st["running_mean"])  # f itself is unchanged
    with pytest.raises(lx.NotALayerError, match=r"StatefulLuxLayer: `model` must be a luxjax Layer, got 3"):
        lx.StatefulLuxLayer(3, ps, st)


def test_outputsize_from_shapes_arrays_and_tuples():
    model = lx.Chain(lx.Conv((3, 3), 1, 4, stride=2), lx.FlattenLayer(), lx.Dense(4 * 4 * 4, 10))
    assert lx.outputsize(model, (8, 9, 9, 1)) == (8, 10)
    assert lx.outputsize(model, jnp.ones((2, 9, 9, 1))) == (2, 10)
    assert lx.outputsize(model, jax.ShapeDtypeStruct((3, 9, 9, 1), jnp.float32)) == (3, 10)
    pair = lx.Parallel(None, lx.Dense(2, 3), lx.Dense(5, 1))
    assert lx.outputsize(pair, ((4, 2), (4, 5))) == ((4, 3), (4, 1))
    assert lx.outputsize(lx.Embedding(10, 3), (2, 7), dtype=jnp.int32) == (2, 7, 3)
    with pytest.raises(lx.ShapeError, match=r"expected input with last axis 2, got shape \(4, 3\)"):
        lx.outputsize(lx.Dense(2, 3), (4, 3))


def test_counts_accept_parameter_and_state_trees(key):
    model = lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3), lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    assert lx.parameter_count(ps) == lx.parameter_count(model) == 23  # Lux's numbers for this model
    assert lx.state_count(st) == lx.state_count(model) == 7
    assert lx.parameter_count((ps, ps)) == 46
    with pytest.raises(TypeError, match=r"parameter_count: expected a layer or a tree of arrays .* leaf 'w'"):
        lx.parameter_count({"a": "w"})


def test_setup_of_several_models_matches_a_chain_of_them(key):
    gen, disc = lx.Dense(2, 4), lx.Chain(lx.Dense(4, 3), lx.BatchNorm(3))
    chain_ps, chain_st = lx.setup(key, lx.Chain(g=gen, d=disc))
    ps, st = lx.setup(key, {"g": gen, "d": disc})
    jax.tree.map(np.testing.assert_array_equal, (ps, st), (chain_ps, chain_st))
    as_tuple, _ = lx.setup(key, (gen, disc))
    as_list, _ = lx.setup(key, [gen, disc])
    assert isinstance(as_tuple, tuple) and isinstance(as_list, list)
    jax.tree.map(np.testing.assert_array_equal, as_tuple, tuple(chain_ps.values()))
    jax.tree.map(np.testing.assert_array_equal, as_list, list(chain_ps.values()))
    traced, _ = jax.jit(lambda k: lx.setup(k, (gen, disc)))(key)  # a traced key splits the same way
    jax.tree.map(np.testing.assert_array_equal, traced, as_tuple)
    with pytest.raises(lx.NotALayerError, match=r"setup: `model\['d'\]\[1\]` must be a luxjax Layer, .* got 3"):
        lx.setup(key, {"g": gen, "d": [disc, 3]})


def test_stateful_layer_gradient_through_nested_ad_matches_finite_differences(key):
    model = lx.Dense(1, 1, jnp.tanh)
    ps, st = lx.setup(key, model)

    def loss(f):  # a physics-informed style loss: (u'' at 0.3) squared
        def u(t):
            return f(jnp.reshape(t, (1, 1)))[0, 0]

        return jax.grad(jax.grad(u))(0.3) ** 2

    grad_w = jax.grad(loss)(lx.StatefulLuxLayer(model, ps, st)).ps["weight"][0, 0]
    eps = 1e-3

    def at(w):
        return loss(lx.StatefulLuxLayer(model, {**ps, "weight": jnp.full((1, 1), w)}, st))

    w = ps["weight"][0, 0]
    np.testing.assert_allclose(grad_w, (at(w + eps) - at(w - eps)) / (2 * eps), rtol=1e-2)
