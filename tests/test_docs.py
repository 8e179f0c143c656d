"""The Python in the README and the docs pages runs as written, and prints what the pages show.

Sybil reads each page: its ```python blocks (doctest-style ones too) run in order in one
namespace, one test per page (so a parallel run never splits a page), and each ```output
block must equal exactly what the ```python block above it printed.
Errors a page shows are printed and then shown in an ```output block, so their text is checked.
"""

import contextlib
import doctest
import io
import os
import pathlib

import jax
import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

ROOT = pathlib.Path(__file__).parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


class PrintedOutput(CodeBlockParser):
    """An ```output block: exactly what the ```python block above it printed."""

    language = "output"

    def evaluate(self, example):
        text = example.namespace["__printed__"].getvalue()
        if text != example.parsed:
            return f"the page's Python printed\n{text}\nbut the page shows\n{example.parsed}"
        return None


OUTPUT = PrintedOutput()
SYBIL = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), OUTPUT]
)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_and_prints_what_it_shows(page):
    document = SYBIL.parse(ROOT / page)
    printed = io.StringIO()
    document.namespace.update(__name__=f"docs_{page}", __printed__=printed)
    here = os.getcwd()
    try:
        with jax.numpy_dtype_promotion("standard"):  # a user's default
            for example in document:
                if example.region.evaluator != OUTPUT.evaluate:  # an output block shows the block above
                    printed.seek(0)
                    printed.truncate()
                with contextlib.redirect_stdout(printed):
                    example.evaluate()
    finally:
        os.chdir(here)  # a page may move to a temporary folder to write files
