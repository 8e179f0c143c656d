"""`flatten_parameters`: `ps` as one vector and back, keeping each tie group once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.flatten_util import ravel_pytree

from ..core import in_order, share_parameters, tied_groups
from ._train_state import expand_ties, reduce_ties


def flatten_parameters(
    ps: Any, ties: Sequence[Sequence[str]] | None = None
) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """`ps` as one vector and a function back, like `jax.flatten_util.ravel_pytree`, keeping ties.

    A tie group appears once in the vector, so its length is the number of distinct
    parameters, and `unflatten(vector)` gives a tree, with `ps`'s key order, in which the tied places are the same
    array again (`is`). Differentiating through `unflatten` therefore gives the summed
    gradient of a tied parameter, and vector updates (second-order methods, line searches)
    keep ties. Lux's ComponentArrays undo sharing; this does not.

    Args:
        ps: a parameter tree, with ties as `is` identity (from `share_parameters`).
        ties: optional groups of dotted accessors to tie first (as for `share_parameters`).

    Returns:
        `(vector, unflatten)`. All leaves are promoted to one dtype, as in `ravel_pytree`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from luxjax.training import flatten_parameters
        >>> w = jnp.ones((2, 2))
        >>> vector, unflatten = flatten_parameters({"a": w, "b": w, "c": jnp.zeros(3)})
        >>> vector.shape
        (7,)
        >>> ps = unflatten(vector * 2)
        >>> ps["a"] is ps["b"]
        True
    """
    if ties is not None:
        ps = share_parameters(ps, ties)
    groups = tied_groups(ps)
    reduced = reduce_ties(ps, groups)
    vector, unravel = ravel_pytree(reduced)

    def unflatten(vector: jax.Array) -> Any:  # in `ps`'s key order (`unravel` sorts the keys)
        return expand_ties(in_order(reduced, unravel(vector)), groups)

    return vector, unflatten
