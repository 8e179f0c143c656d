"""Every malformed checkpoint is a `CheckpointError`: crafted files, then fuzzing (issue 14).

Crafted files carry valid checksums (`signed`, `resign`), as a hand-made or hostile file would,
so that they reach the schema checks rather than stopping at the checksum.
"""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import luxjax as lx
from luxjax.training import TrainState, _checkpoint, load, load_train_state, save, save_train_state


def fuzz(examples: int) -> settings:
    """Fixed examples (derandomized, no example database), so that a run is repeatable and its cost known."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def trees():
    w = jnp.arange(6.0).reshape(2, 3)
    ps = {
        "d1": {"weight": w, "bias": jnp.ones(2)},
        "d2": {"weight": w, "bias": jnp.arange(2, dtype=jnp.bfloat16)},  # d2.weight is tied to d1.weight
        "emb": jnp.arange(4, dtype=jnp.int32),
    }
    st_ = {
        "bn": {"running_mean": jnp.zeros(2), "training": lx.Training(True)},
        "drop": {"key": jax.random.key(1)},
        "flags": [True, None, (1, 2.5, "x")],
        "mask": jnp.array([True, False]),
    }
    return ps, st_


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if not hasattr(x, "dtype"):  # Python numbers and strings
            assert type(x) is type(y) and (x == y or x != x and y != y), (x, y)
            continue
        assert jnp.result_type(x) == jnp.result_type(y)
        if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def parts(path):
    """The luxjax header (as a dict) and the stored tensors of a valid file."""
    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[:8], "little")
    outer = json.loads(data[8 : 8 + size])
    return json.loads(outer["__metadata__"]["luxjax.checkpoint"]), safetensors.numpy.load(data)


def signed(path, header, tensors):
    """Writes a file with `header` (a dict, or JSON text) and `tensors`, with valid checksums."""
    text = header if isinstance(header, str) else json.dumps(header)
    head, data = _checkpoint._serialise(list(tensors.items()), text)
    path.write_bytes(head + b"".join(raw.tobytes() for raw in data))


def resign(data: bytes) -> bytes:
    """`data` with both checksums recomputed where luxjax keeps them (unchanged if that layout is gone)."""
    size = int.from_bytes(data[:8], "little")
    start = 8 + len(_checkpoint._PREFIX)
    if len(data) < 8 + size or size < _checkpoint._CHECKSUM_END or data[8:start] != _checkpoint._PREFIX:
        return data
    digest = hashlib.sha256(data[8 + size :]).hexdigest().encode()
    data = data[: start + 65] + digest + data[start + 129 :]
    return data[:start] + _checkpoint._header_digest(data[: 8 + size]).encode() + data[start + 64 :]


@pytest.fixture
def base(tmp_path):
    ps, st_ = trees()
    path = tmp_path / "base.safetensors"
    save(path, ps, st_)
    header, tensors = parts(path)
    return path, header, tensors


def node_at(header, *keys):
    """The JSON node of the tree entry at `keys` (e.g. 'ps', 'd1', 'weight')."""
    node = header["tree"][keys[0]]
    for key in keys[1:]:
        node = dict(node["items"])[key] if node["t"] == "dict" else node["items"][int(key)]
    return node


# -- the cases the issue names ---------------------------------------------------------------------------


def test_deep_nesting_is_a_checkpoint_error(base):
    path, header, tensors = base
    for depth, message in (
        (3000, r"its luxjax metadata is nested too deeply"),
        (150, r"nested deeper than 100 levels"),
    ):
        deep = '{"t":"list","items":[' * depth + '{"t":"none"}' + "]}" * depth
        text = json.dumps(header).replace('"flags":', '"flags":' + deep + ',"old_flags":', 1)
        text = text.replace('["flags", ', '["deep", ' + deep + '], ["flags", ', 1)
        signed(path, text, tensors)
        with pytest.raises(lx.CheckpointError, match=message):
            load(path)
    outer = '{"__metadata__":' + "[" * 5000 + "]" * 5000 + "}"
    path.write_bytes(len(outer).to_bytes(8, "little") + outer.encode())
    with pytest.raises(lx.CheckpointError, match=r"its safetensors header is nested too deeply"):
        load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: 5, r"its luxjax metadata is 5, not a JSON object"),
        (lambda h: "5", r"its luxjax metadata is '5', not a JSON object"),
        (lambda h: [], r"its luxjax metadata is \[\], not a JSON object"),
        (lambda h: {**h, "step": "7"}, r"has the entries \[.*'step'.*\], expected"),
        (lambda h: {**h, "tree": {"ps": h["tree"]["ps"]}}, r"its tree holds \{'ps': .*, not `ps`, `st`"),
        (lambda h: {**h, "ties": "d1"}, r"its ties are 'd1', not lists of dotted paths"),
        (lambda h: {**h, "ties": []}, r"its ties are recorded as \[\] but its tensors tie \[\['d1.weight', 'd2.w"),
        (
            lambda h: {**h, "model": {**h["model"], "parameters": 3}},
            r"it describes 3 parameters and 10 states, but holds 20 and 10",
        ),
        (lambda h: {**h, "model": {**h["model"], "parameters": -1}}, r"its model description is \{'repr': None, "),
        (lambda h: {**h, "version": True}, r"version True; this luxjax reads 'luxjax.checkpoint' versions 1 and 2"),
    ],
)
def test_malformed_top_level_metadata_is_a_checkpoint_error(base, change, message):
    path, header, tensors = base
    signed(path, json.dumps(change(header)), tensors)
    with pytest.raises(lx.CheckpointError, match=message):
        load(path)


def edit(header, keys, value):
    node = node_at(header, *keys)
    node.clear()
    node.update(value)
    return header


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        # float64 dtype over float32 bytes
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float64", "shape": [2], "name": "t1"}, r"stored as F64 \[2\]"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [-1], "name": "t1"}, r"shape \[-1\], not"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [4], "name": "t1"}, r"float32\[4\], stored"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [True, 2], "name": "t1"}, r"\[True, 2\]"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "<f4", "shape": [2], "name": "t1"}, r"the dtype '<f4', not one"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "object", "shape": [2], "name": "t1"}, r"dtype 'object', not"),
        (
            ("ps", "d1", "bias"),
            {"t": "array", "dtype": "__import__('os').system('exit 3')", "shape": [2], "name": "t1"},
            "not one of",
        ),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [2], "name": "t99"}, r"tensor 't99', which"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [2], "name": ["t1"]}, r"tensor \['t1'\],"),
        (("ps", "d1", "bias"), {"t": "array", "dtype": "float32", "shape": [2]}, r"ps.d1.bias has an unknown entry"),
        (
            ("ps", "d1", "bias"),
            {"t": "array", "dtype": "float32", "shape": [2], "name": "t1", "x": 1},
            r"unknown entry",
        ),
        (
            ("ps", "emb"),
            {"t": "dict", "items": []},
            r"it holds tensors its tree does not use: \['t",
        ),  # a dict for an array
        (
            ("ps", "emb"),
            {"t": "dict", "items": [["a", {"t": "none"}], ["a", {"t": "none"}]]},
            r"ps.emb has the key 'a' twice",
        ),
        (
            ("ps", "emb"),
            {"t": "dict", "items": [["a"]]},
            r"ps.emb has a dict entry \['a'\] that is not a \[key, value\]",
        ),
        (("ps", "emb"), {"t": "list", "items": {"a": 1}}, r"ps.emb's items are not a list"),
        (("ps", "emb"), {"t": "py", "value": [1]}, r"ps.emb holds \[1\], not a Python number or string"),
        (("ps", "emb"), {"t": "py", "value": None}, r"ps.emb holds None, not a Python number or string"),
        (("st", "bn", "training"), {"t": "training", "value": 1}, r"the Training flag at st.bn.training is 1, not"),
        (
            ("st", "drop", "key"),
            {"t": "key", "impl": "os.system", "name": "KEY"},
            r"names the implementation 'os.system'",
        ),
        (
            ("st", "drop", "key"),
            {"t": "key", "impl": "rbg", "name": "KEY"},
            r"st.drop.key is a rbg key, stored as U32 \[4\]",
        ),
        (
            ("st", "flags"),
            {"t": "pickle", "data": "gASVIQAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAZleGl0IDOUhZRSlC4="},
            r"unknown",
        ),
        (("st", "flags"), "items", r"st.flags has an unknown entry 'items' in its tree"),
    ],
)
def test_malformed_tree_entries_are_a_checkpoint_error(base, keys, value, message):
    path, header, tensors = base
    if isinstance(value, str):  # not a JSON object at all
        parent = node_at(header, *keys[:-1])
        parent["items"] = [[k, value if k == keys[-1] else v] for k, v in parent["items"]]
    else:
        if value.get("name") == "KEY":  # the key's own tensor
            value = {**value, "name": node_at(header, *keys)["name"]}
        edit(header, keys, value)
    signed(path, header, tensors)
    with pytest.raises(lx.CheckpointError, match=message):
        load(path)


def test_malformed_tensors_are_a_checkpoint_error(base):
    path, header, tensors = base
    name = node_at(header, "st", "mask")["name"]
    bad = dict(tensors, **{name: np.array([2, 0], np.uint8).view(np.bool_)})
    signed(path, header, bad)
    with pytest.raises(lx.CheckpointError, match=r"the bool tensor 't\d+' holds bytes other than 0 and 1"):
        load(path)
    signed(path, header, dict(tensors, extra=np.ones(2, np.float32)))
    with pytest.raises(lx.CheckpointError, match=r"it holds tensors its tree does not use: \['extra'\]"):
        load(path)
    # one tensor read as two dtypes of the same width
    bias = node_at(header, "ps", "d2", "bias")["name"]
    edit(header, ("ps", "emb"), {"t": "array", "dtype": "uint16", "shape": [2], "name": bias})
    signed(path, header, tensors)
    with pytest.raises(lx.CheckpointError, match=rf"the tensor '{bias}' is used as bfloat16 and as uint16"):
        load(path)


def outer_of(path):
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def write_outer(path, outer, body):
    text = json.dumps(outer, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(resign(len(text).to_bytes(8, "little") + text + body))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: {**e, "dtype": "O"}, r"the tensor 't0' has dtype 'O'"),
        (lambda e: {**e, "dtype": "BF16"}, r"the tensor 't0' has dtype 'BF16'"),
        (
            lambda e: {**e, "shape": [7]},
            r"the tensor 't0' has shape \[7\] and offsets \[\d+, \d+\], which do not match",
        ),
        (lambda e: {**e, "shape": [-2, -3]}, r"has shape \[-2, -3\] and offsets"),
        (
            lambda e: {**e, "data_offsets": [e["data_offsets"][0] + 4, e["data_offsets"][1] + 4]},
            r"overlap or leave gaps",
        ),
        (lambda e: {"dtype": e["dtype"], "shape": e["shape"]}, r"the tensor entry 't0' is \{'dtype': 'F32', 'shape'"),
        (lambda e: 3, r"the tensor entry 't0' is 3"),
    ],
)
def test_malformed_tensor_index_is_a_checkpoint_error(base, change, message):
    path = base[0]
    outer, body = outer_of(path)
    outer["t0"] = change(outer["t0"])
    write_outer(path, outer, body)
    with pytest.raises(lx.CheckpointError, match=message):
        load(path)


def test_metadata_must_be_where_luxjax_writes_it(base):
    path = base[0]
    path.with_name("copy").write_bytes(path.read_bytes())
    outer, body = outer_of(path)
    outer["__metadata__"]["other"] = "x"
    write_outer(path, outer, body)
    with pytest.raises(lx.CheckpointError, match=r"its safetensors metadata has the entries \['luxjax.checkpoint', "):
        load(path)
    outer, body = outer_of(path)
    del outer["__metadata__"]["other"]
    write_outer(path, {k: outer[k] for k in reversed(outer)}, body)  # same content, checksum not first
    with pytest.raises(lx.CheckpointError, match=r"is damaged: its checksum entry is not where luxjax writes it"):
        load(path)
    outer, body = outer_of(base[0].with_name("copy"))
    text = json.dumps(outer, separators=(",", ":")).replace('"dtype":"F32"', '"dtype":"F32","dtype":"F32"', 1)
    text = text.encode() + b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)
    with pytest.raises(lx.CheckpointError, match=r"the checksum of its header does not match"):
        load(path)
    path.write_bytes(resign(path.read_bytes()))
    with pytest.raises(lx.CheckpointError, match=r"in its safetensors header, the key 'dtype' appears twice"):
        load(path)


def test_step_must_be_a_non_negative_int(tmp_path):
    model = lx.Dense(2, 1)
    path = tmp_path / "ts.safetensors"
    save_train_state(path, TrainState(model, *lx.setup(jax.random.key(0), model), optax.sgd(0.1)).replace(step=7))
    header, tensors = parts(path)
    for step, shown in (("7", "'7'"), (-1, "-1"), (True, "True"), (7.0, "7.0")):
        signed(path, {**header, "step": step}, tensors)
        with pytest.raises(lx.CheckpointError, match=rf"its step is {shown}, not a non-negative int"):
            load_train_state(path, model, optax.sgd(0.1))
    signed(path, header, tensors)
    assert load_train_state(path, model, optax.sgd(0.1)).step == 7


# -- fuzzing ------------------------------------------------------------------------------------------------


def check_valid_load(tmp_path, ps, st_):
    """A load that succeeded gave trees a checkpoint can hold: saving and loading them again gives them back."""
    again = tmp_path / "again.safetensors"
    save(again, ps, st_)
    ps2, st2 = load(again)
    assert_trees_equal((ps, st_), (ps2, st2))


def loads_validly_or_raises(path, original: bytes, tmp_path) -> None:
    """Loading the changed file at `path` is a `CheckpointError` or a valid load; `path` gets `original` back."""
    try:
        ps, st_ = load(path)
    except lx.CheckpointError:
        return
    finally:
        path.write_bytes(original)
    check_valid_load(tmp_path, ps, st_)


mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(0, 255),
)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for op, where, byte in mutations:
        i = int(where * len(out)) if out else 0
        if op == "flip" and out:
            out[i] ^= 1 << (byte % 8)
        elif op == "set" and out:
            out[i] = byte
        elif op == "insert":
            out[i:i] = bytes([byte])
        elif op == "delete" and out:
            del out[i]
        elif op == "truncate":
            del out[i:]
    return bytes(out)


@fuzz(300)
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_byte_mutations_load_the_original_or_raise(base, mutations):
    path = base[0]
    original = path.read_bytes()
    data = mutate(original, mutations)
    path.write_bytes(data)
    try:
        ps, st_ = load(path)
    except lx.CheckpointError:
        assert data != original
        return
    finally:
        path.write_bytes(original)
    assert data == original
    assert_trees_equal((ps, st_), trees())


@fuzz(150)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_resigned_byte_mutations_load_validly_or_raise(base, tmp_path, mutations):
    path = base[0]
    original = path.read_bytes()
    path.write_bytes(resign(mutate(original, mutations)))
    loads_validly_or_raises(path, original, tmp_path)


names = ["dict", "list", "tuple", "none", "py", "training", "array", "key", "t", "items", "value", "dtype"]
names += ["shape", "name", "t0", "t1", "t2", "t5", "float32", "float64", "bfloat16", "bool", "uint16", "threefry2x32"]
names += ["rbg", "ps", "st", "optimizer_state", "step", "ties", "model", "__metadata__", "data_offsets", "F32", "U8"]
json_keys = st.text(max_size=3) | st.sampled_from(names)
interesting = st.sampled_from(names) | st.sampled_from(
    [-1, 0, 1, 2, 3, 2**64, [], {}, [2], [2, 3], [3, 2], [0, 8], None, True, 1e308, float("nan")]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4) | interesting,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=3),
    max_leaves=6,
)


def places(node, path=()):
    """Every place inside the JSON value `node`: paths of dict keys and list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*path, key)
        yield from places(value, (*path, key))


def json_edit(data, root):
    """Replaces, deletes or duplicates one place in the JSON value `root` (in place), chosen by hypothesis."""
    where = data.draw(st.sampled_from([(), *places(root)]), label="place")
    if not where:
        return data.draw(json_values, label="root")
    parent = root
    for key in where[:-1]:
        parent = parent[key]
    key = where[-1]
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]), label="action")
    if action == "replace":
        parent[key] = data.draw(json_values, label="value")
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(parent[key])))
    else:
        parent[data.draw(json_keys, label="new key")] = parent[key]
    return root


@fuzz(200)
@given(data=st.data())
def test_fuzz_signed_metadata_loads_validly_or_raises(base, tmp_path, data):
    path, header, tensors = base
    header = json_edit(data, json.loads(json.dumps(header)))
    signed(path, json.dumps(header), tensors)
    ps0, st0 = trees()
    try:
        ps, st_ = load(path)
    except lx.CheckpointError:
        return
    check_valid_load(tmp_path, ps, st_)
    try:  # checked against the original trees: a load is then exactly those trees
        ps, st_ = load(path, like=(ps0, st0))
    except lx.CheckpointError:
        return
    assert jax.tree.structure((ps, st_)) == jax.tree.structure((ps0, st0))


@fuzz(100)
@given(data=st.data())
def test_fuzz_signed_tensor_index_loads_validly_or_raises(base, tmp_path, data):
    path = base[0]
    original = path.read_bytes()
    outer, body = outer_of(path)
    write_outer(path, json_edit(data, outer), body)
    loads_validly_or_raises(path, original, tmp_path)
