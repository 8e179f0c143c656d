"""Ready-made rule sets: data parallel, fully sharded data parallel (FSDP) and tensor parallel."""

from __future__ import annotations

import math
from collections.abc import Sequence

from jax.sharding import PartitionSpec

from ..core import Parameter, Rules, selector
from ..layers import Dense, Embedding

Axis = str | tuple[str, ...]


def _size(param: Parameter, axis: Axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(param.mesh.shape[name] for name in names)


def _split(ndim: int, at: int, axis: Axis) -> PartitionSpec:
    spec: list[Axis | None] = [None] * ndim
    spec[at] = axis
    return PartitionSpec(*spec)


def data_parallel() -> Rules:
    """Every parameter replicated on every device; only the batch is split (`shard_batch`).

    Each device holds the whole model, its gradients and its optimizer state; the step
    all-reduces the gradients. The simplest choice while the model fits one device.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.sharding import data_parallel, shardings
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> ps_sh, _ = shardings(lx.Dense(2, 4), mesh, data_parallel())
        >>> ps_sh["weight"].spec
        P()
    """
    return {}


def fsdp(axis: Axis = "data", min_size: int = 2**12) -> Rules:
    """Fully sharded data parallel: each large parameter split along its largest divisible axis.

    Parameters with at least `min_size` scalars (per block of a `Stacked`) are split over the
    mesh axis `axis` along their largest axis whose size that axis divides (the first one
    on a tie); smaller or indivisible ones stay replicated. The optimizer state follows the
    parameters, so each device holds about 1/n of the parameters, gradients and moments. XLA
    gathers each weight where it is used. Use it with the batch split over the same axis.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.sharding import fsdp, shardings
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> ps_sh, _ = shardings(lx.Dense(64, 128), mesh, fsdp(min_size=1024))
        >>> ps_sh["weight"].spec, ps_sh["bias"].spec
        (P('data', None), P())
    """

    def rule(param: Parameter) -> PartitionSpec | None:
        if math.prod(param.shape) < min_size:
            return None
        n = _size(param, axis)
        fits = [i for i, size in enumerate(param.shape) if size % n == 0]
        if not fits:
            return None
        return _split(len(param.shape), max(fits, key=lambda i: (param.shape[i], -i)), axis)

    return {"*": rule}


def tensor_parallel(axis: Axis = "model", row: Sequence[str] = ("out_proj.*", "*.out_proj.*")) -> Rules:
    """Tensor parallel for `Dense`, `MultiHeadAttention` and `Embedding` (Megatron's column and row split).

    A `Dense` is split by columns: its `weight` (out, in) along the output features and its
    bias with them, so each device computes a slice of the output features. The Dense layers
    whose parameter paths match `row` (by default every attention `out_proj`) are split by
    rows instead, along the input features, with the bias replicated: fed by a column-split
    layer, they need one all-reduce after. Attention's `q_proj`, `k_proj` and `v_proj` are
    Dense layers, so its heads are split over devices. An `Embedding` is split over the
    vocabulary, like the column-split head it is often tied to. Parameters whose axis `axis`
    does not divide stay for the next rule (replicated if none).

    Add your own `row` patterns for a two-layer MLP (`("*.mlp.down.*",)`), and combine with
    FSDP by merging dicts, tensor parallel first: `{**tensor_parallel("model"), **fsdp("data")}`.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.sharding import shardings, tensor_parallel
        >>> mesh = jax.make_mesh((1,), ("model",))
        >>> ps_sh, _ = shardings(lx.MultiHeadAttention(8, 2), mesh, tensor_parallel())
        >>> ps_sh["q_proj"]["weight"].spec, ps_sh["out_proj"]["weight"].spec
        (P('model', None), P(None, 'model'))
    """
    is_row = selector("tensor_parallel", tuple(row))

    def rule(param: Parameter) -> PartitionSpec | None:
        shape, by_rows = param.shape, isinstance(param.layer, Dense) and is_row(param.path, param.layer)
        if param.name == ("bias",) and by_rows:
            return PartitionSpec()
        if param.name == ("weight",) and len(shape) == 2:
            at = 1 if by_rows else 0
        elif param.name == ("bias",) and len(shape) == 1:
            at = 0
        else:
            return None
        return _split(len(shape), at, axis) if shape[at] % _size(param, axis) == 0 else None

    return {(Dense, Embedding): rule}
