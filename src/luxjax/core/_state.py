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


def update_state(st: Any, name: str, value: Any) -> Any:
    """Returns a copy of `st` with every entry called `name`, at any depth, set to `value`.

    Example:
        >>> import luxjax as lx
        >>> lx.update_state({"a": {"count": 1}, "count": 2}, "count", 0)
        {'a': {'count': 0}, 'count': 0}
    """
    if isinstance(st, dict):
        return {k: value if k == name else update_state(v, name, value) for k, v in st.items()}
    if isinstance(st, (tuple, list)):
        return type(st)(update_state(v, name, value) for v in st)
    return st


def testmode(st: Any) -> Any:
    """Returns `st` with every training flag off (dropout off, running statistics used).

    Example:
        >>> import luxjax as lx
        >>> lx.testmode({"layer_1": {"training": lx.Training(True)}})
        {'layer_1': {'training': Training(False)}}
    """
    return update_state(st, "training", Training(False))


def trainmode(st: Any) -> Any:
    """Returns `st` with every training flag on.

    Example:
        >>> import luxjax as lx
        >>> lx.trainmode({"training": lx.Training(False)})
        {'training': Training(True)}
    """
    return update_state(st, "training", Training(True))
