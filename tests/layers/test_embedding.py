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
