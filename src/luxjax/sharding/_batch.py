"""Putting a batch on a mesh, on one host or many, and measuring what each device holds."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core import ConfigError
from ._rules import Axis


def shard_batch(x: Any, mesh: Mesh, axis: Axis = "data") -> Any:
    """Every array of `x` split over the mesh axis `axis` along its leading (batch) axis.

    With one process `x` is the whole batch. With several (`jax.distributed.initialize`),
    `x` is this process's part of the batch: the global batch is the processes' parts in
    process order, as `jax.make_array_from_process_local_data` builds it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from luxjax.sharding import shard_batch
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> x, y = shard_batch((jnp.ones((8, 3)), jnp.zeros(8)), mesh)
        >>> x.sharding.spec
        P('data',)
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"shard_batch: `mesh` must be a jax.sharding.Mesh, got {mesh!r}.")
    names = axis if isinstance(axis, tuple) else (axis,)
    for name in names:
        if name not in mesh.shape:
            raise ConfigError(f"shard_batch: the mesh has no axis {name!r}; its axes are {tuple(mesh.axis_names)}.")
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    local = max(int(np.prod([mesh.shape[name] for name in names])) // jax.process_count(), 1)

    def put(path: Any, leaf: Any) -> Any:
        shape = np.shape(leaf)
        if not shape or shape[0] % local:
            raise ConfigError(
                f"shard_batch: {jax.tree_util.keystr(path) or 'the batch'} has shape {shape}, whose leading axis "
                f"must be divisible by the {local} devices of mesh axis {axis!r} on this process."
            )
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree_util.tree_map_with_path(put, x)


def addressable_bytes(tree: Any) -> int:
    """The bytes of `tree`'s arrays held by this process's devices, every device's shards counted.

    A replicated array on 8 devices counts 8 times; an array split over 8 devices, once.

    Example:
        >>> import jax.numpy as jnp
        >>> from luxjax.sharding import addressable_bytes
        >>> addressable_bytes({"w": jnp.ones((4, 4))})
        64
    """
    return sum(
        int(np.prod(shard.data.shape)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
        if isinstance(leaf, jax.Array)
        for shard in leaf.addressable_shards
    )
