"""`KeyPath`: the one way luxjax names a place in a model."""

from __future__ import annotations

from typing import Any

import jax


class KeyPath(tuple):
    """A path to a place in a model, following the keys of its `ps` tree.

    A `KeyPath` is a tuple of string keys, so it hashes, compares equal to a plain tuple
    with the same keys and can be a static argument of `jax.jit`. Wrapper layers add no
    level: the path of a layer is where its parameters live in `ps`.

    Example:
        >>> import luxjax as lx
        >>> path = lx.KeyPath("chain", "dense_1")
        >>> path
        KeyPath('chain', 'dense_1')
        >>> str(path)
        'chain.dense_1'
        >>> path / "weight"
        KeyPath('chain', 'dense_1', 'weight')
        >>> lx.KeyPath.parse("chain.dense_1") == path
        True
        >>> lx.KeyPath().label()
        'the root'
        >>> lx.KeyPath.parse("blocks.7.mlp")
        KeyPath('blocks', 7, 'mlp')
    """

    def __new__(cls, *keys: str | int) -> KeyPath:
        for key in keys:
            if not (isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool) and key >= 0)):
                raise TypeError(
                    f"KeyPath keys must be strings (names) or ints >= 0 (block indices), "
                    f"got {key!r} of type {type(key).__name__}."
                )
        return super().__new__(cls, keys)

    @classmethod
    def parse(cls, dotted: str) -> KeyPath:
        """Builds a path from its dotted form: `"chain.dense_1"`, `"blocks.7.mlp"` or `""` for the root.

        A part made of digits is a block index (an int).
        """
        if not isinstance(dotted, str):
            raise TypeError(f"KeyPath.parse expects a dotted string such as 'chain.dense_1', got {dotted!r}.")
        return cls(*(int(part) if part.isdigit() else part for part in dotted.split("."))) if dotted else cls()

    @classmethod
    def of(cls, path: Any, owner: str = "KeyPath.of", what: str = "`path`") -> KeyPath:
        """A `KeyPath` from a `KeyPath`, a dotted string or a tuple of keys; anything else is a `TypeError`."""
        if isinstance(path, KeyPath):
            return path
        if isinstance(path, str):
            return cls.parse(path)
        if isinstance(path, (tuple, list)):
            return cls(*path)
        raise TypeError(f"{owner}: {what} must be a KeyPath, a dotted string or a tuple of names, got {path!r}.")

    @classmethod
    def from_jax(cls, jax_path: Any) -> KeyPath:
        """Converts a path from `jax.tree_util.tree_flatten_with_path` (dict keys, indices, attributes)."""
        return cls(*(str(next((getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a)), k)) for k in jax_path))

    def label(self) -> str:
        """How messages name the place: the dotted path, or `the root` for the empty path."""
        return str(self) or "the root"

    def __truediv__(self, key: str | int) -> KeyPath:
        return KeyPath(*self, key)

    def __add__(self, other: Any) -> KeyPath:
        return KeyPath(*self, *other)

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return KeyPath(*item) if isinstance(index, slice) else item

    def get(self, tree: Any) -> Any:
        """Returns the entry of the nested-dict `tree` at this path; an int key takes that block of a stack.

        A block index selects along the leading axis of every array below it, as the trees
        of `luxjax.Stacked` hold one block per index of that axis.
        """
        for depth, key in enumerate(self):
            if isinstance(key, int):
                tree = jax.tree.map(lambda leaf, i=key: _take(leaf, i), tree)
                continue
            if not isinstance(tree, dict) or key not in tree:
                where = KeyPath(*self[:depth]).label()
                have = ", ".join(repr(k) for k in tree) if isinstance(tree, dict) else f"a {type(tree).__name__}"
                raise KeyError(f"no key {key!r} at {where} of path {self}; found {have}.")
            tree = tree[key]
        return tree

    def __repr__(self) -> str:
        return f"KeyPath({', '.join(repr(k) for k in self)})"

    def __str__(self) -> str:
        return ".".join(map(str, self))


def _take(leaf: Any, index: int) -> Any:
    """Block `index` of a stacked leaf: an array's row, or a shape without its leading axis."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        if not leaf.shape or not 0 <= index < leaf.shape[0]:
            raise IndexError(f"block index {index} is out of range for a leaf of shape {leaf.shape}.")
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[index]
