"""The Python in docs/freezing.md and docs/layer_map.md runs as written."""

import contextlib
import io
import pathlib
import re

import jax
import pytest

DOCS = pathlib.Path(__file__).parents[2] / "docs"


@pytest.mark.parametrize("page", ["freezing.md", "layer_map.md"])
def test_doc_code_runs(page):
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S))
    out = io.StringIO()
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(out):  # a user's default
        exec(compile(code, page, "exec"), {"__name__": f"docs_{page}"})
    if page == "layer_map.md":
        assert out.getvalue().startswith("zeroing params of KeyPath('chain', 'dense_1')\n")
