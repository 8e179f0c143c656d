"""The steps: `compute_gradients`, `apply_gradients`, `single_train_step` (as in Lux), `eval_step`.

Each is one `jax.jit`-compiled call, built once per (model, optimizer, ties, objective) and
kept in the train state's cache: per call, the Python work is a dictionary look-up, the
compiled call and building the returned `TrainState`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from ..core import Groups, KeyPath, misfit, replace_at, testmode
from ._loss_scale import loss_scale
from ._train_state import Build, Placement, TrainState, compiled, constrain, expand_ties, optimizer_promotion

Objective = Callable[[Any, Any, Any, Any], tuple[Any, Any, Any]]


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


def _call(objective: Objective, model: Any, ps: Any, st: Any, data: Any) -> tuple[Any, Any, Any]:
    """`objective(model, ps, st, data)`, checked to return `(loss, st, stats)` with a scalar loss."""
    result = objective(model, ps, st, data)
    if not (isinstance(result, tuple) and len(result) == 3 and jax.numpy.shape(result[0]) == ()):
        if isinstance(result, tuple):
            loss_shape = f" whose loss has shape {jax.numpy.shape(result[0])}" if result else ""
            got = f"a tuple of {len(result)}{loss_shape}"
        else:
            got = f"an array of shape {jax.numpy.shape(result)}" if hasattr(result, "shape") else type(result).__name__
        raise TypeError(
            f"`objective` must return `(loss, st, stats)` with a scalar loss, as in Lux "
            f"(e.g. `return loss, st, {{}}`); it returned {got}."
        )
    return result


def _value_and_grad(objective: Objective, model: Any, ties: Groups, reduced: Any, st: Any, data: Any, scale: Any):
    """Gradients of the loss; with a loss scale (`dynamic_loss_scale`), of the scaled loss, divided by it again."""

    def loss_fn(ps: Any, st: Any) -> tuple[Any, tuple[Any, Any, Any]]:
        loss, st, stats = _call(objective, model, ps, st, data)
        scaled = loss if scale is None else loss * scale.astype(loss.dtype)
        return scaled, (loss, st, stats)

    (_, (loss, st, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(expand_ties(reduced, ties), st)
    if scale is not None:
        grads = jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)
    return grads, loss, stats, st


def _update(optimizer: optax.GradientTransformation, ties: Groups, reduced: Any, opt_state: Any, grads: Any):
    with optimizer_promotion():
        updates, opt_state = optimizer.update(sum_ties(grads, ties), opt_state, reduced)
        return optax.apply_updates(reduced, updates), opt_state


def _build_single(return_gradients: bool) -> Build:
    def build(objective: Objective, model: Any, optimizer: Any, ties: Groups, where: Placement) -> Callable:
        def single(reduced, st, opt_state, data):
            grads, loss, stats, st = _value_and_grad(objective, model, ties, reduced, st, data, loss_scale(opt_state))
            reduced, opt_state = _update(optimizer, ties, reduced, opt_state, grads)
            if where is not None:  # keep every array where it was placed
                reduced, st, opt_state = (constrain(t, w) for t, w in zip((reduced, st, opt_state), where))
            # Without gradients XLA neither writes nor returns them (and JAX wraps no arrays).
            return grads if return_gradients else None, loss, stats, reduced, st, opt_state

        return jax.jit(single, donate_argnums=(0, 1, 2))

    return build


_BUILD_SINGLE = {True: _build_single(True), False: _build_single(False)}
_SINGLE_KIND = {True: "single", False: "single without gradients"}


def _build_gradients(objective: Objective, model: Any, optimizer: Any, ties: Groups, where: Placement) -> Callable:
    del optimizer

    def gradients(reduced, st, data, scale):
        grads, loss, stats, st = _value_and_grad(objective, model, ties, reduced, st, data, scale)
        return grads, loss, stats, st if where is None else constrain(st, where[1])

    return jax.jit(gradients)


def _build_apply(objective: Any, model: Any, optimizer: Any, ties: Groups, where: Placement) -> Callable:
    del objective, model

    def apply(reduced, opt_state, grads):
        reduced, opt_state = _update(optimizer, ties, reduced, opt_state, grads)
        if where is not None:
            reduced, opt_state = constrain(reduced, where[0]), constrain(opt_state, where[2])
        return reduced, opt_state

    return jax.jit(apply, donate_argnums=(0, 1))


def _build_eval(objective: Objective, model: Any, optimizer: Any, ties: Groups, where: Placement) -> Callable:
    del optimizer, where

    def evaluate(reduced, st, data):
        loss, _, stats = _call(objective, model, expand_ties(reduced, ties), testmode(st), data)
        return loss, stats

    return jax.jit(evaluate)


_NO_OBJECTIVE = object()


def _check(fn: str, ts: Any, objective: Any = _NO_OBJECTIVE) -> None:
    if not isinstance(ts, TrainState):
        raise TypeError(f"{fn}: `ts` must be a luxjax.training.TrainState, got {type(ts).__name__}.")
    if objective is not _NO_OBJECTIVE and not callable(objective):
        raise TypeError(
            f"{fn}: `objective` must be a function `objective(model, ps, st, data) -> (loss, st, stats)`, "
            f"got {objective!r}."
        )


def compute_gradients(objective: Objective, data: Any, ts: TrainState) -> tuple[Any, Any, Any, TrainState]:
    """Gradients of `objective(model, ps, st, data) -> (loss, st, stats)` at `ts.parameters`.

    Returns `(grads, loss, stats, ts)`, where `ts` carries the new states (as in Lux). `grads`
    has the structure of `ps`; a tied place holds the gradient through that place alone (as
    `jax.grad` of the untied tree would), and `apply_gradients` sums them per tie group.
    Nothing is donated. Under `dynamic_loss_scale` the loss is scaled for the backward pass
    and the gradients unscaled again: they are the true gradients.

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
    fn = compiled(ts, "gradients", objective, _build_gradients)
    reduced = ts._reduced_parameters()
    grads, loss, stats, st = fn(reduced, ts.states, data, loss_scale(ts.optimizer_state))
    new = TrainState._new(
        ts.model,
        reduced,
        ts._parameters,
        st,
        ts.optimizer,
        ts.optimizer_state,
        ts.step,
        ts.ties,
        ts._cache,
        ts._placement,
    )
    return grads, loss, stats, new


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
    problem = misfit(ts.parameters, grads)
    if problem:
        raise ValueError(f"apply_gradients: `grads` must have the structure and shapes of `ts.parameters`: {problem}")
    fn = compiled(ts, "apply", None, _build_apply)
    reduced, opt_state = fn(ts._reduced_parameters(), ts.optimizer_state, grads)
    return TrainState._new(
        ts.model,
        reduced,
        None if ts.ties else reduced,
        ts.states,
        ts.optimizer,
        opt_state,
        ts.step + 1,
        ts.ties,
        ts._cache,
        ts._placement,
    )


def single_train_step(
    objective: Objective, data: Any, ts: TrainState, *, return_gradients: bool = True
) -> tuple[Any, Any, Any, TrainState]:
    """Gradients and one optimizer update in one compiled call; returns `(grads, loss, stats, ts)`.

    `objective(model, ps, st, data) -> (loss, st, stats)` as in Lux. The step is compiled
    once per (model, optimizer, ties, objective, `return_gradients`) and reused; shapes or
    dtypes of `data` that change retrace as with any `jax.jit` function. Ties stay ties (see
    `TrainState`). The buffers of `ts.parameters`, `ts.states` and `ts.optimizer_state` are
    donated to the step (so frozen values kept in the state are not copied every step): use
    the returned state afterwards. Nothing is copied to the host: `loss` is a device scalar.

    `return_gradients=False` (Lux's `return_gradients=Val(false)`) returns `None` in place
    of `grads`: the compiled step then neither writes the gradient tree to memory nor hands
    it back, which is what a training loop that does not look at the gradients wants.

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
        ...     grads, loss, stats, ts = single_train_step(mse, data, ts, return_gradients=False)
        >>> bool(loss < 1e-3), ts.step, grads
        (True, 100, None)
    """
    _check("single_train_step", ts, objective)
    if return_gradients is not True and return_gradients is not False:
        raise TypeError(f"single_train_step: `return_gradients` must be True or False, got {return_gradients!r}.")
    fn = compiled(ts, _SINGLE_KIND[return_gradients], objective, _BUILD_SINGLE[return_gradients])
    reduced = ts._reduced
    if reduced is None:
        reduced = ts._reduced_parameters()
    grads, loss, stats, reduced, st, opt_state = fn(reduced, ts.states, ts.optimizer_state, data)
    ties = ts.ties
    # With ties, `parameters` is rebuilt from `reduced` only when it is read.
    new = TrainState._new(
        ts.model,
        reduced,
        None if ties else reduced,
        st,
        ts.optimizer,
        opt_state,
        ts.step + 1,
        ties,
        ts._cache,
        ts._placement,
    )
    return grads, loss, stats, new


def eval_step(objective: Objective, data: Any, ts: TrainState) -> tuple[Any, Any]:
    """The objective at `ts` in test mode, compiled, without gradients; returns `(loss, stats)`.

    Runs `objective(model, ps, testmode(st), data)`: dropout off, running statistics used
    rather than updated. The new state it returns is dropped, nothing is donated and `ts` is
    not changed, so validation can run between training steps on the same state. Compiled
    once per (model, ties, objective) and kept in the train state's cache (which every state
    a step returns shares): evaluating after every epoch does not recompile.

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState, eval_step, single_train_step
        >>> model = lx.Chain(lx.Dense(2, 8, jnp.tanh), lx.Dropout(0.5), lx.Dense(8, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> def mse(model, ps, st, data):
        ...     y, st = model(data[0], ps, st)
        ...     return jnp.mean((y - data[1]) ** 2), st, {"mean": jnp.mean(y)}
        >>> ts = TrainState(model, ps, st, optax.adam(1e-2))
        >>> data = (jnp.ones((4, 2)), jnp.ones((4, 1)))
        >>> _, _, _, ts = single_train_step(mse, data, ts, return_gradients=False)
        >>> loss, stats = eval_step(mse, data, ts)
        >>> by_hand = mse(model, ts.parameters, lx.testmode(ts.states), data)[0]
        >>> bool(jnp.allclose(loss, by_hand)), sorted(stats), ts.step
        (True, ['mean'], 1)
    """
    _check("eval_step", ts, objective)
    fn = compiled(ts, "eval", objective, _build_eval)
    return fn(ts._reduced_parameters(), ts.states, data)
