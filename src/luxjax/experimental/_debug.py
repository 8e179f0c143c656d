"""Debug mode: `DebugLayer`, `debug_mode` and `raise_nan_errors`, after Lux's `DebugLayer`."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import ConfigError, KeyPath, Layer, NaNError, WrapperLayer, check_layer_argument
from ._layer_map import layer_map

logger = logging.getLogger("luxjax")

NAN_CHECKS = ("both", "forward", "backward", "none")

# One entry per checked leaf: (kind, what held it, the leaf's path inside it), kind "NaN"/"Inf".
Check = tuple[str, str, str]


def _check_nan_check(owner: str, nan_check: Any) -> None:
    if nan_check not in NAN_CHECKS:
        raise ConfigError(f"{owner}: `nan_check` must be one of {', '.join(map(repr, NAN_CHECKS))}, got {nan_check!r}.")


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _has_nan(leaf: jax.Array) -> jax.Array:
    """Whether `leaf` holds a NaN: `max` propagates NaN and is a cheaper reduction than `any`."""
    if jnp.size(leaf) == 0:
        return jnp.zeros((), jnp.bool_)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        return jnp.isnan(leaf).any()
    return jnp.isnan(jnp.max(leaf))


def _location(location: KeyPath) -> str:
    return str(location) or "(root)"


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

    `ps` and `st`: those of `layer`, unchanged. Outputs and gradients are bit-identical to
    those of `layer` when nothing is found.

    A NaN raises `NaNError` naming what held it, the leaf's path inside it, the layer, its
    location and the pass. Eagerly (also in an eager `jax.grad`) it is raised at once.
    Inside `jax.jit` the check runs in the compiled code and fails it at run time: JAX
    raises its runtime error whose text holds the message; wrap the jitted function with
    `raise_nan_errors` to get the `NaNError` itself. The checks report in program order
    (forward, then backward from the loss), so the first layer where a NaN appears is the
    one reported. With the backward check on, the layer is a `jax.custom_vjp`, so
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
    location: KeyPath = KeyPath()
    check_inf: bool = False

    def __post_init__(self) -> None:
        check_layer_argument("DebugLayer", self.layer, "`layer`")
        _check_nan_check("DebugLayer", self.nan_check)
        if not isinstance(self.location, KeyPath):
            location = KeyPath.parse(self.location) if isinstance(self.location, str) else KeyPath(*self.location)
            object.__setattr__(self, "location", location)

    # -- running the wrapped layer -----------------------------------------------------------
    def _noted(self, error: BaseException, pass_: str) -> None:
        note = f"in layer {self.layer!r} at location {_location(self.location)} ({pass_} pass)"
        error.add_note(f"luxjax debug_mode: {type(error).__name__} raised {note}.")
        logger.error("%s raised %s: %s", type(error).__name__, note, error)

    def _run(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        if not self.error_check:
            return self.layer(x, ps, st)
        try:
            return self.layer(x, ps, st)
        except Exception as error:
            self._noted(error, "forward")
            raise

    # -- the checks ----------------------------------------------------------------------------
    def _scan(self, trees: list[tuple[str, Any]], pass_: str) -> tuple[list[Check], list[Any]]:
        """Flags per floating leaf; raises at once when every flag is already known."""
        checks: list[Check] = []
        flags: list[Any] = []
        for what, tree in trees:
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)):
                    continue
                inside = ".".join(_key_name(k) for k in path)
                checks.append(("NaN", what, inside))
                flags.append(_has_nan(leaf))
                if self.check_inf:
                    checks.append(("Inf", what, inside))
                    flags.append(jnp.isinf(leaf).any())
        if not any(isinstance(flag, jax.core.Tracer) for flag in flags):
            for check, flag in zip(checks, flags):
                if bool(flag):
                    raise self._error(check, pass_)
            return [], []
        return checks, flags

    def _error(self, check: Check, pass_: str) -> NaNError:
        kind, what, inside = check
        held = f"{what} ({inside})" if inside else what
        return NaNError(
            f"{kind} detected in {held} of layer {self.layer!r} at location {_location(self.location)} ({pass_} pass)"
        )

    def _emit(
        self, checks: list[Check], flags: list[Any], pass_: str, results: Any, after: Any = None
    ) -> tuple[Any, Any]:
        """One run-time check per layer and pass; returns `results` made to wait for it.

        The callback runs only when a flag is set (inside `lax.cond`). Every floating leaf
        of `results` (the output going forward, the gradients going backward) is made to
        depend on its answer (`where(answer, nan, leaf)`, and the answer is always false), so
        every later check, which reads these results, runs after this one: the first NaN in
        program order is the one reported, without the cost of JAX's ordered effects.
        `after` (an earlier check's answer) makes this check wait for that one too. Returns
        the tied results and this check's answer.
        """
        if not checks:
            return results, after
        flags_array = jnp.stack(flags)
        pred = flags_array.any() if after is None else jnp.logical_or(flags_array.any(), after)

        def report(values: np.ndarray) -> np.ndarray:
            values = np.asarray(values)
            if values.any():
                raise _remember(self._error(checks[int(np.argmax(values))], pass_))
            return np.zeros((), np.bool_)

        def fail(f: jax.Array) -> jax.Array:
            return jax.pure_callback(report, jax.ShapeDtypeStruct((), jnp.bool_), f, vmap_method="sequential")

        failed = jax.lax.cond(pred, fail, lambda f: jnp.zeros((), jnp.bool_), flags_array)

        def tie(leaf: Any) -> Any:
            if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact) and jnp.size(leaf)):
                return leaf
            first = (0,) * jnp.ndim(leaf)  # one element carries the dependency: no pass over the array
            return leaf.at[first].set(jnp.where(failed, jnp.array(jnp.nan, leaf.dtype), leaf[first]))

        return jax.tree.map(tie, results), failed

    def _forward(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        """Runs the layer with the forward checks (no custom backward pass)."""
        check = self.nan_check in ("both", "forward")
        checks, flags = self._scan([("input", x), ("parameters", ps), ("states", st)], "forward") if check else ([], [])
        y, new_st = self._run(x, ps, st)
        if check:
            more_checks, more_flags = self._scan([("output", y), ("new state", new_st)], "forward")
            y, _ = self._emit(checks + more_checks, flags + more_flags, "forward", y)
        return y, new_st

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        with jax.named_scope("DebugLayer"):
            if self.nan_check not in ("both", "backward"):
                return self._forward(x, ps, st)
            return self._checked_vjp()(x, ps, st)

    def _checked_vjp(self) -> Callable:
        forward_check = self.nan_check == "both"

        @jax.custom_vjp
        def run(x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
            return self._forward(x, ps, st) if forward_check else self._run(x, ps, st)

        def run_fwd(x: Any, ps: Any, st: Any) -> tuple[tuple[Any, Any], Any]:
            check = forward_check
            checks, flags = (
                self._scan([("input", x), ("parameters", ps), ("states", st)], "forward") if check else ([], [])
            )
            (y, new_st), vjp = jax.vjp(self._run, x, ps, st)
            failed = None
            if check:
                more_checks, more_flags = self._scan([("output", y), ("new state", new_st)], "forward")
                y, failed = self._emit(checks + more_checks, flags + more_flags, "forward", y)
            # The forward check's answer is a residual that the backward check waits for, so
            # every backward check runs after it, even where the output itself is unused.
            return (y, new_st), (vjp, jnp.zeros((), jnp.bool_) if failed is None else failed)

        def run_bwd(residuals: Any, cotangent: tuple[Any, Any]) -> tuple[Any, Any, Any]:
            vjp, forward_failed = residuals
            ct_y, ct_st = cotangent
            checks, flags = self._scan(
                [("incoming gradient of output", ct_y), ("incoming gradient of new state", ct_st)], "backward"
            )
            try:
                grads = vjp(cotangent)
            except Exception as error:
                if self.error_check:
                    self._noted(error, "backward")
                raise
            more_checks, more_flags = self._scan(
                [
                    ("gradient of input", grads[0]),
                    ("gradient of parameters", grads[1]),
                    ("gradient of states", grads[2]),
                ],
                "backward",
            )
            # All gradients are tied: the input gradient may be dropped (not differentiated).
            return self._emit(checks + more_checks, flags + more_flags, "backward", grads, forward_failed)[0]

        run.defvjp(run_fwd, run_bwd)
        return run

    def __repr__(self) -> str:
        settings = [repr(self.layer)]
        if self.nan_check != "both":
            settings.append(f"nan_check={self.nan_check!r}")
        if not self.error_check:
            settings.append("error_check=False")
        if self.check_inf:
            settings.append("check_inf=True")
        settings.append(f"location={self.location!r}")
        return f"DebugLayer({', '.join(settings)})"


def _strip(model: Layer) -> Layer:
    """The model with every `DebugLayer` replaced by the layer inside it."""
    while isinstance(model, DebugLayer):
        model = model.layer
    children = model.children()
    if not children:
        return model
    return model.replace_children({name: _strip(child) for name, child in children.items()})


def debug_mode(model: Layer, nan_check: str = "both", error_check: bool = True, check_inf: bool = False) -> Layer:
    """Wraps every leaf layer of `model` in a `DebugLayer` that knows its location.

    The location of each leaf is the path of its entry in `ps` (as in `layer_map`), so a
    message names e.g. `layer_2.layer_2`. The debug model takes the original `ps` and `st`
    unchanged and computes the same outputs and gradients. A model already in debug mode is
    re-wrapped with the new settings: `DebugLayer`s are never nested.

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
    _check_nan_check("debug_mode", nan_check)
    plain = _strip(model)
    key = jax.random.key(0)
    ps, st = jax.eval_shape(lambda: (plain.init_params(key), plain.init_state(key)))

    def wrap(layer: Layer, ps: Any, st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
        return DebugLayer(layer, nan_check, error_check, path, check_inf), ps, st

    return layer_map(wrap, plain, ps, st)[0]


# -- re-raising the NaNError from JAX's run-time error ------------------------------------------
_MESSAGE = re.compile(r"(?:NaN|Inf) detected in .*? \((?:forward|backward) pass\)")
_RECENT: dict[str, NaNError] = {}
_LOCK = threading.Lock()


def _remember(error: NaNError) -> NaNError:
    with _LOCK:
        _RECENT[str(error)] = error
        while len(_RECENT) > 16:
            del _RECENT[next(iter(_RECENT))]
    return error


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
            match = _MESSAGE.search(str(error))
            if match is None:
                raise
            with _LOCK:
                nan_error = _RECENT.get(match.group(0)) or NaNError(match.group(0))
            raise nan_error.with_traceback(None) from error

    return wrapped
