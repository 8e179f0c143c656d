import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx


def test_seed_model_sets_up_with_lux_structure(key, seed_model):
    ps, st = lx.setup(key, seed_model)
    assert list(ps) == ["d1", "d3", "d2"]
    assert list(ps["d3"]) == ["l1", "l2"]
    assert ps["d1"]["weight"].shape == (4, 2) and ps["d1"]["bias"].shape == (4,)
    assert st == {"d1": {}, "d3": {"l1": {}, "l2": {}}, "d2": {}}
    assert lx.parameter_count(seed_model) == 44 == sum(a.size for a in jax.tree.leaves(ps))
    y, _ = seed_model(jnp.ones((7, 2)), ps, st)
    assert y.shape == (7, 2)


def test_setup_is_deterministic_and_children_get_distinct_keys(key):
    model = lx.Chain(lx.Dense(3, 3), lx.Dense(3, 3))
    ps1, _ = lx.setup(key, model)
    ps2, _ = lx.setup(key, model)
    np.testing.assert_array_equal(ps1["layer_1"]["weight"], ps2["layer_1"]["weight"])
    assert not np.array_equal(ps1["layer_1"]["weight"], ps1["layer_2"]["weight"])


def test_default_dense_init_is_lux_fan_in_uniform(key):
    ps, _ = lx.setup(key, lx.Dense(100, 50))
    bound = 1 / np.sqrt(100)
    for leaf in (ps["weight"], ps["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.9 * bound


def test_setup_rejects_non_layer_and_bad_key(key):
    with pytest.raises(TypeError, match=r"setup: `model` must be a luxjax Layer, got 'dense' of type str"):
        lx.setup(key, "dense")
    with pytest.raises(TypeError, match=r"setup: `key` must be a PRNG key such as `jax.random.key\(0\)`, got 0"):
        lx.setup(0, lx.Dense(2, 2))


def test_legacy_uint32_keys_work():
    ps, _ = lx.setup(jax.random.PRNGKey(0), lx.Dense(2, 2))
    assert ps["weight"].shape == (2, 2)


def test_apply_and_stateless_apply_match_call(key, seed_model):
    ps, st = lx.setup(key, seed_model)
    x = jnp.ones((3, 2))
    y, _ = seed_model(x, ps, st)
    np.testing.assert_array_equal(lx.apply(seed_model, x, ps, st)[0], y)
    np.testing.assert_array_equal(lx.stateless_apply(seed_model, x, ps), y)


def test_stateless_apply_refuses_models_with_state(key):
    class Counter(lx.Layer):
        def init_state(self, key):
            return {"n": jnp.zeros(())}

        def __call__(self, x, ps, st):
            return x, st

    with pytest.raises(ValueError, match=r"stateless_apply: .* has 1 states; use `apply\(model, x, ps, st\)`"):
        lx.stateless_apply(Counter(), jnp.ones(2), {})


def test_counts_do_not_materialise_arrays():
    big = lx.Dense(100_000, 100_000)  # 40 GB if it were built
    assert lx.parameter_count(big) == 100_000 * 100_000 + 100_000
