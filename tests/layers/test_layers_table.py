"""docs/layers.md lists every Lux layer with its luxjax name (issue 18), and each name is exported."""

import pathlib
import re

import pytest

import luxjax as lx

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "layers.md"

# Lux.jl's layers: its docs/src/api/Lux/layers.md ("Built-In Layers"), its experimental layers
# (docs/src/api/Lux/contrib.md) and its other exported layer types.
LUX_LAYERS = {
    *("BranchLayer", "Chain", "PairwiseFusion", "Parallel", "SkipConnection", "RepeatedLayer", "AlternatePrecision"),
    *("Conv", "ConvTranspose", "AlphaDropout", "Dropout", "VariationalHiddenDropout"),
    *("AdaptiveLPPool", "AdaptiveMaxPool", "AdaptiveMeanPool", "GlobalLPPool", "GlobalMaxPool", "GlobalMeanPool"),
    *("LPPool", "MaxPool", "MeanPool"),
    *("GRUCell", "LSTMCell", "RNNCell", "Recurrence", "StatefulRecurrentCell", "BidirectionalRNN"),
    *("Bilinear", "Dense", "Scale", "MultiHeadAttention"),
    *("Embedding", "RotaryPositionalEmbedding", "SinusoidalPositionalEmbedding"),
    *("FlattenLayer", "Maxout", "NoOpLayer", "ReshapeLayer", "SelectDim", "WrappedFunction", "ReverseSequence"),
    *("BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "WeightNorm", "RMSNorm", "PixelShuffle", "Upsample"),
    *("Experimental.FrozenLayer", "Experimental.DebugLayer"),
    *("StatefulLuxLayer", "CompactLuxLayer", "FluxLayer", "SimpleChainsLayer"),
}


def rows() -> list[tuple[str, str | None, str]]:
    """`(Lux name, luxjax name or None, note)` per row of the table."""
    section = DOCS.read_text().split("## Lux's layers in luxjax", 1)[1].split("\n## ", 1)[0]
    found = []
    for lux, ours, note in re.findall(r"^\| (.+?) \| (.+?) \| (.*?) ?\|$", section, re.M)[2:]:  # after the header
        name = re.match(r"`?([\w.]+)", lux)
        assert name is not None, lux
        found.append((name.group(1), ours.strip("`") if ours != "—" else None, note))
    return found


def test_table_lists_every_lux_layer_once():
    names = [lux for lux, _, _ in rows()]
    assert len(names) == len(set(names))
    assert set(names) == LUX_LAYERS


def test_a_layer_without_a_luxjax_name_says_why():
    for lux, ours, note in rows():
        if ours is None:
            assert note.startswith("none: "), lux


def test_conv_row_says_luxjax_cross_correlates_by_default():
    (note,) = [note for lux, _, note in rows() if lux == "Conv"]
    assert "cross-correlation" in note and "`cross_correlation=False` gives Lux's" in note


@pytest.mark.parametrize("lux, ours", [(lux, ours) for lux, ours, _ in rows() if ours is not None])
def test_luxjax_name_is_exported(lux, ours):
    module, name = (lx.experimental, ours.split(".", 1)[1]) if ours.startswith("experimental.") else (lx, ours)
    assert name in vars(module), f"{lux}: luxjax exports no {ours}"
