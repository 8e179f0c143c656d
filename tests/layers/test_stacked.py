"""Stacked, RepeatedLayer and Remat: equal to their unrolled forms, and the toolkit inside a stack (issue 16)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
from luxjax import experimental as lxe
from luxjax import training as lxt

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)


def block() -> lx.Layer:
    return lx.Chain(attn=lx.Dense(4, 4, jnp.tanh), norm=lx.BatchNorm(4), drop=lx.Dropout(0.2), mlp=lx.Dense(4, 4))


def model(n: int = 3) -> lx.Chain:
    return lx.Chain(emb=lx.Dense(4, 4), blocks=lx.Stacked(block(), n), head=lx.Dense(4, 2))


def unrolled(ps, st):
    """The same model with its stack as a Chain, and the values moved over."""
    stacked = model()
    chain, chain_ps, chain_st = stacked["blocks"].to_chain(ps["blocks"], st["blocks"])
    return (
        lx.Chain(emb=stacked["emb"], blocks=chain, head=stacked["head"]),
        {**ps, "blocks": chain_ps},
        {**st, "blocks": chain_st},
    )


def test_stacked_equals_the_unrolled_chain_in_outputs_states_and_gradients(key):
    stacked = model()
    ps, st = lx.setup(key, stacked)
    assert ps["blocks"]["attn"]["weight"].shape == (3, 4, 4)
    assert st["blocks"]["drop"]["key"].shape == (3,)
    chain, chain_ps, chain_st = unrolled(ps, st)

    def loss(model, ps, st):
        y, st = model(X, ps, st)
        return jnp.sum(y**2), st

    for run in (lambda f: f, jax.jit):
        (value, new_st), grads = run(jax.value_and_grad(lambda ps: loss(stacked, ps, st), has_aux=True))(ps)
        (chain_value, chain_new_st), chain_grads = run(
            jax.value_and_grad(lambda ps: loss(chain, ps, chain_st), has_aux=True)
        )(chain_ps)
        np.testing.assert_allclose(value, chain_value, rtol=1e-6)
        restacked = lx.Stacked.from_chain(chain["blocks"], chain_grads["blocks"], chain_new_st["blocks"])
        for got, expected in ((grads["blocks"], restacked[1]), (new_st["blocks"], restacked[2])):
            leaves = [(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected))]
            leaves = [
                (jax.random.key_data(a), jax.random.key_data(b))
                if a.dtype == st["blocks"]["drop"]["key"].dtype
                else (a, b)
                for a, b in leaves
            ]
            # 1e-6 of the tree's scale: the scan and the unrolled chain round their sums differently
            scale = max(float(np.abs(b).max()) for _, b in leaves)
            for a, b in leaves:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale)
        # each block kept its own running statistics
        means = new_st["blocks"]["norm"]["running_mean"]
        assert not np.allclose(means[0], means[1])


def test_from_chain_and_to_chain_round_trip(key):
    stacked = lx.Stacked(lx.Dense(3, 3), 4)
    ps, st = lx.setup(key, stacked)
    chain, chain_ps, chain_st = stacked.to_chain(ps, st)
    assert chain == lx.Chain(*[lx.Dense(3, 3)] * 4)
    again, again_ps, again_st = lx.Stacked.from_chain(chain, chain_ps, chain_st)
    assert again == stacked
    np.testing.assert_array_equal(again_ps["weight"], ps["weight"])
    with pytest.raises(lx.ConfigError, match=r"every block must be the same layer, but 'layer_2' is Dense\(3 => 2\)"):
        lx.Stacked.from_chain(lx.Chain(lx.Dense(3, 3), lx.Dense(3, 2)), {}, {})


def test_display_and_counts_are_those_of_the_unrolled_blocks(key):
    stacked = model(24)
    assert lx.parameter_count(stacked) == 20 + 24 * (20 + 8 + 20) + 10
    ps, st = lx.setup(key, stacked)
    chain, _, _ = unrolled(*lx.setup(key, model()))
    assert lx.parameter_count(model()) == lx.parameter_count(chain)
    assert lx.state_count(model()) == lx.state_count(chain)
    assert str(stacked) == "\n".join(
        [
            "Chain(",
            "    emb = Dense(4 => 4),                          # 20 parameters",
            "    blocks = Stacked(",
            "        24 × Chain(",
            "            attn = Dense(4 => 4, tanh),           # 480 (20 x 24) parameters",
            "            norm = BatchNorm(4),                  # 192 (8 x 24) parameters, plus 216 (9 x 24) "
            "non-trainable",
            "            drop = Dropout(0.2),                  # 0 parameters, plus 48 (2 x 24) non-trainable",
            "            mlp = Dense(4 => 4),                  # 480 (20 x 24) parameters",
            "        ),",
            "    ),",
            "    head = Dense(4 => 2),                         # 10 parameters",
            ")                                                 # Total: 1_182 parameters, plus 264 states.",
        ]
    )
    assert repr(lx.Stacked(lx.Dense(2, 2), 3, unroll=3)) == "Stacked(3 × Dense(2 => 2), unroll=3)"


def test_bad_blocks_and_bad_trees_are_clear_errors(key):
    with pytest.raises(lx.ShapeError, match=r"Stacked\(2 × Dense\(4 => 3\)\): each step's output is the next"):
        stacked = lx.Stacked(lx.Dense(4, 3), 2)
        stacked(X, *lx.setup(key, stacked))
    stacked = lx.Stacked(lx.Dense(4, 4), 2)
    ps, st = lx.setup(key, stacked)
    with pytest.raises(lx.StructureError, match=r"'weight' has shape \(4, 4\), expected \(2, 4, 4\)"):
        stacked(X, {**ps, "weight": ps["weight"][0]}, st)
    with pytest.raises(lx.StructureError, match=r"one block per index of their leading axis \(2\), but weight has"):
        stacked.to_chain({**ps, "weight": ps["weight"][0]}, st)
    with pytest.raises(lx.ConfigError, match=r"Stacked: `n` must be a positive int, got 0"):
        lx.Stacked(lx.Dense(4, 4), 0)


def test_layer_map_visits_every_block_with_its_slice_and_index(key):
    stacked = model()
    ps, st = lx.setup(key, stacked)
    seen = []

    def visit(layer, layer_ps, layer_st, path):
        seen.append(str(path))
        if path == ("blocks", 2, "mlp"):
            np.testing.assert_array_equal(layer_ps["weight"], ps["blocks"]["mlp"]["weight"][2])
        return layer, layer_ps, layer_st

    same, same_ps, same_st = lxe.layer_map(visit, stacked, ps, st)
    assert seen[:5] == ["emb", "blocks.0.attn", "blocks.0.norm", "blocks.0.drop", "blocks.0.mlp"]
    assert seen[-1] == "head" and len(seen) == 2 + 3 * 4
    assert same is stacked and same_ps["blocks"] is ps["blocks"]  # the identity copies nothing

    def zero_mlp(layer, layer_ps, layer_st, path):
        if path[-1] == "mlp":
            layer_ps = jax.tree.map(jnp.zeros_like, layer_ps)
        return layer, layer_ps, layer_st

    _, zeroed, _ = lxe.layer_map(zero_mlp, stacked, ps, st)
    assert zeroed["blocks"]["mlp"]["weight"].shape == (3, 4, 4) and not zeroed["blocks"]["mlp"]["weight"].any()

    def freeze_one(layer, layer_ps, layer_st, path):
        return lxe.freeze(layer, layer_ps, layer_st) if path == ("blocks", 1, "attn") else (layer, layer_ps, layer_st)

    with pytest.raises(lx.StructureError, match=r"same layer .* at index 0 and Chain\(attn=FrozenLayer.* at index 1"):
        lxe.layer_map(freeze_one, stacked, ps, st)


def test_layer_at_takes_one_block(key):
    stacked = model()
    ps, st = lx.setup(key, stacked)
    layer, layer_ps, _ = lxe.layer_at(stacked, ps, st, "blocks.2.mlp")
    assert layer == lx.Dense(4, 4)
    np.testing.assert_array_equal(layer_ps["weight"], ps["blocks"]["mlp"]["weight"][2])
    with pytest.raises(KeyError, match=r"no block 3 at blocks: Stacked\(3 × .* has 3 blocks"):
        lxe.layer_at(stacked, ps, st, "blocks.3.mlp")


def test_freeze_inside_a_stack_freezes_every_block(key):
    stacked = model()
    ps, st = lx.setup(key, stacked)
    frozen, frozen_ps, frozen_st = lxe.freeze(stacked, ps, st, ("blocks.attn",))
    assert frozen["blocks"].block["attn"] == lxe.FrozenLayer(lx.Dense(4, 4, jnp.tanh), None)
    assert frozen_st["blocks"]["attn"]["frozen_params"]["weight"] is ps["blocks"]["attn"]["weight"]
    assert lx.parameter_count(frozen) == lx.parameter_count(stacked) - 3 * 20
    np.testing.assert_array_equal(frozen(X, frozen_ps, frozen_st)[0], stacked(X, ps, st)[0])
    by_type = lxe.freeze(stacked, where=lambda path, layer: isinstance(layer, lx.BatchNorm))
    assert by_type["blocks"].block["norm"] == lxe.FrozenLayer(lx.BatchNorm(4), None)
    with pytest.raises(ValueError, match=r"'blocks.1.attn' cannot freeze block 1 alone. Freeze 'blocks.attn'"):
        lxe.freeze(stacked, ps, st, ("blocks.1.attn",))
    thawed, thawed_ps, _ = lxe.unfreeze(frozen, frozen_ps, frozen_st)
    assert thawed == stacked  # the values come back restacked from the blocks: equal, not the same arrays
    np.testing.assert_array_equal(thawed_ps["blocks"]["attn"]["weight"], ps["blocks"]["attn"]["weight"])


class PoisonedGradient(lx.Layer):
    """The identity whose backward pass makes a NaN."""

    def __call__(self, x, ps, st):
        @jax.custom_vjp
        def identity(x):
            return x

        identity.defvjp(lambda x: (x, None), lambda _, g: (g * jnp.nan,))
        return identity(x), st


def test_debug_mode_names_the_block_forward_and_backward(key):
    stacked = lx.Chain(emb=lx.Dense(4, 4), blocks=lx.Stacked(lx.Chain(a=lx.Dense(4, 4), b=lx.Dense(4, 4)), 5))
    ps, st = lx.setup(key, stacked)
    debug = lxe.debug_mode(stacked)
    assert debug["blocks"].block["b"].location == ("blocks", "*", "b")
    ps["blocks"]["b"]["weight"] = ps["blocks"]["b"]["weight"].at[3, 0, 0].set(jnp.nan)
    message = (
        r"NaN detected in parameters \(weight\) of layer Dense\(4 => 4\) at location blocks\.3\.b \(forward pass\)"
    )
    with pytest.raises(lxe.NaNError, match=message):
        lxe.raise_nan_errors(jax.jit(debug))(X, ps, st)
    with pytest.raises(lxe.NaNError, match=message):
        debug(X, ps, st)  # eagerly too

    poisoned = lx.Stacked(lx.Chain(a=lx.Dense(4, 4), bad=PoisonedGradient(), b=lx.Dense(4, 4)), 5)
    ps, st = lx.setup(key, poisoned)
    debug = lxe.debug_mode(poisoned)
    grad = jax.jit(jax.grad(lambda ps: debug(X, ps, st)[0].sum()))
    # the backward pass runs from the last block: block 4 makes the first NaN
    with pytest.raises(lxe.NaNError, match=r"gradient of input of layer PoisonedGradient\(\) at location 4\.bad"):
        lxe.raise_nan_errors(grad)(ps)


def test_ties_checkpoints_and_flattening_of_stacked_trees(key, tmp_path):
    stacked = lx.Chain(embed=lx.Dense(4, 4), blocks=lx.Stacked(lx.Dense(4, 4), 3))
    ps, st = lx.setup(key, stacked)
    with pytest.raises(ValueError, match=r"'embed.weight' has shape \(4, 4\) but 'blocks.weight' has \(3, 4, 4\)"):
        lxe.share_parameters(ps, (("blocks.weight", "embed.weight"),))
    vector, unflatten = lxt.flatten_parameters(ps)
    assert vector.shape == (lx.parameter_count(stacked),)
    np.testing.assert_array_equal(unflatten(vector)["blocks"]["weight"], ps["blocks"]["weight"])
    path = os.path.join(tmp_path, "stacked.safetensors")
    lxt.save(path, ps, st)
    loaded_ps, _ = lxt.load(path)
    np.testing.assert_array_equal(loaded_ps["blocks"]["weight"], ps["blocks"]["weight"])

    def objective(model, ps, st, data):
        y, st = model(data, ps, st)
        return jnp.mean(y**2), st, {}

    ts = lxt.TrainState(stacked, ps, st, optax.adam(1e-2))
    for _ in range(3):
        _, loss, _, ts = lxt.single_train_step(objective, X, ts)
    assert ts.parameters["blocks"]["weight"].shape == (3, 4, 4)


def test_remat_changes_no_result_and_checks_its_policy(key):
    inner = lx.Chain(lx.Dense(4, 8, jax.nn.gelu), lx.Dense(8, 4))
    for policy in (None, "dots_saveable", jax.checkpoint_policies.nothing_saveable):
        remat = lx.Stacked(lx.Remat(inner, policy=policy), 2)
        plain = lx.Stacked(inner, 2)
        ps, st = lx.setup(key, plain)
        grad = jax.grad(lambda ps, m, st=st: m(X, ps, st)[0].sum())
        np.testing.assert_allclose(grad(ps, remat)["layer_1"]["weight"], grad(ps, plain)["layer_1"]["weight"], 1e-6)
    assert lx.parameter_count(lx.Remat(inner)) == lx.parameter_count(inner)
    with pytest.raises(lx.ConfigError, match=r"Remat: unknown `policy` 'dots'; use None, a function, or one of"):
        lx.Remat(inner, policy="dots")


def test_repeated_layer_applies_one_layer_repeatedly(key):
    layer = lx.Dense(4, 4, jnp.tanh)
    ps, st = lx.setup(key, layer)
    expected = X
    for _ in range(3):
        expected = layer(expected, ps, st)[0]
    repeated = lx.RepeatedLayer(layer, repeats=3)
    assert lx.parameter_count(repeated) == 20 and repr(repeated) == "RepeatedLayer(Dense(4 => 4, tanh), repeats=3)"
    np.testing.assert_allclose(repeated(X, ps, st)[0], expected, rtol=1e-6)

    injected = lx.RepeatedLayer(lx.WrappedFunction(lambda pair: pair[0] + pair[1]), repeats=3, input_injection=True)
    np.testing.assert_allclose(injected(X, {}, {})[0], 4 * X, rtol=1e-6)
    norm = lx.RepeatedLayer(lx.BatchNorm(4), repeats=2)
    _, norm_st = norm(X, *lx.setup(key, norm))
    assert not np.allclose(norm_st["running_mean"], 0)  # the state threads through the repeats


def test_eager_grad_through_a_stack_in_debug_mode_raises_the_nan_error(key):
    poisoned = lx.Stacked(lx.Chain(a=lx.Dense(4, 4), bad=PoisonedGradient(), b=lx.Dense(4, 4)), 5)
    ps, st = lx.setup(key, poisoned)
    debug = lxe.debug_mode(poisoned)
    loss = lambda ps: debug(X, ps, st)[0].sum()  # noqa: E731
    with pytest.raises(lxe.NaNError, match=r"gradient of input of layer PoisonedGradient\(\) at location 4\.bad"):
        jax.grad(loss)(ps)  # eagerly: the scan's backward pass runs compiled, outside the layers' code
    clean = lx.Stacked(lx.Dense(4, 4), 3)
    ps, st = lx.setup(key, clean)
    ps["weight"] = ps["weight"].at[1, 0, 0].set(jnp.nan)
    debug = lxe.debug_mode(clean)
    with pytest.raises(lxe.NaNError, match=r"parameters \(weight\) of layer Dense\(4 => 4\) at location 1 \(forward"):
        jax.grad(lambda ps: debug(X, ps, st)[0].sum())(ps)
    ps = lx.setup(key, clean)[0]  # a stack without checks keeps forward-mode differentiation
    tangent = jax.jvp(lambda x: clean(x, ps, st)[0], (X,), (jnp.ones_like(X),))[1]
    eps = 1e-3
    by_differences = (clean(X + eps, ps, st)[0] - clean(X - eps, ps, st)[0]) / (2 * eps)
    np.testing.assert_allclose(tangent, by_differences, rtol=1e-2, atol=1e-3)
