"""Smoke tests of the examples: each runs with tiny settings and keeps its promises.

The full-size settings (accuracy >= 90% in both transfer-learning phases, and so on) are
what `make demo` checks; here every script runs for a few seconds only.
"""

import importlib
import pathlib
import re

import jax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ["transfer_learning", "nan_hunt", "tied_lm", "lora_lm", "demo"]


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def run(name, out, extra=()):
    module = importlib.import_module(name)
    # The examples are user code calling optax directly, and optax mixes Python floats with
    # int32 step counts, which strict dtype promotion (conftest.py) rejects. Rank promotion
    # stays "raise".
    with jax.numpy_dtype_promotion("standard"):
        return module, module.main([*module.QUICK, "--out", str(out), "--no-progress", *extra])


def is_png(path):
    return pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help_with_the_common_flags(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit, match="^0$"):
        module.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--seed", "--out", "--no-progress") + (("--quick",) if name == "demo" else ("--steps",)):
        assert flag in text


def test_transfer_learning_freezes_the_backbone_and_learns_both_tasks(tmp_path, capsys):
    module, result = run("transfer_learning", tmp_path)
    printed = capsys.readouterr().out
    assert result["trainable_after"] < result["trainable_before"]
    assert result["non_trainable_after"] > 0
    assert result["optimizer_state_frozen"] < result["optimizer_state_full"]
    assert result["backbone_unchanged"]
    # 60 steps are far from the demo's 90%, but well above chance (20%) for both phases.
    assert result["pretrain_accuracy"] > 0.6
    assert result["finetune_accuracy"] > 0.6
    assert "FrozenLayer" in printed
    assert is_png(result["plot"])
    assert "transfer learning:" in module.summary(result)


def test_nan_hunt_locates_the_planted_layer(tmp_path, capsys):
    module, result = run("nan_hunt", tmp_path)
    printed = capsys.readouterr().out
    assert result["failed_at"] is not None
    assert "ScaledLogSoftmax" in result["message"]
    assert re.search(r"at location classifier\.refine\.\d\.log_probs \((forward|backward) pass\)", result["message"])
    assert result["message"].startswith(("Inf detected", "NaN detected"))
    assert result["message"] in printed
    assert module.failures(result) == []


def test_tied_lm_keeps_its_tie_through_training(tmp_path):
    module, result = run("tied_lm", tmp_path)
    vocab = len(module.Vocabulary("".join(module.load_texts())))
    assert result["saved_by_tie"] == vocab * 16  # --dims 16 in QUICK
    assert result["blocks"] == 2
    assert result["tie_holds"]
    assert result["shared_matrix_trained"]
    assert result["val_loss"] < result["first_val_loss"]
    assert is_png(result["plot"])
    assert result["sample"].startswith("def ")


def test_lora_lm_adapts_and_merges_back_exactly(tmp_path):
    module, result = run("lora_lm", tmp_path)
    assert result["LoRA_fraction"] < result["head only_fraction"] < result["full fine-tuning_fraction"] == 1.0
    assert result["lora_adam_state"] < result["full_adam_state"] / 3
    assert result["merged_is_plain"] and result["merge_difference"] < 1e-5
    assert is_png(result["plot"])
    assert module.failures(result) == []


def test_demo_driver_runs_a_part_and_ends_with_the_summary(tmp_path, capsys):
    demo = importlib.import_module("demo")
    with jax.numpy_dtype_promotion("standard"):
        code = demo.main(["--quick", "--parts", "tied_lm", "--out", str(tmp_path), "--no-progress"])
    last_lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert code == 0
    assert last_lines[0].startswith("tied LM: validation loss")
    assert last_lines[1] == f"plots: {tmp_path / 'tied_lm.png'}"
    assert last_lines[2].startswith("all checks passed in")


def test_a_bar_stopped_early_shows_the_steps_run():
    import io

    from _example_utils import stop
    from tqdm.auto import tqdm

    screen = io.StringIO()
    bar = tqdm(range(1, 2001), total=2000, file=screen, mininterval=0.5)
    for step in bar:
        if step == 300:
            stop(bar, step)
            break
    assert screen.getvalue().rstrip().splitlines()[-1].split("\r")[-1].lstrip().startswith("15%")
    assert "300/2000" in screen.getvalue().split("\r")[-1]
