"""A character-level transformer language model with tied embeddings, trained on Python's own source.

The text is the source code of a few pure-Python modules of the standard library, read
with `inspect.getsource`: real text that ships with every Python, no download. The model
reads `--context` characters and predicts, at every position, the next one (causal
self-attention):

    token + position embeddings -> Stacked(--blocks x pre-LN transformer block) -> LayerNorm -> Dense(dims, vocab)

The blocks are one `luxjax.Stacked` layer, run by `jax.lax.scan`: compiled once however deep.
The token embedding (`weight` of shape `(vocab, dims)`) and the output layer (`weight` of
`Dense(dims, vocab)`, also `(vocab, dims)`) are one matrix, tied with
`luxjax.experimental.share_parameters` and trained with `luxjax.training.single_train_step`,
which keeps the tie: the gradient of both uses is summed and the update applied once.

Run `python examples/tied_lm.py --help` for the flags.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _example_utils import new_figure, parser, progress, rule, save_figure, smooth, tree_size

import luxjax as lx
from luxjax.experimental import share_parameters
from luxjax.training import TrainState, single_train_step

LEARNING_RATE = 4e-3
MODULES = ("textwrap", "string", "heapq", "functools", "dataclasses", "calendar", "argparse", "difflib")
# The group's first accessor gives the shared starting value: the output layer's uniform
# +-1/sqrt(dims) suits both uses (an N(0, 1) embedding as output weights starts with huge logits).
TIE = ("unembed.weight", "embed.tokens.weight")


def load_texts(modules: tuple[str, ...] = MODULES) -> list[str]:
    """The source of each given standard-library module, non-ASCII characters replaced by `?`."""
    texts = [inspect.getsource(importlib.import_module(name)).replace("\t", "    ") for name in modules]
    return ["".join(c if (" " <= c <= "~" or c == "\n") else "?" for c in text) for text in texts]


class Vocabulary:
    """Characters to ids and back."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.int32)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def positions(ids: jax.Array) -> jax.Array:
    """The position of every character of a `(batch, context)` window: `0 .. context - 1`."""
    return jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)


def causal_self(x: jax.Array) -> tuple:
    """`MultiHeadAttention`'s input for causal self-attention: each position sees itself and the past."""
    n = x.shape[-2]
    return x, x, x, jnp.tril(jnp.ones((n, n), bool))


def make_model(vocab: int, *, context: int, dims: int, blocks: int, heads: int = 4) -> lx.Chain:
    attention = lx.Chain(
        norm=lx.LayerNorm(dims), causal=lx.WrappedFunction(causal_self), mha=lx.MultiHeadAttention(dims, heads)
    )
    mlp = lx.Chain(norm=lx.LayerNorm(dims), fc1=lx.Dense(dims, 4 * dims, jax.nn.gelu), fc2=lx.Dense(4 * dims, dims))
    block = lx.Chain(attn=lx.SkipConnection(attention, jnp.add), mlp=lx.SkipConnection(mlp, jnp.add))
    embed = lx.Parallel(
        jnp.add,
        tokens=lx.Embedding(vocab, dims),  # weight (vocab, dims)
        positions=lx.Chain(index=lx.WrappedFunction(positions), table=lx.Embedding(context, dims)),
    )
    return lx.Chain(
        embed=embed,
        blocks=lx.Stacked(block, blocks),
        norm=lx.LayerNorm(dims),
        unembed=lx.Dense(dims, vocab),  # weight (vocab, dims): the same matrix as the token embedding's
    )


def windows(ids: np.ndarray, starts: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows `(batch, context)` starting at `starts` and, for each position, the next character."""
    x = ids[starts[:, None] + np.arange(context + 1)[None, :]]
    return x[:, :-1], x[:, 1:]


def losses(model: lx.Layer, ps: Any, st: Any, data: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, Any]:
    """Cross-entropy of the next character at every position, in nats."""
    x, y = data
    logits, st = model(x, ps, st)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), st


def objective(model: lx.Layer, ps: Any, st: Any, data: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, Any, dict]:
    """Mean cross-entropy over every position of every window (Lux's objective signature)."""
    loss, st = losses(model, ps, st, data)
    return loss.mean(), st, {}


def distinct_parameter_count(ps: Any) -> int:
    """Scalars in `ps`, counting an array that sits at several places once."""
    seen: dict[int, int] = {}
    for leaf in jax.tree_util.tree_leaves(ps):
        seen[id(leaf)] = int(np.size(leaf))
    return sum(seen.values())


def get(tree: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        tree = tree[name]
    return tree


def generate(
    model: lx.Layer, ps: Any, st: Any, vocab: Vocabulary, prompt: str, *, context: int, length: int, seed: int
):
    """Samples `length` characters after `prompt` at temperature 0.8."""
    st = lx.testmode(st)

    @jax.jit
    def next_logits(ps, x):
        return model(x[None, :], ps, st)[0][0, -1]

    rng = np.random.default_rng(seed)
    ids = list(vocab.encode(prompt.rjust(context)[-context:]))
    out = []
    for _ in range(length):
        logits = np.asarray(next_logits(ps, jnp.asarray(ids[-context:], dtype=jnp.int32)), dtype=np.float64) / 0.8
        probs = np.exp(logits - logits.max())
        nxt = int(rng.choice(len(vocab), p=probs / probs.sum()))
        ids.append(nxt)
        out.append(nxt)
    return prompt + vocab.decode(out)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, steps=3000)
    p.add_argument("--context", type=int, default=24, help="characters the model reads")
    p.add_argument("--dims", type=int, default=64, help="embedding size")
    p.add_argument("--blocks", type=int, default=2, help="transformer blocks in the stack")
    p.add_argument("--batch-size", type=int, default=32, help="windows per step (each predicts every position)")
    p.add_argument("--sample-length", type=int, default=240, help="characters to generate")
    args = p.parse_args(argv)
    start = time.perf_counter()

    print(rule("A character-level language model with tied embeddings"))
    texts = load_texts()
    vocab = Vocabulary("".join(texts))
    # The last 10% of every module is held out for validation.
    train_ids = vocab.encode("\n\n".join(t[: int(0.9 * len(t))] for t in texts))
    val_ids = vocab.encode("\n\n".join(t[int(0.9 * len(t)) :] for t in texts))
    print(f"text: the source of the modules {', '.join(MODULES)} of Python {sys.version.split()[0]}")
    print(f"{len(train_ids):_} characters to train on, {len(val_ids):_} held out, {len(vocab)} distinct")

    model = make_model(len(vocab), context=args.context, dims=args.dims, blocks=args.blocks)
    ps, st = lx.setup(jax.random.key(args.seed), model)
    # Tie the two matrices: both places now hold one array, the first accessor's.
    ps = share_parameters(ps, (TIE,))
    print(model)
    untied, tied = lx.parameter_count(model), distinct_parameter_count(ps)
    print(f"tied {TIE[0]} {tuple(get(ps, TIE[0]).shape)} with {TIE[1]} {tuple(get(ps, TIE[1]).shape)}:")
    print(f"{untied:_} parameters untied, {tied:_} distinct with the tie: {untied - tied:_} saved")

    initial = np.array(get(ps, TIE[0]))  # a copy: the training step donates (reuses) ps's buffers
    untied_adam = tree_size(optax.adam(LEARNING_RATE).init(ps))  # plain optax sees two matrices
    ts = TrainState(model, ps, st, optax.adam(LEARNING_RATE))  # finds the tie (`is`) in ps
    print(f"adam state: {tree_size(ts.optimizer_state):_} numbers, one set of moments for the tied pair")
    print(f"(without the tie: {untied_adam:_})")
    rng = np.random.default_rng(args.seed)
    val_starts = np.random.default_rng(args.seed + 1).integers(0, len(val_ids) - args.context - 1, size=2048)
    x_val, y_val = windows(val_ids, val_starts, args.context)

    @jax.jit
    def val_loss(ps, st):
        # the last position: the next character after a full window, as a model reading `--context` characters sees it
        return losses(model, ps, lx.testmode(st), (x_val, y_val))[0][:, -1].mean()

    curve: dict[str, list] = {"loss": [], "eval_step": [0], "val_loss": [float(val_loss(ts.parameters, ts.states))]}
    eval_every = max(1, args.steps // 15)
    bar = progress(range(1, args.steps + 1), total=args.steps, desc="training", disable=args.no_progress)
    for step in bar:
        starts = rng.integers(0, len(train_ids) - args.context - 1, size=args.batch_size)
        _, loss, _, ts = single_train_step(objective, windows(train_ids, starts, args.context), ts)
        curve["loss"].append(float(loss))
        if step % eval_every == 0 or step == args.steps:
            curve["eval_step"].append(step)
            curve["val_loss"].append(float(val_loss(ts.parameters, ts.states)))
            bar.set_postfix(loss=f"{np.mean(curve['loss'][-eval_every:]):.3f}", val=f"{curve['val_loss'][-1]:.3f}")

    shown = sorted({0, len(curve["eval_step"]) - 1} | set(range(0, len(curve["eval_step"]), 4)))
    for i in shown:
        step, loss = curve["eval_step"][i], curve["val_loss"][i]
        print(f"step {step:5d}  validation loss {loss:.3f} nats/char ({loss / np.log(2):.2f} bits)")

    a, b = get(ts.parameters, TIE[0]), get(ts.parameters, TIE[1])
    same_object = a is b
    same_values = bool(np.array_equal(np.asarray(a), np.asarray(b)))
    moved = not np.array_equal(np.asarray(a), initial)
    print(f"after {args.steps} steps: {TIE[0]} is {TIE[1]}: {same_object}; equal values: {same_values}")
    print(f"(and training changed the shared matrix: {moved})")

    prompt = "def "
    sample = generate(
        model, ts.parameters, ts.states, vocab, prompt, context=args.context, length=args.sample_length, seed=args.seed
    )
    print(rule("A sample (temperature 0.8)"))
    print(sample)

    path = args.out / "tied_lm.png"
    fig, (ax,) = new_figure(1, width=5.0)
    ax.plot(smooth(curve["loss"], 25), label="training (25-step mean)")
    ax.plot(curve["eval_step"], curve["val_loss"], marker=".", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="Tied-embedding char LM")
    ax.legend()
    save_figure(fig, path)
    print(f"saved the loss curve to {path}")
    return {
        "parameters_untied": untied,
        "blocks": model["blocks"].n,
        "parameters_tied": tied,
        "saved_by_tie": untied - tied,
        "val_loss": curve["val_loss"][-1],
        "first_val_loss": curve["val_loss"][0],
        "tie_holds": same_values,
        "tie_same_object": same_object,
        "shared_matrix_trained": moved,
        "sample": sample,
        "plot": str(path),
        "seconds": time.perf_counter() - start,
    }


# Tiny settings for the smoke test (`tests/test_examples.py`) and `demo.py --quick`.
QUICK = ["--steps", "30", "--context", "8", "--dims", "16", "--blocks", "2", "--sample-length", "20"]


def failures(result: dict) -> list[str]:
    """What went wrong, if anything: the checks `make demo` holds this example to."""
    problems = []
    if not result["tie_holds"]:
        problems.append("the tie broke: the embedding and the output weight differ after training")
    if not result["shared_matrix_trained"]:
        problems.append("training never changed the shared matrix")
    if not result["val_loss"] < result["first_val_loss"]:
        problems.append("the validation loss did not go down")
    return problems


def summary(result: dict) -> str:
    return (
        f"tied LM: validation loss {result['first_val_loss']:.2f} -> {result['val_loss']:.2f} nats/char, "
        f"the tie saves {result['saved_by_tie']:_} parameters and "
        f"{'still holds' if result['tie_holds'] else 'BROKE'} after training"
    )


if __name__ == "__main__":
    problems = failures(main())
    print("\n".join(f"FAILED: {problem}" for problem in problems) or "tied LM: all checks passed")
    sys.exit(1 if problems else 0)
