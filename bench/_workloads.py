"""The workloads: shapes, data and one set of starting weights that every implementation copies.

Every implementation of a workload starts from the same numpy weights (converted to its own
layout), sees the same batch and uses `optax.adam(LEARNING_RATE)`, so their first losses must
agree; the harness checks that, which proves the implementations compute the same model.

Canonical layouts (converted by each implementation): Dense weight `(out, in)` and bias
`(out,)`; conv kernel `(kh, kw, in, out)` (HWIO) and bias `(out,)`; LayerNorm `scale`/`bias`
`(d,)`; attention projections `q`, `k`, `v`, `o` as Dense with `(d, d)` weights whose output
features are grouped by head (`head * head_dim + i`).
"""

import dataclasses
import math

import numpy as np

LEARNING_RATE = 1e-3
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    batch: int
    sizes: tuple[int, ...]  # in, hidden..., out; one Dense per consecutive pair, relu between


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    batch: int
    channels: tuple[int, ...]  # input channels, then one 3x3 "valid" conv (relu) per entry
    image: int
    classes: int

    @property
    def flat(self) -> int:
        side = self.image - 2 * (len(self.channels) - 1)
        return side * side * self.channels[-1]


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    batch: int
    seq: int
    d_model: int
    heads: int
    blocks: int

    @property
    def hidden(self) -> int:
        return 4 * self.d_model


@dataclasses.dataclass(frozen=True)
class DeepSpec:
    """Workload 8: `model.blocks` transformer blocks, unrolled or stacked; `memory_seq`: the remat row's length."""

    model: TransformerSpec
    memory_seq: int


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes of every workload: `FULL` (the CPU default), `GPU` (`--sizes gpu`), `SMOKE` (the test suite's)."""

    tiny: MLPSpec
    medium: MLPSpec
    cnn: CNNSpec
    transformer: TransformerSpec
    structure_layers: int
    deep: DeepSpec


FULL = Sizes(
    tiny=MLPSpec(batch=8, sizes=(32,) * 8 + (10,)),
    medium=MLPSpec(batch=64, sizes=(128, 256, 256, 256, 10)),
    cnn=CNNSpec(batch=128, channels=(1, 16, 32), image=8, classes=10),
    transformer=TransformerSpec(batch=16, seq=64, d_model=128, heads=4, blocks=2),
    structure_layers=1000,
    deep=DeepSpec(TransformerSpec(batch=8, seq=32, d_model=64, heads=4, blocks=24), memory_seq=512),
)

# `--sizes gpu`: the same cells at sizes where a GPU is busy. The tiny MLP stays tiny: it is the
# cell that measures per-call overhead, which is what a GPU makes relatively larger.
GPU = Sizes(
    tiny=FULL.tiny,
    medium=MLPSpec(batch=1024, sizes=(2048,) * 4 + (10,)),
    cnn=CNNSpec(batch=1024, channels=(1, 16, 32), image=8, classes=10),
    transformer=TransformerSpec(batch=32, seq=512, d_model=768, heads=12, blocks=6),
    structure_layers=1000,
    deep=DeepSpec(TransformerSpec(batch=16, seq=256, d_model=768, heads=12, blocks=12), memory_seq=1024),
)

SMOKE = Sizes(
    tiny=MLPSpec(batch=4, sizes=(8,) * 3 + (10,)),
    medium=MLPSpec(batch=8, sizes=(16, 32, 32, 10)),
    cnn=CNNSpec(batch=16, channels=(1, 4, 8), image=8, classes=10),
    transformer=TransformerSpec(batch=2, seq=8, d_model=16, heads=2, blocks=1),
    structure_layers=20,
    deep=DeepSpec(TransformerSpec(batch=2, seq=8, d_model=16, heads=2, blocks=3), memory_seq=16),
)

SIZES = {"cpu": FULL, "gpu": GPU}  # the choices of `--sizes`


def _uniform(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def dense_params(rng: np.random.Generator, n_in: int, n_out: int) -> dict:
    return {"weight": _uniform(rng, n_in, (n_out, n_in)), "bias": _uniform(rng, n_in, (n_out,))}


def mlp_data(spec: MLPSpec, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Weights `[{"weight", "bias"}, ...]`, inputs `(batch, in)` and integer labels `(batch,)`."""
    rng = np.random.default_rng(seed)
    params = [dense_params(rng, a, b) for a, b in zip(spec.sizes[:-1], spec.sizes[1:])]
    x = rng.standard_normal((spec.batch, spec.sizes[0])).astype(np.float32)
    y = rng.integers(0, spec.sizes[-1], size=(spec.batch,)).astype(np.int32)
    return params, x, y


def cnn_data(spec: CNNSpec, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Weights `{"convs": [{"kernel" HWIO, "bias"}], "head": dense}`, digits `(batch, 8, 8, 1)`, labels."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    convs = []
    for c_in, c_out in zip(spec.channels[:-1], spec.channels[1:]):
        fan_in = 9 * c_in
        convs.append({"kernel": _uniform(rng, fan_in, (3, 3, c_in, c_out)), "bias": _uniform(rng, fan_in, (c_out,))})
    head = dense_params(rng, spec.flat, spec.classes)
    images, labels = load_digits(return_X_y=True)
    x = (images[: spec.batch] / 16.0).astype(np.float32).reshape(spec.batch, spec.image, spec.image, 1)
    return {"convs": convs, "head": head}, x, labels[: spec.batch].astype(np.int32)


def transformer_data(spec: TransformerSpec, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per pre-LN block: `ln1`, `attn` (`q`, `k`, `v`, `o` Dense), `ln2`, `fc1`, `fc2`; inputs and targets.

    Block: `h = x + attn(ln1(x)); y = h + fc2(gelu(fc1(ln2(h))))`; loss: mean squared error
    against a fixed random target.
    """
    rng = np.random.default_rng(seed)
    d, hidden = spec.d_model, spec.hidden
    blocks = []
    for _ in range(spec.blocks):
        ln = lambda: {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)}  # noqa: E731
        blocks.append(
            {
                "ln1": ln(),
                "attn": {name: dense_params(rng, d, d) for name in "qkvo"},
                "ln2": ln(),
                "fc1": dense_params(rng, d, hidden),
                "fc2": dense_params(rng, hidden, d),
            }
        )
    x = rng.standard_normal((spec.batch, spec.seq, d)).astype(np.float32)
    target = rng.standard_normal((spec.batch, spec.seq, d)).astype(np.float32)
    return blocks, x, target
