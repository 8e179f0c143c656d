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


# -- issue 18: Scale and Bilinear ---------------------------------------------------------------


def test_scale_is_elementwise_affine(key):
    model = lx.Scale((2, 3), jnp.tanh)
    assert repr(model) == "Scale((2, 3), tanh)"
    ps, st = lx.setup(key, model)
    np.testing.assert_array_equal(ps["weight"], jnp.ones((2, 3)))  # identity at the start
    ps = {"weight": jnp.arange(6.0).reshape(2, 3), "bias": jnp.full((2, 3), 0.5)}
    x = jax.random.normal(key, (4, 2, 3))
    np.testing.assert_allclose(model(x, ps, st)[0], jnp.tanh(x * ps["weight"][None] + 0.5), rtol=1e-6)
    assert repr(lx.Scale(3, use_bias=False)) == "Scale(3, use_bias=False)"
    with pytest.raises(ValueError, match=r"trailing axes broadcast with \(2, 3\), got shape \(4, 3, 2\)"):
        model(jnp.ones((4, 3, 2)), ps, st)


@pytest.mark.torch
def test_bilinear_matches_torch(key):
    torch = pytest.importorskip("torch")
    model = lx.Bilinear((3, 4), 2)
    assert repr(model) == "Bilinear((3, 4) => 2)"
    ps, st = lx.setup(key, model)
    assert jnp.max(jnp.abs(ps["weight"])) <= 1 / np.sqrt(3)
    reference = torch.nn.Bilinear(3, 4, 2)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(np.asarray(ps["weight"])))
        reference.bias.copy_(torch.tensor(np.asarray(ps["bias"])))
    a, b = jax.random.normal(jax.random.key(1), (5, 3)), jax.random.normal(jax.random.key(2), (5, 4))
    expected = reference(torch.tensor(np.asarray(a)), torch.tensor(np.asarray(b))).detach().numpy()
    np.testing.assert_allclose(model((a, b), ps, st)[0], expected, rtol=1e-5, atol=1e-6)
    square = lx.Bilinear(3, 2, use_bias=False)
    assert repr(square) == "Bilinear((3, 3) => 2, use_bias=False)"
    ps_sq = {"weight": ps["weight"][:, :, :3]}
    np.testing.assert_allclose(square(a, ps_sq, {})[0], square((a, a), ps_sq, {})[0])
    with pytest.raises(ValueError, match=r"expected inputs of shapes \(\.\.\., 3\) and \(\.\.\., 4\) with the same"):
        model((a, a), ps, st)
