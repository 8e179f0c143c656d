"""The Python in the README and the docs pages runs as written, and prints what the pages say."""

import contextlib
import io
import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).parents[1]
# Pages whose code blocks form one program. The others (debugging, training, layers, examples)
# show fragments of the programs in examples/ and tests/, which run there.
PAGES = ["README.md", "docs/core.md", "docs/freezing.md", "docs/layer_map.md", "docs/tied_parameters.md"]
PAGES += ["docs/deep_models.md", "docs/lora.md"]


def run_page(page: str) -> str:
    code = "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S))
    out = io.StringIO()
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(out):  # a user's default
        exec(compile(code, page, "exec"), {"__name__": f"docs_{page}"})
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
    if page == "docs/lora.md":
        assert printed == "4642 of 12898 parameters train\n0.0\n"
    if page == "docs/deep_models.md":
        assert "Dense(16 => 64, gelu) (64, 16)" in printed
        assert "at location blocks.7.mlp.fc2 (forward pass)" in printed
