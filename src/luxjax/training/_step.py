"""The training step: `compute_gradients`, `apply_gradients` and `single_train_step`, as in Lux.

Each is one `jax.jit`-compiled call, built once per (model, optimizer, ties, objective) and
reused: the per-step Python work is a dictionary look-up and the compiled call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from ..core import Groups, KeyPath, replace_at
from ._train_state import TrainState, expand_ties, optimizer_promotion, reduce_ties

Objective = Callable[[Any, Any, Any, Any], tuple[Any, Any, Any]]

# Second-level cache, for TrainStates rebuilt from their pytree (which start with an empty
# per-state cache). Keyed by everything the compiled function closes over.
_COMPILED: dict[tuple, tuple[Any, Callable]] = {}


def sum_ties(grads: Any, ties: Groups) -> Any:
    """Per-place gradients to per-parameter ones: each group's sum at its representative."""
    if not ties:
        return grads
    updates: dict[KeyPath, Any] = {}
    for group in ties:
        total = group[0].get(grads)
        for path in group[1:]:
            total = total + path.get(grads)
            updates[path] = None
        updates[group[0]] = total
    return replace_at(grads, updates)


def _value_and_grad(objective: Objective, model: Any, ties: Groups, reduced: Any, st: Any, data: Any):
    def loss_fn(ps: Any, st: Any) -> tuple[Any, tuple[Any, Any]]:
        loss, st, stats = objective(model, ps, st, data)
        return loss, (st, stats)

    (loss, (st, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(expand_ties(reduced, ties), st)
    return grads, loss, stats, st


def _update(optimizer: optax.GradientTransformation, ties: Groups, reduced: Any, opt_state: Any, grads: Any):
    with optimizer_promotion():
        updates, opt_state = optimizer.update(sum_ties(grads, ties), opt_state, reduced)
        return optax.apply_updates(reduced, updates), opt_state


def _build(kind: str, objective: Any, model: Any, optimizer: Any, ties: Groups) -> Callable:
    if kind == "single":

        def single(reduced, st, opt_state, data):
            grads, loss, stats, st = _value_and_grad(objective, model, ties, reduced, st, data)
            reduced, opt_state = _update(optimizer, ties, reduced, opt_state, grads)
            return grads, loss, stats, reduced, st, opt_state

        return jax.jit(single, donate_argnums=(0, 1, 2))
    if kind == "gradients":
        return jax.jit(lambda reduced, st, data: _value_and_grad(objective, model, ties, reduced, st, data))
    return jax.jit(
        lambda reduced, opt_state, grads: _update(optimizer, ties, reduced, opt_state, grads), donate_argnums=(0, 1)
    )


def _compiled(ts: TrainState, kind: str, objective: Objective | None) -> Callable:
    # Keyed by the objective's id (objectives need not be hashable); the entry keeps the
    # objective alive and is checked with `is`, so an id is never confused with a reused one.
    entry = ts._cache.get((kind, id(objective)))
    if entry is None or entry[0] is not objective:
        key = (kind, id(objective), ts.model, ts.optimizer, ts.ties)
        entry = _COMPILED.get(key)
        if entry is None or entry[0] is not objective:
            entry = _COMPILED[key] = (objective, _build(kind, objective, ts.model, ts.optimizer, ts.ties))
        ts._cache[kind, id(objective)] = entry
    return entry[1]


def _check(fn: str, ts: Any, objective: Any = None) -> None:
    if not isinstance(ts, TrainState):
        raise TypeError(f"{fn}: `ts` must be a luxjax.training.TrainState, got {type(ts).__name__}.")
    if objective is not None and not callable(objective):
        raise TypeError(
            f"{fn}: `objective` must be a function `objective(model, ps, st, data) -> (loss, st, stats)`, "
            f"got {objective!r}."
        )


def compute_gradients(objective: Objective, data: Any, ts: TrainState) -> tuple[Any, Any, Any, TrainState]:
    """Gradients of `objective(model, ps, st, data) -> (loss, st, stats)` at `ts.parameters`.

    Returns `(grads, loss, stats, ts)`, where `ts` carries the new states (as in Lux). `grads`
    has the structure of `ps`; a tied place holds the gradient through that place alone (as
    `jax.grad` of the untied tree would), and `apply_gradients` sums them per tie group.

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState, compute_gradients
        >>> model = lx.Dense(2, 1)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> def mse(model, ps, st, data):
        ...     y, st = model(data[0], ps, st)
        ...     return jnp.mean((y - data[1]) ** 2), st, {}
        >>> ts = TrainState(model, ps, st, optax.sgd(0.1))
        >>> grads, loss, stats, ts = compute_gradients(mse, (jnp.ones((4, 2)), jnp.zeros((4, 1))), ts)
        >>> grads["weight"].shape
        (1, 2)
    """
    _check("compute_gradients", ts, objective)
    fn = _compiled(ts, "gradients", objective)
    grads, loss, stats, st = fn(reduce_ties(ts.parameters, ts.ties), ts.states, data)
    return grads, loss, stats, ts.replace(states=st)


def apply_gradients(ts: TrainState, grads: Any) -> TrainState:
    """One optimizer update from `grads` (structured like `ts.parameters`); returns the new state.

    The gradients of the places of a tie group are summed, the update is applied once and
    written to every place. `ts.step` goes up by one. The buffers of `ts.parameters` and
    `ts.optimizer_state` are donated: use the returned state, not `ts`, afterwards.

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState, apply_gradients
        >>> ps, st = lx.setup(jax.random.key(0), lx.Dense(2, 1))
        >>> ts = TrainState(lx.Dense(2, 1), ps, st, optax.sgd(1.0))
        >>> ts = apply_gradients(ts, {"weight": jnp.ones((1, 2)), "bias": jnp.zeros(1)})
        >>> ts.step
        1
    """
    _check("apply_gradients", ts)
    if jax.tree.structure(grads) != jax.tree.structure(ts.parameters):
        raise ValueError(
            f"apply_gradients: `grads` must have the structure of `ts.parameters`, "
            f"expected {jax.tree.structure(ts.parameters)}, got {jax.tree.structure(grads)}."
        )
    fn = _compiled(ts, "apply", None)
    reduced, opt_state = fn(reduce_ties(ts.parameters, ts.ties), ts.optimizer_state, grads)
    return TrainState._new(
        ts.model,
        expand_ties(reduced, ts.ties),
        ts.states,
        ts.optimizer,
        opt_state,
        ts.step + 1,
        ts.ties,
        ts._cache,
    )


def single_train_step(objective: Objective, data: Any, ts: TrainState) -> tuple[Any, Any, Any, TrainState]:
    """Gradients and one optimizer update in one compiled call; returns `(grads, loss, stats, ts)`.

    `objective(model, ps, st, data) -> (loss, st, stats)` as in Lux. The step is compiled
    once per (model, optimizer, ties, objective) and reused; shapes or dtypes of `data` that
    change retrace as with any `jax.jit` function. Ties stay ties (see `TrainState`). The
    buffers of `ts.parameters`, `ts.states` and `ts.optimizer_state` are donated to the step
    (so frozen values kept in the state are not copied every step): use the returned state
    afterwards. Nothing is copied to the host: `loss` is a device scalar.

    With a `jax.sharding.Mesh`, put `data` (sharded over the batch) and the parameters
    (replicated or sharded) where they belong before building the `TrainState`; the compiled
    step follows those shardings.

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState, single_train_step
        >>> model = lx.Dense(2, 1)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> def mse(model, ps, st, data):
        ...     y, st = model(data[0], ps, st)
        ...     return jnp.mean((y - data[1]) ** 2), st, {}
        >>> ts = TrainState(model, ps, st, optax.adam(0.1))
        >>> data = (jnp.ones((4, 2)), jnp.ones((4, 1)))
        >>> for _ in range(100):
        ...     grads, loss, stats, ts = single_train_step(mse, data, ts)
        >>> bool(loss < 1e-3), ts.step
        (True, 100)
    """
    _check("single_train_step", ts, objective)
    fn = _compiled(ts, "single", objective)
    ties = ts.ties
    grads, loss, stats, reduced, st, opt_state = fn(
        reduce_ties(ts.parameters, ties) if ties else ts.parameters, ts.states, ts.optimizer_state, data
    )
    ps = expand_ties(reduced, ties) if ties else reduced
    return grads, loss, stats, TrainState._new(ts.model, ps, st, ts.optimizer, opt_state, ts.step + 1, ties, ts._cache)
