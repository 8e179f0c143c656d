import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def test_dense_matches_hand_written_jax(key):
    model = lx.Dense(3, 2, jnp.tanh)
    ps, st = lx.setup(key, model)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    expected = np.tanh(np.asarray(x) @ np.asarray(ps["weight"]).T + np.asarray(ps["bias"]))
    np.testing.assert_allclose(model(x, ps, st)[0], expected, rtol=1e-5, atol=1e-6)


def test_dense_contract():
    check_layer(lx.Dense(3, 2, jnp.tanh), jnp.linspace(-1, 1, 12).reshape(4, 3))
    check_layer(lx.Dense(3, 2, use_bias=False), jnp.ones((4, 3)))


def test_dense_without_bias_and_custom_init(key):
    model = lx.Dense(2, 3, use_bias=False, init_weight=lambda k, shape, dtype: jnp.ones(shape, dtype))
    ps, _ = lx.setup(key, model)
    assert list(ps) == ["weight"]
    np.testing.assert_array_equal(ps["weight"], np.ones((3, 2)))
    assert repr(model) == "Dense(2 => 3, use_bias=False)"


def test_dense_rejects_wrong_last_axis(key):
    model = lx.Dense(3, 4)
    ps, st = lx.setup(key, model)
    with pytest.raises(ValueError, match=r"Dense\(3 => 4\): expected input with last axis 3, got shape \(8, 5\)"):
        model(jnp.ones((8, 5)), ps, st)


def test_dense_error_names_its_path_in_the_model(key):
    model = lx.Chain(encoder=lx.Chain(lx.Dense(2, 3), lx.Dense(4, 1)))
    ps, st = lx.setup(key, model)
    with pytest.raises(ValueError, match=r"Dense\(4 => 1\) at encoder\.layer_2: expected input with last axis 4"):
        model(jnp.ones((8, 2)), ps, st)
    with pytest.raises(ValueError, match=r"at encoder\.layer_2: expected input with last axis 4, got shape \(8, 3\)"):
        jax.jit(lambda x: model(x, ps, st))(jnp.ones((8, 2)))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_dense_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=rf"Dense: `in_dims` must be a positive int, got {bad!r}"):
        lx.Dense(bad, 2)
