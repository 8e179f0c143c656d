"""`where=` selectors shared by `freeze`, `lora`, precision policies and sharding rules."""

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from ._keypath import KeyPath
from ._layer import Layer

Where = str | type | Sequence[str | type] | Callable[[KeyPath, Layer], Any]


def selector(fn: str, where: Where) -> Callable[[KeyPath, Layer], Any]:
    """`where` as a predicate on `(path, layer)`.

    `where` is a dotted path pattern (`"blocks.*.attn"`; `*` matches within one part, and a
    stack's block indices are left out so one pattern names the same layer in every block), a
    layer type, a sequence of those (any one matches), or a function `(path, layer) -> ...`,
    returned as it is.
    """
    if callable(where) and not isinstance(where, type):
        return where
    items = [where] if isinstance(where, (str, type)) else list(where) if isinstance(where, Sequence) else [where]
    for item in items:
        if not isinstance(item, (str, type)):
            raise TypeError(
                f"{fn}: `where` must be dotted path patterns, layer types or a function (path, layer), got {item!r}."
            )

    def select(path: KeyPath, layer: Layer) -> bool:
        names = ".".join(str(k) for k in path if not isinstance(k, int))
        return any(
            isinstance(layer, item) if isinstance(item, type) else fnmatch.fnmatchcase(names, item) for item in items
        )

    return select
