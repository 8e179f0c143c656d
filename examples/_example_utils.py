"""Pieces the example scripts share: command line, progress bar, array sizes and plots.

Kept tiny on purpose: each example reads top to bottom on its own, this module only saves
repeating the boring parts.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

DEFAULT_OUT = "demo_out"


def parser(
    description: str | None, *, steps: int, seed: int = 0, steps_help: str = "training steps"
) -> argparse.ArgumentParser:
    """The flags every example takes: `--steps`, `--seed`, `--out`, `--no-progress`."""
    first_line = (description or "").strip().splitlines()[0] if description else None
    p = argparse.ArgumentParser(description=first_line, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=steps, help=steps_help)
    p.add_argument("--seed", type=int, default=seed, help="seed for initialisation, data order and sampling")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(DEFAULT_OUT), help="folder for plots and logs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def progress(iterable: Iterable, *, total: int, desc: str, disable: bool) -> Any:
    """A tqdm progress bar that leaves one finished line behind."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=True, dynamic_ncols=True, mininterval=0.5)


def stop(bar: Any, count: int) -> None:
    """Closes a bar that ends early at `count`, the steps actually run.

    A bar iterating keeps its count to itself between refreshes, so closing it in the middle
    of a loop would leave the count of its last refresh (often 0 or 1) on screen.
    """
    bar.n = count
    bar.refresh()
    bar.close()


def tree_size(tree: Any) -> int:
    """The number of scalars in all array leaves of `tree` (optimizer states, parameters)."""
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape"))


def tree_bytes(tree: Any) -> int:
    """The number of bytes in all array leaves of `tree`."""
    return sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "nbytes"))


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """A running mean over `window` steps (shorter at the start), for readable loss curves."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    window = max(1, min(window, values.size))
    csum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (csum[i + 1] - csum[lo]) / (i + 1 - lo)
    return out


def new_figure(ncols: int, *, width: float = 4.2, height: float = 3.0) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save_figure(fig: Any, path: pathlib.Path) -> pathlib.Path:
    """Saves and closes `fig`; returns the path."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rule(title: str) -> str:
    """A section heading for the transcript."""
    return f"\n=== {title} " + "=" * max(3, 76 - len(title))
