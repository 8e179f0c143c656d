"""Sharded checkpoints with Orbax: every process writes and reads only the shards it holds.

A checkpoint is a folder that Orbax (`orbax-checkpoint`) writes with its composite handler:
`arrays/`, one array per distinct tensor (named `t0`, `t1`, ... as in the safetensors
format), written shard by shard, and `luxjax/`, the same JSON header the safetensors format
keeps (the tree, dtypes, PRNG key implementations, ties, the model's description, the step),
plus one fingerprint per tensor. Orbax writes into a temporary folder and renames it when
every process has finished, so a crashed save leaves no checkpoint at `path`.

Loading checks the header exactly as `load` does, then restores each array straight into the
sharding asked for, which may be a different mesh from the one it was saved on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from ..core import CheckpointError, KeyPath, Layer
from ._checkpoint import (
    _DTYPE,
    _check_fits,
    _Encoder,
    _header_schema,
    _model_description,
    _Reader,
    _short,
    _storage,
    _where,
    _x64,
    check_like,
    check_model,
    check_optimizer_state,
    encode,
    train_state_parts,
)
from ._train_state import TrainState, optimizer_promotion, optimizer_shardings, placement, reduce_ties

ShardingRule = Sharding | Callable[[str, jax.ShapeDtypeStruct], Sharding]
_ARRAYS, _HEADER = "arrays", "luxjax"


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            "luxjax's sharded checkpoints need Orbax: `pip install 'luxjax[distributed]'` "
            "(or `pip install orbax-checkpoint`)."
        ) from None
    return ocp


def _checkpointer() -> Any:
    """An Orbax checkpointer of two items: the arrays (Orbax's standard handler) and the JSON header."""
    ocp = _orbax()
    registry = ocp.DefaultCheckpointHandlerRegistry()
    for item, handler, save, restore in (
        (_ARRAYS, ocp.StandardCheckpointHandler, ocp.args.StandardSave, ocp.args.StandardRestore),
        (_HEADER, ocp.JsonCheckpointHandler, ocp.args.JsonSave, ocp.args.JsonRestore),
    ):
        registry.add(item, save, handler)
        registry.add(item, restore, handler)
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


class _ArrayEncoder(_Encoder):
    """The safetensors encoder, keeping each tensor as the (sharded) JAX array it is, on its devices."""

    def __init__(self, who: str) -> None:
        super().__init__(who)
        self.arrays: dict[str, jax.Array] = {}

    def tensor(self, array: Any, dtype: str, data: Any = None) -> str:
        name = self.names.get(id(array))
        if name is None:
            name = self.names[id(array)] = f"t{len(self.names)}"
            self.keep.append(array)
            value = array if data is None else data
            self.arrays[name] = value if isinstance(value, jax.Array) else jnp.asarray(value)
        return name


# -- fingerprints ---------------------------------------------------------------------------------


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (64-bit items give two), computed where `x` lives."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([x.real, x.imag], axis=-1)
    if x.dtype == jnp.bool_ or x.dtype.name in ("int4", "uint4"):
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _fingerprint(x: jax.Array) -> jax.Array:
    """`sum(word[i] * (2 i + 1)) mod 2**32` over the words of `x` in row-major order.

    Any change of one word changes it, as does swapping two different words. Each device sums
    its own shard and the partial sums are added: nothing is gathered.
    """
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
        stride *= words.shape[axis]
    return jnp.sum(words * (index * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32)


_fingerprint_all = jax.jit(lambda arrays: {name: _fingerprint(x) for name, x in arrays.items()})


def _fingerprints(arrays: dict[str, jax.Array]) -> dict[str, int]:
    """The fingerprint of each array, one compiled call per set of devices the arrays live on."""
    groups: dict[frozenset[int], dict[str, jax.Array]] = {}
    for name, x in arrays.items():
        groups.setdefault(frozenset(d.id for d in x.sharding.device_set), {})[name] = x
    return {name: int(value) for group in groups.values() for name, value in _fingerprint_all(group).items()}


# -- writing --------------------------------------------------------------------------------------


def _save(path: str | os.PathLike, trees: dict[str, Any], extra: dict[str, Any], who: str) -> None:
    shown = os.fspath(path)
    target = os.path.abspath(shown)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{who}: cannot write {shown!r}: its folder {folder!r} does not exist. {who} does not create "
            "folders; make it first (`os.makedirs(folder, exist_ok=True)`)."
        )
    if os.path.exists(target):
        raise FileExistsError(
            f"{who}: {shown!r} already exists; a sharded checkpoint is never written over another. Save each "
            "checkpoint to a new folder (one per step), or remove the old one first."
        )
    encoder = _ArrayEncoder(who)
    header = encode(encoder, trees, extra)
    header["fingerprints"] = _fingerprints(encoder.arrays)
    ocp = _orbax()
    items = {_HEADER: ocp.args.JsonSave(header)}
    if encoder.arrays:  # Orbax refuses an empty item
        items[_ARRAYS] = ocp.args.StandardSave(encoder.arrays)
    _checkpointer().save(target, ocp.args.Composite(**items))


# -- reading --------------------------------------------------------------------------------------


class _Checkpoint:
    """A sharded checkpoint's checked header, with its trees built from shapes (no array read yet)."""

    def __init__(self, path: str | os.PathLike, who: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.where = where = repr(os.fspath(path))
        self.who = who
        if not os.path.isdir(self.path):
            found = "a file; `load` and `load_train_state` read those" if os.path.isfile(self.path) else "nothing"
            raise CheckpointError(f"{who}: {where} is not a sharded luxjax checkpoint folder: there is {found}.")
        ocp = _orbax()
        checkpointer = _checkpointer()
        try:
            header = checkpointer.restore(self.path, ocp.args.Composite(**{_HEADER: ocp.args.JsonRestore()}))[_HEADER]
            items = checkpointer.metadata(self.path).item_metadata
            stored = items[_ARRAYS].tree if items.get(_ARRAYS) is not None else {}
        except Exception as error:  # Orbax raises many kinds; all mean the same thing here
            raise CheckpointError(
                f"{who}: {where} is not a sharded luxjax checkpoint: Orbax cannot read it ({error})."
            ) from error
        fingerprints = header.pop("fingerprints", None) if type(header) is dict else None
        header = _header_schema(header, where)
        if type(stored) is not dict or type(fingerprints) is not dict or set(fingerprints) != set(stored):
            raise CheckpointError(
                f"{who}: {where} is malformed: its fingerprints {_short(fingerprints)} do not name its arrays "
                f"{_short(sorted(stored) if type(stored) is dict else stored)}."
            )
        self.fingerprints = fingerprints
        index = {}
        for name, meta in stored.items():
            dtype = np.dtype(meta.dtype).name
            if dtype not in _DTYPE:
                raise CheckpointError(f"{who}: {where} is malformed: its array {name!r} has the dtype {dtype}.")
            index[name] = (*_storage(dtype, tuple(meta.shape)), 0, 0)
        self.stored = {name: (tuple(meta.shape), np.dtype(meta.dtype)) for name, meta in stored.items()}
        reader = _Reader(where, b"", 0, index)
        for tree, node in header["tree"].items():
            reader.check(node, tree, KeyPath())
        reader.check_consistent(header)
        if reader.wide and not _x64():
            raise CheckpointError(
                f"{who}: {where} holds 64-bit arrays (the first: the {reader.wide}), and JAX's 64-bit mode is off, "
                "so they would be narrowed to 32 bits. Enable it before loading "
                "(`jax.config.update('jax_enable_x64', True)`)."
            )
        for name, (kind, what) in reader.uses.items():
            if kind == "array" and self.stored[name][1] != _DTYPE[what]:
                raise CheckpointError(
                    f"{who}: {where} is malformed: its array {name!r} is stored as {self.stored[name][1]} but its "
                    f"tree says {what}."
                )
        self.reader = reader
        self.chosen: dict[str, Sharding] = {}  # the sharding asked for each tensor (of the key, for a key)
        self.nodes = header["tree"]
        reader.built = {name: self._abstract(name) for name in reader.uses}
        header["tree"] = {tree: reader.build(node) for tree, node in self.nodes.items()}
        self.header = header

    def _abstract(self, name: str) -> jax.ShapeDtypeStruct:
        """The array or PRNG key tensor `name` becomes, as shape and dtype."""
        shape, dtype = self.stored[name]
        kind, what = self.reader.uses[name]
        if kind == "array":
            return jax.ShapeDtypeStruct(shape, dtype)
        data = jax.ShapeDtypeStruct(shape, dtype)
        return jax.eval_shape(lambda d: jax.random.wrap_key_data(d, impl=what), data)

    def places(self, tree: str) -> dict[str, str]:
        """The tensors of `tree`, each with the first place that uses it (`ps.d1.weight`)."""
        out: dict[str, str] = {}

        def walk(node: dict[str, Any], path: KeyPath) -> None:
            kind = node["t"]
            if kind == "dict":
                for k, v in node["items"]:
                    walk(v, path / k)
            elif kind in ("list", "tuple"):
                for i, v in enumerate(node["items"]):
                    walk(v, path / str(i))
            elif kind in ("array", "key"):
                out.setdefault(node["name"], _where(tree, path))

        walk(self.nodes[tree], KeyPath())
        return out

    def sharding_for(self, sharding: ShardingRule | None, trees: tuple[str, ...]) -> dict[str, Sharding]:
        """The sharding of every tensor of `trees`, from the rule the caller gave."""
        if sharding is None:
            sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())
        out: dict[str, Sharding] = {}
        for tree in trees:
            for name, place in self.places(tree).items():
                if name in out:
                    continue
                like = self.reader.built[name]
                chosen = sharding(place, like) if callable(sharding) else sharding
                if not isinstance(chosen, Sharding):
                    raise TypeError(
                        f"{self.who}: `sharding` gave {chosen!r} for {place}, not a `jax.sharding.Sharding`."
                    )
                self.chosen[name] = chosen
                out[name] = self._stored_sharding(name, chosen)
        return out

    def _stored_sharding(self, name: str, sharding: Sharding) -> Sharding:
        """A key's sharding extended to its stored data, which has one more axis."""
        if self.reader.uses[name][0] == "key" and isinstance(sharding, NamedSharding):
            extra = len(self.stored[name][0]) - len(sharding.spec)
            return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, *([None] * extra)))
        return sharding

    def restore(self, shardings: dict[str, Sharding], verify: bool) -> dict[str, Any]:
        """Reads every array into its sharding and builds the trees; ties come back as `is` identity."""
        ocp = _orbax()
        targets = {
            name: jax.ShapeDtypeStruct(*self.stored[name], sharding=sharding) for name, sharding in shardings.items()
        }
        arrays = {}
        if targets:
            try:
                items = ocp.args.Composite(**{_ARRAYS: ocp.args.StandardRestore(targets)})
                arrays = dict(_checkpointer().restore(self.path, items)[_ARRAYS])
            except Exception as error:
                raise CheckpointError(f"{self.who}: cannot read the arrays of {self.where}: {error}") from error
        if verify:
            for name, value in _fingerprints(arrays).items():
                if value != self.fingerprints[name]:
                    place = next(p for tree in self.nodes for n, p in self.places(tree).items() if n == name)
                    raise CheckpointError(
                        f"{self.who}: {self.where} is damaged: the array at {place} (tensor {name!r}) does not "
                        "match its fingerprint (the files changed after they were written)."
                    )
        for name, value in arrays.items():
            kind, what = self.reader.uses[name]
            self.reader.built[name] = value if kind == "array" else jax.random.wrap_key_data(value, impl=what)
        return {tree: self.reader.build(node) for tree, node in self.nodes.items()}


# -- the public functions -------------------------------------------------------------------------


def save_sharded(path: str | os.PathLike, ps: Any, st: Any, *, model: Layer | None = None) -> None:
    """Writes `ps` and `st` to the folder `path` with Orbax, each process writing only its own shards.

    The sharded counterpart of `save`: the arrays stay where they are (nothing is gathered to
    one host), and the tree, ties (places holding the same array, stored once), PRNG keys,
    `Training` flags and Python scalars go into the same JSON header. Each array also gets a
    fingerprint, computed on its devices, that `load_sharded` checks. Every process of a
    multi-host run must call it. `path` must not exist yet; its folder must.

    Raises:
        TypeError: a value a checkpoint cannot hold (as for `save`).
        StructureError: `ps` or `st` does not fit `model`.
        FileExistsError: `path` exists. FileNotFoundError: its folder does not.

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save_sharded, load_sharded
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> save_sharded(path, ps, st, model=model)
        >>> ps2, st2 = load_sharded(path, like=model)
        >>> bool((ps2["weight"] == ps["weight"]).all())
        True
    """
    if model is not None:
        _check_fits("save_sharded", model, {"ps": ps, "st": st})
    _save(path, {"ps": ps, "st": st}, {"model": _model_description(model, ps, st)}, "save_sharded")


def load_sharded(
    path: str | os.PathLike, *, like: Any = None, sharding: ShardingRule | None = None, verify: bool = True
) -> tuple[Any, Any]:
    """Reads `(ps, st)` written by `save_sharded`, each array straight into the sharding asked for.

    `like` is as for `load` (a model, or a pair of trees of arrays or shapes). `sharding` is a
    `jax.sharding.Sharding` for every array, or a function `(place, shape)` to one, where
    `place` is the dotted place (`"ps.d1.weight"`) and `shape` a `jax.ShapeDtypeStruct`; a
    tied tensor takes the sharding of its first place. The mesh need not be the one the
    checkpoint was saved from. Without `sharding` every array is replicated on all devices.
    `verify=False` skips the fingerprints (one pass over the arrays, on their devices).

    Raises:
        CheckpointError: `path` is not a sharded luxjax checkpoint, is malformed or damaged,
            or does not fit `like`; the message names `path` and the first place that differs.

    Example:
        >>> import os, tempfile, jax, luxjax as lx
        >>> from luxjax.training import save_sharded, load_sharded
        >>> path = os.path.join(tempfile.mkdtemp(), "model")
        >>> save_sharded(path, *lx.setup(jax.random.key(0), lx.Dense(2, 3)))
        >>> load_sharded(path, like=lx.Dense(3, 2))
        Traceback (most recent call last):
        luxjax.CheckpointError: load_sharded: '...' does not fit `like`: at ps.weight `like` has float32[2, 3] ...
    """
    checkpoint = _Checkpoint(path, "load_sharded")
    if "optimizer_state" in checkpoint.nodes:
        raise CheckpointError(
            f"load_sharded: {checkpoint.where} holds a train state, not only `ps` and `st`; use "
            "`load_train_state_sharded`."
        )
    if like is not None:
        check_like("load_sharded", checkpoint.where, checkpoint.header, like)
    trees = checkpoint.restore(checkpoint.sharding_for(sharding, ("ps", "st")), verify)
    return trees["ps"], trees["st"]


def save_train_state_sharded(path: str | os.PathLike, ts: TrainState) -> None:
    """Writes a `TrainState` to the folder `path` with Orbax, each process writing only its own shards.

    The sharded counterpart of `save_train_state`: parameters, states, optimizer state and
    step, with ties and frozen values as they are in `ts`. `path` must not exist yet.

    Example:
        >>> import os, tempfile, jax, optax, luxjax as lx
        >>> from luxjax.training import TrainState, save_train_state_sharded, load_train_state_sharded
        >>> model = lx.Dense(2, 3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "state")
        >>> save_train_state_sharded(path, TrainState(model, ps, st, optax.adam(1e-3)).replace(step=7))
        >>> load_train_state_sharded(path, model, optax.adam(1e-3)).step
        7
    """
    _save(path, *train_state_parts("save_train_state_sharded", ts), "save_train_state_sharded")


def load_train_state_sharded(
    path: str | os.PathLike,
    model: Layer,
    optimizer: optax.GradientTransformation,
    *,
    sharding: ShardingRule | None = None,
    verify: bool = True,
) -> TrainState:
    """Reads a `TrainState` written by `save_train_state_sharded`, onto the shardings asked for.

    `sharding` places the parameters and states, as for `load_sharded`; the optimizer state
    follows the parameters, laid out as `TrainState` lays it out: adam's moments are sharded
    like their parameters, step counts replicated.
    Nothing is initialised and then overwritten: each array is read once, into place.

    Raises:
        CheckpointError: as for `load_sharded`, or parameters and states that do not fit
            `model`, or an optimizer state that does not fit `optimizer`.

    Example:
        >>> import os, tempfile, jax, optax, luxjax as lx
        >>> from luxjax.training import TrainState, save_train_state_sharded, load_train_state_sharded
        >>> model = lx.Dense(2, 3)
        >>> path = os.path.join(tempfile.mkdtemp(), "state")
        >>> save_train_state_sharded(path, TrainState(model, *lx.setup(jax.random.key(0), model), optax.sgd(0.1)))
        >>> load_train_state_sharded(path, model, optax.adam(0.1))
        Traceback (most recent call last):
        luxjax.CheckpointError: load_train_state_sharded: the optimizer state in '...' does not fit `optimizer`: ...
    """
    who = "load_train_state_sharded"
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: `model` must be a luxjax Layer, got {model!r}.")
    checkpoint = _Checkpoint(path, who)
    header = checkpoint.header
    if "optimizer_state" not in checkpoint.nodes:
        raise CheckpointError(f"{who}: {checkpoint.where} holds only `ps` and `st`; use `load_sharded`.")
    check_model(who, checkpoint.where, header, model)
    shardings = checkpoint.sharding_for(sharding, ("ps", "st"))
    # the parameters as shapes with their shardings, to lay out the optimizer state
    placed = {name: _with_sharding(checkpoint.reader.built[name], checkpoint.chosen[name]) for name in shardings}
    built, checkpoint.reader.built = checkpoint.reader.built, {**checkpoint.reader.built, **placed}
    ps = checkpoint.reader.build(checkpoint.nodes["ps"])
    checkpoint.reader.built = built
    ties = tuple(tuple(KeyPath.of(p) for p in group) for group in header["ties"])
    reduced = reduce_ties(ps, ties)
    with optimizer_promotion():
        template = jax.eval_shape(optimizer.init, reduced)
        check_optimizer_state(who, checkpoint.where, header, template)
    layout = optimizer_shardings(template, reduced)
    for node, leaf_sharding in zip(checkpoint.nodes["optimizer_state"]["items"], jax.tree.leaves(layout)):
        if node["t"] in ("array", "key"):
            shardings.setdefault(node["name"], leaf_sharding)
    trees = checkpoint.restore(shardings, verify)
    optimizer_state = jax.tree.unflatten(jax.tree.structure(template), trees["optimizer_state"])
    where = placement(reduce_ties(trees["ps"], ties), trees["st"], optimizer_state)
    step = header["step"]
    return TrainState._new(model, None, trees["ps"], trees["st"], optimizer, optimizer_state, step, ties, {}, where)


def _with_sharding(shape: jax.ShapeDtypeStruct, sharding: Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)
