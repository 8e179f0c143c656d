"""`TrainState`: the model, its trees, an optax optimizer and its state, the ties, the compile cache."""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding

from ..core import (
    Groups,
    KeyPath,
    Layer,
    NotALayerError,
    check_fit,
    leaves_with_paths,
    replace_at,
    share_parameters,
    testmode,
    tie,
    tied_groups,
)


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


def own(*trees: Any) -> tuple[Any, ...]:
    """Copies of the JAX arrays in `trees`, one per place, each with its own sharding (same devices, same split).

    The training step donates the state's buffers; copying once here means donation never
    deletes an array the caller still holds. Every place gets its own copy, so no buffer is
    donated twice: tied parameters are reduced to one place before this, and a tie frozen
    into the states (both places frozen) becomes two equal arrays that never change.
    Other leaves (NumPy arrays, Python scalars) are kept: donation cannot delete them.
    """
    leaves, treedef = jax.tree.flatten(trees)
    places = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]
    if not places:
        return trees
    arrays = [leaves[i] for i in places]
    for i, copy in zip(places, jax.device_put(arrays, [a.sharding for a in arrays], may_alias=False)):
        leaves[i] = copy
    return jax.tree.unflatten(treedef, leaves)


Placement = tuple[tuple[Any, tuple[Any, ...]], ...] | None


def placement(*trees: Any) -> Placement:
    """The tree structure and per-leaf `NamedSharding`s of each tree, or `None` when no array is on a mesh.

    The compiled steps constrain their outputs to these shardings, so a sharded model stays
    sharded as it was placed (leaves that are not arrays on a mesh are left to XLA).
    """
    found = False
    out = []
    for tree in trees:
        leaves, treedef = jax.tree.flatten(tree)
        shardings = tuple(
            leaf.sharding if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding) else None
            for leaf in leaves
        )
        found = found or any(s is not None and s.mesh.size > 1 for s in shardings)
        out.append((treedef, shardings))
    return tuple(out) if found else None


def constrain(tree: Any, where: Any) -> Any:
    """`tree` (traced) held to the shardings of one entry of a `placement`, if its structure is the same."""
    treedef, shardings = where
    leaves, found = jax.tree.flatten(tree)
    if found != treedef:
        return tree
    held = [x if s is None else jax.lax.with_sharding_constraint(x, s) for x, s in zip(leaves, shardings)]
    return jax.tree.unflatten(treedef, held)


def optimizer_shardings(state: Any, reduced: Any) -> Any:
    """Where each leaf of the optimizer state `state` (arrays or shapes) for the parameters `reduced` lives.

    A leaf at a path that ends with a parameter's path and has its shape (adam's `mu` and
    `nu`, momentum traces) takes that parameter's sharding; any other leaf (step counts) is
    replicated on the devices of the first parameter. `None` when no parameter has a sharding.
    `jax.jit(optimizer.init)` alone cannot say this: optax builds moments with `zeros_like`,
    which does not read the parameters, so XLA puts them all on the default device.
    """
    by_path = {
        path: leaf.sharding
        for path, leaf in leaves_with_paths(reduced)
        if isinstance(getattr(leaf, "sharding", None), jax.sharding.Sharding)
    }
    if not by_path:
        return None
    first = next(iter(by_path.values()))
    if isinstance(first, jax.sharding.NamedSharding):
        default: jax.sharding.Sharding = jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
    else:
        default = jax.sharding.SingleDeviceSharding(min(first.device_set, key=lambda d: d.id))
    shapes = {path: leaf.shape for path, leaf in leaves_with_paths(reduced)}

    def choose(jax_path: Any, leaf: Any) -> jax.sharding.Sharding:
        path = KeyPath.from_jax(jax_path)
        for start in range(len(path)):
            tail = KeyPath(*path[start:])
            if tail in by_path and shapes[tail] == leaf.shape:
                return by_path[tail]
        return default

    return jax.tree_util.tree_map_with_path(choose, state)


# Second-level cache, for TrainStates rebuilt from their pytree (which start with an empty
# per-state cache). Keyed by everything the compiled function closes over; the last 64 kept.
_COMPILED: collections.OrderedDict[tuple, tuple[Any, Callable]] = collections.OrderedDict()
_CACHED_PER_STATE = 16  # compiled functions a train state (and the states it leads to) keeps
_WARN_AFTER = 4  # distinct objectives of one kind on one train state before a warning

Build = Callable[[Any, Layer, optax.GradientTransformation, Groups, Placement], Callable]


def compiled(ts: TrainState, kind: str, objective: Any, build: Build) -> Callable:
    """The function `build(objective, model, optimizer, ties, placement)` for this state, built once.

    Cached on the state (and passed on to every state a step returns) under `(kind,
    id(objective))`; objectives need not be hashable. The entry keeps the objective alive and
    is checked with `is`, so an id is never confused with a reused one. States rebuilt from
    their pytree find it in a module cache keyed by the model, optimizer, ties and placement too.
    """
    entry = ts._cache.get((kind, id(objective)))
    if entry is None or entry[0] is not objective:
        seen = sum(1 for cached_kind, _ in ts._cache if cached_kind == kind)
        if seen >= _WARN_AFTER:
            warnings.warn(
                f"luxjax.training: compiling the {kind} step again, for the {seen + 1}th objective function on "
                "this train state: a new function object each call (a lambda or a def inside the loop) "
                "recompiles every step. Define the objective once, outside the loop.",
                stacklevel=3,
            )
        key = (kind, id(objective), ts.model, ts.optimizer, ts.ties, ts._placement)
        entry = _COMPILED.get(key)
        if entry is None or entry[0] is not objective:
            entry = _COMPILED[key] = (objective, build(objective, ts.model, ts.optimizer, ts.ties, ts._placement))
            while len(_COMPILED) > 64:
                _COMPILED.popitem(last=False)
        ts._cache[kind, id(objective)] = entry
        while len(ts._cache) > _CACHED_PER_STATE:
            del ts._cache[next(iter(ts._cache))]
    return entry[1]


def _build_predict(objective: Any, model: Layer, optimizer: Any, ties: Groups, where: Placement) -> Callable:
    del objective, optimizer, where

    def predict(reduced: Any, st: Any, x: Any) -> Any:
        return model(x, expand_ties(reduced, ties), testmode(st))[0]

    return jax.jit(predict)


class TrainState:
    """Everything a training step needs, after Lux's `Training.TrainState`.

    `TrainState(model, ps, st, optimizer, *, ties=None)` with an optax `optimizer`. The fields
    are `model`, `parameters`, `states`, `optimizer`, `optimizer_state`, `step` (as in Lux)
    and `ties`. A `TrainState` is immutable: the training helpers return a new one. It is a
    pytree whose leaves are the arrays of `parameters`, `states` and `optimizer_state`.

    The state owns its arrays: it copies the arrays of `ps` and `st` once, here (and those
    given to `replace`), because the training steps donate the state's buffers to XLA. So the
    `ps` and `st` you passed stay readable after training, and the old state's arrays are
    the ones a step deletes.

    Tied parameters (`luxjax.experimental.share_parameters`) are recorded as groups of leaf
    paths in `ties`, because array identity does not survive `jax.jit`:

    - `ties=None` (the default) finds them from `is` identity in `ps` at construction;
    - `ties=(("d3.l2", "d1"), ...)` (dotted accessors, as for `share_parameters`) ties those
      places first, each group taking the value at its first accessor.

    The optimizer state holds one entry per tie group (its first path, the representative),
    so a tied matrix costs one set of adam moments. Every step sums the gradients of all the
    places of a group, applies the update once and writes it to every place: the same as a
    model that calls one layer twice. `parameters` holds the ties as identity again (put
    back when first read after a step), also after `jax.jit`, `jax.lax.scan` or
    `jax.tree.map` over the `TrainState` (its pytree unflattening re-ties them).

    Example:
        >>> import jax, jax.numpy as jnp, optax, luxjax as lx
        >>> from luxjax.training import TrainState
        >>> model = lx.Dense(2, 1)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ts = TrainState(model, ps, st, optax.adam(1e-2))
        >>> ts.step, ts.ties
        (0, ())
        >>> ts.parameters["weight"] is ps["weight"]  # a copy: `ps` survives training
        False
    """

    # `_reduced` is `parameters` with the tied copies removed (what the compiled steps take);
    # without ties it is `parameters` itself. Either of `_reduced` and `_parameters` may be
    # `None` until first needed, so a step does no tie bookkeeping on the host.
    __slots__ = (
        "model",
        "_reduced",
        "_parameters",
        "states",
        "optimizer",
        "optimizer_state",
        "step",
        "ties",
        "_cache",
        "_placement",
    )

    model: Layer
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
        check_fit("TrainState", model, ps, st)
        groups = tied_groups(ps)
        reduced, st = own(reduce_ties(ps, groups), st)
        # the moments are made where their parameters are (never a full copy on one device)
        with optimizer_promotion():
            layout = optimizer_shardings(jax.eval_shape(optimizer.init, reduced), reduced)
            optimizer_state = jax.jit(optimizer.init, out_shardings=layout)(reduced)
        parameters = expand_ties(reduced, groups)
        where = placement(reduced, st, optimizer_state)
        _set(self, model, reduced, parameters, st, optimizer, optimizer_state, 0, groups, {}, where)

    @property
    def parameters(self) -> Any:
        """The parameters `ps`; tied places hold the same array (`is`)."""
        ps = self._parameters
        if ps is None:
            ps = expand_ties(self._reduced, self.ties)
            object.__setattr__(self, "_parameters", ps)
        return ps

    def _reduced_parameters(self) -> Any:
        """`parameters` without the tied copies (each tie group at its first path only)."""
        reduced = self._reduced
        if reduced is None:
            reduced = reduce_ties(self._parameters, self.ties)
            object.__setattr__(self, "_reduced", reduced)
        return reduced

    @classmethod
    def _new(
        cls, model, reduced, parameters, states, optimizer, optimizer_state, step, ties, cache, where
    ) -> TrainState:
        """A state from its fields, unchecked and without copies: for the helpers' own results."""
        ts = object.__new__(cls)
        _set(ts, model, reduced, parameters, states, optimizer, optimizer_state, step, ties, cache, where)
        return ts

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed (`parameters`, `states`, `optimizer_state`, `step`).

        As at construction, the new state copies the arrays you give it, so donation in
        later steps leaves yours alone.

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
        reduced, parameters = self._reduced, self._parameters
        if "parameters" in changes:
            parameters = expand_ties(changes["parameters"], self.ties)
            found = tied_groups(parameters)
            if found != self.ties:
                show = lambda groups: [[str(p) for p in g] for g in groups]  # noqa: E731
                raise ValueError(
                    f"TrainState.replace: the new `parameters` tie {show(found)} but the state ties "
                    f"{show(self.ties)}; build a new TrainState to change ties."
                )
            (reduced,) = own(reduce_ties(parameters, self.ties))
            parameters = expand_ties(reduced, self.ties)
        states = own(changes["states"])[0] if "states" in changes else self.states
        if "parameters" in changes or "states" in changes:
            check_fit("TrainState.replace", self.model, parameters, states)
        opt_state = own(changes["optimizer_state"])[0] if "optimizer_state" in changes else self.optimizer_state
        step = changes.get("step", self.step)
        where = self._placement
        if {"parameters", "states", "optimizer_state"} & set(changes):
            where = placement(self._reduced_parameters() if reduced is None else reduced, states, opt_state)
        cache = self._cache if where == self._placement else {}
        return TrainState._new(
            self.model, reduced, parameters, states, self.optimizer, opt_state, step, self.ties, cache, where
        )

    def predict(self, x: Any) -> Any:
        """The model's output on `x` in test mode: `model(x, ps, testmode(st))[0]`, compiled.

        The forward pass only: no gradients, and the new state is dropped (running statistics
        are used, not updated; dropout is off). Compiled once per model and ties, and kept in
        the state's cache, so predicting on every state a training loop returns does not
        recompile; new shapes of `x` retrace as with any `jax.jit` function. Nothing is
        donated: the state stays usable.

        Example:
            >>> import jax, jax.numpy as jnp, optax, luxjax as lx
            >>> from luxjax.training import TrainState
            >>> model = lx.Chain(lx.Dense(2, 3), lx.Dropout(0.5))
            >>> ps, st = lx.setup(jax.random.key(0), model)
            >>> ts = TrainState(model, ps, st, optax.adam(1e-2))
            >>> ts.predict(jnp.ones((4, 2))).shape
            (4, 3)
        """
        fn = compiled(self, "predict", None, _build_predict)
        return fn(self._reduced_parameters(), self.states, x)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TrainState is immutable; use `ts.replace({name}=...)` to get a changed copy.")

    def __repr__(self) -> str:
        ties = f", ties={[[str(p) for p in g] for g in self.ties]}" if self.ties else ""
        return f"TrainState({self.model!r}, step={self.step}{ties})"


_setattr = object.__setattr__


def _set(ts, model, reduced, parameters, states, optimizer, optimizer_state, step, ties, cache, where) -> None:
    _setattr(ts, "model", model)
    _setattr(ts, "_reduced", reduced)
    _setattr(ts, "_parameters", parameters)
    _setattr(ts, "states", states)
    _setattr(ts, "optimizer", optimizer)
    _setattr(ts, "optimizer_state", optimizer_state)
    _setattr(ts, "step", step)
    _setattr(ts, "ties", ties)
    _setattr(ts, "_cache", cache)
    _setattr(ts, "_placement", where)


def _flatten(ts: TrainState):
    children = (
        (jax.tree_util.GetAttrKey("parameters"), ts.parameters),
        (jax.tree_util.GetAttrKey("states"), ts.states),
        (jax.tree_util.GetAttrKey("optimizer_state"), ts.optimizer_state),
        (jax.tree_util.GetAttrKey("step"), ts.step),
    )
    return children, (ts.model, ts.optimizer, ts.ties, ts._placement)


def _unflatten(aux, children) -> TrainState:
    model, optimizer, ties, where = aux
    parameters, states, optimizer_state, step = children
    if ties:
        # put the ties back as identity (a jit output or tree.map made copies); JAX may also
        # unflatten with placeholders that are not dicts, which are kept as they are.
        try:
            parameters = tie(parameters, ties)
        except (KeyError, TypeError, IndexError):
            pass
    reduced = None if ties else parameters
    return TrainState._new(model, reduced, parameters, states, optimizer, optimizer_state, step, ties, {}, where)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)
