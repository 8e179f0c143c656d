"""`check_precision`: a layer honours a mixed-precision policy."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import Layer, Precision, cast_floating, computing_in, setup
from ..layers import MixedPrecision


def _fail(model: Layer, what: str) -> AssertionError:
    return AssertionError(f"check_precision({model!r}): {what}")


def _floating(tree: Any) -> list[jax.Array]:
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]


def _dtypes(model: Layer, what: str, tree: Any, dtype: Any) -> None:
    wrong = sorted({str(a.dtype) for a in _floating(tree) if a.dtype != dtype})
    if wrong:
        raise _fail(model, f"{what} must be {np.dtype(dtype)}, got {', '.join(wrong)}")


def check_precision(
    model: Layer, x: Any, *, policy: Precision | None = None, key: jax.Array | None = None, tolerance: float = 0.05
) -> None:
    """Checks that `model` honours a precision policy (default: bfloat16 compute); raises `AssertionError`.

    Checks, with `MixedPrecision(model, policy)`:

    1. `setup` stores every floating parameter in `policy.params`, and the gradients with
       respect to them arrive in `policy.params` and are finite;
    2. the floating outputs are in `policy.output`, and the new state keeps the old one's
       dtypes (statistics are not demoted);
    3. run on inputs and parameters cast to `policy.compute`, the layer's own floating outputs
       are in `policy.compute`: it does not upcast (a float32 constant or parameter meeting a
       bfloat16 input would); a `MixedPrecision` model returns its own policy's output dtype;
    4. the output is close to the `policy.params` run on the same parameters, within
       `tolerance * (1 + max |y|)`, and, when the compute dtype is narrower, not bitwise equal
       to it: the layer really computed in the narrow dtype.

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> from luxjax.testing import check_precision
        >>> check_precision(lx.Dense(3, 2, jnp.tanh), jnp.linspace(-1.0, 1.0, 12).reshape(4, 3))
    """
    policy = Precision() if policy is None else policy
    key = jax.random.key(0) if key is None else key
    mixed = MixedPrecision(model, policy)
    ps, st = setup(key, mixed)
    _dtypes(model, "parameters after setup", ps, policy.params)

    y, new_st = mixed(x, ps, st)
    _dtypes(model, "outputs", y, policy.output)
    for new, old in zip(jax.tree.leaves(new_st), jax.tree.leaves(st)):
        if jnp.result_type(new) != jnp.result_type(old):
            raise _fail(model, f"the new state changed a leaf's dtype from {old.dtype} to {new.dtype}")

    with computing_in(policy.compute):
        inner, _ = model(cast_floating(x, policy.compute), cast_floating(ps, policy.compute), st)
    # A policy inside the model decides its own output dtype.
    expected = model.policy.output if isinstance(model, MixedPrecision) else policy.compute
    _dtypes(model, f"outputs computed under a {policy.compute} policy", inner, expected)

    if _floating(ps):

        def objective(ps: Any) -> jax.Array:
            out = mixed(x, ps, st)[0]
            return sum((jnp.sum(a.astype(jnp.float32)) for a in _floating(out)), jnp.zeros(()))

        grads = jax.grad(objective)(ps)
        _dtypes(model, "gradients", grads, policy.params)
        if not all(bool(jnp.all(jnp.isfinite(g))) for g in _floating(grads)):
            raise _fail(model, "gradients are not finite")

    reference, _ = model(cast_floating(x, policy.params), ps, st)
    pairs = list(zip(_floating(y), _floating(reference)))
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        bound = tolerance * (1 + np.max(np.abs(b), initial=0.0))
        if np.max(np.abs(a - b), initial=0.0) > bound:
            raise _fail(
                model,
                f"the {policy.compute} output is {np.max(np.abs(a - b)):.3g} from the {policy.params} output, "
                f"more than {bound:.3g}",
            )
    narrower = jnp.finfo(policy.compute).bits < jnp.finfo(policy.params).bits
    if narrower and pairs and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs):
        raise _fail(model, f"the output equals the {policy.params} output bit for bit: nothing ran in {policy.compute}")
