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
    expected = r"setup: `model` must be a luxjax Layer, or a tuple, list or dict of them; got 'dense' of type str"
    with pytest.raises(TypeError, match=expected):
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


# Issue 15: setup compiles each distinct leaf's init and walks the containers itself; it must
# give exactly what the layers' own init_params/init_state give.


class Noisy(lx.Layer):
    """A leaf whose init reads the key's value on the host: it cannot be traced."""

    def init_params(self, key):
        return {"scale": jnp.full((2,), float(jax.random.uniform(key)))}

    def __call__(self, x, ps, st):
        return x * ps["scale"], st


class Counted(lx.Layer):
    """A leaf with a Python number in its state (which a jit output would make an array)."""

    def init_state(self, key):
        del key
        return {"calls": 0, "training": lx.Training(True)}

    def __call__(self, x, ps, st):
        return x, st


class Unhashable(lx.Layer):
    """A leaf holding a list, so it cannot be hashed (nor cached)."""

    shape: list

    def init_params(self, key):
        return {"weight": jax.random.normal(key, tuple(self.shape))}

    def __call__(self, x, ps, st):
        return x @ ps["weight"], st


class OwnParameters(lx.ContainerLayer):
    """A container with an init of its own: a parameter beside its children's."""

    left: lx.Layer
    right: lx.Layer

    def init_params(self, key):
        key, own = jax.random.split(key)
        return {"gate": jax.random.uniform(own, (2,)), **super().init_params(key)}

    def __call__(self, x, ps, st):
        return x, st


class Twice(lx.WrapperLayer):
    layer: lx.Layer

    def __call__(self, x, ps, st):
        return self.layer(x, ps, st)


def direct(key, model):
    key_ps, key_st = jax.random.split(key)
    return model.init_params(key_ps), model.init_state(key_st)


def key_order(tree):
    return [(k, key_order(v)) for k, v in tree.items()] if isinstance(tree, dict) else type(tree).__name__


def assert_identical(actual, expected):
    assert key_order(actual) == key_order(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        if isinstance(e, jax.Array) and jnp.issubdtype(e.dtype, jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        assert type(a) is type(e) and jnp.result_type(a) == jnp.result_type(e)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


MODELS = {
    "chain of chains": lx.Chain(
        a=lx.Chain(lx.Dense(2, 3), lx.Dense(3, 3, jnp.tanh)), b=lx.Chain(lx.Dense(3, 2), lx.BatchNorm(2))
    ),
    "residual blocks": lx.Chain(
        *[
            lx.Chain(
                attn=lx.SkipConnection(lx.Chain(ln=lx.LayerNorm(4), mha=lx.MultiHeadAttention(4, 2)), jnp.add),
                mlp=lx.SkipConnection(lx.Chain(lx.Dense(4, 8, jnp.tanh), lx.Dense(8, 4)), jnp.add),
            )
            for _ in range(3)
        ]
    ),
    "layer connection": lx.SkipConnection(lx.Dense(2, 2), lx.WrappedFunction(lambda pair: pair[0] + pair[1])),
    "parallel with dropout": lx.Parallel(jnp.add, lx.Dense(2, 2), lx.Chain(lx.Dropout(0.5), lx.Dense(2, 2))),
    "user containers": lx.Chain(Twice(lx.Dense(2, 2)), OwnParameters(lx.Dense(2, 2), Twice(lx.BatchNorm(2)))),
    "untraceable inits": lx.Chain(Noisy(), Counted(), Noisy(), Unhashable([2, 2]), Counted()),
    "a leaf alone": lx.Conv((3, 3), 2, 4),
    "empty chain": lx.Chain(),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_issue_15_setup_gives_the_layers_own_init_bit_for_bit(name):
    model = MODELS[name]
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):  # typed and legacy uint32 keys
        ps, st = lx.setup(key, model)
        expected_ps, expected_st = direct(key, model)
        assert_identical(ps, expected_ps)
        assert_identical(st, expected_st)
        assert_identical(lx.setup(key, model), (ps, st))  # the compiled path, the second time


def test_issue_15_setup_keeps_each_layers_key_order_and_fresh_trees(key):
    model = lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2), lx.BatchNorm(2))
    ps, st = lx.setup(key, model)
    assert list(ps["layer_1"]) == ["weight", "bias"]  # not sorted, as a jit output would be
    assert list(st["layer_3"]) == ["running_mean", "running_var", "training"]
    assert ps["layer_1"]["weight"] is not ps["layer_2"]["weight"] and st["layer_1"] is not st["layer_2"]


def test_issue_15_setup_works_under_jit(key):
    model = MODELS["residual blocks"]
    ps, st = jax.jit(lambda key: lx.setup(key, model))(key)
    expected_ps, _ = direct(key, model)
    for a, e in zip(jax.tree.leaves(ps), jax.tree.leaves(expected_ps)):
        np.testing.assert_array_equal(a, e)
