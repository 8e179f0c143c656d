"""Dynamic loss scaling for float16 training: `dynamic_loss_scale`, built on `optax.apply_if_finite`."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

# `optax.apply_if_finite` gives up skipping after this many non-finite steps in a row: never.
_NEVER = int(jnp.iinfo(jnp.int32).max)


class DynamicLossScaleState(NamedTuple):
    """`dynamic_loss_scale`'s state: the scale, finite steps since it last changed, the optimizer's state."""

    loss_scale: jax.Array
    good_steps: jax.Array
    inner_state: Any


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> optax.GradientTransformation:
    """`optimizer` with dynamic loss scaling, for float16 compute (`Precision(compute=jnp.float16)`).

    float16 gradients of small losses underflow to zero. The train steps
    (`single_train_step`, `compute_gradients`) find `loss_scale` in the optimizer state,
    differentiate `loss * loss_scale` and divide the gradients by it again, so the float16
    backward pass works on large numbers and the gradients (and the reported loss) are the
    true ones. This transformation then:

    - skips a step whose gradients are not finite (the scale was too large: the optimizer
      state and parameters stay as they were, `optax.apply_if_finite`) and divides the
      scale by `factor` (not below `min_scale`);
    - multiplies the scale by `factor` after `growth_interval` finite steps in a row.

    bfloat16 has float32's exponent range and needs no loss scaling.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from luxjax.training import dynamic_loss_scale
        >>> opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=8.0, growth_interval=2)
        >>> state = opt.init({"w": jnp.ones(2)})
        >>> _, state = opt.update({"w": jnp.array([jnp.inf, 1.0])}, state)
        >>> float(state.loss_scale)  # overflow: step skipped, scale halved
        4.0
        >>> for _ in range(2):
        ...     _, state = opt.update({"w": jnp.ones(2)}, state)
        >>> float(state.loss_scale)  # two finite steps: scale doubled
        8.0
    """
    if not (isinstance(growth_interval, int) and growth_interval >= 1):
        raise ValueError(f"dynamic_loss_scale: `growth_interval` must be a positive int, got {growth_interval!r}.")
    if not factor > 1:
        raise ValueError(f"dynamic_loss_scale: `factor` must be greater than 1, got {factor!r}.")
    guarded = optax.apply_if_finite(optimizer, max_consecutive_errors=_NEVER)

    def init(params: Any) -> DynamicLossScaleState:
        scale = jnp.asarray(initial_scale, jnp.float32)
        return DynamicLossScaleState(scale, jnp.zeros((), jnp.int32), guarded.init(params))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, DynamicLossScaleState]:
        updates, inner = guarded.update(updates, state.inner_state, params)
        finite = cast(optax.ApplyIfFiniteState, inner).last_finite
        grow = state.good_steps + 1 >= growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, state.loss_scale * factor, state.loss_scale),
            jnp.maximum(state.loss_scale / factor, min_scale),
        ).astype(jnp.float32)
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0).astype(jnp.int32)
        return updates, DynamicLossScaleState(scale, good, inner)

    return optax.GradientTransformation(init, update)


def loss_scale(optimizer_state: Any) -> jax.Array | None:
    """The `loss_scale` of a `dynamic_loss_scale` state anywhere in `optimizer_state`, or `None`."""
    return optax.tree_utils.tree_get(optimizer_state, "loss_scale")
