"""Lux-style display: the layer tree with a parameter count per child and a total."""

from __future__ import annotations

import re
from typing import Any

from ._walk import count, frozen_count

Layer = Any  # any luxjax layer; this module reads only the layer protocol (children, is_wrapper, repr)

_COMMENT_COLUMN = 50
_AUTO_NAME = re.compile(r"layer_(\d+)")


def _counts(layer: Layer, times: int = 1) -> str:
    params, states = count(layer, "params"), count(layer, "state")
    if params == 0 and states == 0:
        return ""

    def amount(n: int) -> str:
        return f"{n * times:_}" if times == 1 or n == 0 else f"{n * times:_} ({n:_} x {times})"

    text = f"{amount(params)} parameters"
    return text + f", plus {amount(states)} non-trainable" if states else text


def _is_one_line(layer: Layer) -> bool:
    children = layer.children()
    return not children or (layer.is_wrapper and _is_one_line(next(iter(children.values()))))


def _runs(children: dict[str, Layer]) -> list[tuple[str, Layer, int]]:
    """Groups consecutive equal one-line children named `layer_i`, `layer_i+1`, ...."""
    runs: list[tuple[str, Layer, int]] = []
    items = list(children.items())
    i = 0
    while i < len(items):
        name, child = items[i]
        match = _AUTO_NAME.fullmatch(name)
        first = int(match.group(1)) if match else 0
        j = i + 1
        if match and _is_one_line(child):
            while j < len(items) and items[j][0] == f"layer_{first + j - i}" and items[j][1] == child:
                j += 1
        label = name if j == i + 1 else f"layer_({first}-{first + j - i - 1})"
        runs.append((label, child, j - i))
        i = j
    return runs


def _lines(layer: Layer, prefix: str, depth: int, times: int = 1) -> list[tuple[str, str]]:
    pad = "    " * depth
    if _is_one_line(layer):
        return [(f"{pad}{prefix}{layer!r},", _counts(layer, times))]
    lines = [(f"{pad}{prefix}{layer.display_name()}(", "")]
    copies = layer.copies()
    for label, child, run in _runs(layer.children()):
        if layer.is_wrapper:
            child_prefix = f"{copies} × " if copies > 1 else ""
        else:
            child_prefix = f"{label} = "
        lines += _lines(child, child_prefix, depth + 1, times * run * copies)
    lines += [(f"{pad}    {arg},", "") for arg in layer.display_args()]
    lines.append((f"{pad}),", ""))
    return lines


def _align(lines: list[tuple[str, str]]) -> str:
    width = max([_COMMENT_COLUMN] + [len(text) + 2 for text, comment in lines if comment])
    return "\n".join(f"{text:<{width}}# {comment}" if comment else text for text, comment in lines)


def display(model: Layer) -> str:
    """Returns what `print(model)` shows: the tree of layers with counts, as Lux prints it."""
    params, frozen = count(model, "params"), frozen_count(model)
    trained = f" ({params / (params + frozen):.1%} of {params + frozen:_} train)" if frozen else ""
    total = f"{params:_} parameters{trained}, plus {count(model, 'state'):_} states."
    if _is_one_line(model):
        counts = _counts(model)
        return f"{model!r}  # {counts}" if counts else repr(model)
    lines = _lines(model, "", 0)
    lines[-1] = (")", f"Total: {total}")
    return _align(lines)


def function_name(fn: object) -> str:
    """How a function is shown inside a layer's repr: `relu`, `tanh`, or its repr."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name != "<lambda>" else repr(fn)
