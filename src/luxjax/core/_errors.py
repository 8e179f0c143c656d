"""The errors luxjax raises, defined in one place (and shown as `luxjax.ShapeError`, etc.)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from ._keypath import KeyPath


class LayerError(Exception):
    """An error raised by a layer while it runs; it learns its path as it propagates.

    Containers prepend the child's name to `path` on the way out (`ContainerLayer.call`), so
    the message names where in the model the failing layer sits:
    `Dense(3 => 4) at encoder.layer_2: ...`. Give `path` when the place is already known.
    """

    def __init__(self, layer: Any, detail: str, *, path: KeyPath | None = None):
        super().__init__(detail)
        self.layer_repr = repr(layer)
        self.detail = detail
        self.path = KeyPath() if path is None else path

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.layer_repr}{where}: {self.detail}"


class ShapeError(LayerError, ValueError):
    """An input whose shape or rank does not fit the layer."""


class StructureError(LayerError, ValueError):
    """A `ps` or `st` tree whose keys or shapes do not fit the layer."""


class ConfigError(ValueError):
    """A layer constructed with arguments that cannot work."""


class NotALayerError(TypeError):
    """Something that is not a `Layer` given where a layer is needed."""


class NaNError(FloatingPointError):
    """A NaN (or Inf) found by debug mode; the message names the layer and its location."""


class CheckpointError(ValueError):
    """A file that is not a complete luxjax checkpoint (truncated, foreign or from a newer format)."""


# -- errors raised by checks inside compiled code -----------------------------------------------
# A check that fails inside compiled code (a host callback) raises there; JAX reports it as its
# own runtime error whose text holds the message. The checks remember what they raised, so it can
# be raised again as itself where the runtime error comes out.
_CHECK_MESSAGE = re.compile(r"(?:NaN|Inf) detected in .*? \((?:forward|backward) pass\)")
_RECENT: dict[str, NaNError] = {}
_LOCK = threading.Lock()


class _QuietChecks(logging.Filter):
    """Drops JAX's log record of a failed callback when the failure is a check's `NaNError`.

    JAX logs the callback's traceback before it raises its runtime error; for a check that
    traceback says nothing the error does not (the runtime error's text holds the message, and
    `raise_nan_errors` raises the `NaNError` itself), so it is not printed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NaNError))


_QUIET = _QuietChecks()


def remember(error: NaNError) -> NaNError:
    """Notes a `NaNError` raised inside a host callback (the last 16 are kept) and returns it.

    The first call also quiets JAX's log of the failed callback (`_QuietChecks`).
    """
    callback_log = logging.getLogger("jax._src.callback")
    if _QUIET not in callback_log.filters:
        callback_log.addFilter(_QUIET)
    with _LOCK:
        _RECENT[str(error)] = error
        while len(_RECENT) > 16:
            del _RECENT[next(iter(_RECENT))]
    return error


def recover(runtime_error: Exception) -> NaNError | None:
    """The `NaNError` whose message a JAX runtime error carries, or `None` if it carries none."""
    match = _CHECK_MESSAGE.search(str(runtime_error))
    if match is None:
        return None
    with _LOCK:
        return _RECENT.get(match.group(0)) or NaNError(match.group(0))


for _error in (LayerError, ShapeError, StructureError, ConfigError, NotALayerError, NaNError, CheckpointError):
    _error.__module__ = "luxjax"
