"""Every exported layer passes `luxjax.testing.check_layer` on at least one example."""

import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
import luxjax.experimental as lxe
from luxjax.testing import check_layer, check_precision

ABSTRACT = {lx.Layer, lx.ContainerLayer, lx.WrapperLayer}


def x(*shape, seed=0):
    # NumPy's generator: jax.random would compile once per shape, a second or more in all.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def exported_layers():
    return {
        value
        for module in (lx, lxe)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, lx.Layer) and value not in ABSTRACT
    }


def registry():
    """Examples per exported layer: `(model, input)`, or `(model, input, check_layer options)`."""
    return {
        lx.Dense: [(lx.Dense(3, 2, jnp.tanh), x(4, 3))],
        lx.Scale: [(lx.Scale((2, 3), jnp.tanh), x(4, 2, 3))],
        lx.Bilinear: [(lx.Bilinear((3, 2), 2, jnp.tanh), (x(4, 3), x(4, 2, seed=1))), (lx.Bilinear(3, 2), x(4, 3))],
        lx.Maxout: [(lx.Maxout(lx.Dense(2, 3), lx.Dense(2, 3)), x(4, 2))],
        lx.SelectDim: [(lx.SelectDim(1, -1), x(2, 3, 2)), (lx.SelectDim(2, (0, 2)), x(2, 2, 3))],
        lx.ReverseSequence: [(lx.ReverseSequence(), x(2, 3, 2))],
        lx.Stacked: [(lx.Stacked(lx.Chain(lx.Dense(3, 3, jnp.tanh), lx.LayerNorm(3)), 3), x(4, 3))],
        lx.RepeatedLayer: [(lx.RepeatedLayer(lx.Dense(3, 3, jnp.tanh), repeats=3), x(4, 3))],
        lx.Remat: [(lx.Remat(lx.Chain(lx.Dense(3, 4, jnp.tanh), lx.Dense(4, 2)), policy="dots_saveable"), x(4, 3))],
        lx.Chain: [(lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3, jnp.tanh), lx.Dense(3, 2)), x(4, 2))],
        lx.Parallel: [(lx.Parallel(jnp.add, lx.Dense(2, 3), lx.Dense(2, 3, jnp.tanh)), x(3, 2))],
        lx.BranchLayer: [(lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 1)), x(3, 2))],
        lx.PairwiseFusion: [(lx.PairwiseFusion(jnp.add, lx.Dense(2, 2), lx.Dense(2, 2)), x(3, 2))],
        lx.SkipConnection: [
            (lx.SkipConnection(lx.Dense(2, 2, jnp.tanh), jnp.add), x(3, 2)),
            (lx.SkipConnection(lx.Dense(2, 2), lx.WrappedFunction(lambda pair: pair[0] * pair[1])), x(3, 2)),
        ],
        lx.Recurrence: [
            (lx.Recurrence(lx.LSTMCell(2, 3), return_sequence=True), x(2, 3, 2)),
            # Under debug_mode its gradient differs by an ulp (inside lax.scan): the tolerance's witness.
            (lx.Recurrence(lx.GRUCell(2, 3)), x(2, 3, 2)),
        ],
        lx.LSTMCell: [(lx.LSTMCell(2, 3), x(2, 2)), (lx.LSTMCell(2, 3, train_state=True, train_memory=True), x(2, 2))],
        lx.GRUCell: [(lx.GRUCell(2, 3), x(2, 2))],
        lx.RNNCell: [(lx.RNNCell(2, 3, train_state=True), x(2, 2))],
        lx.BidirectionalRNN: [(lx.BidirectionalRNN(lx.GRUCell(2, 2), lx.RNNCell(2, 3)), x(2, 3, 2))],
        lx.StatefulRecurrentCell: [(lx.StatefulRecurrentCell(lx.LSTMCell(2, 3), batch_shape=(2,)), x(2, 2))],
        lx.MultiHeadAttention: [
            (lx.MultiHeadAttention(4, 2), x(2, 3, 4)),
            # Training-mode attention dropout: the mask depends only on the state's key.
            (
                lx.MultiHeadAttention(4, 2, key_dims=3, value_dims=2, v_dims=2, out_dims=3, attention_dropout=0.2),
                (x(2, 3, 4), x(2, 2, 3), x(2, 2, 2)),
            ),
        ],
        lx.Conv: [(lx.Conv((3, 3), 2, 3, jnp.tanh, stride=2, padding=1), x(1, 5, 4, 2))],
        lx.ConvTranspose: [(lx.ConvTranspose((2, 2), 2, 1, stride=2), x(1, 2, 3, 2))],
        lx.Upsample: [(lx.Upsample(mode="bilinear", scale=2), x(1, 2, 3, 2)), (lx.Upsample(size=(3,)), x(2, 2, 1))],
        lx.PixelShuffle: [(lx.PixelShuffle(2), x(1, 2, 3, 8))],
        lx.MaxPool: [(lx.MaxPool((2, 2)), x(1, 4, 4, 2))],
        lx.MeanPool: [(lx.MeanPool(2, stride=1, padding=1), x(2, 3, 2))],
        lx.GlobalMaxPool: [(lx.GlobalMaxPool(), x(2, 3, 3, 2))],
        lx.GlobalMeanPool: [(lx.GlobalMeanPool(), x(2, 3, 2))],
        lx.AdaptiveMaxPool: [(lx.AdaptiveMaxPool((2, 2)), x(1, 5, 3, 2))],
        lx.AdaptiveMeanPool: [(lx.AdaptiveMeanPool(2), x(2, 5, 2))],
        lx.LPPool: [(lx.LPPool((2, 2), p=3), x(1, 4, 4, 2))],
        lx.GlobalLPPool: [(lx.GlobalLPPool(), x(2, 3, 3, 2))],
        lx.AdaptiveLPPool: [(lx.AdaptiveLPPool((2, 2)), x(1, 5, 3, 2))],
        lx.BatchNorm: [(lx.BatchNorm(2), x(4, 2))],
        lx.LayerNorm: [(lx.LayerNorm(3), x(2, 3)), (lx.LayerNorm((1, 2), axes=(1, 2)), x(2, 3, 2))],
        lx.GroupNorm: [(lx.GroupNorm(4, 2), x(2, 3, 4))],
        lx.InstanceNorm: [(lx.InstanceNorm(2, jnp.tanh, affine=True, track_stats=True), x(2, 3, 3, 2))],
        lx.RMSNorm: [(lx.RMSNorm(3), x(2, 3))],
        lx.WeightNorm: [(lx.WeightNorm(lx.Dense(3, 2, jnp.tanh), ("weight",)), x(4, 3))],
        # Training mode: the mask depends only on st["key"], so finite differences are valid.
        lx.Dropout: [(lx.Dropout(0.3), x(4, 3))],
        lx.AlphaDropout: [(lx.AlphaDropout(0.3), x(4, 3))],
        lx.VariationalHiddenDropout: [(lx.VariationalHiddenDropout(0.3), x(4, 3))],
        lx.Embedding: [
            (lx.Embedding(5, 3), jnp.array([[0, 4, 2], [1, 1, 3]])),
            (lx.Embedding((2, 3), 4), (jnp.array([0, 1, 1]), jnp.array([2, 0, 1]))),
        ],
        lx.SinusoidalPositionalEmbedding: [(lx.SinusoidalPositionalEmbedding(4), x(2, 3))],
        lx.RotaryPositionalEmbedding: [(lx.RotaryPositionalEmbedding(4, max_sequence_length=8), x(2, 3, 2, 4))],
        lx.WrappedFunction: [(lx.WrappedFunction(jnp.sin), x(3, 2))],
        lx.NoOpLayer: [(lx.NoOpLayer(), x(3, 2))],
        lx.ReshapeLayer: [(lx.ReshapeLayer((2, 3)), x(2, 6))],
        lx.FlattenLayer: [(lx.FlattenLayer(), x(2, 3, 2))],
        lxe.FrozenLayer: [(lxe.FrozenLayer(lx.Dense(2, 3), ("weight",)), x(3, 2))],
        lxe.LoRA: [(lxe.LoRA(lx.Dense(3, 4, jnp.tanh), 2, alpha=4.0), x(2, 3))],
        lxe.DebugLayer: [(lxe.DebugLayer(lx.Dense(2, 3, jnp.tanh)), x(3, 2))],
        # Under check_precision's bfloat16 policy this one is nested: its own float32 policy wins inside.
        lx.MixedPrecision: [
            (
                lx.MixedPrecision(lx.Chain(lx.Dense(3, 4, jnp.tanh), lx.LayerNorm(4)), lx.Precision(compute="float32")),
                x(2, 3),
            )
        ],
    }


EXAMPLES = [
    pytest.param(model, input_, options[0] if options else {}, id=f"{cls.__name__}-{i}")
    for cls, examples in registry().items()
    for i, (model, input_, *options) in enumerate(examples)
]


@pytest.mark.parametrize(("model", "input_", "options"), EXAMPLES)
def test_layer_contract(model, input_, options):
    check_layer(model, input_, **options)


@pytest.mark.parametrize(("model", "input_", "options"), EXAMPLES)
def test_layer_honours_mixed_precision(model, input_, options):
    del options
    check_precision(model, input_)


def test_every_exported_layer_has_an_example():
    exported, covered = exported_layers(), set(registry())
    missing = ", ".join(sorted(cls.__name__ for cls in exported - covered))
    assert not missing, f"exported layers without an example: {missing}; add an example to tests/test_contract.py"
    stale = ", ".join(sorted(cls.__name__ for cls in covered - exported))
    assert not stale, f"examples for layers that are not exported: {stale}"
