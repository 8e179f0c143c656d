"""The training flag and helpers that set a key everywhere in a state tree."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Training:
    """The training flag kept in `st["training"]` (Lux's `Val(true)`).

    It is a pytree node with no leaves, so `jax.jit` treats it as part of the tree's
    structure: switching between `trainmode` and `testmode` retraces instead of tracing a
    boolean, and layers can branch on it in Python. It counts as one state.

    Example:
        >>> import luxjax as lx
        >>> bool(lx.Training(True))
        True
    """

    value: bool

    def __bool__(self) -> bool:
        return self.value

    def __repr__(self) -> str:
        return f"Training({self.value})"


def _replaced(st: Any, name: str, value: Any, found: list[bool]) -> Any:
    if isinstance(st, dict):
        found[0] = found[0] or name in st
        return {k: value if k == name else _replaced(v, name, value, found) for k, v in st.items()}
    if isinstance(st, (tuple, list)):
        return type(st)(_replaced(v, name, value, found) for v in st)
    return st


def _keys(st: Any) -> set[str]:
    if isinstance(st, dict):
        return set(st).union(*(_keys(v) for v in st.values()))
    if isinstance(st, (tuple, list)):
        return set().union(*(_keys(v) for v in st))
    return set()


def update_state(st: Any, name: str, value: Any) -> Any:
    """Returns a copy of `st` with every entry called `name`, at any depth, set to `value`.

    A name that is nowhere in `st` is a `KeyError` listing the names there are (a misspelled
    name would otherwise change nothing, silently).

    Example:
        >>> import luxjax as lx
        >>> lx.update_state({"a": {"count": 1}, "count": 2}, "count", 0)
        {'a': {'count': 0}, 'count': 0}
    """
    found = [False]
    new = _replaced(st, name, value, found)
    if not found[0]:
        have = ", ".join(map(repr, sorted(_keys(st)))) or "none"
        raise KeyError(f"update_state: no entry {name!r} anywhere in `st`; its entries are named {have}.")
    return new


def testmode(st: Any) -> Any:
    """Returns `st` with every training flag off (dropout off, running statistics used).

    Example:
        >>> import luxjax as lx
        >>> lx.testmode({"layer_1": {"training": lx.Training(True)}})
        {'layer_1': {'training': Training(False)}}
    """
    return _replaced(st, "training", Training(False), [False])


def trainmode(st: Any) -> Any:
    """Returns `st` with every training flag on.

    Example:
        >>> import luxjax as lx
        >>> lx.trainmode({"training": lx.Training(False)})
        {'training': Training(True)}
    """
    return _replaced(st, "training", Training(True), [False])
