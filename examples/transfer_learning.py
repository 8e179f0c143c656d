"""Transfer learning on scikit-learn's digits: pretrain a CNN on 0-4, freeze its backbone, fine-tune on 5-9.

The convolutional backbone learnt on the digits 0-4 is frozen with
`luxjax.experimental.freeze` (every layer under the path `backbone`), its values move out of
`ps` into `st`, so the optimizer never sees them: no gradient, no optimizer memory. A new head
then learns the digits 5-9 on top of the frozen features.

Run `python examples/transfer_learning.py --help` for the flags.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _example_utils import new_figure, parser, progress, rule, save_figure, smooth, tree_bytes, tree_size
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import luxjax as lx
from luxjax.experimental import freeze

FEATURES = 2 * 2 * 32  # what the backbone gives per image: 8x8 -> 4x4 -> 2x2, 32 channels


def load_split(digits: tuple[int, ...], seed: int) -> tuple[np.ndarray, ...]:
    """Images (N, 8, 8, 1) in [0, 1] and labels 0..len(digits)-1 of the given digits, 75/25 split."""
    images, labels = load_digits(return_X_y=True)
    keep = np.isin(labels, digits)
    x = (images[keep] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = np.searchsorted(np.asarray(digits), labels[keep]).astype(np.int32)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y))


def make_backbone() -> lx.Chain:
    return lx.Chain(
        conv_1=lx.Conv((3, 3), 1, 16, padding=1),
        bn_1=lx.BatchNorm(16, jax.nn.relu),
        pool_1=lx.MaxPool((2, 2)),
        conv_2=lx.Conv((3, 3), 16, 32, padding=1),
        bn_2=lx.BatchNorm(32, jax.nn.relu),
        pool_2=lx.MaxPool((2, 2)),
        flatten=lx.FlattenLayer(),
    )


def make_head(classes: int) -> lx.Chain:
    return lx.Chain(lx.Dense(FEATURES, 32, jax.nn.relu), lx.Dense(32, classes))


def train(
    model: lx.Layer,
    ps: Any,
    st: Any,
    data: tuple[np.ndarray, ...],
    *,
    steps: int,
    seed: int,
    desc: str,
    quiet: bool,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
    eval_every: int = 25,
) -> tuple[Any, Any, dict]:
    """Trains `model` with adam on `data`; returns the new ps, st and the curves."""
    x_train, x_test, y_train, y_test = data
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(ps)
    print(f"optimizer state: {tree_size(opt_state):_} numbers ({tree_bytes(opt_state) / 1024:.1f} KiB) for adam")

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
        logits, _ = model(x, ps, lx.testmode(st))
        return jnp.mean(jnp.argmax(logits, axis=-1) == y)

    rng = np.random.default_rng(seed)
    curves: dict[str, list] = {"loss": [], "eval_step": [0], "accuracy": [float(accuracy(ps, st, x_test, y_test))]}
    order = np.empty(0, dtype=np.int64)
    bar = progress(range(1, steps + 1), total=steps, desc=desc, disable=quiet)
    for step in bar:
        if order.size < batch_size:  # a new epoch: reshuffle
            order = rng.permutation(len(x_train))
        batch, order = order[:batch_size], order[batch_size:]
        ps, st, opt_state, loss = train_step(ps, st, opt_state, x_train[batch], y_train[batch])
        curves["loss"].append(float(loss))
        if step % eval_every == 0 or step == steps:
            acc = float(accuracy(ps, st, x_test, y_test))
            curves["eval_step"].append(step)
            curves["accuracy"].append(acc)
            bar.set_postfix(loss=f"{np.mean(curves['loss'][-eval_every:]):.2g}", test_acc=f"{acc:.3f}")
    curves["test_accuracy"] = float(accuracy(ps, st, x_test, y_test))
    return ps, st, curves


def plot(pre: dict, fine: dict, path) -> None:
    fig, (ax_loss, ax_acc) = new_figure(2)
    for curves, label in (
        (pre, "pretrain: digits 0-4, all trainable"),
        (fine, "fine-tune: digits 5-9, frozen backbone"),
    ):
        ax_loss.plot(smooth(curves["loss"], 10), label=label)
        ax_acc.plot(curves["eval_step"], curves["accuracy"], marker=".", label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (10-step mean)", yscale="log", title="Loss")
    ax_acc.set(xlabel="step", ylabel="test accuracy", ylim=(0.0, 1.02), title="Test accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__, steps=300, steps_help="training steps of each phase").parse_args(argv)
    start = time.perf_counter()
    key_pre, key_head = jax.random.split(jax.random.key(args.seed))

    print(rule("Phase 1: pretrain the whole CNN on the digits 0-4"))
    data_pre = load_split((0, 1, 2, 3, 4), args.seed)
    data_fine = load_split((5, 6, 7, 8, 9), args.seed)
    print(f"digits 0-4: {len(data_pre[0])} train / {len(data_pre[1])} test images of 8x8x1")
    model = lx.Chain(backbone=make_backbone(), head=make_head(5))
    ps, st = lx.setup(key_pre, model)
    print(model)
    ps, st, pre = train(
        model, ps, st, data_pre, steps=args.steps, seed=args.seed, desc="pretrain", quiet=args.no_progress
    )
    print(f"test accuracy on digits 0-4: {pre['test_accuracy']:.2%}")

    print(rule("Phase 2: freeze the backbone, fine-tune a new head on the digits 5-9"))
    print(f"digits 5-9: {len(data_fine[0])} train / {len(data_fine[1])} test images")
    # A new head for the new classes; the backbone keeps its pretrained values.
    model = lx.Chain(backbone=model["backbone"], head=make_head(5))
    ps = {"backbone": ps["backbone"], "head": model["head"].init_params(key_head)}
    st = {"backbone": st["backbone"], "head": model["head"].init_state(key_head)}
    before = (lx.parameter_count(model), lx.state_count(model))
    full_adam = tree_size(optax.adam(1e-3).init(ps))
    # Freeze every layer under the path `backbone` (by path; `isinstance(layer, (lx.Conv,
    # lx.BatchNorm))` would freeze by type). Frozen values move from ps into st.
    model, ps, st = freeze(model, ps, st, where=lambda path, layer: path[:1] == ("backbone",))
    # Freezing is not eval mode: a frozen BatchNorm in training mode would still update its
    # running statistics on the new digits. Keep the pretrained statistics too.
    st = {**st, "backbone": lx.testmode(st["backbone"])}
    print(model)
    after = (lx.parameter_count(model), lx.state_count(model))
    print(f"before freezing: {before[0]:_} trainable, {before[1]:_} non-trainable")
    print(f"after freezing:  {after[0]:_} trainable, {after[1]:_} non-trainable")
    print(f"trainable leaves in ps now: {', '.join(sorted(_paths(ps)))}")
    frozen_before = jax.tree_util.tree_map(np.asarray, st["backbone"])
    ps, st, fine = train(
        model, ps, st, data_fine, steps=args.steps, seed=args.seed, desc="fine-tune", quiet=args.no_progress
    )
    print(f"(adam on the unfrozen model would hold {full_adam:_} numbers)")
    unchanged = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(st["backbone"]))
    )
    print(f"frozen backbone bit-identical after fine-tuning: {unchanged}")
    print(f"test accuracy on digits 5-9 with the frozen backbone: {fine['test_accuracy']:.2%}")

    path = args.out / "transfer_learning.png"
    plot(pre, fine, path)
    print(f"saved the training curves to {path}")
    seconds = time.perf_counter() - start
    return {
        "pretrain_accuracy": pre["test_accuracy"],
        "finetune_accuracy": fine["test_accuracy"],
        "trainable_before": before[0],
        "trainable_after": after[0],
        "non_trainable_after": after[1],
        "optimizer_state_frozen": tree_size(optax.adam(1e-3).init(ps)),
        "optimizer_state_full": full_adam,
        "backbone_unchanged": unchanged,
        "plot": str(path),
        "seconds": seconds,
    }


def _paths(tree: Any) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [".".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]


# Tiny settings for the smoke test (`tests/test_examples.py`) and `demo.py --quick`.
QUICK = ["--steps", "60"]


def failures(result: dict) -> list[str]:
    """What went wrong, if anything: the checks `make demo` holds this example to."""
    problems = [
        f"{name} test accuracy {result[key]:.2%} is below 90%"
        for key, name in (("pretrain_accuracy", "pretraining"), ("finetune_accuracy", "fine-tuning"))
        if result[key] < 0.9
    ]
    if not result["backbone_unchanged"]:
        problems.append("the frozen backbone changed during fine-tuning")
    return problems


def summary(result: dict) -> str:
    return (
        f"transfer learning: digits 0-4 {result['pretrain_accuracy']:.1%}, then 5-9 with a frozen backbone "
        f"{result['finetune_accuracy']:.1%}; "
        f"trainable {result['trainable_before']:_} -> {result['trainable_after']:_}, "
        f"adam state {result['optimizer_state_full']:_} -> {result['optimizer_state_frozen']:_} numbers"
    )


if __name__ == "__main__":
    problems = failures(main())
    print("\n".join(f"FAILED: {problem}" for problem in problems) or "transfer learning: all checks passed")
    sys.exit(1 if problems else 0)
