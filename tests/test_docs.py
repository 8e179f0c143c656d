"""The Python in the README and the docs pages runs as written, and prints what the pages say."""

import contextlib
import io
import os
import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).parents[1]
# Every page with Python: each page's blocks form one program, run in order in one namespace.
PAGES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text()),
]


def run_page(page: str) -> str:
    code = "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S))
    out, here = io.StringIO(), os.getcwd()
    try:
        with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(out):  # a user's default
            exec(compile(code, page, "exec"), {"__name__": f"docs_{page}"})
    finally:
        os.chdir(here)  # a page may move to a temporary folder to write files
    return out.getvalue()


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page):
    printed = run_page(page)
    if page == "README.md":  # the fifteen lines print the model as the README shows
        shown = re.search(r"\nprints\n\n```\n(.*?)```", (ROOT / page).read_text(), re.S)
        assert shown is not None and printed == shown.group(1)
    if page == "docs/layer_map.md":
        assert printed.startswith("zeroing params of KeyPath('chain', 'dense_1')\n")
    if page == "docs/core.md":
        assert "Dense(4 => 4) at block.body.layer_1: expected input with last axis 4, got shape (2, 3)." in printed
    if page == "docs/debugging.md":  # each error shown on the page is the one raised
        assert printed.splitlines() == [
            "Dense(1 => 1) at layer_2.layer_2: expected input with last axis 1, got shape (4, 3).",
            "Dense(1 => 1) at layer_2.layer_2: expected input with last axis 1, got shape (4, 3).",
            "luxjax debug_mode: ShapeError raised in layer Dense(1 => 1) at location layer_2.layer_2 (forward pass).",
            "[nan nan nan nan]",
            "NaN detected in parameters (weight) of layer Dense(3 => 1) at location layer_2.layer_2 (forward pass)",
            "NaN detected in gradient of input of layer BadGradient() at location layer_2.layer_2 (backward pass)",
            "JaxRuntimeError True",
            "NaN detected in gradient of input of layer BadGradient() at location layer_2.layer_2 (backward pass)",
        ]
    if page == "docs/lora.md":
        assert printed == "4642 of 12898 parameters train\n0.0\n"
    if page == "docs/deep_models.md":
        assert "Dense(16 => 64, gelu) (64, 16)" in printed
        assert "at location blocks.7.mlp.fc2 (forward pass)" in printed
