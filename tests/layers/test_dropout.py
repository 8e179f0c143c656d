import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def test_dropout_contract():
    # The mask depends only on st["key"], so the layer is a deterministic function of
    # (x, ps, st): jit, gradients and finite differences agree.
    x = jax.random.normal(jax.random.key(3), (4, 5))
    check_layer(lx.Dropout(0.3), x)
    check_layer(lx.Dropout(0.0), x, check_gradients=False)


def test_dropout_state(key):
    model = lx.Dropout(0.5)
    ps, st = lx.setup(key, model)
    assert ps == {}
    assert sorted(st) == ["key", "training"]
    assert jnp.issubdtype(st["key"].dtype, jax.dtypes.prng_key)
    assert st["training"] == lx.Training(True)
    assert lx.state_count(model) == 2


def test_dropout_keep_rate_and_scaling(key):
    p = 0.3
    model = lx.Dropout(p)
    ps, st = lx.setup(key, model)
    y, _ = model(jnp.ones((200, 500)), ps, st)
    kept = np.asarray(y) != 0
    # 100_000 Bernoulli(0.7) draws: the standard deviation of the rate is about 0.0015.
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - p), rtol=1e-6)
    # Inverted dropout keeps the expectation: the mean stays close to 1.
    assert abs(float(y.mean()) - 1.0) < 0.02


def test_dropout_key_advances_every_call(key):
    model = lx.Dropout(0.5)
    ps, st = lx.setup(key, model)
    x = jnp.ones((64,))
    y1, st1 = model(x, ps, st)
    y2, st2 = model(x, ps, st1)
    assert not np.array_equal(jax.random.key_data(st1["key"]), jax.random.key_data(st["key"]))
    assert not np.array_equal(jax.random.key_data(st2["key"]), jax.random.key_data(st1["key"]))
    assert not np.array_equal(y1, y2)
    # The same state gives the same mask.
    np.testing.assert_array_equal(model(x, ps, st)[0], y1)
    # Under jit, carried through a scan, the key keeps advancing.
    _, masks = jax.lax.scan(lambda st, _: (model(x, ps, st)[1], model(x, ps, st)[0]), st, None, length=3)
    assert len({tuple(np.asarray(m).tolist()) for m in masks}) == 3


def test_dropout_test_mode_is_identity(key):
    model = lx.Dropout(0.9)
    ps, st = lx.setup(key, model)
    x = jax.random.normal(jax.random.key(1), (8, 8))
    y, new_st = model(x, ps, lx.testmode(st))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(jax.random.key_data(new_st["key"]), jax.random.key_data(st["key"]))
    assert new_st["training"] == lx.Training(False)
    inside_chain = lx.Chain(lx.Dense(8, 8), lx.Dropout(0.9))
    ps, st = lx.setup(key, inside_chain)
    y, _ = inside_chain(x, ps, lx.testmode(st))
    np.testing.assert_array_equal(y, inside_chain[0](x, ps["layer_1"], st["layer_1"])[0])


def test_dropout_repr():
    assert repr(lx.Dropout(0.5)) == "Dropout(0.5)"
    assert str(lx.Dropout(0.5)) == "Dropout(0.5)  # 0 parameters, plus 2 non-trainable"


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, "0.5", True])
def test_dropout_rejects_p_outside_unit_interval(p):
    with pytest.raises(lx.ConfigError, match=rf"Dropout: `p` must be in \[0, 1\), got {p!r}"):
        lx.Dropout(p)
