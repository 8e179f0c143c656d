"""A small CNN built from the layer zoo learns scikit-learn's 8x8 digits (issue 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx


def test_small_cnn_learns_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    images, labels = datasets.load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, labels.astype(np.int32), test_size=0.25, random_state=0, stratify=labels
    )

    model = lx.Chain(
        lx.Conv((3, 3), 1, 16, padding=1),
        lx.BatchNorm(16, jax.nn.relu),
        lx.MaxPool((2, 2)),
        lx.FlattenLayer(),
        lx.Dense(4 * 4 * 16, 10),
    )
    ps, st = lx.setup(jax.random.key(0), model)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(ps)

    def loss_fn(ps, st, x, y):
        logits, st = model(x, ps, st)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), st

    @jax.jit
    def train_step(ps, st, opt_state, x, y):
        (_, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(ps, st, x, y)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes its int count with floats
            updates, opt_state = optimizer.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), st, opt_state

    batch_size = 64
    rng = np.random.default_rng(0)
    for _ in range(8):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches: one trace
            batch = order[start : start + batch_size]
            ps, st, opt_state = train_step(ps, st, opt_state, x_train[batch], y_train[batch])

    # The running statistics moved away from their initial values, and test mode uses them.
    assert not np.allclose(st["layer_2"]["running_mean"], 0.0)
    logits, _ = jax.jit(model)(x_test, ps, lx.testmode(st))
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=-1) == y_test))
    assert accuracy >= 0.95, accuracy
