"""LoRA adapters (issue 19): start equal, train only A and B, merge back exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
from luxjax import experimental as lxe
from luxjax import training as lxt

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 8)), jnp.float32)


def transformer(n: int = 2) -> lx.Chain:
    attention = lx.Chain(norm=lx.LayerNorm(8), mha=lx.MultiHeadAttention(8, 2))
    mlp = lx.Chain(fc1=lx.Dense(8, 16, jax.nn.gelu), fc2=lx.Dense(16, 8))
    block = lx.Chain(attn=lx.SkipConnection(attention, jnp.add), mlp=lx.SkipConnection(mlp, jnp.add))
    return lx.Chain(blocks=lx.Stacked(block, n), head=lx.Dense(8, 3))


def mse(model, ps, st, data):
    y, st = model(data, ps, st)
    return jnp.mean((y - 1.0) ** 2), st, {}


def test_the_adapted_model_starts_equal_and_trains_only_the_adapters(key):
    model = transformer()
    ps, st = lx.setup(key, model)
    adapted, ps_a, st_a = lxe.lora(model, ps, st, rank=2, where="blocks.attn.mha.*_proj")
    mha = adapted["blocks"].block["attn"].layers["mha"]
    assert isinstance(mha.q_proj, lxe.LoRA) and isinstance(mha.out_proj, lxe.LoRA) and mha.q_proj.rank == 2
    np.testing.assert_array_equal(adapted(X, ps_a, st_a)[0], model(X, ps, st)[0])
    assert lx.parameter_count(adapted) == 2 * 4 * (8 * 2 + 2 * 8)  # 2 blocks x 4 projections x (A + B): all
    assert set(ps_a["blocks"]["attn"]["mha"]["q_proj"]) == {"A", "B"} and ps_a["head"] == {}
    grads = jax.grad(lambda ps: mse(adapted, ps, st_a, X)[0])(ps_a)
    proj = grads["blocks"]["attn"]["mha"]["q_proj"]
    assert set(proj) == {"A", "B"} and proj["B"].shape == (2, 2, 8)
    assert float(jnp.abs(proj["B"]).max()) > 0  # B gets a gradient at once (A is random, B zero)

    ts = lxt.TrainState(adapted, ps_a, st_a, optax.adam(1e-2))
    base = np.array(ps["blocks"]["attn"]["mha"]["q_proj"]["weight"])
    for _ in range(5):
        _, loss, _, ts = lxt.single_train_step(mse, X, ts)
    frozen = ts.states["blocks"]["attn"]["mha"]["q_proj"]["frozen_params"]["weight"]
    np.testing.assert_array_equal(frozen, base)  # the base never moves
    assert lx.parameter_count(adapted) < lx.parameter_count(model) / 4


def test_merge_gives_the_plain_model_with_the_same_outputs(key):
    model = transformer()
    ps, st = lx.setup(key, model)
    adapted, ps_a, st_a = lxe.lora(model, ps, st, rank=2, where=lx.Dense, alpha=4.0)
    ts = lxt.TrainState(adapted, ps_a, st_a, optax.adam(1e-2))
    for _ in range(5):
        _, _, _, ts = lxt.single_train_step(mse, X, ts)
    merged, ps_m, st_m = lxe.merge_lora(adapted, ts.parameters, ts.states)
    assert merged == model and lx.parameter_count(merged) == lx.parameter_count(model)
    assert not any(isinstance(layer, lxe.LoRA) for _, layer in lx.core.iter_layers(merged))
    np.testing.assert_allclose(merged(X, ps_m, st_m)[0], adapted(X, ts.parameters, ts.states)[0], atol=1e-6)
    plain, ps_p, _ = lxe.unfreeze(merged, ps_m, st_m)
    assert plain == model and jax.tree.structure(ps_p) == jax.tree.structure(ps)  # trainable again
    base, ps_b, _ = lxe.unlora(adapted, ts.parameters, ts.states)
    assert base == model
    np.testing.assert_array_equal(ps_b["head"]["weight"], ps["head"]["weight"])


def test_lora_on_a_convolution_and_inside_parallel(key):
    model = lx.Chain(conv=lx.Conv((3, 3), 2, 4, padding=1), both=lx.Parallel(jnp.add, lx.Dense(4, 4), lx.Dense(4, 4)))
    ps, st = lx.setup(key, model)
    x = jnp.ones((1, 5, 5, 2))
    adapted, ps_a, st_a = lxe.lora(model, ps, st, rank=3, where=(lx.Conv, "both.layer_2"))
    assert ps_a["conv"]["A"].shape == (3 * 3 * 2, 3) and ps_a["conv"]["B"].shape == (3, 4)
    assert isinstance(adapted["both"]["layer_2"], lxe.LoRA)
    assert adapted["both"]["layer_1"] == lxe.FrozenLayer(lx.Dense(4, 4), None)  # the rest is frozen
    np.testing.assert_array_equal(adapted(x, ps_a, st_a)[0], model(x, ps, st)[0])
    shown = (
        "LoRA(Conv((3, 3), 2 => 4, padding=1, cross_correlation=True), rank=3)  # 66 parameters, plus 76 non-trainable"
    )
    assert str(adapted["conv"]) == shown


def test_bad_selectors_ranks_and_ties_are_clear_errors(key):
    model = lx.Chain(embed=lx.Embedding(10, 4), out=lx.Dense(4, 10))
    ps, st = lx.setup(key, model)
    with pytest.raises(ValueError, match=r"`where` selected no layer; the leaf layers are: embed \(Embedding"):
        lxe.lora(model, ps, st, rank=2, where="decoder.*")
    with pytest.raises(lx.ConfigError, match=r"`rank` must be an int from 1 to 4 for Dense\(4 => 10\)"):
        lxe.lora(model, ps, st, rank=5, where="out")
    with pytest.raises(lx.ConfigError, match=r"LoRA: NoOpLayer\(\) has no `weight` to adapt; it has no parameters"):
        lxe.LoRA(lx.NoOpLayer(), 1)
    tied = lxe.share_parameters(ps, (("out.weight", "embed.weight"),))
    with pytest.raises(ValueError, match=r"out.weight is tied to embed.weight; an adapter on one place of a tie"):
        lxe.lora(model, tied, st, rank=2, where="out")
