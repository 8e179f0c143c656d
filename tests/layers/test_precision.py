"""Mixed precision: `Precision`, `MixedPrecision` and `mixed_precision`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
import luxjax.experimental as lxe
from luxjax.training import TrainState, single_train_step

BF16 = jnp.bfloat16


def x(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_precision_rejects_a_non_floating_dtype():
    with pytest.raises(
        lx.ConfigError, match=r"Precision: `compute` must be a floating dtype .* got <class 'jax.numpy.int32'>"
    ):
        lx.Precision(compute=jnp.int32)


def test_dense_computes_in_bfloat16_from_float32_master_parameters(key):
    model = lx.MixedPrecision(lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    assert {a.dtype for a in jax.tree.leaves(ps)} == {jnp.dtype(jnp.float32)}
    inputs = x(4, 3)
    y, _ = model(inputs, ps, st)
    # by hand: every operand rounded to bfloat16, the result rounded back up to float32
    by_hand = inputs.astype(BF16) @ ps["weight"].astype(BF16).T + ps["bias"].astype(BF16)[None, :]
    by_hand = by_hand.astype(jnp.float32)
    np.testing.assert_array_equal(y, by_hand)
    assert not np.array_equal(y, lx.Dense(3, 2)(inputs, ps, st)[0])


def test_gradients_arrive_in_float32_close_to_the_float32_ones(key):
    plain = lx.Chain(lx.Dense(3, 8, jnp.tanh), lx.LayerNorm(8), lx.Dense(8, 1))
    ps, st = lx.setup(key, plain)
    inputs = x(16, 3)

    def loss(model, ps):
        return jnp.mean(model(inputs, ps, st)[0] ** 2)

    g32 = jax.grad(lambda ps: loss(plain, ps))(ps)
    g16 = jax.grad(lambda ps: loss(lx.mixed_precision(plain), ps))(ps)
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=2e-2 * float(jnp.max(jnp.abs(b))))


def test_batchnorm_keeps_float32_statistics_of_bfloat16_inputs(key):
    model = lx.MixedPrecision(lx.BatchNorm(2))
    ps, st = lx.setup(key, model)
    inputs = x(64, 2) * 3 + 100  # a large mean: bfloat16 statistics would lose it
    _, new_st = model(inputs, ps, st)
    rounded = inputs.astype(BF16).astype(jnp.float32)
    assert new_st["running_mean"].dtype == jnp.float32
    np.testing.assert_allclose(new_st["running_mean"], 0.1 * jnp.mean(rounded, axis=0), rtol=1e-6)


def test_mixed_precision_wraps_what_where_selects_and_keeps_the_trees(key):
    model = lx.Chain(encoder=lx.Chain(lx.Dense(2, 4), lx.LayerNorm(4)), head=lx.Dense(4, 1))
    ps, st = lx.setup(key, model)
    by_type = lx.mixed_precision(model, where=lx.Dense)
    encoder, head = by_type.children()["encoder"], by_type.children()["head"]
    assert [type(layer) for layer in (*encoder.children().values(), head)] == [
        lx.MixedPrecision,
        lx.LayerNorm,
        lx.MixedPrecision,
    ]
    by_path = lx.mixed_precision(model, lx.Precision(compute=jnp.float16), where="encoder")
    encoder = by_path.children()["encoder"]
    assert isinstance(encoder, lx.MixedPrecision) and encoder.policy.compute == jnp.float16
    assert by_path.children()["head"] is model.children()["head"]
    again = lx.mixed_precision(by_path, where="encoder").children()["encoder"]  # a new policy replaces the old
    assert again.layer is model.children()["encoder"] and again.policy == lx.Precision()
    for wrapped in (by_type, by_path, lx.mixed_precision(model)):
        assert jax.tree.structure(lx.setup(key, wrapped)) == jax.tree.structure((ps, st))
        assert wrapped(x(3, 2), ps, st)[0].dtype == jnp.float32


def test_mixed_precision_where_nothing_matches_lists_the_layers():
    with pytest.raises(
        ValueError, match=r"`where` selected no layer; the layers are: Chain\(.*Dense\(2 => 1\) at layer_1"
    ):
        lx.mixed_precision(lx.Chain(lx.Dense(2, 1)), where="decoder")


def test_frozen_and_lora_values_are_cast_with_the_parameters(key):
    model = lx.Chain(lx.Dense(3, 4), lx.Dense(4, 2))
    ps, st = lx.setup(key, model)
    frozen, ps_f, st_f = lxe.freeze(model, ps, st, ("layer_1",))
    adapted, ps_a, st_a = lxe.lora(model, ps, st, rank=2, where="layer_2")
    inputs = x(5, 3)
    expected = lx.mixed_precision(model)(inputs, ps, st)[0]
    np.testing.assert_array_equal(lx.mixed_precision(frozen)(inputs, ps_f, st_f)[0], expected)
    # LoRA's B starts at zero: the adapted model computes what the model computes, in bfloat16 too.
    np.testing.assert_array_equal(lx.mixed_precision(adapted)(inputs, ps_a, st_a)[0], expected)


def test_bfloat16_training_reaches_the_float32_loss(key):
    # Measured: both fall from 0.232 to 0.00144 (float32) and 0.00201 (bfloat16) in 400 adam steps.
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.uniform(-3, 3, (256, 2)), jnp.float32)
    targets = jnp.sin(inputs[:, :1]) * jnp.cos(inputs[:, 1:])
    model = lx.Chain(lx.Dense(2, 64, jax.nn.gelu), lx.LayerNorm(64), lx.Dense(64, 64, jax.nn.gelu), lx.Dense(64, 1))

    def mse(model, ps, st, data):
        y, st = model(data[0], ps, st)
        return jnp.mean((y - data[1]) ** 2), st, {}

    losses = []
    for m in (model, lx.mixed_precision(model)):
        ps, st = lx.setup(key, m)
        ts = TrainState(m, ps, st, optax.adam(1e-3))
        for _ in range(400):
            _, loss, _, ts = single_train_step(mse, (inputs, targets), ts, return_gradients=False)
        assert {a.dtype for a in jax.tree.leaves(ts.parameters)} == {jnp.dtype(jnp.float32)}
        losses.append(float(loss))
    f32, bf16 = losses
    assert f32 < 2e-3
    assert abs(bf16 - f32) < 1e-3, losses
