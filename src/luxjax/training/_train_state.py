"""`TrainState`: the model, its trees, an optax optimizer and its state, and the tie groups."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import optax

from ..core import Groups, Layer, NotALayerError, replace_at, share_parameters, tie, tied_groups


@contextlib.contextmanager
def optimizer_promotion() -> Iterator[None]:
    """JAX's standard promotion rules while optax runs.

    Optax mixes Python floats with int32 step counts (adam's bias correction), which strict
    promotion (a setting of the user's, or of luxjax's own tests) would reject.
    """
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def reduce_ties(ps: Any, ties: Groups) -> Any:
    """`ps` with every tied place but each group's representative replaced by `None` (no leaf)."""
    if not ties:
        return ps
    return replace_at(ps, {path: None for group in ties for path in group[1:]})


def expand_ties(reduced: Any, ties: Groups) -> Any:
    """The inverse of `reduce_ties`: every tied place holds its representative's value."""
    return tie(reduced, ties) if ties else reduced


class TrainState:
    """Everything a training step needs, after Lux's `Training.TrainState`.

    `TrainState(model, ps, st, optimizer, *, ties=None)` with an optax `optimizer`. The fields
    are `model`, `parameters`, `states`, `optimizer`, `optimizer_state`, `step` (as in Lux)
    and `ties`. A `TrainState` is immutable: the training helpers return a new one. It is a
    pytree whose leaves are the arrays of `parameters`, `states` and `optimizer_state`.

    Tied parameters (`luxjax.experimental.share_parameters`) are recorded as groups of leaf
    paths in `ties`, because array identity does not survive `jax.jit`:

    - `ties=None` (the default) finds them from `is` identity in `ps` at construction;
    - `ties=(("d3.l2", "d1"), ...)` (dotted accessors, as for `share_parameters`) ties those
      places first, each group taking the value at its first accessor.

    The optimizer state holds one entry per tie group (its first path, the representative),
    so a tied matrix costs one set of adam moments. Every step sums the gradients of all the
    places of a group, applies the update once and writes it to every place: the same as a
    model that calls one layer twice. `parameters` holds the ties as identity again after every
    step, and also after `jax.jit`, `jax.lax.scan` or `jax.tree.map` over the `TrainState`
    (its pytree unflattening re-ties them).

    The first training step donates the buffers of `parameters`, `states` and
    `optimizer_state` to the compiled step: keep a copy (`jax.tree.map(jnp.copy, ps)`) if you
    need the initial values.

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState
        >>> model = lx.Dense(2, 1)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ts = TrainState(model, ps, st, optax.adam(1e-2))
        >>> ts.step, ts.ties
        (0, ())
    """

    __slots__ = ("model", "parameters", "states", "optimizer", "optimizer_state", "step", "ties", "_cache")

    model: Layer
    parameters: Any
    states: Any
    optimizer: optax.GradientTransformation
    optimizer_state: Any
    step: int
    ties: Groups

    def __init__(
        self,
        model: Layer,
        ps: Any,
        st: Any,
        optimizer: optax.GradientTransformation,
        *,
        ties: Sequence[Sequence[str]] | None = None,
    ):
        if not isinstance(model, Layer):
            raise NotALayerError(f"TrainState: `model` must be a luxjax Layer, got {model!r}.")
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(f"TrainState: `optimizer` must be an optax GradientTransformation, got {optimizer!r}.")
        if ties is not None:
            ps = share_parameters(ps, ties)
        groups = tied_groups(ps)
        reduced = reduce_ties(ps, groups)
        # jit so that the moments follow the parameters' shardings (and are not on one device).
        with optimizer_promotion():
            optimizer_state = jax.jit(optimizer.init)(reduced)
        self._set(model, ps, st, optimizer, optimizer_state, 0, groups, {})

    def _set(self, model, parameters, states, optimizer, optimizer_state, step, ties, cache) -> None:
        for name, value in zip(
            self.__slots__, (model, parameters, states, optimizer, optimizer_state, step, ties, cache)
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def _new(cls, model, parameters, states, optimizer, optimizer_state, step, ties, cache) -> TrainState:
        ts = object.__new__(cls)
        ts._set(model, parameters, states, optimizer, optimizer_state, step, ties, cache)
        return ts

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed (`parameters`, `states`, `optimizer_state`, `step`).

        Example:
            >>> import jax, optax, luxjax as lx
            >>> from luxjax.training import TrainState
            >>> ps, st = lx.setup(jax.random.key(0), lx.Dense(2, 1))
            >>> TrainState(lx.Dense(2, 1), ps, st, optax.sgd(0.1)).replace(step=5).step
            5
        """
        allowed = ("parameters", "states", "optimizer_state", "step")
        for name in changes:
            if name not in allowed:
                raise ValueError(
                    f"TrainState.replace: can change {', '.join(repr(a) for a in allowed)}, got {name!r}; "
                    "build a new TrainState to change the model, optimizer or ties."
                )
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        if "parameters" in changes:
            fields["parameters"] = expand_ties(fields["parameters"], self.ties)
            found = tied_groups(fields["parameters"])
            if found != self.ties:
                show = lambda groups: [[str(p) for p in g] for g in groups]  # noqa: E731
                raise ValueError(
                    f"TrainState.replace: the new `parameters` tie {show(found)} but the state ties "
                    f"{show(self.ties)}; build a new TrainState to change ties."
                )
        return TrainState._new(*(fields[name] for name in self.__slots__))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TrainState is immutable; use `ts.replace({name}=...)` to get a changed copy.")

    def __repr__(self) -> str:
        ties = f", ties={[[str(p) for p in g] for g in self.ties]}" if self.ties else ""
        return f"TrainState({self.model!r}, step={self.step}{ties})"


def _flatten(ts: TrainState):
    children = (
        (jax.tree_util.GetAttrKey("parameters"), ts.parameters),
        (jax.tree_util.GetAttrKey("states"), ts.states),
        (jax.tree_util.GetAttrKey("optimizer_state"), ts.optimizer_state),
        (jax.tree_util.GetAttrKey("step"), ts.step),
    )
    return children, (ts.model, ts.optimizer, ts.ties)


def _unflatten(aux, children) -> TrainState:
    model, optimizer, ties = aux
    parameters, states, optimizer_state, step = children
    if ties:
        # put the ties back as identity (a jit output or tree.map made copies); JAX may also
        # unflatten with placeholders that are not dicts, which are kept as they are.
        try:
            parameters = tie(parameters, ties)
        except (KeyError, TypeError, IndexError):
            pass
    return TrainState._new(model, parameters, states, optimizer, optimizer_state, step, ties, {})


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)
