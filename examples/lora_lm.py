"""Adapting a character-level language model from Python code to English prose with LoRA.

The model of `tied_lm.py` (a `Stacked` transformer with tied embeddings) is first trained on
the source of eight standard-library modules (code). Then it is adapted to a new text, the
English prose of Python's own help topics (`pydoc_data.topics`, shipped with every Python),
three ways, each from the same pretrained values and for the same number of steps:

- full fine-tuning: every parameter trains;
- head only: the base frozen (`freeze`), only the tied embedding/output matrix and the last
  LayerNorm train;
- LoRA: rank-`--rank` adapters on every `Dense` in the blocks (`luxjax.experimental.lora`,
  built from `layer_map` and `freeze`), the final LayerNorm trainable, everything else frozen.

It reports each one's validation loss on the prose, its trainable parameters and adam state,
then folds the adapters into the weights (`merge_lora`) and checks that the merged plain model
predicts what the adapted one does.

Run `python examples/lora_lm.py --help` for the flags.
"""

from __future__ import annotations

import pydoc_data.topics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tied_lm
from _example_utils import new_figure, parser, progress, rule, save_figure, tree_size

import luxjax as lx
from luxjax.experimental import freeze, lora, merge_lora, share_parameters
from luxjax.training import TrainState, single_train_step

ADAPTERS = ("blocks.attn.mha.*_proj", "blocks.mlp.fc*")  # every Dense inside the blocks


def prose() -> str:
    """The English text of Python's help topics, in printable ASCII."""
    text = "\n\n".join(pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics))
    return "".join(c if (" " <= c <= "~" or c == "\n") else "?" for c in text)


def train(
    ts: TrainState, ids: np.ndarray, steps: int, args: Any, desc: str, evaluate: Any, every: int
) -> tuple[TrainState, list[tuple[int, float]]]:
    rng = np.random.default_rng(args.seed)
    curve = [(0, evaluate(ts))]
    bar = progress(range(1, steps + 1), total=steps, desc=desc, disable=args.no_progress)
    for step in bar:
        starts = rng.integers(0, len(ids) - args.context - 1, size=args.batch_size)
        _, loss, _, ts = single_train_step(tied_lm.objective, tied_lm.windows(ids, starts, args.context), ts)
        if step % every == 0 or step == steps:
            curve.append((step, evaluate(ts)))
            bar.set_postfix(val=f"{curve[-1][1]:.3f}")
    return ts, curve


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, steps=400, steps_help="adaptation steps of each method")
    p.add_argument("--pretrain-steps", type=int, default=1500, help="steps on the code before adapting")
    p.add_argument("--rank", type=int, default=4, help="rank of the LoRA adapters")
    p.add_argument("--context", type=int, default=24, help="characters the model reads")
    p.add_argument("--dims", type=int, default=64, help="embedding size")
    p.add_argument("--blocks", type=int, default=2, help="transformer blocks in the stack")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    start = time.perf_counter()

    print(rule("Pretraining on Python code"))
    code = tied_lm.load_texts()
    vocab = tied_lm.Vocabulary("".join(code))
    code_ids = vocab.encode("\n\n".join(code))
    text = "".join(c if c in vocab.index else "?" for c in prose())
    split = int(0.9 * len(text))
    prose_train, prose_val = vocab.encode(text[:split]), vocab.encode(text[split:])
    print(f"{len(code_ids):_} characters of code; then {len(prose_train):_} of English prose (help topics)")

    model = tied_lm.make_model(len(vocab), context=args.context, dims=args.dims, blocks=args.blocks)
    ps, st = lx.setup(jax.random.key(args.seed), model)
    ps = share_parameters(ps, (tied_lm.TIE,))
    starts = np.random.default_rng(args.seed + 1).integers(0, len(prose_val) - args.context - 1, size=1024)
    x_val, y_val = tied_lm.windows(prose_val, starts, args.context)

    @jax.jit
    def prose_loss(model: lx.Layer, ps: Any, st: Any) -> jax.Array:  # a model is a pytree: jit takes it as is
        return tied_lm.losses(model, ps, lx.testmode(st), (x_val, y_val))[0][:, -1].mean()

    def evaluate(model: lx.Layer, ps: Any, st: Any) -> float:
        return float(prose_loss(model, ps, st))

    ts = TrainState(model, ps, st, optax.adam(tied_lm.LEARNING_RATE))
    ts, _ = train(ts, code_ids, args.pretrain_steps, args, "pretraining", lambda ts: 0.0, args.pretrain_steps)
    base_ps, base_st = ts.parameters, ts.states
    base_loss = evaluate(model, base_ps, base_st)
    print(f"after {args.pretrain_steps} steps on code: {base_loss:.3f} nats/char on the prose")

    print(rule("Adapting to English prose, three ways"))
    methods: dict[str, tuple[lx.Layer, Any, Any]] = {
        "full fine-tuning": (model, base_ps, base_st),
        "head only": freeze(model, base_ps, base_st, where=lambda path, layer: path[0] == "blocks"),
        "LoRA": lora(model, base_ps, base_st, args.rank, where=ADAPTERS, trainable="norm", key=jax.random.key(1)),
    }
    results: dict[str, dict] = {}
    for name, (adapted, ps, st) in methods.items():
        ts = TrainState(adapted, ps, st, optax.adam(tied_lm.LEARNING_RATE))  # copies: base_ps stays readable
        every = max(1, args.steps // 8)
        ts, curve = train(
            ts, prose_train, args.steps, args, name, lambda ts: evaluate(ts.model, ts.parameters, ts.states), every
        )
        trainable = lx.parameter_count(adapted)
        results[name] = {
            "val_loss": curve[-1][1],
            "curve": curve,
            "trainable": trainable,
            "fraction": trainable / lx.parameter_count(model),
            "adam_state": tree_size(ts.optimizer_state),
            "ts": ts,
        }
        print(
            f"{name:>16}: {curve[-1][1]:.3f} nats/char; {trainable:_} trainable "
            f"({trainable / lx.parameter_count(model):.1%}), adam state {results[name]['adam_state']:_} numbers"
        )
    print(f"{'before adapting':>16}: {base_loss:.3f} nats/char")

    print(rule("Merging the adapters into the weights"))
    adapted_ts = results["LoRA"]["ts"]
    print(adapted_ts.model["blocks"])
    merged, merged_ps, merged_st = merge_lora(adapted_ts.model, adapted_ts.parameters, adapted_ts.states)
    logits = tied_lm.losses(merged, merged_ps, lx.testmode(merged_st), (x_val, y_val))[0]
    adapted_logits = tied_lm.losses(
        adapted_ts.model, adapted_ts.parameters, lx.testmode(adapted_ts.states), (x_val, y_val)
    )[0]
    difference = float(jnp.max(jnp.abs(logits - adapted_logits)))
    print(f"merged: {merged == model and 'the plain model again'}, {lx.parameter_count(merged):_} parameters")
    print(f"largest difference in per-character loss, merged against adapted: {difference:.2e}")

    path = args.out / "lora_lm.png"
    fig, (ax,) = new_figure(1, width=5.0)
    for name, result in results.items():
        steps, values = zip(*result["curve"])
        ax.plot(steps, values, marker=".", label=f"{name} ({result['fraction']:.1%} trainable)")
    ax.set(xlabel="adaptation step", ylabel="validation loss on prose (nats/char)", title="Code LM adapted to prose")
    ax.legend()
    save_figure(fig, path)
    print(f"saved the curves to {path}")
    return {
        "base_loss": base_loss,
        **{f"{name}_loss": result["val_loss"] for name, result in results.items()},
        **{f"{name}_fraction": result["fraction"] for name, result in results.items()},
        "lora_adam_state": results["LoRA"]["adam_state"],
        "full_adam_state": results["full fine-tuning"]["adam_state"],
        "merged_is_plain": merged == model,
        "merge_difference": difference,
        "plot": str(path),
        "seconds": time.perf_counter() - start,
    }


# Tiny settings for the smoke test (`tests/test_examples.py`).
QUICK = ["--steps", "20", "--pretrain-steps", "30", "--context", "8", "--dims", "16", "--blocks", "2", "--rank", "2"]


def failures(result: dict) -> list[str]:
    """What went wrong, if anything."""
    problems = []
    if not result["LoRA_loss"] < result["base_loss"]:
        problems.append("LoRA did not lower the loss on the new text")
    if not result["merged_is_plain"] or result["merge_difference"] > 1e-4:
        problems.append(f"the merged model differs from the adapted one ({result['merge_difference']:.2e})")
    return problems


if __name__ == "__main__":
    problems = failures(main())
    print("\n".join(f"FAILED: {problem}" for problem in problems) or "LoRA: all checks passed")
    sys.exit(1 if problems else 0)
