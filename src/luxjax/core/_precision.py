"""Mixed precision in core: the `Precision` policy, the compute dtype a call runs in, and `cast_floating`."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ConfigError

# The compute dtype of the innermost `MixedPrecision` call running (None: no policy, layers follow their inputs).
_COMPUTE: contextvars.ContextVar[Any] = contextvars.ContextVar("luxjax_compute_dtype", default=None)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: the dtypes parameters are kept in, computed in, and returned in.

    Args:
        params: dtype `setup` stores the parameters in (the master copy the optimizer updates).
        compute: dtype parameters and floating inputs are cast to when the layer is called.
        output: dtype the floating outputs are cast to on the way out.

    Each is a floating dtype (`jnp.bfloat16`, `"float16"`, ...), stored as a `numpy.dtype`.
    States (normalisation statistics, PRNG keys) are never cast.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> lx.Precision()
        Precision(params=float32, compute=bfloat16, output=float32)
        >>> lx.Precision(compute=jnp.float16).compute
        dtype('float16')
    """

    params: Any = jnp.float32
    compute: Any = jnp.bfloat16
    output: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in ("params", "compute", "output"):
            value = getattr(self, name)
            try:
                dtype = np.dtype(jnp.dtype(value))
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                raise ConfigError(f"Precision: `{name}` must be a floating dtype such as jnp.bfloat16, got {value!r}.")
            object.__setattr__(self, name, dtype)

    def __repr__(self) -> str:
        return f"Precision(params={self.params}, compute={self.compute}, output={self.output})"


@contextlib.contextmanager
def computing_in(dtype: Any) -> Iterator[None]:
    """Marks the layer calls inside as running under a policy that computes in `dtype`."""
    token = _COMPUTE.set(None if dtype is None else np.dtype(dtype))
    try:
        yield
    finally:
        _COMPUTE.reset(token)


def compute_dtype() -> Any:
    """The compute dtype of the policy the running call is under, or `None` outside any `MixedPrecision`.

    Layers that hold floating arrays outside `ps` (a `FrozenLayer`'s frozen values, LoRA's
    base weight) cast them to it, as the policy casts `ps`.

    Example:
        >>> from luxjax.core import compute_dtype
        >>> compute_dtype() is None
        True
    """
    return _COMPUTE.get()


def _is_floating(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(leaf.dtype, jnp.floating)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """`tree` with every floating-point array cast to `dtype`; other leaves (ints, bools, keys) as they are.

    `dtype=None` returns `tree` unchanged. Leaves already in `dtype` are returned as they are.

    Example:
        >>> import jax.numpy as jnp
        >>> from luxjax.core import cast_floating
        >>> tree = cast_floating({"w": jnp.ones(2), "i": jnp.arange(2)}, jnp.bfloat16)
        >>> tree["w"].dtype, tree["i"].dtype
        (dtype(bfloat16), dtype('int32'))
    """
    if dtype is None:
        return tree
    dtype = np.dtype(dtype)
    return jax.tree.map(lambda a: a.astype(dtype) if _is_floating(a) and a.dtype != dtype else a, tree)
