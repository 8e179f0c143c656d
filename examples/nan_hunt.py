"""A NaN hunt: training goes NaN, `luxjax.experimental.debug_mode` names the layer and the block that made it.

The model classifies scikit-learn's digits. Its classifier refines the class scores through a
stack of blocks (one `luxjax.Stacked` layer, run by `jax.lax.scan`), each a mixing `Dense` and
a log-softmax with a learnt logit scale (as in CLIP), written by hand as
`log(softmax(scale * x))`. The maths is right; the numerics are not: the model keeps raising
the scales to grow confident, until a `softmax` underflows to exactly 0 for some class, `log`
gives -inf, and the next block turns it into NaN. Plain JAX only says "the loss and the
gradients are NaN", everywhere. Rerunning the failing step under `debug_mode` (with
`check_inf=True`, as the first bad value is that -inf) names the layer and its location, with
the index of the block inside the stack; `layer_map` then swaps in the stable version in every
block.

Run `python examples/nan_hunt.py --help` for the flags.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _example_utils import parser, progress, rule, stop
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import luxjax as lx
from luxjax.experimental import debug_mode, layer_map, raise_nan_errors


class ScaledLogSoftmax(lx.Layer):
    """`log(softmax(exp(log_scale) * x))` with a learnt logit scale, written the obvious way: the bug.

    A learnt scale (as in CLIP) lets the model sharpen its output. Written as the log of a
    softmax it breaks once a class probability underflows to 0: the backward pass of `log`
    divides 0 by 0. `stable=True` is the fix, `jax.nn.log_softmax`.

    `ps`: `{"log_scale": ()}`; `st`: `{}`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> layer = ScaledLogSoftmax()
        >>> ps, st = lx.setup(jax.random.key(0), layer)
        >>> layer(jnp.zeros((1, 2)), ps, st)[0]
        Array([[-0.6931472, -0.6931472]], dtype=float32)
    """

    stable: bool = False

    def init_params(self, key: jax.Array) -> dict:
        del key
        return {"log_scale": jnp.zeros(())}

    def __call__(self, x: jax.Array, ps: dict, st: dict) -> tuple[jax.Array, dict]:
        with jax.named_scope("ScaledLogSoftmax"):
            z = jnp.exp(ps["log_scale"]) * x
            if self.stable:
                return jax.nn.log_softmax(z, axis=-1), st
            return jnp.log(jax.nn.softmax(z, axis=-1)), st

    def __repr__(self) -> str:
        return f"ScaledLogSoftmax(stable={self.stable})"


def make_model() -> lx.Chain:
    # The classifier refines its class scores through a stack of blocks (one `Stacked` layer),
    # each a mixing `Dense` and a log-softmax with its own learnt logit scale.
    refine = lx.Chain(mix=lx.Dense(10, 10), log_probs=ScaledLogSoftmax())
    return lx.Chain(
        features=lx.Chain(lx.Dense(64, 128, jax.nn.relu), lx.Dense(128, 64, jax.nn.relu)),
        classifier=lx.Chain(logits=lx.Dense(64, 10), refine=lx.Stacked(refine, 3)),
    )


def nll(model: lx.Layer, ps: Any, st: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
    """Mean negative log-likelihood of the labels, from the model's log-probabilities."""
    log_probs, st = model(x, ps, st)
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=-1)), st


def nan_leaves(tree: Any) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        ".".join(str(getattr(k, "key", k)) for k in path)
        for path, leaf in flat
        if not bool(jnp.all(jnp.isfinite(leaf)))
    ]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, steps=2000, steps_help="give up if training has not gone NaN after this many steps")
    p.add_argument("--learning-rate", type=float, default=1e-2, help="adam's learning rate (larger fails sooner)")
    p.add_argument("--fix-steps", type=int, default=300, help="steps to train on after the fix")
    args = p.parse_args(argv)
    start = time.perf_counter()

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (images / 16.0).astype(np.float32), labels.astype(np.int32), test_size=0.25, random_state=args.seed
    )
    model = make_model()
    ps, st = lx.setup(jax.random.key(args.seed), model)
    optimizer = optax.adam(args.learning_rate)
    opt_state = optimizer.init(ps)

    print(rule("Training a digits classifier until something goes wrong"))
    print(model)

    def make_step(model):
        @jax.jit
        def step(ps, st, opt_state, x, y):
            (loss, st), grads = jax.value_and_grad(lambda ps: nll(model, ps, st, x, y), has_aux=True)(ps)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
            updates, opt_state = optimizer.update(grads, opt_state, ps)
            return optax.apply_updates(ps, updates), st, opt_state, loss, finite

        return step

    step_fn = make_step(model)
    rng = np.random.default_rng(args.seed)
    order = np.empty(0, dtype=np.int64)
    failed_at, batch = None, None
    losses = []
    bar = progress(range(1, args.steps + 1), total=args.steps, desc="training", disable=args.no_progress)
    for step in bar:
        if order.size < 64:
            order = rng.permutation(len(x_train))
        batch, order = order[:64], order[64:]
        new = step_fn(ps, st, opt_state, x_train[batch], y_train[batch])
        losses.append(float(new[3]))
        if not bool(new[4]):  # keep the state from before the bad update, to replay the step
            failed_at = step
            stop(bar, step)
            break
        ps, st, opt_state = new[:3]
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")

    result: dict[str, Any] = {"failed_at": failed_at, "located": False, "message": None}
    if failed_at is None:
        print(f"no NaN in {args.steps} steps: try more --steps or a larger --learning-rate")
        result["seconds"] = time.perf_counter() - start
        return result

    x, y = x_train[batch], y_train[batch]
    (loss, _), grads = jax.value_and_grad(lambda ps: nll(model, ps, st, x, y), has_aux=True)(ps)
    bad = nan_leaves(grads)
    print(f"step {failed_at}: the loss is {float(loss):.4f}, but the gradients hold NaN in {len(bad)} arrays:")
    print("    " + ", ".join(bad))
    print("Plain JAX cannot say which layer made the first NaN, let alone which block of the stack.")

    print(rule("Replaying the failing step under debug_mode"))
    # `check_inf`: the first bad value is the -inf of `log(0)`; the NaN comes one layer later.
    debug_model = debug_mode(model, check_inf=True)  # takes the same ps and st
    inside = debug_model["classifier"]["refine"].block["log_probs"]
    print(f"debug_mode wraps every leaf layer, inside the stack too: {inside!r}")
    # The gradient, jitted as in training: the checks fail the compiled step, and
    # `raise_nan_errors` raises their `NaNError`, with the block index in place of the `*`.
    replay = raise_nan_errors(jax.jit(jax.grad(lambda ps: nll(debug_model, ps, st, x, y)[0])))
    try:
        replay(ps)
    except FloatingPointError as error:  # luxjax's NaNError is a FloatingPointError
        message = str(error).splitlines()[0]
        print(f"{type(error).__name__}: {message}")
        result["message"] = message
        result["located"] = bool(re.search(r"at location classifier\.refine\.\d+\.log_probs ", message))
        result["located"] &= "ScaledLogSoftmax" in message
    else:
        print("debug_mode found no NaN when replaying the step")

    print(rule("The fix: swap the hand-written log-softmax for jax.nn.log_softmax with layer_map"))

    def fix(layer, ps, st, path):  # layer_map visits each block of the stack: classifier.refine.0, ...
        if isinstance(layer, ScaledLogSoftmax):
            fixed = ScaledLogSoftmax(stable=True)
            print(f"replacing {layer!r} at {path} with {fixed!r}, keeping its parameters")
            return fixed, ps, st
        return layer, ps, st

    fixed, ps, st = layer_map(fix, model, ps, st)
    step_fn = make_step(fixed)
    remaining = args.fix_steps
    nan_after_fix = False
    for _ in progress(range(remaining), total=remaining, desc="training on", disable=args.no_progress):
        if order.size < 64:
            order = rng.permutation(len(x_train))
        batch, order = order[:64], order[64:]
        new = step_fn(ps, st, opt_state, x_train[batch], y_train[batch])
        nan_after_fix |= not bool(new[4])
        ps, st, opt_state = new[:3]
    log_probs, _ = fixed(x_test, ps, lx.testmode(st))
    accuracy = float(jnp.mean(jnp.argmax(log_probs, axis=-1) == y_test))
    print(f"{remaining} more steps, NaN gradients: {nan_after_fix}; test accuracy {accuracy:.2%}")
    result.update(accuracy_after_fix=accuracy, nan_after_fix=nan_after_fix, seconds=time.perf_counter() - start)
    return result


# Tiny settings for the smoke test (`tests/test_examples.py`) and `demo.py --quick`.
QUICK = ["--learning-rate", "0.05", "--steps", "1500", "--fix-steps", "20"]


def failures(result: dict) -> list[str]:
    """What went wrong, if anything: the checks `make demo` holds this example to."""
    if result["failed_at"] is None:
        return ["training never went NaN, so there was nothing to hunt"]
    problems = []
    if not result["located"]:
        problems.append(f"debug_mode did not name the planted layer: {result['message']}")
    if result.get("nan_after_fix", True):
        problems.append("training still went NaN after the fix")
    return problems


def summary(result: dict) -> str:
    if result["failed_at"] is None:
        return "NaN hunt: no NaN appeared"
    where = result["message"] or "not located"
    return f"NaN hunt: gradients went NaN at step {result['failed_at']}; debug_mode: {where}"


if __name__ == "__main__":
    problems = failures(main())
    print("\n".join(f"FAILED: {problem}" for problem in problems) or "NaN hunt: all checks passed")
    sys.exit(1 if problems else 0)
