"""Checkpoints that cannot lie: one safetensors file, checked, verified, written atomically.

The arrays are safetensors tensors; the tree (dict keys in order, lists, tuples, `None`,
`Training` flags, Python numbers and strings), the dtypes, PRNG key implementations, the ties
(places that hold the same array share one tensor) and a description of the model are JSON in
the file's metadata. The first metadata entry, `luxjax.checksum`, is
`sha256:<header digest>:<data digest>`: the header digest covers every byte before the tensor
data (with its own 64 hex digits read as zeros), the data digest covers the tensor bytes.

Loading runs no code from the file: the header is parsed as JSON, checked against a fixed
schema (types, dtype names from a fixed list, shapes that match the byte counts, unique keys,
bounded nesting) before any array is built, and every problem is a `CheckpointError`.
Files are written atomically: to a temporary file in the same folder, flushed and fsynced,
then renamed over the target with `os.replace`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import (
    CheckpointError,
    KeyPath,
    Layer,
    StructureError,
    Training,
    abstract_init,
    leaves_with_paths,
    parameter_count,
    state_count,
    tied_groups,
)
from ._train_state import TrainState

FORMAT = "luxjax.checkpoint"
VERSION = 2  # version 1 files (no checksum, no model counts) still load with `verify=False`
MAX_DEPTH = 100  # levels of nesting in a saved tree
_MAX_HEADER = 100_000_000  # bytes; safetensors' own limit
_PREFIX = b'{"__metadata__":{"luxjax.checksum":"sha256:'
_HEX = 64  # hex digits of a sha256 digest
_CHECKSUM_END = len(_PREFIX) + 2 * _HEX + 2  # after `<header>:<data>"`

# The dtypes a checkpoint holds, by name. Those safetensors' numpy reader knows are stored as
# themselves; the others as unsigned ints of the same width (complex128: two uint64 each).
_NATIVE = {
    "bool": "BOOL",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
}
_CODES = {code: np.dtype(name) for name, code in _NATIVE.items()}
DTYPES = (
    *_NATIVE,
    "bfloat16",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e4m3b11fnuz",
    "int4",
    "uint4",
)
_DTYPE = {name: np.dtype(jnp.dtype(name)) for name in DTYPES}
_WIDE = ("float64", "int64", "uint64", "complex128")  # narrowed by JAX unless 64-bit mode is on
_KEY_SHAPES = {"threefry2x32": (2,), "rbg": (4,), "unsafe_rbg": (4,)}  # PRNG implementations by name


def _storage(dtype: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """The safetensors dtype code and shape an array of `dtype` and `shape` is stored as."""
    if dtype in _NATIVE:
        return _NATIVE[dtype], shape
    itemsize = _DTYPE[dtype].itemsize
    if itemsize <= 8:
        return f"U{8 * itemsize}", shape
    return "U64", (*shape, itemsize // 8)


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def _where(tree: str, path: KeyPath) -> str:
    """How checkpoint messages name a place: `ps.d1.weight`, `st`, `optimizer_state.0.mu`."""
    return ".".join((tree, *path))


def _count(tree: Any) -> int:
    """Scalars in a tree, counted as `parameter_count`/`state_count` count them (a flag or a number is 1)."""
    return sum(math.prod(leaf.shape) if hasattr(leaf, "shape") else 1 for _, leaf in leaves_with_paths(tree))


def _model_words(description: dict[str, Any], unnamed: str = "a model") -> str:
    """A model description from a file (`repr`, counts) in words, for messages."""
    text = description.get("repr")
    text = unnamed if text is None else text if len(text) <= 200 else text[:200] + "…"
    counts = description.get("parameters"), description.get("states")
    if None in counts:
        return text
    return f"{text} ({counts[0]:_} parameters, plus {counts[1]:_} states)"


def _describe(x: Any) -> str:
    """A leaf or subtree in words, for messages: `float32[4, 2]`, `a dict with keys 'a', 'b'`."""
    if isinstance(x, Training):
        return "a Training flag"
    if x is None:
        return "None"
    if isinstance(x, dict):
        keys = ", ".join(repr(k) for k in list(x)[:6]) + (", ..." if len(x) > 6 else "")
        return f"a dict with keys {keys}" if x else "an empty dict"
    if type(x) in (list, tuple):
        return f"a {type(x).__name__} of {len(x)}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{x.dtype}[{', '.join(str(n) for n in x.shape)}]"
    return f"a Python {type(x).__name__}"


def _describe_state(state: Any) -> str:
    """An optimizer state in words: `(ScaleByAdamState(count=int32[], mu=tree of 4 arrays, ...), EmptyState())`."""
    if hasattr(state, "_fields"):
        fields = ", ".join(f"{name}={_describe_state(getattr(state, name))}" for name in state._fields)
        return f"{type(state).__name__}({fields})"
    if type(state) in (list, tuple):
        inner = ", ".join(_describe_state(x) for x in state)
        return f"[{inner}]" if isinstance(state, list) else f"({inner}{',' if len(state) == 1 else ''})"
    if isinstance(state, dict):
        n = len(jax.tree.leaves(state))
        return f"tree of {n} array{'s' * (n != 1)}"
    return _describe(state)


def _difference(expected: Any, got: Any, path: KeyPath) -> tuple[KeyPath, str, str] | None:
    """The first place (in `expected`'s order) where `got` differs in structure, shape or dtype."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return path, _describe(expected), _describe(got)
        for k in expected:
            if k not in got:
                return path / k, _describe(expected[k]), "nothing"
            found = _difference(expected[k], got[k], path / k)
            if found:
                return found
        extra = next((k for k in got if k not in expected), None)
        return None if extra is None else (path / extra, "nothing", _describe(got[extra]))
    if type(expected) in (list, tuple):
        if type(got) is not type(expected) or len(got) != len(expected):
            return path, _describe(expected), _describe(got)
        for i, (e, g) in enumerate(zip(expected, got)):
            found = _difference(e, g, path / str(i))
            if found:
                return found
        return None
    if hasattr(expected, "shape") and hasattr(expected, "dtype"):
        fits = hasattr(got, "shape") and hasattr(got, "dtype")
        if fits and tuple(got.shape) == tuple(expected.shape) and got.dtype == expected.dtype:
            return None
        return path, _describe(expected), _describe(got)
    if type(got) is not type(expected):
        return path, _describe(expected), _describe(got)
    return None


def _first_misfit(expected: dict[str, Any], got: dict[str, Any]) -> tuple[str, str, str] | None:
    """Where (`ps.d1.weight`) and how (expected, got) the trees `got` first differ from `expected`, if they do."""
    for tree, template in expected.items():
        found = _difference(template, got[tree], KeyPath())
        if found:
            path, want, have = found
            return _where(tree, path), want, have
    return None


def _model_description(model: Layer | None, ps: Any, st: Any) -> dict[str, Any]:
    return {"repr": None if model is None else repr(model), "parameters": _count(ps), "states": _count(st)}


# -- writing --------------------------------------------------------------------------------------


class _Encoder:
    def __init__(self, who: str) -> None:
        self.who = who
        self.tensors: list[tuple[str, np.ndarray]] = []
        self.names: dict[int, str] = {}
        self.keep: list[Any] = []  # keeps ids unique while encoding

    def tensor(self, array: Any, dtype: str, data: Any = None) -> str:
        """The name of the tensor holding `array` (its `data`, for a PRNG key), stored once per array object."""
        name = self.names.get(id(array))
        if name is None:
            name = self.names[id(array)] = f"t{len(self.names)}"
            self.keep.append(array)
            value = np.asarray(array if data is None else data, order="C")  # (ascontiguousarray makes 0-d 1-d)
            code, shape = _storage(dtype, value.shape)
            self.tensors.append((name, value.reshape(-1).view(_CODES[code]).reshape(shape)))
        return name

    def encode(self, node: Any, tree: str, path: KeyPath) -> Any:
        where = _where(tree, path)
        if len(path) > MAX_DEPTH:
            raise TypeError(f"{self.who}: the tree is nested deeper than {MAX_DEPTH} levels at {where}.")
        if isinstance(node, Training):
            return {"t": "training", "value": bool(node)}
        if isinstance(node, jax.Array) and jnp.issubdtype(node.dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(node))
            if impl not in _KEY_SHAPES:
                raise TypeError(
                    f"{self.who}: the PRNG key at {where} uses the implementation {impl!r}; checkpoints hold "
                    f"keys of {', '.join(map(repr, _KEY_SHAPES))}."
                )
            return {"t": "key", "impl": impl, "name": self.tensor(node, "uint32", jax.random.key_data(node))}
        if isinstance(node, (jax.Array, np.ndarray)):
            dtype = node.dtype.name
            if dtype not in _DTYPE:
                raise TypeError(
                    f"{self.who}: cannot store the {dtype} array at {where}; checkpoints hold the dtypes "
                    f"{', '.join(DTYPES)}. Cast it first."
                )
            if dtype in _WIDE and not _x64():
                raise TypeError(
                    f"{self.who}: the {dtype} array at {where} would load as a 32-bit array, because JAX's "
                    "64-bit mode is off. Cast it first (`x.astype(np.float32)`), or enable 64-bit mode before "
                    "saving and loading (`jax.config.update('jax_enable_x64', True)`)."
                )
            return {"t": "array", "dtype": dtype, "shape": list(node.shape), "name": self.tensor(node, dtype)}
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise TypeError(f"{self.who}: dict keys must be strings, got {k!r} at {where}.")
            return {"t": "dict", "items": [[k, self.encode(v, tree, path / k)] for k, v in node.items()]}
        if isinstance(node, (list, tuple)) and type(node) in (list, tuple):
            items = [self.encode(v, tree, path / str(i)) for i, v in enumerate(node)]
            return {"t": type(node).__name__, "items": items}
        if node is None:
            return {"t": "none"}
        if isinstance(node, int) and node.bit_length() > 13_000:  # JSON readers stop at 4,300 digits
            raise TypeError(f"{self.who}: the int at {where} has more than 3,900 digits; store it as a string.")
        if isinstance(node, (bool, int, float, str)):
            return {"t": "py", "value": node}
        raise TypeError(
            f"{self.who}: cannot store {node!r} of type {type(node).__name__} at {where}; checkpoints hold "
            "arrays, PRNG keys, dicts, lists, tuples, None, Training flags and Python numbers and strings."
        )


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(name: str) -> str:
    return f".{name}.luxjax-{_host()}-{os.getpid()}-"


def _os_error(error: OSError, message: str) -> OSError:
    """`error` again (the same subclass and errno), with a message that names the user's path."""
    return OSError(error.errno, message) if error.errno is not None else type(error)(message)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def _clean_stale(folder: str, name: str) -> None:
    """Removes temporary files of earlier saves to `name` whose writer is gone (killed mid-save).

    Ours are `.<name>.luxjax-<host>-<pid>-<random>.tmp`: removed when written on this host by a
    process that no longer exists. Those of luxjax before the checksum, `.<name>.<8 random>.tmp`,
    are removed once untouched for an hour. Nothing else is touched.
    """
    ours = re.compile(rf"\.{re.escape(name)}\.luxjax-([0-9a-f]{{8}})-(\d+)-[a-z0-9_]+\.tmp")
    old = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")
    host = _host()
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = ours.fullmatch(entry)
        stale = False
        if match and os.name == "posix":
            pid = int(match[2])
            stale = match[1] == host and pid != os.getpid() and not _alive(pid)
        elif old.fullmatch(entry):
            try:
                stale = time.time() - os.path.getmtime(os.path.join(folder, entry)) > 3600
            except OSError:
                continue
        if stale:
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None], who: str) -> None:
    shown = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(shown))
    if not os.path.isdir(folder):
        raise OSError(
            errno.ENOENT,
            f"{who}: cannot write {shown!r}: its folder {folder!r} does not exist. {who} does not create "
            "folders; make it first (`os.makedirs(folder, exist_ok=True)`).",
        )
    name = os.path.basename(shown)
    _clean_stale(folder, name)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(name), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, shown)
    except OSError as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise _os_error(error, f"{who}: cannot write {shown!r}: {error.strerror or error}.") from error
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
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


def _header_digest(head: bytes | memoryview) -> str:
    """The sha256 of the length and header, with the header digest's own 64 hex digits read as zeros."""
    start = 8 + len(_PREFIX)
    h = hashlib.sha256(head[:start])
    h.update(b"0" * _HEX)
    h.update(head[start + _HEX :])
    return h.hexdigest()


def _serialise(tensors: list[tuple[str, np.ndarray]], header: str) -> tuple[bytes, list[np.ndarray]]:
    """The length and header bytes of a file (checksums in place) and its tensors' bytes in data order.

    `header` is the luxjax metadata as JSON text; `tensors` are named arrays of storage dtypes.
    """
    # widest items first, so that every tensor starts aligned to its item size
    order = sorted(tensors, key=lambda item: -item[1].dtype.itemsize)
    data = [value.reshape(-1).view(np.uint8) for _, value in order]
    digest = hashlib.sha256()
    index: dict[str, Any] = {}
    offset = 0
    for (name, value), raw in zip(order, data):
        digest.update(raw.data)
        code = next(c for c, d in _CODES.items() if d == value.dtype)
        index[name] = {"dtype": code, "shape": list(value.shape), "data_offsets": [offset, offset + raw.size]}
        offset += raw.size
    checksum = f"sha256:{'0' * _HEX}:{digest.hexdigest()}"
    metadata = {"luxjax.checksum": checksum, FORMAT: header}
    text = json.dumps({"__metadata__": metadata, **index}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad so that the data starts aligned to 8 bytes
    head = len(text).to_bytes(8, "little") + text
    assert head.startswith(len(text).to_bytes(8, "little") + _PREFIX)  # the layout _read relies on
    start = 8 + len(_PREFIX)
    head = head[:start] + _header_digest(head).encode() + head[start + _HEX :]
    return head, data


def encode(encoder: _Encoder, trees: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The luxjax header of `trees` (the tree as JSON, ties, `extra`); `encoder` collects the tensors."""
    tree = {name: encoder.encode(value, name, KeyPath()) for name, value in trees.items()}
    ties = [[str(p) for p in group] for group in tied_groups(trees["ps"])]
    return {"format": FORMAT, "version": VERSION, "tree": tree, "ties": ties, **extra}


def _save(path: str | os.PathLike, trees: dict[str, Any], extra: dict[str, Any], who: str) -> None:
    encoder = _Encoder(who)
    header = encode(encoder, trees, extra)
    head, data = _serialise(encoder.tensors, json.dumps(header, separators=(",", ":")))

    def write(f: IO[bytes]) -> None:
        f.write(head)
        for raw in data:
            f.write(raw.data)

    _write_atomic(path, write, who)


# -- reading --------------------------------------------------------------------------------------


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: only then find which key (dict() first keeps parsing fast)
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Duplicate(f"the key {twice!r} appears twice")
    return out


def _json(text: str | bytes, where: str, what: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except _Duplicate as error:
        raise CheckpointError(f"load: {where} is malformed: in its {what}, {error}.") from None
    except RecursionError:
        raise CheckpointError(f"load: {where} is malformed: its {what} is nested too deeply.") from None
    except ValueError as error:  # also UnicodeDecodeError
        raise CheckpointError(f"load: {where} is not a luxjax checkpoint: its {what} is not JSON ({error}).") from None


def _short(x: Any, width: int = 60) -> str:
    """A JSON value from a file, shortened for a message; safe for any nesting (`repr` is not)."""

    def walk(x: Any, depth: int) -> str:
        if type(x) is dict:
            parts = [f"{k!r}: {walk(v, depth + 1)}" for k, v in list(x.items())[:4]] if depth < 3 else []
            return "{" + ", ".join(parts + ["..."] * (len(x) > len(parts))) + "}"
        if type(x) is list:
            parts = [walk(v, depth + 1) for v in x[:4]] if depth < 3 else []
            return "[" + ", ".join(parts + ["..."] * (len(x) > len(parts))) + "]"
        return repr(x)

    text = walk(x, 0)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_int(x: Any, low: int = 0) -> bool:
    return type(x) is int and x >= low


def _is_shape(x: Any) -> bool:
    return type(x) is list and len(x) <= 64 and all(_is_int(n) for n in x)


class _Reader:
    """Checks a luxjax header against the schema and the file's tensor index, then builds the trees."""

    def __init__(self, where: str, data: bytes, start: int, index: dict[str, Any]) -> None:
        self.where = where
        self.data = data
        self.start = start  # where the tensor data begins in `data`
        self.index = index  # name -> (code, shape, begin, end), already checked
        self.uses: dict[str, tuple[str, str]] = {}  # tensor name -> ("array", dtype) or ("key", impl)
        self.wide: str | None = None  # where the first 64-bit array is
        self.counts: dict[str, int] = {}  # tree name -> scalars, counted as `_count` counts them
        self.places: dict[str, list[KeyPath]] = {}  # tensor name -> where `ps` uses it
        self.built: dict[str, Any] = {}

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(f"load: {self.where} is malformed: {message}.")

    def use(self, name: Any, use: tuple[str, str], code: str, shape: tuple[int, ...], at: str, words: str) -> None:
        """Records that the tree uses tensor `name` as `use`, stored as `code` and `shape`."""
        if type(name) is not str or name not in self.index:
            raise self.fail(f"{at} refers to the tensor {_short(name)}, which the file does not have")
        if self.uses.setdefault(name, use) != use:
            raise self.fail(f"the tensor {name!r} is used as {self.uses[name][1]} and as {use[1]}")
        have_code, have_shape = self.index[name][:2]
        if have_code != code or have_shape != shape:
            raise self.fail(
                f"{at} is {words}, stored as {code} {list(shape)}, but its tensor {name!r} is {have_code} "
                f"{list(have_shape)}"
            )

    def check(self, node: Any, tree: str, path: KeyPath) -> None:
        at = _where(tree, path)
        if len(path) > MAX_DEPTH:
            raise self.fail(f"its tree is nested deeper than {MAX_DEPTH} levels at {at}")
        kind = node.get("t") if type(node) is dict else None
        fields = {
            "dict": {"t", "items"},
            "list": {"t", "items"},
            "tuple": {"t", "items"},
            "none": {"t"},
            "py": {"t", "value"},
            "training": {"t", "value"},
            "array": {"t", "dtype", "shape", "name"},
            "key": {"t", "impl", "name"},
        }.get(kind if type(kind) is str else "")
        if fields is None or set(node) != fields:
            raise self.fail(f"{at} has an unknown entry {_short(node)} in its tree; it is not a luxjax checkpoint")
        if kind in ("dict", "list", "tuple"):
            items = node["items"]
            if type(items) is not list:
                raise self.fail(f"{at}'s items are not a list")
            if kind != "dict":
                for i, item in enumerate(items):
                    self.check(item, tree, path / str(i))
                return
            seen: set[str] = set()
            for item in items:
                if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
                    raise self.fail(f"{at} has a dict entry {_short(item)} that is not a [key, value] pair")
                if item[0] in seen:
                    raise self.fail(f"{at} has the key {item[0]!r} twice")
                seen.add(item[0])
                self.check(item[1], tree, path / item[0])
        elif kind == "py":
            if type(node["value"]) not in (bool, int, float, str):
                raise self.fail(f"{at} holds {_short(node['value'])}, not a Python number or string")
            self.counts[tree] = self.counts.get(tree, 0) + 1
        elif kind == "training":
            if type(node["value"]) is not bool:
                raise self.fail(f"the Training flag at {at} is {_short(node['value'])}, not true or false")
            self.counts[tree] = self.counts.get(tree, 0) + 1
        elif kind == "array":
            dtype, shape = node["dtype"], node["shape"]
            if type(dtype) is not str or dtype not in _DTYPE:
                raise self.fail(f"{at} has the dtype {_short(dtype)}, not one of {', '.join(DTYPES)}")
            if not _is_shape(shape):
                raise self.fail(f"{at} has the shape {_short(shape)}, not a list of non-negative ints")
            code, stored = _storage(dtype, tuple(shape))
            self.use(node["name"], ("array", dtype), code, stored, at, f"{dtype}{shape}")
            if dtype in _WIDE and self.wide is None:
                self.wide = f"{dtype} array at {at}"
            self.array(tree, path, node["name"], math.prod(shape))
        elif kind == "key":
            impl = node["impl"]
            if type(impl) is not str or impl not in _KEY_SHAPES:
                raise self.fail(f"the PRNG key at {at} names the implementation {_short(impl)}")
            name = node["name"]
            known = type(name) is str and name in self.index
            batch = self.index[name][1][: -len(_KEY_SHAPES[impl])] if known else ()
            self.use(name, ("key", impl), "U32", (*batch, *_KEY_SHAPES[impl]), at, f"a {impl} key")
            self.array(tree, path, name, math.prod(batch))

    def array(self, tree: str, path: KeyPath, name: str, size: int) -> None:
        self.counts[tree] = self.counts.get(tree, 0) + size
        if tree == "ps":
            self.places.setdefault(name, []).append(path)

    def check_consistent(self, header: dict[str, Any]) -> None:
        """The file's tie groups and counts agree with its tree; every tensor is used."""
        if set(self.index) != set(self.uses):
            unused = sorted(set(self.index) - set(self.uses))
            raise self.fail(f"it holds tensors its tree does not use: {_short(unused)}")
        # the groups `tied_groups` finds in the built `ps`, where one tensor becomes one array
        ties = [
            [str(p) for p in group] for group in sorted(tuple(sorted(g)) for g in self.places.values() if len(g) > 1)
        ]
        if ties != header["ties"]:
            raise self.fail(f"its ties are recorded as {_short(header['ties'])} but its tensors tie {_short(ties)}")
        model = header["model"]
        counts = self.counts.get("ps", 0), self.counts.get("st", 0)
        if model["parameters"] is not None and (model["parameters"], model["states"]) != counts:
            raise self.fail(
                f"it describes {model['parameters']} parameters and {model['states']} states, but holds "
                f"{counts[0]} and {counts[1]}"
            )

    def arrays(self) -> None:
        """Views every tensor (no copy), checks the values where the dtype needs it, then makes the jax arrays."""
        views = {}
        for name, (code, shape, begin, end) in self.index.items():
            dtype = _CODES[code]
            raw = np.frombuffer(self.data, dtype, (end - begin) // dtype.itemsize, self.start + begin)
            kind, what = self.uses[name]
            if kind == "key":
                views[name] = raw.reshape(shape)
                continue
            if what == "bool" and raw.view(np.uint8).max(initial=0) > 1:
                raise self.fail(f"the bool tensor {name!r} holds bytes other than 0 and 1")
            logical = _DTYPE[what]
            views[name] = raw.view(logical).reshape(shape if logical.itemsize <= 8 else shape[:-1])
        for name, view in views.items():
            kind, what = self.uses[name]
            value = jnp.asarray(view)
            self.built[name] = value if kind == "array" else jax.random.wrap_key_data(value, impl=what)

    def build(self, node: dict[str, Any]) -> Any:
        kind = node["t"]
        if kind == "dict":
            return {k: self.build(v) for k, v in node["items"]}
        if kind in ("list", "tuple"):
            items = [self.build(v) for v in node["items"]]
            return items if kind == "list" else tuple(items)
        if kind == "none":
            return None
        if kind == "py":
            return node["value"]
        if kind == "training":
            return Training(node["value"])
        return self.built[node["name"]]


def _index(outer: dict[str, Any], size: int, where: str) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """The tensors of a safetensors header, checked: known dtypes, shapes matching byte counts, no gaps."""
    index = {}
    for name, entry in outer.items():
        if name == "__metadata__":
            continue
        if type(entry) is not dict or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"load: {where} is malformed: the tensor entry {_short(name)} is {_short(entry)}.")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if type(code) is not str or code not in _CODES:
            raise CheckpointError(f"load: {where} is malformed: the tensor {_short(name)} has dtype {_short(code)}.")
        ok = _is_shape(shape) and type(offsets) is list and len(offsets) == 2 and all(map(_is_int, offsets))
        if not ok or offsets[1] - offsets[0] != math.prod(shape) * _CODES[code].itemsize:
            raise CheckpointError(
                f"load: {where} is malformed: the tensor {_short(name)} has shape {_short(shape)} and offsets "
                f"{_short(offsets)}, which do not match its dtype's {_CODES[code].itemsize}-byte items."
            )
        index[name] = (code, tuple(shape), offsets[0], offsets[1])
    end = 0
    for _, _, begin, stop in sorted(index.values(), key=lambda entry: entry[2:]):
        if begin != end:
            raise CheckpointError(f"load: {where} is malformed: its tensors overlap or leave gaps at byte {end}.")
        end = stop
    if end != size:
        raise CheckpointError(f"load: {where} is truncated: its tensors need {end} bytes of data, the file has {size}.")
    return index


def _header_schema(header: Any, where: str) -> dict[str, Any]:
    """Checks the top level of a luxjax header (the trees themselves are checked by `_Reader`)."""

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"load: {where} is malformed: {message}.")

    if type(header) is not dict:
        raise fail(f"its luxjax metadata is {_short(header)}, not a JSON object")
    version = header.get("version")
    if header.get("format") != FORMAT or type(version) is not int or version not in (1, VERSION):
        raise CheckpointError(
            f"load: {where} has format {_short(header.get('format'))} version {_short(version)}; this luxjax "
            f"reads {FORMAT!r} versions 1 and {VERSION}."
        )
    tree = header.get("tree")
    if type(tree) is not dict or set(tree) not in ({"ps", "st"}, {"ps", "st", "optimizer_state"}):
        raise fail(f"its tree holds {_short(tree)}, not `ps`, `st` and perhaps `optimizer_state`")
    train = "optimizer_state" in tree
    keys = {"format", "version", "tree", "ties"}
    keys |= (
        ({"step", "model"} if train else set())
        if version == 1
        else ({"model", "step", "optimizer"} if train else {"model"})
    )
    if set(header) != keys:
        raise fail(f"its luxjax metadata has the entries {sorted(header)}, expected {sorted(keys)}")
    if train and (type(tree["optimizer_state"]) is not dict or tree["optimizer_state"].get("t") != "list"):
        raise fail("its optimizer state is not a list of leaves")
    ties = header["ties"]
    if type(ties) is not list or not all(type(g) is list and all(type(p) is str for p in g) for g in ties):
        raise fail(f"its ties are {_short(ties)}, not lists of dotted paths")
    if train and not _is_int(header["step"]):
        raise fail(f"its step is {_short(header['step'])}, not a non-negative int")
    if version == 1:
        model = header.get("model")
        if train and type(model) is not str:
            raise fail(f"its model description is {_short(model)}, not a string")
        header["model"] = {"repr": model, "parameters": None, "states": None}
        header["optimizer"] = None
        return header
    model = header["model"]
    if (
        type(model) is not dict
        or set(model) != {"repr", "parameters", "states"}
        or not (model["repr"] is None or type(model["repr"]) is str)
        or not (_is_int(model["parameters"]) and _is_int(model["states"]))
    ):
        raise fail(f"its model description is {_short(model)}")
    if train and type(header["optimizer"]) is not str:
        raise fail(f"its optimizer description is {_short(header['optimizer'])}, not a string")
    return header


def _read(path: str | os.PathLike, verify: bool) -> dict[str, Any]:
    """The checked header of the file at `path`, with `header["tree"]` built into arrays."""
    where = repr(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise _os_error(error, f"load: cannot read {where}: {error.strerror or error}.") from error
    if len(data) < 8:
        raise CheckpointError(f"load: {where} is not a luxjax checkpoint: {len(data)} bytes, too short for a header.")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data) or size > _MAX_HEADER:
        raise CheckpointError(
            f"load: {where} is truncated or not a luxjax checkpoint: its header claims {size} bytes "
            f"but the file has {len(data) - 8} after the length."
        )
    head = memoryview(data)[: 8 + size]
    data_digest = ""
    signed = size >= _CHECKSUM_END and bytes(head[8 : 8 + len(_PREFIX)]) == _PREFIX
    if signed:
        checksum = bytes(head[8 + len(_PREFIX) : 8 + _CHECKSUM_END]).decode("latin-1")
        header_digest, data_digest = checksum[:_HEX], checksum[_HEX + 1 : -1]
        if not re.fullmatch(rf"[0-9a-f]{{{_HEX}}}:[0-9a-f]{{{_HEX}}}\"", checksum):
            raise CheckpointError(f"load: {where} is damaged: its checksum entry is not two sha256 digests.")
        if _header_digest(head) != header_digest:
            raise CheckpointError(
                f"load: {where} is damaged: the checksum of its header does not match (the file changed after "
                "it was written)."
            )
    outer = _json(data[8 : 8 + size], where, "safetensors header")
    metadata = outer.get("__metadata__") if type(outer) is dict else None
    if type(metadata) is not dict or type(metadata.get(FORMAT)) is not str:
        raise CheckpointError(
            f"load: {where} is not a luxjax checkpoint (no {FORMAT!r} metadata in a safetensors header)."
        )
    header = _header_schema(_json(metadata[FORMAT], where, "luxjax metadata"), where)
    expected_metadata = {FORMAT, "luxjax.checksum"} if header["version"] > 1 else {FORMAT}
    if set(metadata) != expected_metadata:
        raise CheckpointError(
            f"load: {where} is damaged: its safetensors metadata has the entries {sorted(metadata)}, "
            f"expected {sorted(expected_metadata)}."
        )
    if header["version"] > 1 and not signed:
        raise CheckpointError(f"load: {where} is damaged: its checksum entry is not where luxjax writes it.")
    reader = _Reader(where, data, 8 + size, _index(outer, len(data) - 8 - size, where))
    for name, node in header["tree"].items():
        reader.check(node, name, KeyPath())
    reader.check_consistent(header)
    if reader.wide and not _x64():
        raise CheckpointError(
            f"load: {where} holds 64-bit arrays (the first: the {reader.wide}), and JAX's 64-bit mode is off, so "
            "they would be narrowed to 32 bits. Enable it before loading (`jax.config.update('jax_enable_x64', "
            "True)`), or cast them to 32 bits before saving."
        )
    if verify:
        if not signed:
            raise CheckpointError(
                f"load: {where} has no checksum (luxjax's format version 1, from before checksums); load it with "
                "`verify=False`, then save it again to add one."
            )
        if hashlib.sha256(memoryview(data)[8 + size :]).hexdigest() != data_digest:
            raise CheckpointError(
                f"load: {where} is damaged: the checksum of its tensor data does not match (the file changed "
                "after it was written)."
            )
    reader.arrays()
    header["tree"] = {name: reader.build(node) for name, node in header["tree"].items()}
    return header


# -- the public functions -------------------------------------------------------------------------


def save(path: str | os.PathLike, ps: Any, st: Any, *, model: Layer | None = None) -> None:
    """Writes `ps` and `st` to `path` atomically, with a checksum, keeping ties, frozen values and PRNG keys.

    One safetensors file (readable by any safetensors reader) with the tree structure, dtypes,
    PRNG key implementations, `Training` flags and Python scalars as JSON metadata; no pickle.
    Places that hold the same array (ties, from `share_parameters`) are stored once and are
    the same array again after `load`. A crash during the write leaves the previous file at
    `path` intact; the next save to `path` removes the temporary file a killed save left.
    The folder must exist.

    With `model`, `ps` and `st` must fit it (structure, shapes and dtypes, as `setup` makes
    them), and the file records its `repr` and counts, which errors on load quote.

    Raises:
        TypeError: a value a checkpoint cannot hold, or a 64-bit array while JAX's 64-bit mode
            is off (it could not load back as itself).
        StructureError: `ps` or `st` does not fit `model`.
        OSError: the folder does not exist or cannot be written (the message names `path`).

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save, load
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> save(path, ps, st, model=model)
        >>> ps2, st2 = load(path, like=model)
        >>> bool((ps2["weight"] == ps["weight"]).all())
        True
    """
    if model is not None:
        _check_fits("save", model, {"ps": ps, "st": st})
    _save(path, {"ps": ps, "st": st}, {"model": _model_description(model, ps, st)}, "save")


def _check_fits(who: str, model: Layer, trees: dict[str, Any]) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: `model` must be a luxjax Layer, got {model!r}.")
    expected = {"ps": abstract_init(model, "params"), "st": abstract_init(model, "state")}
    problem = _first_misfit(expected, trees)
    if problem:
        place, want, have = problem
        raise StructureError(
            model,
            f"{who}: the trees do not fit `model`: at {place} `model` has {want} but the trees hold {have}; "
            "a checkpoint of them would not load for this model.",
        )


def load(path: str | os.PathLike, *, like: Any = None, verify: bool = True) -> tuple[Any, Any]:
    """Reads `(ps, st)` written by `save`, checked and verified; ties come back as `is` identity.

    `like` is a model (a luxjax `Layer`: the trees `setup` would make) or a pair `(ps, st)`
    of trees of arrays or `jax.ShapeDtypeStruct`s; the loaded trees must have its structure,
    shapes and dtypes (dict key order may differ). Without `like` the file is only checked
    against itself. `verify=False` skips the sha256 of the tensor data (about 0.8 ms per MB);
    the header is always verified and checked.

    Raises:
        CheckpointError: the file is truncated, damaged, malformed or not a luxjax checkpoint,
            does not fit `like`, or holds 64-bit arrays while JAX's 64-bit mode is off.

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save, load
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> save(path, *lx.setup(jax.random.key(0), lx.Dense(2, 3)))
        >>> load(path, like=lx.Dense(3, 2))
        Traceback (most recent call last):
        luxjax.CheckpointError: load: '...' does not fit `like`: at ps.weight `like` has float32[2, 3] but the file ...
    """
    header = _read(path, verify)
    tree = header["tree"]
    where = repr(os.fspath(path))
    if "optimizer_state" in tree:
        raise CheckpointError(f"load: {where} holds a train state, not only `ps` and `st`; use `load_train_state`.")
    if like is not None:
        check_like("load", where, header, like)
    return tree["ps"], tree["st"]


def check_like(who: str, where: str, header: dict[str, Any], like: Any) -> None:
    """Raises a `CheckpointError` unless the `ps` and `st` of `header["tree"]` fit `like` (a model or a pair)."""
    tree = header["tree"]
    if isinstance(like, Layer):
        expected = {"ps": abstract_init(like, "params"), "st": abstract_init(like, "state")}
        words = _model_words({"repr": repr(like), "parameters": parameter_count(like), "states": state_count(like)})
    elif type(like) is tuple and len(like) == 2:
        expected = {"ps": like[0], "st": like[1]}
        words = _model_words(_model_description(None, *like), unnamed="trees")
    else:
        raise TypeError(f"{who}: `like` must be a luxjax Layer or a pair (ps, st) of trees, got {like!r}.")
    problem = _first_misfit(expected, {"ps": tree["ps"], "st": tree["st"]})
    if problem:
        place, want, have = problem
        raise CheckpointError(
            f"{who}: {where} does not fit `like`: at {place} `like` has {want} but the file holds {have}. "
            f"The file was saved for {_model_words(header['model'])}; `like` is {words}."
        )


def check_model(who: str, where: str, header: dict[str, Any], model: Layer) -> None:
    """Raises a `CheckpointError` unless the `ps` and `st` of `header["tree"]` fit `model`."""
    tree = header["tree"]
    saved = _model_words(header["model"])
    expected = {"ps": abstract_init(model, "params"), "st": abstract_init(model, "state")}
    problem = _first_misfit(expected, {"ps": tree["ps"], "st": tree["st"]})
    if problem:
        place, want, have = problem
        words = _model_words({"repr": repr(model), "parameters": parameter_count(model), "states": state_count(model)})
        raise CheckpointError(
            f"{who}: {where} does not fit `model`: at {place} `model` has {want} but the file holds {have}. "
            f"The file was saved for {saved}; `model` is {words}."
        )


def check_optimizer_state(who: str, where: str, header: dict[str, Any], state: Any) -> None:
    """Raises a `CheckpointError` unless the optimizer state leaves of `header` fit `state` (arrays or shapes)."""
    template = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = header["tree"]["optimizer_state"]
    wrong = next(
        (i for i, ((_, x), y) in enumerate(zip(template, leaves)) if _difference(x, y, KeyPath()) is not None),
        None,
    )
    if wrong is not None or len(template) != len(leaves):
        found = header["optimizer"] or f"{len(leaves)} leaves"
        found = found if len(found) <= 400 else found[:397] + "..."
        if wrong is None:
            first = f"`optimizer` keeps {len(template)} leaves, the file {len(leaves)}"
        else:
            place = _where("optimizer_state", KeyPath.from_jax(template[wrong][0]))
            first = (
                f"The first difference is at {place}: `optimizer` keeps {_describe(template[wrong][1])}, "
                f"the file holds {_describe(leaves[wrong])}"
            )
        raise CheckpointError(
            f"{who}: the optimizer state in {where} does not fit `optimizer`: the file holds {found}, "
            f"but `optimizer` keeps {_describe_state(state)}. {first}. Pass the optimizer the run "
            "was saved with."
        )


def save_train_state(path: str | os.PathLike, ts: TrainState) -> None:
    """Writes a `TrainState` (parameters, states, optimizer state, step) to `path` atomically.

    The model and optimizer are code, not data: the file records the model's `repr` and counts
    and the optimizer state's structure in words, and `load_train_state` takes them again.
    `ts.parameters` and `ts.states` must fit `ts.model` (as `setup` makes them), so that the
    file loads back.

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
    _save(path, *train_state_parts("save_train_state", ts), "save_train_state")


def train_state_parts(who: str, ts: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trees a checkpoint of `ts` holds and its header's other entries, once `ts` is checked."""
    if not isinstance(ts, TrainState):
        raise TypeError(f"{who}: `ts` must be a TrainState, got {type(ts).__name__}.")
    _check_fits(who, ts.model, {"ps": ts.parameters, "st": ts.states})
    extra = {
        "model": _model_description(ts.model, ts.parameters, ts.states),
        "step": ts.step,
        "optimizer": _describe_state(ts.optimizer_state),
    }
    trees = {"ps": ts.parameters, "st": ts.states, "optimizer_state": jax.tree.leaves(ts.optimizer_state)}
    return trees, extra


def load_train_state(
    path: str | os.PathLike, model: Layer, optimizer: optax.GradientTransformation, *, verify: bool = True
) -> TrainState:
    """Reads a `TrainState` written by `save_train_state`, checked against `model` and `optimizer`.

    The parameters and states must have the structure, shapes and dtypes that `model`
    initialises, and the optimizer state the leaves `optimizer` keeps for them; the error names
    the first place that differs. `verify` is as for `load`.

    Raises:
        CheckpointError: a damaged, malformed or foreign file, parameters or states that do
            not fit `model`, or an optimizer state that does not fit `optimizer`.

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
    if not isinstance(model, Layer):
        raise TypeError(f"load_train_state: `model` must be a luxjax Layer, got {model!r}.")
    header = _read(path, verify)
    tree = header["tree"]
    where = repr(os.fspath(path))
    if "optimizer_state" not in tree:
        raise CheckpointError(f"load_train_state: {where} holds only `ps` and `st`; use `load`.")
    check_model("load_train_state", where, header, model)
    ts = TrainState(model, tree["ps"], tree["st"], optimizer)
    check_optimizer_state("load_train_state", where, header, ts.optimizer_state)
    treedef = jax.tree.structure(ts.optimizer_state)
    return ts.replace(optimizer_state=jax.tree.unflatten(treedef, tree["optimizer_state"]), step=header["step"])
