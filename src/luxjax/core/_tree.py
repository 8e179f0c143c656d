"""Tree algebra on nested dicts: leaves with their paths, replacing at paths, and tie groups.

Places in `ps` that hold the same array object (`is`) are tied. Identity does not survive
`jax.jit` outputs, `jax.tree.map` or a load from disk, so whatever must keep ties records them
as groups of leaf paths: `tied_groups(ps)` finds them, `tie(ps, groups)` restores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._keypath import KeyPath

Groups = tuple[tuple[KeyPath, ...], ...]


def is_array(x: Any) -> bool:
    """Whether `x` is a JAX or NumPy array (the only leaves that can be tied)."""
    return isinstance(x, (jax.Array, np.ndarray))


def leaves_with_paths(tree: Any) -> list[tuple[KeyPath, Any]]:
    """The leaves of a tree of nested dicts, lists and tuples, with their `KeyPath`s, in the tree's own order."""
    out: list[tuple[KeyPath, Any]] = []

    def walk(node: Any, path: KeyPath) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, path / str(k))
        elif isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
            for i, v in enumerate(node):
                walk(v, path / str(i))
        elif node is not None:
            out.append((path, node))

    walk(tree, KeyPath())
    return out


def copy_dicts(tree: Any) -> Any:
    """A copy of the nested dicts of `tree` (keeping their order) around the same leaves."""
    if isinstance(tree, Mapping):
        return {k: copy_dicts(v) for k, v in tree.items()}
    return tree


def replace_at(tree: Any, values: Mapping[KeyPath, Any]) -> Any:
    """A copy of nested-dict `tree` with each path in `values` set; only dicts on those paths are copied."""
    if not values:
        return tree
    if KeyPath() in values:
        return values[KeyPath()]
    heads: dict[str, dict[KeyPath, Any]] = {}
    for path, value in values.items():
        heads.setdefault(path[0], {})[KeyPath(*path[1:])] = value
    out = dict(tree)
    for key, rest in heads.items():
        out[key] = replace_at(tree[key], rest)
    return out


def stack_blocks(trees: Sequence[Any]) -> Any:
    """Trees of equal structure stacked leaf by leaf on a new leading axis (shapes stay shapes)."""

    def stack(*leaves: Any) -> Any:
        if isinstance(leaves[0], jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
        return jax.numpy.stack(leaves)

    return jax.tree.map(stack, *trees)


def same_leaves(a: Any, b: Any) -> bool:
    """Whether two trees have one structure and the very same leaves (`is`)."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(x is y for x, y in zip(leaves_a, leaves_b))


def tied_groups(ps: Any) -> Groups:
    """The groups of leaf paths in `ps` that hold the same array object (`is`), sorted.

    Each group has two or more `KeyPath`s, sorted, and the groups are sorted by their first
    path, the group's representative. The order does not depend on the order of dict keys
    (which `jax.jit` and `jax.tree.map` change), so the groups, and the optimizer state kept
    per representative, are the same before and after a step or a checkpoint.
    Python scalars are never ties.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from luxjax.experimental import tied_groups
        >>> w = jnp.ones((2, 2))
        >>> tied_groups({"a": {"weight": w}, "b": {"weight": w, "bias": jnp.zeros(2)}})
        ((KeyPath('a', 'weight'), KeyPath('b', 'weight')),)
    """
    by_id: dict[int, list[KeyPath]] = {}
    for path, leaf in leaves_with_paths(ps):
        if is_array(leaf):
            by_id.setdefault(id(leaf), []).append(path)
    return tuple(sorted(tuple(sorted(paths)) for paths in by_id.values() if len(paths) > 1))


def tie(ps: Any, groups: Sequence[Sequence[KeyPath | str]]) -> Any:
    """Restores ties: every place of a group of leaf paths gets the value of the group's first.

    Cheap (it copies only the dicts on the tied paths) and unchecked; use it to put back ties
    that `jax.jit`, `jax.tree.map` or a load dropped. `share_parameters` is the checked form.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from luxjax.experimental import tie
        >>> ps = tie({"a": jnp.ones(2), "b": jnp.zeros(2)}, [("a", "b")])
        >>> ps["a"] is ps["b"]
        True
    """
    updates: dict[KeyPath, Any] = {}
    for group in groups:
        paths = [KeyPath.of(p, "tie") for p in group]
        value = paths[0].get(ps)
        for path in paths[1:]:
            updates[path] = value
    return replace_at(ps, updates)
