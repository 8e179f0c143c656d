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


def _not_finite(leaf: jax.Array) -> jax.Array:
    """Whether the sum of `leaf`'s elements is not finite: always so when it holds a NaN or an infinity.

    The sum can also overflow without either, so it only screens: the exact checks run when it
    is set. bfloat16 and float16 are summed in float32, where a long sum overflows later.
    """
    if jnp.issubdtype(leaf.dtype, jnp.floating) and jnp.finfo(leaf.dtype).bits < 32:
        leaf = leaf.astype(jnp.float32)
    return jnp.logical_not(jnp.isfinite(jnp.sum(leaf)))


def _any_flagged(leaves: list[Checked]) -> jax.Array:
    """Set when a check may flag one of its leaves, and always when one does; one pass over each leaf.

    A NaN or an infinity makes a leaf's sum not finite, so `NaNCheck`s and `InfCheck`s share
    one screen per leaf (`_not_finite`). Other checks apply their `flag` to the concatenation
    of their leaves.
    """
    screened = {id(leaf): leaf for check, leaf in leaves if isinstance(check, (NaNCheck, InfCheck))}
    groups: dict[tuple[ValueCheck, Any], list[jax.Array]] = {}
    for check, leaf in leaves:
        if not isinstance(check, (NaNCheck, InfCheck)):
            groups.setdefault((check, leaf.dtype), []).append(jnp.ravel(leaf))
    flags = [_not_finite(leaf) for leaf in screened.values() if jnp.size(leaf)]
    flags += [check.flag(jnp.concatenate(group)) for (check, _), group in groups.items()]
    return functools.reduce(jnp.logical_or, flags, jnp.zeros((), jnp.bool_))


def running_indices() -> jax.Array:
    """The indices of the blocks the enclosing `Stacked` layers are running, as one int32 array."""
    return jnp.asarray(block_indices(), jnp.int32).reshape(-1)


def _has_inf(leaf: jax.Array) -> jax.Array:
    return jnp.isinf(leaf).any()


@dataclasses.dataclass(frozen=True)
class ValueCheck:
    """A check of every floating-point leaf a layer sees: inputs, parameters, states, outputs, gradients.

    `kind` names what is found in messages (`"NaN detected in ..."`); `flag(leaf)` is a
    boolean scalar, true when any element of the leaf holds it (compiled code applies it to
    the concatenation of a layer's leaves first, and to each leaf only when that is set).
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


# Values a check has looked at (by identity, while they live), with the kinds it looked for. A
# layer's input is mostly the previous layer's checked output, and a layer's incoming gradient
# the next one's checked input gradient: those are not checked again (the earlier check, first
# in program order, is the one that reports), which saves a pass over each.
_CHECKED: dict[int, tuple[weakref.ref, frozenset[str]]] = {}
_PASSED_ON = ("incoming gradient of output",)


def _kinds(checks: list[ValueCheck]) -> frozenset[str]:
    return frozenset(check.kind for check in checks)


def _floats(tree: Any) -> list[Any]:
    return [leaf for leaf in jax.tree.leaves(tree) if _floating(leaf)]


def _mark_checked(tree: Any, checks: list[ValueCheck]) -> None:
    kinds = _kinds(checks)
    if not kinds:
        return
    for leaf in _floats(tree):
        key = id(leaf)

        def forget(ref: weakref.ref, key: int = key) -> None:
            if _CHECKED.get(key, (None,))[0] is ref:
                del _CHECKED[key]

        _CHECKED[key] = (weakref.ref(leaf, forget), kinds)


def _already_checked(leaf: Any, kinds: frozenset[str]) -> bool:
    entry = _CHECKED.get(id(leaf))
    return entry is not None and entry[0]() is leaf and kinds <= entry[1]


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
        after: Any = None,
        tied: Callable[[Any], Any] | None = None,
    ) -> tuple[Any, Any]:
        """One run-time check per layer and pass; returns `results` made to wait for it.

        The compiled code computes one flag for all the leaves (`_any_flagged`, one pass over
        each). Only when it is set does `lax.cond` run the branch that computes each leaf's
        own flag and, when one is set, calls back to the host, which raises for the first. Every
        floating leaf of `results` (or those `tied(results)` picks, a tree of booleans) is
        made to depend on its answer (`where(answer, nan, leaf)`, and the answer is always
        false), so every later check, which reads these results, runs after this one: the
        first NaN in program order is the one reported, without the cost of JAX's ordered
        effects. `after` (an earlier check's answer) makes this check wait for that one too.
        `blocks` are the indices of the blocks of the enclosing stacks, which the message puts
        in place of the location's `*`. Returns the tied results and this check's answer.
        """
        if not found:
            return results, after
        values = [leaf for _, leaf in leaves]
        pred = _any_flagged(leaves) if after is None else jnp.logical_or(_any_flagged(leaves), after)

        def report(flags: np.ndarray, blocks: np.ndarray) -> np.ndarray:
            flags = np.asarray(flags)
            if flags.any():
                raise remember(self._error(found[int(np.argmax(flags))], pass_, blocks))
            return np.zeros((), np.bool_)

        def call_back(flags: jax.Array, blocks: jax.Array) -> jax.Array:
            result = jax.ShapeDtypeStruct((), jnp.bool_)
            return jax.pure_callback(report, result, flags, blocks, vmap_method="sequential")

        def fail(values: list[jax.Array], blocks: jax.Array) -> jax.Array:
            flags = jnp.stack([check.flag(leaf) for (check, _), leaf in zip(leaves, values)])
            return jax.lax.cond(flags.any(), call_back, lambda *_: jnp.zeros((), jnp.bool_), flags, blocks)

        failed = jax.lax.cond(pred, fail, lambda values, blocks: jnp.zeros((), jnp.bool_), values, blocks)

        def tie(leaf: Any) -> Any:
            if not _floating(leaf):
                return leaf
            first = (0,) * jnp.ndim(leaf)  # one element carries the dependency: no pass over the array
            return leaf.at[first].set(jnp.where(failed, jnp.array(jnp.nan, leaf.dtype), leaf[first]))

        if tied is None:
            return jax.tree.map(tie, results), failed
        return jax.tree.map(lambda leaf, pick: tie(leaf) if pick else leaf, results, tied(results)), failed

    def _held(self, tree: Any) -> Any:
        """The entries of `tree` that a container holds itself: those not named after a child."""
        if not isinstance(tree, Mapping):
            return {}
        children = self.layer.children()
        return {name: value for name, value in tree.items() if name not in children}

    def _forward(
        self, run: Callable, x: Any, ps: Any, st: Any, blocks: jax.Array, fresh: bool = True
    ) -> tuple[Any, Any, Any]:
        """Runs `run(x, ps, st) -> ((y, new_st), extra)` inside the forward checks: `((y, new_st), extra, answer)`.

        `fresh`: whether the input is new to the checks (not a checked output of another layer).
        """
        if self.held_only:
            return self._held_forward(run, x, ps, st, blocks)
        found, leaves = self._scan([("input", x)] * fresh + [("parameters", ps), ("states", st)], "forward")
        (y, new_st), extra = run(x, ps, st)
        more_found, more_leaves = self._scan([("output", y), ("new state", new_st)], "forward")
        y, failed = self._emit(found + more_found, leaves + more_leaves, "forward", y, blocks)
        _mark_checked(y, self._value_checks("forward"))  # what the next layer gets inside a differentiated step
        return (y, new_st), extra, failed

    def _held_forward(self, run: Callable, x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[Any, Any, Any]:
        """The forward checks of a container's own entries: checked before its children run, so they come first."""
        own_ps, own_st = self._held(ps), self._held(st)
        found, leaves = self._scan([("parameters", own_ps), ("states", own_st)], "forward")
        if found:  # under jit: the input and the own entries wait for the check, and so every child's checks
            (x, own_ps, own_st), failed = self._emit(found, leaves, "forward", (x, own_ps, own_st), blocks)
            ps, st = {**ps, **own_ps}, {**st, **own_st}
        else:
            failed = None
        (y, new_st), extra = run(x, ps, st)
        found, leaves = self._scan([("new state", self._held(new_st))], "forward")
        y, failed = self._emit(found, leaves, "forward", y, blocks, failed)
        return (y, new_st), extra, failed

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
        @jax.custom_vjp
        def run(x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[Any, Any]:
            return self._forward(lambda *args: (self._run(*args), None), x, ps, st, blocks, fresh)[0]

        def run_fwd(x: Any, ps: Any, st: Any, blocks: jax.Array) -> tuple[tuple[Any, Any], Any]:
            out, vjp, failed = self._forward(lambda *args: jax.vjp(self._run, *args), x, ps, st, blocks, fresh)
            # The forward check's answer is a residual that the backward check waits for, so
            # every backward check runs after it, even where the output itself is unused.
            forward_failed = jnp.zeros((), jnp.bool_) if failed is None else failed
            return out, (vjp, forward_failed, blocks)

        def run_bwd(residuals: Any, cotangent: tuple[Any, Any]) -> tuple[Any, Any, Any, None]:
            vjp, forward_failed, blocks = residuals
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
            # Two checks. The first (incoming gradients, input gradient) ties the input
            # gradient, so earlier layers' checks wait for it. The second (the gradients of
            # the layer's own parameters and states) waits for the first and ties only the
            # smallest of those gradients, which keeps it alive: tying the input gradient to it
            # would put the weight gradient's product and a pass over it on the path of every
            # earlier layer's backward pass.
            more_found, more_leaves = self._scan(inputs, "backward")
            grad_x, answer = self._emit(
                found + more_found, leaves + more_leaves, "backward", grads[0], blocks, forward_failed
            )
            own_found, own_leaves = self._scan(own, "backward")
            grad_own = self._emit(own_found, own_leaves, "backward", grads[1:], blocks, answer, _smallest)[0]
            checked = (grad_x, *grad_own)
            if not self.held_only:
                _mark_checked(grad_x, self._value_checks("backward"))
            return (*checked, None)  # the block indices are integers: no gradient

        run.defvjp(run_fwd, run_bwd)
        return run

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
