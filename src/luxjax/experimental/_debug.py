"""Debug mode: `DebugLayer`, its checks, `debug_mode` and `raise_nan_errors`, after Lux's `DebugLayer`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..core import (
    ConfigError,
    KeyPath,
    Layer,
    NaNError,
    WrapperLayer,
    block_indices,
    check_layer_argument,
    field,
    holds_own_entries,
    recover,
    remember,
)

logger = logging.getLogger("luxjax")

NAN_CHECKS = ("both", "forward", "backward", "none")
PASSES = ("forward", "backward")

# One entry per checked leaf: (kind, what held it, the leaf's path inside it), kind "NaN"/"Inf".
Found = tuple[str, str, str]
# A leaf to check under a trace, with the check to run on it.
Checked = tuple["ValueCheck", Any]


def _check_passes(owner: str, passes: Any) -> None:
    if not isinstance(passes, tuple) or not set(passes) <= set(PASSES):
        raise ConfigError(f"{owner}: `passes` must be a tuple of 'forward' and/or 'backward', got {passes!r}.")


def _has_nan(leaf: jax.Array) -> jax.Array:
    """Whether `leaf` holds a NaN: `max` propagates NaN and is a cheaper reduction than `any`."""
    if jnp.size(leaf) == 0:
        return jnp.zeros((), jnp.bool_)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        return jnp.isnan(leaf).any()
    return jnp.isnan(jnp.max(leaf))


def running_indices() -> jax.Array:
    """The indices of the blocks the enclosing `Stacked` layers are running, as one int32 array."""
    return jnp.asarray(block_indices(), jnp.int32).reshape(-1)


def _has_inf(leaf: jax.Array) -> jax.Array:
    return jnp.isinf(leaf).any()


@dataclasses.dataclass(frozen=True)
class ValueCheck:
    """A check of every floating-point leaf a layer sees: inputs, parameters, states, outputs, gradients.

    `kind` names what is found in messages (`"NaN detected in ..."`); `flag(leaf)` is a
    boolean scalar, true when any element of the leaf holds it.
    `passes` says where the check runs: the forward pass (input, parameters, states, output,
    new state) and/or the backward pass (the incoming gradient of the output and new state,
    the outgoing gradients of the input, parameters and states).
    """

    passes: tuple[str, ...] = PASSES
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_passes(type(self).__name__, self.passes)

    def flag(self, leaf: jax.Array) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NaNCheck(ValueCheck):
    """Reports a NaN in any floating-point leaf (see `ValueCheck`).

    Example:
        >>> from luxjax.experimental import NaNCheck
        >>> NaNCheck(passes=("backward",))
        NaNCheck(passes=('backward',))
    """

    kind: ClassVar[str] = "NaN"

    def flag(self, leaf: jax.Array) -> jax.Array:
        return _has_nan(leaf)


@dataclasses.dataclass(frozen=True)
class InfCheck(ValueCheck):
    """Reports an infinity in any floating-point leaf (see `ValueCheck`).

    Example:
        >>> from luxjax.experimental import InfCheck
        >>> InfCheck()
        InfCheck(passes=('forward', 'backward'))
    """

    kind: ClassVar[str] = "Inf"

    def flag(self, leaf: jax.Array) -> jax.Array:
        return _has_inf(leaf)


@dataclasses.dataclass(frozen=True)
class ErrorCheck:
    """Adds a note naming the layer, its location and the pass to an exception raised inside it.

    The exception keeps its type; it is also logged on the `"luxjax"` logger.

    Example:
        >>> from luxjax.experimental import ErrorCheck
        >>> ErrorCheck()
        ErrorCheck(passes=('forward', 'backward'))
    """

    passes: tuple[str, ...] = PASSES

    def __post_init__(self) -> None:
        _check_passes("ErrorCheck", self.passes)


Check = ValueCheck | ErrorCheck


def _as_keypath(path: KeyPath | str | tuple[str, ...]) -> KeyPath:
    return KeyPath.of(path, "DebugLayer", "`location`")


@functools.lru_cache(maxsize=64)
def checks_for(owner: str, nan_check: Any = "both", error_check: bool = True, check_inf: bool = False) -> tuple:
    """The checks that Lux's keywords ask for (cached: debug mode builds one `DebugLayer` per leaf)."""
    if nan_check not in NAN_CHECKS:
        raise ConfigError(f"{owner}: `nan_check` must be one of {', '.join(map(repr, NAN_CHECKS))}, got {nan_check!r}.")
    passes = PASSES if nan_check == "both" else () if nan_check == "none" else (nan_check,)
    checks: list[Check] = [NaNCheck(passes)] if passes else []
    checks += [InfCheck(passes)] if check_inf and passes else []
    return (*checks, ErrorCheck()) if error_check else tuple(checks)


def _floating(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact) and jnp.size(leaf) > 0


class _ByIdentity:
    """Entries keyed by the identity of live values (the arrays of a trace); an entry goes with its value."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}

    def put(self, value: Any, entry: Any) -> None:
        key = id(value)

        def forget(ref: weakref.ref) -> None:
            if self._entries.get(key, (None,))[0] is ref:
                del self._entries[key]

        self._entries[key] = (weakref.ref(value, forget), entry)

    def get(self, value: Any) -> Any:
        ref, entry = self._entries.get(id(value), (None, None))
        return entry if ref is not None and ref() is value else None


# Values a check has looked at, with the kinds it looked for. A layer's input is mostly the
# previous layer's checked output, and a layer's incoming gradient the next one's checked input
# gradient: those are not checked again (the earlier check, first in program order, is the one
# that reports), which saves a pass over each.
_CHECKED = _ByIdentity()
_PASSED_ON = ("incoming gradient of output",)


def _kinds(checks: list[ValueCheck]) -> frozenset[str]:
    return frozenset(check.kind for check in checks)


def _floats(tree: Any) -> list[Any]:
    return [leaf for leaf in jax.tree.leaves(tree) if _floating(leaf)]


def _mark_checked(tree: Any, checks: list[ValueCheck]) -> None:
    kinds = _kinds(checks)
    for leaf in _floats(tree) if kinds else ():
        _CHECKED.put(leaf, kinds)


def _already_checked(leaf: Any, kinds: frozenset[str]) -> bool:
    checked = _CHECKED.get(leaf)
    return checked is not None and kinds <= checked


# Under a trace, checks pass their answer on rather than each calling back. An answer is a code,
# the index in `chain` of the first value flagged so far in program order (`_NONE` when none
# is), and the chain of (layer, entry, pass) that the code indexes, in program order. A check
# that gets an answer adds its own values to the chain, so any check along it reports the
# same first value.
_NONE = np.iinfo(np.int32).max


@dataclasses.dataclass(eq=False)
class _Answer:
    code: jax.Array
    chain: list[tuple[DebugLayer, Found, str]]


# Outputs a check tied to its run-time check (see `DebugLayer._emit`), by identity while they
# live: the untied value and the check's answer. A `DebugLayer` that gets one as its input (or
# as its incoming gradient) runs on the untied value and carries the answer on in its own
# check, so the tied value goes unused and XLA drops it with the check that tied it: along a
# chain of layers only the last check, the one whose outputs are used, stays in the program.
_PENDING = _ByIdentity()


def _pass_on(tied: Any, untied: Any, answer: _Answer) -> None:
    for leaf, value in zip(jax.tree.leaves(tied), jax.tree.leaves(untied)):
        if leaf is not value:
            _PENDING.put(leaf, (value, answer))


def _take_over(tree: Any) -> tuple[Any, _Answer | None]:
    """`tree` with the leaves a check tied (`_pass_on`) untied, and the answer they carry.

    Leaves tied by checks of another chain stay tied: their checks stay in the program.
    """
    answer: _Answer | None = None

    def untie(leaf: Any) -> Any:
        nonlocal answer
        pending = _PENDING.get(leaf)
        if pending is None:
            return leaf
        value, carried = pending
        if answer is None:
            answer = carried
        elif carried.chain is not answer.chain:
            return leaf
        else:
            answer = _Answer(jnp.minimum(answer.code, carried.code), answer.chain)
        return value

    return jax.tree.map(untie, tree), answer


def _tieable(leaf: Any) -> bool:
    """Whether a check can tie `leaf` to its answer: a non-empty array of numbers or booleans."""
    if not hasattr(leaf, "dtype") or jnp.size(leaf) == 0:
        return False
    return jnp.issubdtype(leaf.dtype, jnp.number) or jnp.issubdtype(leaf.dtype, jnp.bool_)


def _outputs(out: tuple[Any, Any]) -> tuple[Any, Any]:
    """Which leaves of a layer's `(y, new_st)` a forward check ties: `y`'s, or the new state's when `y` has none."""
    y, new_st = out
    on_y = any(_tieable(leaf) for leaf in jax.tree.leaves(y))
    return jax.tree.map(lambda leaf: on_y and _tieable(leaf), y), jax.tree.map(
        lambda leaf: not on_y and _tieable(leaf), new_st
    )


def _tie(leaf: Any, failed: jax.Array) -> Any:
    """`leaf`, made to depend on `failed` (always false: a failed check raises) at one element: no pass over it."""
    first = (0,) * jnp.ndim(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        stand_in = jnp.array(jnp.nan, leaf.dtype)
    else:
        stand_in = jnp.zeros((), leaf.dtype)
    return leaf.at[first].set(jnp.where(failed, stand_in, leaf[first]))


def _without_checks(layer: Layer) -> Layer:
    if isinstance(layer, DebugLayer):
        return _without_checks(layer.layer)
    children = layer.children()
    return layer.replace_children({name: _without_checks(child) for name, child in children.items()})


def _smallest(trees: Any) -> Any:
    """A tree of booleans over `trees`, true at one smallest floating leaf: the one to tie to a check."""
    floats = [leaf for leaf in jax.tree.leaves(trees) if _floating(leaf)]
    smallest = min(floats, key=jnp.size) if floats else None
    return jax.tree.map(lambda leaf: leaf is smallest, trees)


def _drop_jax_note(error: BaseException) -> None:
    """Removes the note JAX adds at the custom VJP (a JAX API boundary) about frames it left out.

    Eagerly the custom VJP is the outermost JAX call, so JAX notes there that it filtered its
    own frames; the plain layer's error has no such note. Under an outer `jax.jit` the note is
    added later, at the jit, as for the plain model.
    """
    notes = getattr(error, "__notes__", None)
    if notes:
        error.__notes__ = [note for note in notes if "JAX has removed its internal frames" not in note]


class DebugLayer(WrapperLayer):
    """Runs `layer` unchanged, checking for NaNs and locating errors; see `debug_mode`.

    Args:
        layer: the layer to check.
        nan_check: where to look for NaNs: `"both"` (default), `"forward"` (input,
            parameters, states, output, new state), `"backward"` (the gradient coming in from
            the output and the gradients going out to the input, parameters and states, for
            every `jax.grad`/`jax.vjp`), or `"none"`.
        error_check: if true (default), an exception raised inside `layer` gains a note
            naming the layer, its location and the pass, and is logged on the `"luxjax"`
            logger; its type is kept. If false, exceptions propagate untouched.
        location: where `layer` sits in the model, the path of its entry in `ps`
            (`debug_mode` fills it in).
        check_inf: also report infinities (default: only NaNs).
        held_only: check only what `layer`, a container, holds itself beside its children:
            its own entries of `ps` and `st` (a learnable scale around a child, say), going
            in and out, and their gradients. `debug_mode` wraps every container that holds
            such entries this way (its children get their own `DebugLayer`s), so a NaN there
            is reported with the container's location.
        checks: the checks as data, instead of the three keywords above: a tuple of
            `NaNCheck`, `InfCheck` and `ErrorCheck`, each saying in which passes it runs.
            The keywords are shorthand for it: `nan_check="forward", check_inf=True` is
            `checks=(NaNCheck(("forward",)), InfCheck(("forward",)), ErrorCheck())`.

    `ps` and `st`: those of `layer`, unchanged. Eagerly, outputs and gradients are
    bit-identical to those of `layer` when nothing is found; inside compiled code (`jax.jit`,
    or a layer that compiles its own loop, as `Recurrence` does) the extra checks may change
    how XLA fuses a reduction, so gradients can differ in the last bit.

    A NaN raises `NaNError` naming what held it, the leaf's path inside it, the layer, its
    location and the pass. Eagerly (also in an eager `jax.grad`) it is raised at once.
    Inside `jax.jit` the check runs in the compiled code and fails it at run time: JAX
    raises its runtime error whose text holds the message; wrap the jitted function with
    `raise_nan_errors` to get the `NaNError` itself. The checks report in program order
    (forward, then backward from the loss), so the first layer where a NaN appears is the
    one reported. With a backward check on, the layer is a `jax.custom_vjp`, so
    forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) of it is not available.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import DebugLayer, NaNError
        >>> layer = DebugLayer(lx.Dense(2, 1), location=lx.KeyPath("head"))
        >>> ps, st = lx.setup(jax.random.key(0), layer)
        >>> try:
        ...     layer(jnp.array([[1.0, jnp.nan]]), ps, st)
        ... except NaNError as error:
        ...     print(error)
        NaN detected in input of layer Dense(2 => 1) at location head (forward pass)
    """

    layer: Layer
    nan_check: str = "both"
    error_check: bool = True
    location: KeyPath = field(default=KeyPath(), converter=_as_keypath)
    check_inf: bool = False
    checks: tuple[Check, ...] | None = None
    held_only: bool = False

    # Its checks fail compiled code at run time: a `Stacked` around it re-raises them eagerly.
    checks_at_run_time: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_layer_argument("DebugLayer", self.layer, "`layer`")
        derived = checks_for("DebugLayer", self.nan_check, self.error_check, self.check_inf)
        if self.checks is None:
            self.checks = derived
        elif (self.nan_check, self.error_check, self.check_inf) != ("both", True, False):
            raise ConfigError("DebugLayer: give either `checks` or `nan_check`/`error_check`/`check_inf`, not both.")
        else:
            self.checks = tuple(self.checks)
            for check in self.checks:
                if not isinstance(check, (ValueCheck, ErrorCheck)):
                    raise ConfigError(
                        f"DebugLayer: `checks` must hold NaNCheck, InfCheck or ErrorCheck, got {check!r}."
                    )

    def _value_checks(self, pass_: str) -> list[ValueCheck]:
        return [c for c in self.checks or () if isinstance(c, ValueCheck) and pass_ in c.passes]

    def _annotates(self, pass_: str) -> bool:
        return any(isinstance(c, ErrorCheck) and pass_ in c.passes for c in self.checks or ())

    # -- running the wrapped layer -----------------------------------------------------------
    def _noted(self, error: BaseException, pass_: str) -> None:
        if isinstance(error, NaNError):
            return  # a check's own error: its message names the layer and location already
        if any(str(n).startswith("luxjax debug_mode:") for n in getattr(error, "__notes__", ())):
            return  # a layer inside (a container's child) has named itself already
        note = f"in layer {self._named()!r} at location {self.location.label()} ({pass_} pass)"
        error.add_note(f"luxjax debug_mode: {type(error).__name__} raised {note}.")
        logger.error("%s raised %s: %s", type(error).__name__, note, error)

    def _run(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        try:
            return self.layer(x, ps, st)
        except Exception as error:
            if self._annotates("forward"):
                self._noted(error, "forward")
            raise

    # -- the checks ----------------------------------------------------------------------------
    def _scan(self, trees: list[tuple[str, Any]], pass_: str) -> tuple[list[Found], list[Checked]]:
        """What to check: an entry and a (check, leaf) pair per floating leaf and check.

        Eagerly every flag is computed here and the first one set raises. Under a trace the
        entries and leaves are returned for `_emit`, which computes the flags in the compiled code.
        """
        checks = self._value_checks(pass_)
        kinds = _kinds(checks)
        found: list[Found] = []
        leaves: list[Checked] = []
        for what, tree in trees if checks else ():
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)):
                    continue
                if what in _PASSED_ON and _already_checked(leaf, kinds):
                    continue  # the next layer's input gradient, checked there first
                inside = str(KeyPath.from_jax(path))
                for check in checks:
                    found.append((check.kind, what, inside))
                    leaves.append((check, leaf))
        if not any(isinstance(leaf, Tracer) for _, leaf in leaves):
            for entry, (check, leaf) in zip(found, leaves):
                if bool(check.flag(leaf)):
                    raise self._error(entry, pass_)
            return [], []
        return found, leaves

    def _named(self) -> Layer:
        """The layer as the user built it: a container's children without their `DebugLayer`s."""
        return _without_checks(self.layer) if self.held_only else self.layer

    def _where(self, indices: Any = ()) -> str:
        """The location, each `*` (a block of an enclosing `Stacked`) replaced by the block's index."""
        blocks = iter(int(i) for i in np.asarray(indices).reshape(-1))
        return KeyPath(*(next(blocks, key) if key == "*" else key for key in self.location)).label()

    def _error(self, found: Found, pass_: str, indices: Any = ()) -> NaNError:
        kind, what, inside = found
        held = f"{what} ({inside})" if inside else what
        return NaNError(
            f"{kind} detected in {held} of layer {self._named()!r} at location {self._where(indices)} ({pass_} pass)"
        )

    def _emit(
        self,
        found: list[Found],
        leaves: list[Checked],
        pass_: str,
        results: Any,
        blocks: jax.Array,
        after: _Answer | None = None,
        tied: Callable[[Any], Any] | None = None,
        pass_on: bool = False,
    ) -> tuple[Any, _Answer | None, bool]:
        """One run-time check; returns `results` tied to it, its answer, and whether anything was tied.

        The compiled code computes each value's flag (`check.flag`, one pass over each) and this
        check's code: the smallest of `after`'s code and the chain index of each flagged value.
        A `lax.cond` calls back to the host when the code names a value, and the host raises for
        that value: the first flagged along the chain in program order, whichever check of the
        chain reports it. Every leaf of `results` (or those `tied(results)` picks, a tree of
        booleans) is made to depend on the cond's answer (`_tie`), so the cond stays in the
        program while they are used and every later check that reads them runs after it.
        With `pass_on`, a later check that gets a tied leaf takes the untied one over
        (`_take_over`). `blocks` are the indices of the blocks of the enclosing stacks, which
        the message puts in place of the location's `*`.
        """
        if not found and after is None:
            return results, None, False
        chain = [] if after is None else after.chain
        base = len(chain)
        chain.extend((self, entry, pass_) for entry in found)
        code = jnp.asarray(_NONE, jnp.int32) if after is None else after.code
        if found:
            flags = jnp.stack([check.flag(leaf) for check, leaf in leaves])
            indices = base + jnp.arange(len(found), dtype=jnp.int32)
            code = jnp.minimum(code, jnp.min(jnp.where(flags, indices, _NONE)))
        answer = _Answer(code, chain)
        picks = jax.tree.map(_tieable, results) if tied is None else tied(results)
        if not any(jax.tree.leaves(picks)):
            return results, answer, False

        def report(code: np.ndarray, blocks: np.ndarray) -> np.ndarray:
            if int(code) != _NONE:  # (under `vmap` the callback also runs for the other elements)
                layer, entry, pass_ = chain[int(code)]
                raise remember(layer._error(entry, pass_, blocks))
            return np.zeros((), np.bool_)

        def call_back(code: jax.Array, blocks: jax.Array) -> jax.Array:
            result = jax.ShapeDtypeStruct((), jnp.bool_)
            return jax.pure_callback(report, result, code, blocks, vmap_method="sequential")

        failed = jax.lax.cond(code != _NONE, call_back, lambda *_: jnp.zeros((), jnp.bool_), code, blocks)
        out = jax.tree.map(lambda leaf, pick: _tie(leaf, failed) if pick else leaf, results, picks)
        if pass_on:
            _pass_on(out, results, answer)
        return out, answer, True

    def _held(self, tree: Any) -> Any:
        """The entries of `tree` that a container holds itself: those not named after a child."""
        if not isinstance(tree, Mapping):
            return {}
        children = self.layer.children()
        return {name: value for name, value in tree.items() if name not in children}

    def _forward(
        self, run: Callable, x: Any, ps: Any, st: Any, blocks: jax.Array, fresh: bool = True, take_over: bool = True
    ) -> tuple[Any, Any, _Answer | None]:
        """Runs `run(x, ps, st) -> ((y, new_st), extra)` inside the forward checks: `((y, new_st), extra, answer)`.

        `fresh`: whether the input is new to the checks (not a checked output of another layer).
        With `take_over`, an input that an earlier check tied is run untied and that check's
        answer carried on in this one.
        """
        if self.held_only:
            return self._held_forward(run, x, ps, st, blocks)
        untied, after = _take_over(x) if take_over else (x, None)
        found, leaves = self._scan([("input", untied)] * fresh + [("parameters", ps), ("states", st)], "forward")
        out, extra = run(untied, ps, st)
        more_found, more_leaves = self._scan([("output", out[0]), ("new state", out[1])], "forward")
        tied, answer, emitted = self._emit(
            found + more_found, leaves + more_leaves, "forward", out, blocks, after, _outputs, pass_on=True
        )
        if after is not None and not emitted:  # no output to carry the earlier check on: run on the tied input
            return self._forward(run, x, ps, st, blocks, fresh, take_over=False)
        _mark_checked(tied[0], self._value_checks("forward"))  # what the next layer gets inside a differentiated step
        return tied, extra, answer

    def _held_forward(self, run: Callable, x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[Any, Any, Any]:
        """The forward checks of a container's own entries: checked before its children run, so they come first."""
        own_ps, own_st = self._held(ps), self._held(st)
        x, after = _take_over(x)
        found, leaves = self._scan([("parameters", own_ps), ("states", own_st)], "forward")
        # Under jit the input and the own entries wait for the check, and so every child's checks;
        # the children carry its answer on.
        (x, own_ps, own_st), answer, emitted = self._emit(
            found, leaves, "forward", (x, own_ps, own_st), blocks, after, pass_on=True
        )
        if emitted:
            ps, st = {**ps, **own_ps}, {**st, **own_st}
        (y, new_st), extra = run(x, ps, st)
        found, leaves = self._scan([("new state", self._held(new_st))], "forward")
        y, answer, _ = self._emit(found, leaves, "forward", y, blocks, answer, pass_on=True)
        return (y, new_st), extra, answer

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        # Decided here, on the values the caller passes (inside the custom VJP they are new ones).
        fresh = not all(_already_checked(leaf, _kinds(self._value_checks("forward"))) for leaf in _floats(x))
        if not self._value_checks("backward") and not self._annotates("backward"):
            out = self._forward(lambda *args: (self._run(*args), None), x, ps, st, running_indices(), fresh)[0]
        else:
            # The block indices are read here, while the enclosing stacks run; the backward pass
            # (traced later, outside their loops) gets them as an input of the custom VJP.
            try:
                out = self._checked_vjp(fresh)(x, ps, st, running_indices())
            except Exception as error:  # the layer's own error, as the plain layer raises it
                _drop_jax_note(error)
                raise
        if not self.held_only:  # what the next layer gets (the custom VJP's output is a new value)
            _mark_checked(out[0], self._value_checks("forward"))
        return out

    def _checked_vjp(self, fresh: bool) -> Callable:
        # The chain that the forward answer's code indexes (a residual holds only the code).
        forward_chain: list[list] = [[]]

        @jax.custom_vjp
        def run(x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[Any, Any]:
            return self._forward(lambda *args: (self._run(*args), None), x, ps, st, blocks, fresh)[0]

        def run_fwd(x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[tuple[Any, Any], Any]:
            out, vjp, answer = self._forward(lambda *args: jax.vjp(self._run, *args), x, ps, st, blocks, fresh)
            # The backward checks carry the forward answer on, so a value flagged in the forward
            # pass is reported before any gradient.
            forward_chain[0] = [] if answer is None else answer.chain
            code = jnp.asarray(_NONE, jnp.int32) if answer is None else answer.code
            return out, (vjp, code, blocks)

        def run_bwd(residuals: Any, cotangent: tuple[Any, Any]) -> tuple[Any, Any, Any, None]:
            vjp, code, blocks = residuals
            after, carry = _Answer(code, forward_chain[0]), False
            if not self.held_only:  # the later layer's input-gradient check, carried on here
                ct_y, taken = _take_over(cotangent[0])
                if taken is not None:
                    cotangent, after, carry = (ct_y, cotangent[1]), taken, True
            return (*self._backward(vjp, cotangent, blocks, after, carry), None)  # block indices: no gradient

        run.defvjp(run_fwd, run_bwd)
        return run

    def _backward(
        self, vjp: Callable, cotangent: tuple[Any, Any], blocks: jax.Array, after: _Answer, carry: bool
    ) -> tuple[Any, Any, Any]:
        """The layer's backward pass inside its two backward checks: the gradients of input, parameters, states.

        The first check (incoming gradients, input gradient) ties the input gradient and passes
        it on to the earlier layer's checks. The second (the gradients of the layer's own
        parameters and states) carries the first's answer on and ties only the smallest of
        those gradients, which keeps it in the program: tying the input gradient to it would
        put the weight gradient's product and a pass over it on every earlier layer's path.
        `carry`: `after` comes from a later layer's check that this one must carry on.
        """
        ct_y, ct_st = cotangent
        incoming = [("incoming gradient of output", ct_y), ("incoming gradient of new state", ct_st)]
        found, leaves = self._scan([] if self.held_only else incoming, "backward")
        try:
            grads = vjp(cotangent)
        except Exception as error:
            if self._annotates("backward"):
                self._noted(error, "backward")
            raise
        if self.held_only:
            inputs: list[tuple[str, Any]] = []
            own = [("gradient of parameters", self._held(grads[1])), ("gradient of states", self._held(grads[2]))]
        else:
            inputs = [("gradient of input", grads[0])]
            own = [("gradient of parameters", grads[1]), ("gradient of states", grads[2])]
        more_found, more_leaves = self._scan(inputs, "backward")
        grad_x, answer = grads[0], after
        if found or more_found or carry:
            checked = (found + more_found, leaves + more_leaves)
            grad_x, answer, _ = self._emit(*checked, "backward", grad_x, blocks, after, pass_on=True)
        own_found, own_leaves = self._scan(own, "backward")
        grad_own = self._emit(own_found, own_leaves, "backward", grads[1:], blocks, answer, _smallest)[0]
        if not self.held_only:  # what the earlier layer gets, tied or (taking it over) untied
            _mark_checked((grad_x, grads[0]), self._value_checks("backward"))
        return (grad_x, *grad_own)

    def __repr__(self) -> str:
        settings = [repr(self.layer)]
        if self.checks != checks_for("DebugLayer", self.nan_check, self.error_check, self.check_inf):
            settings.append(f"checks={self.checks!r}")
        if self.nan_check != "both":
            settings.append(f"nan_check={self.nan_check!r}")
        if not self.error_check:
            settings.append("error_check=False")
        if self.check_inf:
            settings.append("check_inf=True")
        if self.held_only:
            settings.append("held_only=True")
        settings.append(f"location={self.location!r}")
        return f"DebugLayer({', '.join(settings)})"


def debug_mode(model: Layer, nan_check: str = "both", error_check: bool = True, check_inf: bool = False) -> Layer:
    """Wraps every leaf layer of `model` in a `DebugLayer` that knows its location.

    The location of each leaf is the path of its entry in `ps` (as in `layer_map`), so a
    message names e.g. `layer_2.layer_2`. The debug model takes the original `ps` and `st`
    unchanged and computes the same outputs and gradients. A container that holds parameters
    or states of its own beside its children's is wrapped too, with `held_only=True`: those
    entries are checked with the container's location. A model already in debug mode is
    re-wrapped with the new settings: `DebugLayer`s are never nested. Only the layer tree is
    walked (no tree of shapes is built), so this is about as cheap as `layer_map`.

    Args:
        model: any luxjax layer.
        nan_check: `"both"` (default), `"forward"`, `"backward"` or `"none"`; see `DebugLayer`.
        error_check: add the failing layer and its location to exceptions (default true).
        check_inf: also report infinities (default: only NaNs).

    Returns:
        The debug model. Go back to the original model once the bug is found: the checks
        cost time.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import debug_mode, NaNError
        >>> model = lx.Chain(lx.Dense(1, 4, jax.nn.relu), lx.Chain(lx.Dense(4, 3), lx.Dense(3, 1)))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["layer_2"]["layer_2"]["weight"] = ps["layer_2"]["layer_2"]["weight"].at[0, 0].set(jnp.nan)
        >>> debug = debug_mode(model)
        >>> debug["layer_1"]
        DebugLayer(Dense(1 => 4, relu), location=KeyPath('layer_1'))
        >>> try:
        ...     debug(jnp.ones((2, 1)), ps, st)
        ... except NaNError as error:
        ...     print(error)
        NaN detected in parameters (weight) of layer Dense(3 => 1) at location layer_2.layer_2 (forward pass)
    """
    check_layer_argument("debug_mode", model, "`model`")
    checks_for("debug_mode", nan_check, error_check, check_inf)  # the keywords' errors name debug_mode

    def wrap(layer: Layer, path: KeyPath) -> Layer:
        if isinstance(layer, DebugLayer):  # already in debug mode: re-wrap what is inside
            return wrap(layer.layer, path)
        children = layer.children()
        if not children:
            return DebugLayer(layer, nan_check, error_check, path, check_inf)
        if layer.copies() > 1:  # a stack: `*` stands for the block index, known when the block runs
            ((name, block),) = children.items()
            return layer.replace_children({name: wrap(block, path / "*")})
        new = {name: wrap(child, path if layer.is_wrapper else path / name) for name, child in children.items()}
        layer = layer.replace_children(new)
        if layer.is_wrapper or not holds_own_entries(layer):
            return layer
        return DebugLayer(layer, nan_check, error_check, path, check_inf, held_only=True)

    return wrap(model, KeyPath())


def raise_nan_errors(fn: Callable) -> Callable:
    """Wraps a (jitted) function so a NaN found by debug mode raises the real `NaNError`.

    Inside `jax.jit`, debug mode's checks fail the compiled computation at run time, and JAX
    reports that as its own runtime error (`jax.errors.JaxRuntimeError`) whose text holds the
    `NaNError` message. The wrapped function calls `fn`, waits for its results (so the error
    surfaces here, not at a later use of the results) and re-raises such an error as the
    `NaNError` that the check raised, chained to JAX's error. Other errors pass unchanged.
    Works as a decorator too.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import debug_mode, raise_nan_errors, NaNError
        >>> model = debug_mode(lx.Chain(lx.Dense(2, 2), lx.Dense(2, 1)))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["layer_2"]["bias"] = jnp.array([jnp.nan])
        >>> forward = raise_nan_errors(jax.jit(model))
        >>> try:
        ...     forward(jnp.ones((1, 2)), ps, st)
        ... except NaNError as error:
        ...     print(error)
        NaN detected in parameters (bias) of layer Dense(2 => 1) at location layer_2 (forward pass)
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return jax.block_until_ready(fn(*args, **kwargs))
        except jax.errors.JaxRuntimeError as error:
            nan_error = recover(error)
            if nan_error is None:
                raise
            raise nan_error.with_traceback(None) from error

    return wrapped
