"""Tied parameters: `share_parameters` (Lux's `Experimental.share_parameters`) and its checks.

Places in one group hold the same array object (`is`), as in Lux. It is public as
`luxjax.experimental.share_parameters`; it lives in core because the training helpers, which
keep ties through every step, tie by accessor too (`TrainState(..., ties=...)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
from jax.core import Tracer

from ._keypath import KeyPath
from ._tree import copy_dicts, is_array, leaves_with_paths, replace_at


def _describe(where: Sequence[str]) -> str:
    if list(where) == [""]:
        return "one array"
    return ", ".join(repr(k) for k in where) if where else "no keys"


def _get(fn: str, ps: Any, accessor: str) -> Any:
    node = ps
    path = KeyPath.parse(accessor)
    for depth, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            where = path[:depth].label()
            have = _describe(list(node)) if isinstance(node, Mapping) else f"a {type(node).__name__}"
            raise ValueError(f"{fn}: `ps` has no {accessor!r}: no key {key!r} at {where}, which has {have}.")
        node = node[key]
    return node


def _in_order_of(place: Any, value: Any) -> Any:
    """A copy of the dicts of `value` with the keys in `place`'s order (the leaves are `value`'s own)."""
    if isinstance(place, Mapping) and isinstance(value, Mapping):
        return {k: _in_order_of(place[k], value[k]) for k in place}
    return value


def _check_sharing(sharing: Any) -> list[list[str]]:
    if isinstance(sharing, str) or not isinstance(sharing, Iterable):
        raise ValueError(
            f"share_parameters: `sharing` must be a tuple of groups of dotted accessors such as "
            f"(('d3.l2', 'd1'),), got {sharing!r}."
        )
    groups = []
    for group in sharing:
        if isinstance(group, str) or not isinstance(group, Iterable):
            raise ValueError(
                f"share_parameters: each group in `sharing` must be a tuple of dotted accessors such as "
                f"('d3.l2', 'd1'), got {group!r}."
            )
        group = list(group)
        if not group:
            raise ValueError(
                f"share_parameters: group {len(groups)} of `sharing` is empty; give each group its accessors."
            )
        for accessor in group:
            if not isinstance(accessor, str) or not accessor:
                raise ValueError(
                    f"share_parameters: accessors must be non-empty dotted strings such as 'd3.l2', got {accessor!r}."
                )
        groups.append(group)
    seen: list[tuple[KeyPath, str, int]] = []
    for index, group in enumerate(groups):
        for accessor in group:
            path = KeyPath.parse(accessor)
            for other_path, other, other_index in seen:
                if path == other_path and index == other_index:
                    raise ValueError(f"share_parameters: {accessor!r} appears twice in group {tuple(group)}.")
                shorter = min(len(path), len(other_path))
                if path[:shorter] == other_path[:shorter]:
                    where = "the same group" if index == other_index else f"groups {other_index} and {index}"
                    raise ValueError(
                        f"share_parameters: accessors {other!r} and {accessor!r} in {where} overlap; "
                        "each place may belong to one group only."
                    )
            seen.append((path, accessor, index))
    return groups


def _check_match(value: Any, value_name: str, place: Any, accessor: str) -> None:
    value_leaves = leaves_with_paths(value)
    place_leaves = leaves_with_paths(place)
    for path, leaf in value_leaves:
        if not is_array(leaf):
            what = f"{path} of {value_name}" if path else value_name
            raise ValueError(
                f"share_parameters: ties are between arrays, but {what} is {leaf!r} of type {type(leaf).__name__}."
            )
    value_paths = [str(p) for p, _ in value_leaves]
    place_paths = [str(p) for p, _ in place_leaves]
    if value_paths != place_paths and sorted(value_paths) != sorted(place_paths):
        raise ValueError(
            f"share_parameters: {accessor!r} has entries {_describe(place_paths)} "
            f"but {value_name} has {_describe(value_paths)}."
        )
    place_by_path = {str(p): leaf for p, leaf in place_leaves}
    for path, leaf in value_leaves:
        other = place_by_path[str(path)]
        what = f"{path} of " if path else ""
        for attr in ("shape", "dtype"):
            got, expected = getattr(other, attr, None), getattr(leaf, attr)
            if got != expected:
                shown = tuple(expected) if attr == "shape" else expected
                got_shown = tuple(got) if attr == "shape" and got is not None else got
                raise ValueError(
                    f"share_parameters: {accessor!r} has {what}{attr} {got_shown} but {value_name} has {shown}."
                )
        if _sharded_differently(leaf, other):
            raise ValueError(
                f"share_parameters: tied places must be sharded alike, but {accessor!r} has {what}sharding "
                f"{_sharding_name(other)} and {value_name} has {_sharding_name(leaf)}; give both places one "
                "sharding rule (`luxjax.sharding.shardings(..., ties=...)` checks rules before setup)."
            )


def _sharded_differently(a: Any, b: Any) -> bool:
    """Whether two placed JAX arrays live on different devices or are split differently."""
    if not (isinstance(a, jax.Array) and isinstance(b, jax.Array)) or isinstance(a, Tracer) or isinstance(b, Tracer):
        return False
    return not a.sharding.is_equivalent_to(b.sharding, a.ndim)


def _sharding_name(a: jax.Array) -> str:
    sharding = a.sharding
    return str(sharding.spec) if isinstance(sharding, jax.sharding.NamedSharding) else f"{sharding}"


def share_parameters(ps: dict, sharing: Sequence[Sequence[str]], new_parameters: Sequence[Any] | None = None) -> dict:
    """Ties groups of places in `ps` to one value each (Lux's `Experimental.share_parameters`).

    Args:
        ps: the parameter tree (nested dicts).
        sharing: a tuple of groups of dotted accessors, e.g. `(("d3.l2", "d1"), ("d2", "d3.l1"))`.
            Groups must be disjoint, also by prefix (`"d1"` and `"d1.weight"` overlap).
        new_parameters: optional, one value per group. Without it each group takes the value at
            its first accessor.

    Returns:
        A new tree with the same structure in which the places of one group hold the same arrays
        (`is`). The input is not changed. Ties are kept by `luxjax.training` (training steps,
        checkpoints, flattening); `jax.jit` outputs and `jax.tree.map` do not keep identity.

    Raises:
        ValueError: for overlapping groups, a missing accessor, `new_parameters` of the wrong
            length, or a value whose structure, shape or dtype does not match a place.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import share_parameters
        >>> model = lx.Chain(d1=lx.Dense(2, 4, jnp.tanh), d3=lx.Chain(l1=lx.Dense(4, 2), l2=lx.Dense(2, 4)),
        ...                  d2=lx.Dense(4, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps = share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")))
        >>> ps["d3"]["l2"]["weight"] is ps["d1"]["weight"] and ps["d2"]["bias"] is ps["d3"]["l1"]["bias"]
        True
    """
    groups = _check_sharing(sharing)
    if new_parameters is not None:
        if isinstance(new_parameters, Mapping) or not isinstance(new_parameters, Sequence):
            raise ValueError(
                f"share_parameters: `new_parameters` must be a sequence with one value per group, "
                f"got {type(new_parameters).__name__}."
            )
        if len(new_parameters) != len(groups):
            raise ValueError(
                f"share_parameters: `new_parameters` must have one value per group of `sharing` "
                f"({len(groups)}), got {len(new_parameters)}."
            )
    updates: dict[KeyPath, Any] = {}
    for index, group in enumerate(groups):
        places = [_get("share_parameters", ps, accessor) for accessor in group]
        if new_parameters is None:
            value, value_name = places[0], repr(group[0])
        else:
            value, value_name = new_parameters[index], f"new_parameters[{index}]"
        for accessor, place in zip(group, places):
            _check_match(value, value_name, place, accessor)
        for accessor, place in zip(group, places):
            updates[KeyPath.parse(accessor)] = _in_order_of(place, value)
    return replace_at(copy_dicts(ps), updates)
