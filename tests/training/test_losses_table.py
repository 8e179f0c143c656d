"""docs/training.md's table of Lux's losses against optax (issue 18): every expression runs and gives Lux's values.

Each row's expression is evaluated on the example of Lux's docstring for that loss (turned
batch first) and compared with the value Lux documents and with a hand-written NumPy formula.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "training.md"

# Lux's exported loss functions (Lux.jl's src/Lux.jl export list).
LUX_LOSSES = {
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "CrossEntropyLoss",
    "DiceCoeffLoss",
    "FocalLoss",
    "HingeLoss",
    "HuberLoss",
    "KLDivergenceLoss",
    "L1Loss",
    "L2Loss",
    "MAELoss",
    "MSELoss",
    "MSLELoss",
    "PoissonLoss",
    "SiameseContrastiveLoss",
    "SquaredHingeLoss",
    "GenericLossFunction",
}


def table() -> dict[str, str]:
    """`{Lux call: expression}` from the rows of the losses table."""
    text = DOCS.read_text()
    section = text.split("## Losses: Lux's names, optax's functions", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.M))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


F32 = np.float32
REGRESSION = (F32([1.1, 1.9, 3.1]), F32([1, 2, 3]))
SIGNS = (F32([0.1, 0.3, 1, 1.5]), F32([1, -1, 1, 1]))
BCE_LOGITS = F32([2, -1, np.pi])
CE_LOGITS = np.arange(-7, 8, dtype=F32).reshape(5, 3)  # Lux's reshape(-7:7, 3, 5), batch first
CE_LABELS = np.eye(3, dtype=F32)[[0, 1, 2, 1, 0]]
FOCAL_P = F32([[0.268941, 0.731059], [0.5, 0.5], [0.268941, 0.731059]])  # Lux's 2x3 example, batch first
FOCAL_Y = F32([[0, 1], [1, 0], [0, 1]])

# Lux call -> (y_hat, y, the value Lux's docstring gives, a hand-written formula).
CASES = {
    "MSELoss()": (*REGRESSION, 0.01, lambda p, y: np.mean((p - y) ** 2)),
    "L2Loss()": (*REGRESSION, 0.01, lambda p, y: np.mean((p - y) ** 2)),
    "MAELoss()": (*REGRESSION, 0.1, lambda p, y: np.mean(np.abs(p - y))),
    "L1Loss()": (*REGRESSION, 0.1, lambda p, y: np.mean(np.abs(p - y))),
    "MSLELoss()": (F32([1.1, 2.2, 3.3]), F32([1, 2, 3]), 0.009084041, lambda p, y: np.mean(np.log(p / y) ** 2)),
    "HuberLoss()": (
        F32([1.1, 2.1, 3.1]),
        F32([1, 2, 3]),
        0.005,
        lambda p, y: np.mean(np.where(abs(p - y) <= 1, 0.5 * (p - y) ** 2, abs(p - y) - 0.5)),
    ),
    "HingeLoss()": (*SIGNS, 0.55, lambda p, y: np.mean(np.maximum(0, 1 - p * y))),
    "SquaredHingeLoss()": (*SIGNS, 0.625, lambda p, y: np.mean(np.maximum(0, 1 - p * y) ** 2)),
    "BinaryCrossEntropyLoss(logits=Val(true))": (
        BCE_LOGITS,
        F32([1, 0, 1]),
        0.160832,
        lambda z, y: np.mean(-y * np.log(sigmoid(z)) - (1 - y) * np.log(1 - sigmoid(z))),
    ),
    "BinaryCrossEntropyLoss()": (
        sigmoid(BCE_LOGITS),
        F32([1, 0, 1]),
        0.16083185,
        lambda p, y: np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)),
    ),
    "CrossEntropyLoss(logits=Val(true))": (
        CE_LOGITS,
        CE_LABELS,
        1.6076053,
        lambda z, y: np.mean(-np.sum(y * np.log(softmax(z)), -1)),
    ),
    "CrossEntropyLoss()": (
        softmax(CE_LOGITS),
        CE_LABELS,
        1.6076053,
        lambda p, y: np.mean(-np.sum(y * np.log(p), -1)),
    ),
    "KLDivergenceLoss()": (
        np.full((2, 2), 0.5, F32),
        np.eye(2, dtype=F32),
        np.log(2),
        lambda p, y: np.mean(np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / p), 0), -1)),
    ),
    "BinaryFocalLoss()": (
        FOCAL_P,
        FOCAL_Y,
        0.0728675615927385,
        lambda p, y: np.mean(-y * (1 - p) ** 2 * np.log(p) - (1 - y) * p**2 * np.log(1 - p)),
    ),
    "FocalLoss()": (
        softmax(CE_LOGITS),
        CE_LABELS,
        1.1277556,
        lambda p, y: np.mean(np.sum(-y * (1 - p) ** 2 * np.log(p), -1)),
    ),
    "PoissonLoss()": (F32([1, 3, 3]), F32([1, 2, 3]), 0.502312852219817, lambda p, y: np.mean(p - y * np.log(p))),
    "DiceCoeffLoss()": (
        F32([[1.1, 2.1, 3.1]]),
        F32([[1, 2, 3]]),
        0.000992391663909964,
        lambda p, y: np.mean(1 - (2 * np.sum(p * y, -1) + 1) / (np.sum(p**2, -1) + np.sum(y**2, -1) + 1)),
    ),
    "SiameseContrastiveLoss()": (
        F32([0.5, 1.5, 2.5]),
        F32([1, 2, 3]),
        -4.833333333333333,
        lambda p, y: np.mean((1 - y) * p**2 + y * np.maximum(0, 1 - p) ** 2),
    ),
    # Lux's example: GenericLossFunction((ŷ, y) -> abs2(ŷ - y)).
    "GenericLossFunction(f)": (*REGRESSION, 0.01, lambda p, y: np.mean((p - y) ** 2)),
}


def test_table_names_every_lux_loss_and_only_those():
    assert {call.split("(")[0] for call in table()} == LUX_LOSSES
    assert set(table()) == set(CASES)


@pytest.mark.parametrize("call", sorted(CASES))
def test_expression_gives_lux_value(call):
    y_hat, y, lux_value, formula = CASES[call]
    namespace = {"jax": jax, "jnp": jnp, "optax": optax, "f": lambda a, b: (a - b) ** 2}
    got = eval(table()[call], namespace, {"y_hat": jnp.asarray(y_hat), "y": jnp.asarray(y)})
    np.testing.assert_allclose(got, formula(y_hat.astype(np.float64), y.astype(np.float64)), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got, lux_value, rtol=2e-5, atol=1e-6)
