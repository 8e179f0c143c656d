"""`dynamic_loss_scale`: float16 training without underflow, overflowing steps skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
from luxjax.training import TrainState, compute_gradients, dynamic_loss_scale, single_train_step

F16 = lx.Precision(compute=jnp.float16)


def test_overflow_skips_the_step_and_scales_back_then_grows():
    opt = dynamic_loss_scale(optax.sgd(0.1, momentum=0.9), initial_scale=2.0**10, growth_interval=3, min_scale=2.0**9)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    updates, skipped = opt.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], jnp.zeros(2))
    assert float(skipped.loss_scale) == 2.0**9
    # the momentum stays as it was
    for a, b in zip(jax.tree.leaves(skipped.inner_state.inner_state), jax.tree.leaves(state.inner_state.inner_state)):
        np.testing.assert_array_equal(a, b)
    _, floored = opt.update({"w": jnp.array([jnp.inf, 1.0])}, skipped, params)
    assert float(floored.loss_scale) == 2.0**9  # not below min_scale
    scales = []
    for _ in range(6):
        _, floored = opt.update({"w": jnp.ones(2)}, floored, params)
        scales.append(float(floored.loss_scale))
    assert scales == [2.0**9, 2.0**9, 2.0**10, 2.0**10, 2.0**10, 2.0**11]


def test_dynamic_loss_scale_rejects_a_factor_of_one():
    with pytest.raises(ValueError, match=r"`factor` must be greater than 1, got 1.0"):
        dynamic_loss_scale(optax.sgd(0.1), factor=1.0)


def small_loss(model, ps, st, data):
    y, st = model(data, ps, st)
    return 2e-8 * jnp.mean(y**2), st, {}


def test_float16_gradients_underflow_without_scaling_and_match_float32_with_it(key):
    plain = lx.Chain(lx.Dense(4, 8, jnp.tanh), lx.Dense(8, 2))
    model = lx.mixed_precision(plain, F16)
    ps, st = lx.setup(key, model)
    data = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4)), jnp.float32)
    expected = jax.grad(lambda ps: small_loss(plain, ps, st, data)[0])(ps)
    unscaled, *_ = compute_gradients(small_loss, data, TrainState(model, ps, st, optax.sgd(0.1)))
    assert not any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(unscaled["layer_1"]))
    scaled, loss, _, _ = compute_gradients(
        small_loss, data, TrainState(model, ps, st, dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0**20))
    )
    np.testing.assert_allclose(loss, small_loss(plain, ps, st, data)[0], rtol=1e-2)  # the loss itself, not scaled
    for a, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(b))))


def test_a_step_that_overflows_float16_leaves_the_parameters(key):
    model = lx.mixed_precision(lx.Dense(4, 2), F16)
    ps, st = lx.setup(key, model)
    data = jnp.ones((8, 4))

    def loss(model, ps, st, data):
        y, st = model(data, ps, st)
        return jnp.mean(y**2), st, {}

    ts = TrainState(model, ps, st, dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0**40))
    before = jax.tree.map(np.asarray, ts.parameters)
    _, _, _, ts = single_train_step(loss, data, ts)
    assert float(ts.optimizer_state.loss_scale) == 2.0**39
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
