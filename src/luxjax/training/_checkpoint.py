"""Checkpoints without pickle: one safetensors file whose metadata holds the tree as JSON.

The arrays are safetensors tensors; the tree (dict keys in order, lists, tuples, `None`,
`Training` flags, Python numbers and strings), the dtypes, PRNG key implementations and the
ties (places that hold the same array share one tensor) are JSON in the file's metadata.
Loading runs no code from the file. Files are written atomically: to a temporary file in
the same folder, flushed and fsynced, then renamed over the target with `os.replace`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors
import safetensors.numpy

from ..core import CheckpointError, KeyPath, Layer, Training, tied_groups
from ._train_state import TrainState

FORMAT = "luxjax.checkpoint"
VERSION = 1
# dtypes safetensors' numpy loader reads back; others are stored as raw unsigned ints.
_NATIVE = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_NATIVE |= {"float16", "float32", "float64"}


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {}
        self.keep: list[Any] = []  # keeps ids unique while encoding

    def tensor(self, array: Any) -> str:
        name = self.names.get(id(array))
        if name is None:
            name = self.names[id(array)] = f"t{len(self.names)}"
            self.keep.append(array)
            value = np.asarray(array)
            if value.dtype.name not in _NATIVE:
                value = value.view(f"uint{8 * value.dtype.itemsize}")
            self.tensors[name] = np.ascontiguousarray(value)
        return name

    def encode(self, node: Any, path: KeyPath) -> Any:
        if isinstance(node, Training):
            return {"t": "training", "value": bool(node)}
        if isinstance(node, jax.Array) and jnp.issubdtype(node.dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(node))
            return {"t": "key", "impl": impl, "name": self.tensor(jax.random.key_data(node))}
        if isinstance(node, (jax.Array, np.ndarray)):
            return {"t": "array", "dtype": node.dtype.name, "shape": list(node.shape), "name": self.tensor(node)}
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise TypeError(f"save: dict keys must be strings, got {k!r} at {path or 'the root'}.")
            return {"t": "dict", "items": [[k, self.encode(v, path / k)] for k, v in node.items()]}
        if isinstance(node, (list, tuple)) and type(node) in (list, tuple):
            items = [self.encode(v, path / str(i)) for i, v in enumerate(node)]
            return {"t": type(node).__name__, "items": items}
        if node is None:
            return {"t": "none"}
        if isinstance(node, (bool, int, float, str)):
            return {"t": "py", "value": node}
        raise TypeError(
            f"save: cannot store {node!r} of type {type(node).__name__} at {path or 'the root'}; checkpoints hold "
            "arrays, PRNG keys, dicts, lists, tuples, None, Training flags and Python numbers and strings."
        )


def _decode(node: Any, arrays: dict[Any, Any], where: str) -> Any:
    kind = node.get("t") if isinstance(node, dict) else None
    if kind == "dict":
        return {k: _decode(v, arrays, where) for k, v in node["items"]}
    if kind in ("list", "tuple"):
        items = [_decode(v, arrays, where) for v in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "none":
        return None
    if kind == "py":
        return node["value"]
    if kind == "training":
        return Training(bool(node["value"]))
    if kind == "array":
        key = (node["name"], node["dtype"])
        if key not in arrays:
            raw = arrays[node["name"]]
            arrays[key] = jnp.asarray(raw.view(np.dtype(jnp.dtype(node["dtype"]))).reshape(node["shape"]))
        return arrays[key]
    if kind == "key":
        key = (node["name"], "key")
        if key not in arrays:
            arrays[key] = jax.random.wrap_key_data(jnp.asarray(arrays[node["name"]]), impl=node["impl"])
        return arrays[key]
    raise CheckpointError(
        f"load: {where} has an unknown entry {str(node)[:80]!r} in its tree; it is not a luxjax checkpoint."
    )


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; not every platform can open a folder
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _save(path: str | os.PathLike, trees: dict[str, Any], extra: dict[str, Any]) -> None:
    encoder = _Encoder()
    tree = {name: encoder.encode(value, KeyPath()) for name, value in trees.items()}
    ties = [[str(p) for p in group] for group in tied_groups(trees.get("ps", {}))]
    header = {"format": FORMAT, "version": VERSION, "tree": tree, "ties": ties, **extra}
    data = safetensors.numpy.save(encoder.tensors, metadata={FORMAT: json.dumps(header)})
    _write_atomic(path, data)


def _load(path: str | os.PathLike) -> dict[str, Any]:
    where = repr(os.fspath(path))
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise CheckpointError(f"load: {where} is not a luxjax checkpoint: {len(data)} bytes, too short for a header.")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        raise CheckpointError(
            f"load: {where} is truncated or not a luxjax checkpoint: its header claims {size} bytes "
            f"but the file has {len(data) - 8} after the length."
        )
    try:
        raw_header = json.loads(data[8 : 8 + size])
        header = json.loads(raw_header["__metadata__"][FORMAT])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"load: {where} is not a luxjax checkpoint (no {FORMAT!r} metadata in a safetensors header)."
        ) from error
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(
            f"load: {where} has format {header.get('format')!r} version {header.get('version')!r}; "
            f"this luxjax reads {FORMAT!r} version {VERSION}."
        )
    ends = [entry["data_offsets"][1] for name, entry in raw_header.items() if name != "__metadata__"]
    if max(ends, default=0) != len(data) - 8 - size:
        raise CheckpointError(
            f"load: {where} is truncated: its tensors need {max(ends, default=0)} bytes of data, "
            f"the file has {len(data) - 8 - size}."
        )
    try:
        arrays: dict[Any, Any] = dict(safetensors.numpy.load(data))
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"load: {where} is damaged: {error}") from error
    try:
        header["tree"] = {name: _decode(node, arrays, where) for name, node in header["tree"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"load: {where} has a damaged tree description: {error!r}.") from error
    return header


def save(path: str | os.PathLike, ps: Any, st: Any) -> None:
    """Writes `ps` and `st` to `path` atomically, keeping ties, frozen values and PRNG keys.

    One safetensors file (readable by any safetensors reader) with the tree structure, dtypes,
    PRNG key implementations, `Training` flags and Python scalars as JSON metadata; no pickle.
    Places that hold the same array (ties, from `share_parameters`) are stored once and are
    the same array again after `load`. A crash during the write leaves the previous file at
    `path` intact (a stray `.<name>.*.tmp` file may remain beside it).

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save, load
        >>> ps, st = lx.setup(jax.random.key(0), lx.Dense(2, 3))
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> save(path, ps, st)
        >>> ps2, st2 = load(path)
        >>> bool((ps2["weight"] == ps["weight"]).all())
        True
    """
    _save(path, {"ps": ps, "st": st}, {})


def load(path: str | os.PathLike) -> tuple[Any, Any]:
    """Reads `(ps, st)` written by `save`; ties come back as `is` identity.

    Raises:
        CheckpointError: the file is truncated, damaged or not a luxjax checkpoint.

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save, load
        >>> path = os.path.join(tempfile.mkdtemp(), "bad.safetensors")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"not a checkpoint")
        >>> load(path)
        Traceback (most recent call last):
        luxjax.CheckpointError: load: ... is truncated or not a luxjax checkpoint: ...
    """
    tree = _load(path)["tree"]
    if set(tree) != {"ps", "st"}:
        raise CheckpointError(
            f"load: {os.fspath(path)!r} holds {sorted(tree)}, not `ps` and `st`; use `load_train_state`."
        )
    return tree["ps"], tree["st"]


def save_train_state(path: str | os.PathLike, ts: TrainState) -> None:
    """Writes a `TrainState` (parameters, states, optimizer state, step) to `path` atomically.

    The model and optimizer are code, not data: `load_train_state` takes them again.

    Example:
        >>> import os, tempfile, jax, optax, luxjax as lx
        >>> from luxjax.training import TrainState, save_train_state, load_train_state
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
        >>> save_train_state(path, TrainState(model, ps, st, optax.adam(1e-3)).replace(step=7))
        >>> load_train_state(path, model, optax.adam(1e-3)).step
        7
    """
    if not isinstance(ts, TrainState):
        raise TypeError(f"save_train_state: `ts` must be a TrainState, got {type(ts).__name__}.")
    opt_leaves = jax.tree.leaves(ts.optimizer_state)
    _save(
        path,
        {"ps": ts.parameters, "st": ts.states, "optimizer_state": opt_leaves},
        {"step": ts.step, "model": repr(ts.model)},
    )


def load_train_state(path: str | os.PathLike, model: Layer, optimizer: optax.GradientTransformation) -> TrainState:
    """Reads a `TrainState` written by `save_train_state`, for the same model and optimizer.

    Raises:
        CheckpointError: a damaged or foreign file, or an optimizer state that does not fit
            `optimizer` (a different optimizer or model than the one saved).

    Example:
        >>> import os, tempfile, jax, optax, luxjax as lx
        >>> from luxjax.training import TrainState, save_train_state, load_train_state
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
        >>> save_train_state(path, TrainState(model, ps, st, optax.sgd(0.1)))
        >>> load_train_state(path, model, optax.sgd(0.1)).ties
        ()
    """
    header = _load(path)
    tree = header["tree"]
    where = repr(os.fspath(path))
    if "optimizer_state" not in tree:
        raise CheckpointError(f"load_train_state: {where} holds only `ps` and `st`; use `load`.")
    ts = TrainState(model, tree["ps"], tree["st"], optimizer)
    template, treedef = jax.tree.flatten(ts.optimizer_state)
    leaves = tree["optimizer_state"]
    shapes = [(jnp.shape(x), jnp.result_type(x)) for x in template]
    got = [(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    if shapes != got:
        raise CheckpointError(
            f"load_train_state: the optimizer state in {where} (saved for {header.get('model')}) does not fit "
            f"`optimizer` for {model!r}: expected leaves {shapes}, got {got}."
        )
    return ts.replace(optimizer_state=jax.tree.unflatten(treedef, leaves), step=header["step"])
