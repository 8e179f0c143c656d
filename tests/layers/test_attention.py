import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def _x(*shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def _random_params(model, key):
    """Nonzero biases, so the comparison covers them (they start at zero)."""
    ps, st = lx.setup(key, model)
    leaves, tree = jax.tree.flatten(ps)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]), st


def _torch_mha(torch, ps, dims, heads):
    ref = torch.nn.MultiheadAttention(dims, heads, batch_first=True)
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        ref.in_proj_weight.copy_(t(jnp.concatenate([ps[n]["weight"] for n in ("q_proj", "k_proj", "v_proj")])))
        ref.in_proj_bias.copy_(t(jnp.concatenate([ps[n]["bias"] for n in ("q_proj", "k_proj", "v_proj")])))
        ref.out_proj.weight.copy_(t(ps["out_proj"]["weight"]))
        ref.out_proj.bias.copy_(t(ps["out_proj"]["bias"]))
    return ref


def test_attention_contract():
    check_layer(lx.MultiHeadAttention(4, 2), _x(2, 3, 4))
    causal = jnp.tril(jnp.ones((3, 3), dtype=bool))
    # check_grads cannot perturb a boolean input; the masked gradients are compared with PyTorch below.
    masked = (_x(1, 3, 4), _x(1, 3, 4, seed=2), _x(1, 3, 4), causal)
    check_layer(lx.MultiHeadAttention(4, 2, use_bias=False), masked, check_gradients=False)


def test_attention_parameters_display_and_equality(key):
    model = lx.MultiHeadAttention(8, 4)
    ps, st = lx.setup(key, model)
    assert list(ps) == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert {n: {k: v.shape for k, v in p.items()} for n, p in ps.items()} == {
        n: {"weight": (8, 8), "bias": (8,)} for n in ps
    }
    np.testing.assert_array_equal(ps["out_proj"]["bias"], np.zeros(8))
    assert not np.allclose(ps["q_proj"]["weight"], ps["k_proj"]["weight"])
    assert model == lx.MultiHeadAttention(8, 4) and hash(model) == hash(lx.MultiHeadAttention(8, 4))
    assert lx.parameter_count(model) == 4 * (64 + 8)
    printed = str(model)
    assert re.search(r"\n    q_proj = Dense\(8 => 8\), +# 72 parameters\n", printed)
    assert "    num_heads = 4,\n)" in printed and "Total: 288 parameters" in printed
    swapped = model.replace_children({"out_proj": lx.Dense(8, 8, use_bias=False)})
    assert lx.parameter_count(swapped) == 3 * 72 + 64 and swapped.num_heads == 4


@pytest.mark.torch
@pytest.mark.parametrize("masked", [False, True])
def test_self_attention_matches_torch(masked, key):
    torch = pytest.importorskip("torch")
    model = lx.MultiHeadAttention(8, 2, return_weights=True)
    ps, st = _random_params(model, key)
    ref = _torch_mha(torch, ps, 8, 2)
    x = _x(3, 5, 8)
    tx = torch.tensor(np.asarray(x))
    if masked:
        causal = np.tril(np.ones((5, 5), dtype=bool))
        (y, weights), _ = model((x, x, x, jnp.asarray(causal)), ps, st)
        # PyTorch's boolean mask marks the positions NOT to attend.
        out, w = ref(tx, tx, tx, attn_mask=torch.tensor(~causal), average_attn_weights=False)
        assert np.all(np.asarray(weights)[..., ~causal] == 0)
    else:
        (y, weights), _ = model(x, ps, st)
        out, w = ref(tx, tx, tx, average_attn_weights=False)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, w.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_cross_attention_with_padding_mask_matches_torch_with_gradients(key):
    torch = pytest.importorskip("torch")
    model = lx.MultiHeadAttention(6, 3)
    ps, st = _random_params(model, key)
    ref = _torch_mha(torch, ps, 6, 3)
    q, k, v = _x(2, 4, 6), _x(2, 7, 6, seed=2), _x(2, 7, 6, seed=3)
    keep = np.array([[True] * 7, [True] * 4 + [False] * 3])  # the second sequence has 3 padding keys
    mask = jnp.asarray(keep)[:, None, None, :]
    tq, tk, tv = (torch.tensor(np.asarray(a), requires_grad=True) for a in (q, k, v))
    out, _ = ref(tq, tk, tv, key_padding_mask=torch.tensor(~keep), need_weights=False)
    y, _ = model((q, k, v, mask), ps, st)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5)

    direction = np.asarray(_x(2, 4, 6, seed=4))
    (out * torch.tensor(direction)).sum().backward()
    grad_ps, grad_q, grad_k = jax.jit(
        jax.grad(lambda ps, q, k: jnp.vdot(model((q, k, v, mask), ps, st)[0], direction), argnums=(0, 1, 2))
    )(ps, q, k)
    np.testing.assert_allclose(grad_q, tq.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_k, tk.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_ps["out_proj"]["weight"], ref.out_proj.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    in_proj = np.concatenate([grad_ps[n]["weight"] for n in ("q_proj", "k_proj", "v_proj")])
    np.testing.assert_allclose(in_proj, ref.in_proj_weight.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_pair_input_means_key_equals_value(key):
    model = lx.MultiHeadAttention(4, 1)
    ps, st = lx.setup(key, model)
    q, kv = _x(2, 3, 4), _x(2, 5, 4, seed=2)
    np.testing.assert_array_equal(model((q, kv), ps, st)[0], model((q, kv, kv, None), ps, st)[0])


def test_fully_masked_query_attends_uniformly_instead_of_nan(key):
    model = lx.MultiHeadAttention(4, 2, return_weights=True)
    ps, st = lx.setup(key, model)
    x = _x(1, 3, 4)
    mask = jnp.array([[False, False, False], [True, True, False], [True, True, True]])
    (y, weights), _ = model((x, x, x, mask), ps, st)
    assert bool(jnp.isfinite(y).all())
    np.testing.assert_allclose(weights[0, :, 0], np.full((2, 3), 1 / 3), rtol=1e-6)


def test_attention_rejects_mask_of_wrong_shape(key):
    model = lx.Chain(attn=lx.MultiHeadAttention(4, 2))
    ps, st = lx.setup(key, model)
    x = jnp.ones((2, 3, 4))
    with pytest.raises(
        lx.ShapeError,
        match=r"MultiHeadAttention\(4, num_heads=2\) at attn: expected a boolean mask broadcastable to "
        r"\(batch, num_heads, q_len, kv_len\) = \(2, 2, 3, 3\) \(True = attend\), got shape \(2, 3\)",
    ):
        model((x, x, x, jnp.ones((2, 3), dtype=bool)), ps, st)
    with pytest.raises(lx.ShapeError, match=r"got shape \(3, 3\) and dtype float32"):
        model((x, x, x, jnp.ones((3, 3))), ps, st)


def test_attention_rejects_wrong_inputs(key):
    model = lx.MultiHeadAttention(4, 2)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"expected query of shape \(batch, len, 4\), got shape \(2, 3, 5\)"):
        model(jnp.ones((2, 3, 5)), ps, st)
    with pytest.raises(lx.ShapeError, match=r"key/value of the same length, got shapes \(2, 3, 4\), \(2, 5, 4\)"):
        model((jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4)), jnp.ones((2, 6, 4))), ps, st)
    with pytest.raises(lx.ShapeError, match=r"or `\(q, k, v, mask\)`, got a tuple of length 5"):
        model((jnp.ones((2, 3, 4)),) * 5, ps, st)


def test_attention_rejects_dims_not_divisible_by_heads():
    with pytest.raises(lx.ConfigError, match=r"MultiHeadAttention: `dims` \(10\) must be divisible by `num_heads`"):
        lx.MultiHeadAttention(10, 4)
    with pytest.raises(lx.ConfigError, match=r"`num_heads` must be a positive int, got 0"):
        lx.MultiHeadAttention(10, 0)


def test_attention_projections_can_be_frozen_and_unfrozen(key):
    from luxjax import experimental as lxe

    model = lx.Chain(attn=lx.MultiHeadAttention(4, 2), head=lx.Dense(4, 1))
    ps, st = lx.setup(key, model)
    x = _x(2, 3, 4)
    frozen, ps_f, st_f = lxe.freeze(model, ps, st, where=lambda path, layer: str(path) == "attn.q_proj")
    assert frozen["attn"].q_proj == lxe.FrozenLayer(model["attn"].q_proj, None)
    assert ps_f["attn"]["q_proj"] == {} and frozen["attn"].num_heads == 2
    np.testing.assert_allclose(frozen(x, ps_f, st_f)[0], model(x, ps, st)[0], rtol=1e-6)
    assert lxe.unfreeze(frozen, ps_f, st_f)[0] == model


@pytest.mark.torch
def test_separate_key_and_value_sizes_match_torch(key):
    torch = pytest.importorskip("torch")
    model = lx.MultiHeadAttention(8, 2, key_dims=6, value_dims=5, return_weights=True)
    ps, st = _random_params(model, key)
    ref = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=True)
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(ref, f"{name}_proj_weight").copy_(t(ps[f"{name}_proj"]["weight"]))
        ref.in_proj_bias.copy_(t(jnp.concatenate([ps[n]["bias"] for n in ("q_proj", "k_proj", "v_proj")])))
        ref.out_proj.weight.copy_(t(ps["out_proj"]["weight"]))
        ref.out_proj.bias.copy_(t(ps["out_proj"]["bias"]))
    q, k, v = _x(3, 4, 8), _x(3, 6, 6, seed=2), _x(3, 6, 5, seed=3)
    (y, weights), _ = model((q, k, v), ps, st)
    out, w = ref(t(q), t(k), t(v), average_attn_weights=False)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, w.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("return_weights", [False, True])
def test_causal_attention_with_other_sizes_matches_torch_sdpa(return_weights, key):
    # qk_dims, v_dims and out_dims all differ; the fused path (jax.nn.dot_product_attention)
    # runs when the weights are not returned and the head sizes agree.
    torch = pytest.importorskip("torch")
    v_dims = 6 if return_weights else 4
    model = lx.MultiHeadAttention(
        5, 2, qk_dims=4, v_dims=v_dims, out_dims=3, is_causal=True, return_weights=return_weights
    )
    options = ", return_weights=True, qk_dims=4, v_dims=6" if return_weights else ", qk_dims=4"
    assert repr(model) == f"MultiHeadAttention(5, num_heads=2{options}, out_dims=3, is_causal=True)"
    ps, st = _random_params(model, key)
    x = _x(2, 4, 5)
    y, _ = model(x, ps, st)
    y = y[0] if return_weights else y
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    heads = lambda a: t(a).reshape(2, 4, 2, -1).transpose(1, 2)  # noqa: E731
    proj = {n: np.asarray(x) @ np.asarray(ps[n]["weight"]).T + np.asarray(ps[n]["bias"]) for n in ps if n != "out_proj"}
    attended = torch.nn.functional.scaled_dot_product_attention(
        heads(proj["q_proj"]), heads(proj["k_proj"]), heads(proj["v_proj"]), is_causal=True
    )
    attended = attended.transpose(1, 2).reshape(2, 4, v_dims).numpy()
    expected = attended @ np.asarray(ps["out_proj"]["weight"]).T + np.asarray(ps["out_proj"]["bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_is_causal_combines_with_a_mask_and_bfloat16_stays_bfloat16(key):
    model = lx.MultiHeadAttention(4, 2, is_causal=True)
    explicit = lx.MultiHeadAttention(4, 2)
    ps, st = _random_params(model, key)
    x = _x(2, 5, 4)
    causal = jnp.tril(jnp.ones((5, 5), dtype=bool))
    padding = jnp.array([True, True, True, False, False])
    y, _ = model((x, x, x, padding), ps, st)
    np.testing.assert_allclose(y, explicit((x, x, x, causal & padding[None]), ps, st)[0], rtol=1e-5, atol=1e-6)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), ps)
    y16, _ = model(x.astype(jnp.bfloat16), half, st)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), model(x, ps, st)[0], rtol=0.05, atol=0.05)


def test_attention_dropout_drops_weights_in_training_only(key):
    p = 0.5
    model = lx.MultiHeadAttention(4, 2, attention_dropout=p, return_weights=True)
    plain = lx.MultiHeadAttention(4, 2, return_weights=True)
    assert repr(model) == "MultiHeadAttention(4, num_heads=2, return_weights=True, attention_dropout=0.5)"
    ps, st = lx.setup(key, model)
    assert list(ps) == ["q_proj", "k_proj", "v_proj", "out_proj", "attention_dropout"]
    assert sorted(st["attention_dropout"]) == ["key", "training"]
    x = _x(2, 6, 4)
    ps_plain = {n: ps[n] for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    st_plain = {n: st[n] for n in ps_plain}
    (_, w_plain), _ = plain(x, ps_plain, st_plain)
    (_, w), new_st = model(x, ps, st)
    kept = np.asarray(w) != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(np.asarray(w)[kept], np.asarray(w_plain)[kept] / (1 - p), rtol=1e-5)
    assert not np.array_equal(
        jax.random.key_data(new_st["attention_dropout"]["key"]), jax.random.key_data(st["attention_dropout"]["key"])
    )
    (y_test, w_test), _ = model(x, ps, lx.testmode(st))
    np.testing.assert_allclose(w_test, w_plain, rtol=1e-6)
    fused = lx.MultiHeadAttention(4, 2, attention_dropout=p)
    np.testing.assert_allclose(fused(x, ps, lx.testmode(st))[0], y_test, rtol=1e-5, atol=1e-6)
    with pytest.raises(lx.ConfigError, match=r"`attention_dropout` must be in \[0, 1\), got 1.5"):
        lx.MultiHeadAttention(4, 2, attention_dropout=1.5)
    with pytest.raises(lx.ConfigError, match=r"`v_dims` \(3\) must be divisible by `num_heads` \(2\)"):
        lx.MultiHeadAttention(4, 2, v_dims=3)
