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


@pytest.mark.torch
def test_alpha_dropout_values_match_torch(key):
    # PyTorch's kept values are a * x + b, its dropped ones one constant; zeros and ones as
    # inputs reveal both affine constants without reproducing PyTorch's random mask.
    torch = pytest.importorskip("torch")
    p = 0.3
    model = lx.AlphaDropout(p)
    ps, st = lx.setup(key, model)
    torch.manual_seed(0)
    for value in (0.0, 1.0):
        ours = np.unique(np.asarray(model(jnp.full((2000,), value), ps, st)[0]))
        theirs = np.unique(torch.nn.functional.alpha_dropout(torch.full((2000,), value), p, training=True).numpy())
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_alpha_dropout_keeps_mean_and_variance_and_rate(key):
    p = 0.2
    model = lx.AlphaDropout(p)
    ps, st = lx.setup(key, model)
    x = jax.random.normal(jax.random.key(5), (400, 500))
    y, new_st = model(x, ps, st)
    # 200_000 draws: standard errors about 0.002 (mean), 0.003 (variance), 0.001 (rate).
    assert abs(float(y.mean())) < 0.01 and abs(float(y.var()) - 1) < 0.02
    _, counts = np.unique(np.asarray(y), return_counts=True)
    assert abs(counts.max() / y.size - p) < 0.005  # every dropped unit has one value
    assert not np.array_equal(jax.random.key_data(new_st["key"]), jax.random.key_data(st["key"]))
    assert model(x, ps, lx.testmode(st))[0] is x
    assert y.dtype == jnp.float32 and model(x.astype(jnp.bfloat16), ps, st)[0].dtype == jnp.bfloat16


def test_variational_hidden_dropout_reuses_its_mask_until_told(key):
    p = 0.5
    model = lx.VariationalHiddenDropout(p)
    ps, st = lx.setup(key, model)
    x = jnp.ones((4, 64))
    y1, st = model(x, ps, st)
    assert sorted(set(np.asarray(y1).ravel().tolist())) == [0.0, 2.0]

    # A time loop in lax.scan carries the state: every step sees the first step's mask.
    def step(st, x_t):
        y, st = model(x_t, ps, st)
        return st, y

    st_after, ys = jax.lax.scan(step, st, jnp.stack([x * (t + 1) for t in range(3)]))
    for t in range(3):
        np.testing.assert_array_equal(ys[t], y1 * (t + 1))
    assert not bool(st_after["update_mask"])

    renewed = lx.update_state(st_after, "update_mask", jnp.array(True))
    y_new, st_new = model(x, ps, renewed)
    assert not np.array_equal(y_new, y1)
    np.testing.assert_array_equal(model(x, ps, st_new)[0], y_new)
    assert model(x, ps, lx.testmode(st))[0] is x


@pytest.mark.parametrize("layer", [lx.AlphaDropout, lx.VariationalHiddenDropout])
def test_dropout_variants_reject_bad_probability(layer):
    with pytest.raises(lx.ConfigError, match=rf"{layer.__name__}: `p` must be in \[0, 1\), got 1"):
        layer(1)
