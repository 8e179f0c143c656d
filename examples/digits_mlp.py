"""Train a Chain of Dense layers on scikit-learn's digits with optax; print loss and accuracy."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import luxjax as lx


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (images / 16.0).astype(np.float32), labels, test_size=0.25, random_state=args.seed, stratify=labels
    )

    model = lx.Chain(lx.Dense(64, 128, jax.nn.relu), lx.Dense(128, 64, jax.nn.relu), lx.Dense(64, 10))
    print(model)
    ps, st = lx.setup(jax.random.key(args.seed), model)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(ps)

    def loss_fn(ps, st, x, y):
        logits, st = model(x, ps, st)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), st

    @jax.jit
    def train_step(ps, st, opt_state, x, y):
        (loss, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(ps, st, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), st, opt_state, loss

    @jax.jit
    def accuracy(ps, st, x, y):
        return jnp.mean(jnp.argmax(model(x, ps, lx.testmode(st))[0], axis=-1) == y)

    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            ps, st, opt_state, loss = train_step(ps, st, opt_state, x_train[batch], y_train[batch])
            losses.append(float(loss))
        if epoch % 5 == 0 or epoch == args.epochs:
            acc = float(accuracy(ps, st, x_test, y_test))
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  test accuracy {acc:.3f}")
    test_accuracy = float(accuracy(ps, st, x_test, y_test))
    print(f"final test accuracy: {test_accuracy:.3f}")
    return test_accuracy


if __name__ == "__main__":
    main()
