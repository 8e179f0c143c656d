import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def test_embedding_contract():
    check_layer(lx.Embedding(7, 3), jnp.array([[0, 6, 2], [3, 3, 1]]))


def test_embedding_shapes_and_default_init(key):
    model = lx.Embedding(1000, 16)
    ps, st = lx.setup(key, model)
    assert ps["weight"].shape == (1000, 16)
    assert ps["weight"].dtype == jnp.float32
    # Standard normal, as Lux's randn32.
    assert abs(float(ps["weight"].mean())) < 0.02
    assert abs(float(ps["weight"].std()) - 1.0) < 0.02
    idx = jnp.array([[[1, 2], [3, 4], [5, 6]]])
    y, _ = model(idx, ps, st)
    assert y.shape == (1, 3, 2, 16)
    np.testing.assert_array_equal(y[0, 1, 0], ps["weight"][3])
    assert model(jnp.array(5), ps, st)[0].shape == (16,)
    assert repr(model) == "Embedding(1000 => 16)"


def test_embedding_table_ties_with_dense_output_projection(key):
    embed, head = lx.Embedding(11, 4), lx.Dense(4, 11, use_bias=False)
    ps_e, _ = lx.setup(key, embed)
    ps_h, _ = lx.setup(key, head)
    assert ps_e["weight"].shape == ps_h["weight"].shape
    # Tied: logits of the embedding of token i are largest at i for a well-separated table.
    table = 10.0 * jnp.eye(11, 4)
    vecs, _ = embed(jnp.arange(4), {"weight": table}, {})
    logits, _ = head(vecs, {"weight": table}, {})
    np.testing.assert_array_equal(jnp.argmax(logits, axis=-1), np.arange(4))


@pytest.mark.torch
def test_embedding_matches_torch(key):
    torch = pytest.importorskip("torch")
    model = lx.Embedding(9, 5)
    ps, st = lx.setup(key, model)
    ref = torch.nn.Embedding(9, 5)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(np.asarray(ps["weight"])))
    idx = np.array([[0, 8, 3], [3, 3, 1]])
    out = ref(torch.tensor(idx))
    direction = np.asarray(jax.random.normal(jax.random.key(2), out.shape))
    (out * torch.tensor(direction)).sum().backward()
    y, _ = model(jnp.asarray(idx), ps, st)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda ps: jnp.vdot(model(jnp.asarray(idx), ps, st)[0], direction)))(ps)
    np.testing.assert_allclose(grad["weight"], ref.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_rejects_out_of_vocabulary_index(key):
    model = lx.Embedding(10, 4)
    ps, st = lx.setup(key, model)
    with pytest.raises(ValueError, match=r"Embedding\(10 => 4\): expected indices in \[0, 10\) .* e\.g\. 10"):
        model(jnp.array([1, 10]), ps, st)
    with pytest.raises(lx.ShapeError, match=r"`vocab_size` is 10\), got 1 out of range, e\.g\. -1"):
        model(jnp.array([[-1, 2]]), ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected integer indices in \[0, 10\), got dtype float32"):
        model(jnp.array([1.0, 2.0]), ps, st)


def test_embedding_out_of_range_under_jit_gives_nan(key):
    model = lx.Embedding(10, 4)
    ps, st = lx.setup(key, model)
    y = jax.jit(lambda x: model(x, ps, st)[0])(jnp.array([2, 10, -1]))
    np.testing.assert_array_equal(y[0], ps["weight"][2])
    assert bool(jnp.isnan(y[1]).all()) and bool(jnp.isnan(y[2]).all())


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_embedding_rejects_bad_sizes(bad):
    with pytest.raises(lx.ConfigError, match=rf"Embedding: `dims` must be a positive int, got {bad!r}"):
        lx.Embedding(5, bad)


def test_multidimensional_vocabulary_indexes_the_table(key):
    model = lx.Embedding((3, 4), 5)
    assert repr(model) == "Embedding((3, 4) => 5)" and model == lx.Embedding([3, 4], 5)
    ps, st = lx.setup(key, model)
    assert ps["weight"].shape == (3, 4, 5)
    i, j = jnp.array([[0, 2], [1, 2]]), jnp.array([[3, 0], [1, 1]])
    y, _ = model((i, j), ps, st)
    expected = np.asarray(ps["weight"])[np.asarray(i), np.asarray(j)]
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(lx.ShapeError, match=r"expected indices in \[0, 4\) \(`vocab_size` is \(3, 4\)\), got 1"):
        model((i, j + 1), ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected a tuple of 2 index arrays"):
        model(i, ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected index arrays of one shape, got shapes \[\(2, 2\), \(2,\)\]"):
        model((i, j[0]), ps, st)
    jitted = jax.jit(lambda x: model(x, ps, st)[0])((i, j.at[0, 0].set(4)))
    assert np.isnan(jitted[0, 0]).all() and not np.isnan(jitted[1]).any()


def test_sinusoidal_embedding_matches_lux_formula(key):
    dims, positions = 6, np.array([0.0, 1.0, 2.5, 10.0])
    for options in ({}, {"min_freq": 0.01, "max_freq": 2.0, "scale": 1.0, "full_turns": True}):
        model = lx.SinusoidalPositionalEmbedding(dims, **options)
        ps, st = lx.setup(key, model)
        y, _ = model(jnp.asarray(positions, jnp.float32), ps, st)
        # Lux: sigmas = exp.(range(1, 0; length=dims ÷ 2) .* (log(max) - log(min)) .+ log(min)).
        lo, hi = np.log(options.get("min_freq", 1e-4)), np.log(options.get("max_freq", 1.0))
        sigmas = np.exp(np.linspace(1, 0, dims // 2) * (hi - lo) + lo) * (2 * np.pi if options else 1)
        angles = positions[:, None] * sigmas
        expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1) * options.get("scale", np.sqrt(2 / dims))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=3e-5)
    assert repr(model) == "SinusoidalPositionalEmbedding(6, min_freq=0.01, max_freq=2.0, scale=1.0, full_turns=True)"
    y_int, _ = model(jnp.arange(3), ps, st)
    assert y_int.dtype == jnp.float32 and y_int.shape == (3, 6)
    assert model(jnp.ones(3, jnp.bfloat16), ps, st)[0].dtype == jnp.bfloat16
    with pytest.raises(lx.ConfigError, match=r"`dims` must be even"):
        lx.SinusoidalPositionalEmbedding(5)


def _rope_reference(x, positions, base=10000):
    """Complex-number rotation of the pairs (x[k], x[k + dims/2]) by position * base**(-2k/dims)."""
    dims = x.shape[-1]
    theta = base ** (-np.arange(0, dims, 2) / dims)
    z = x[..., : dims // 2] + 1j * x[..., dims // 2 :]
    z = z * np.exp(1j * positions[None, :, None, None] * theta)
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rotary_embedding_matches_complex_rotation_and_is_relative(key):
    model = lx.RotaryPositionalEmbedding(8, max_sequence_length=32, base=100)
    ps, st = lx.setup(key, model)
    assert st["cos_cache"].shape == (32, 4)
    x = jax.random.normal(jax.random.key(2), (2, 5, 3, 8))
    y, _ = model(x, ps, st)
    np.testing.assert_allclose(y, _rope_reference(np.asarray(x, np.float64), np.arange(5), 100), rtol=1e-5, atol=1e-5)
    positions = jnp.array([7, 3, 30, 0, 12])
    y_at, _ = model((x, positions), ps, st)
    reference = _rope_reference(np.asarray(x, np.float64), np.asarray(positions), 100)
    np.testing.assert_allclose(y_at, reference, rtol=1e-5, atol=1e-5)
    # The score of a rotated query and key depends only on their distance.
    q, k = x[:, :1], x[:, 1:2]
    scores = [
        jnp.vdot(model((q, jnp.array([m])), ps, st)[0], model((k, jnp.array([m - 2])), ps, st)[0]) for m in (2, 9, 20)
    ]
    np.testing.assert_allclose(scores, [scores[0]] * 3, rtol=1e-4)
    with pytest.raises(lx.ShapeError, match=r"expected seq_len <= max_sequence_length \(32\)"):
        model(jnp.ones((1, 33, 1, 8)), ps, st)
    with pytest.raises(lx.ShapeError, match=r"expected input of shape \(batch, seq_len, num_heads, 8\)"):
        model(jnp.ones((1, 3, 8)), ps, st)
