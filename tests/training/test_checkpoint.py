import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors
import safetensors.numpy

import luxjax as lx
from luxjax.experimental import freeze, share_parameters
from luxjax.training import TrainState, load, load_train_state, save, save_train_state, single_train_step

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.result_type(x) == jnp.result_type(y)
        if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_values_order_and_ties(key, tmp_path, seed_model):
    ps, st = lx.setup(key, seed_model)
    ps = share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")))
    path = tmp_path / "model.safetensors"
    save(path, ps, st)
    ps2, st2 = load(path)
    assert_trees_equal(ps, ps2)
    assert list(ps2) == ["d1", "d3", "d2"]
    assert ps2["d3"]["l2"]["weight"] is ps2["d1"]["weight"]
    assert ps2["d2"]["bias"] is ps2["d3"]["l1"]["bias"]
    assert ps2["d1"]["weight"] is not ps2["d2"]["weight"]
    assert st2 == {"d1": {}, "d3": {"l1": {}, "l2": {}}, "d2": {}}
    # tied arrays are stored once
    assert len(safetensors.numpy.load_file(path)) == 4


def test_state_keeps_keys_flags_dtypes_and_scalars(tmp_path):
    key = jax.random.key(3)
    st = {
        "rng": key,
        "raw": jax.random.PRNGKey(4),
        "training": lx.Training(True),
        "half": jnp.arange(3, dtype=jnp.bfloat16),
        "count": jnp.array(7, jnp.int32),
        "flags": [True, None, (1, 2.5, "x")],
        "frozen_params": {"weight": np.ones((2, 2), np.float32)},
    }
    save(tmp_path / "st.safetensors", {}, st)
    ps2, st2 = load(tmp_path / "st.safetensors")
    assert ps2 == {}
    assert st2["training"] == lx.Training(True)
    assert jax.dtypes.issubdtype(st2["rng"].dtype, jax.dtypes.prng_key)
    assert str(jax.random.key_impl(st2["rng"])) == str(jax.random.key_impl(key))
    np.testing.assert_array_equal(jax.random.key_data(st2["rng"]), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.uniform(st2["rng"], (3,)), jax.random.uniform(key, (3,)))
    np.testing.assert_array_equal(st2["raw"], jax.random.PRNGKey(4))
    assert st2["half"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(st2["half"].astype(jnp.float32), jnp.arange(3.0))
    assert st2["count"].dtype == jnp.int32 and int(st2["count"]) == 7
    assert st2["flags"] == [True, None, (1, 2.5, "x")]
    np.testing.assert_array_equal(st2["frozen_params"]["weight"], np.ones((2, 2)))


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"save: cannot store <object .*> of type object at ps.a.b"):
        save(tmp_path / "x.safetensors", {"a": {"b": object()}}, {})
    with pytest.raises(TypeError, match=r"save: dict keys must be strings, got 1 at ps\."):
        save(tmp_path / "x.safetensors", {1: jnp.ones(2)}, {})
    assert not os.listdir(tmp_path)


def test_train_state_round_trip_continues_training(key, tmp_path):
    x = jax.random.normal(jax.random.key(1), (8, 2))
    data = (x, x[:, :1] * 2.0)
    # keys out of sorted order: jit returns them sorted, the ties must not depend on it
    model = lx.Chain(d2=lx.Dense(2, 2, jnp.tanh), d1=lx.Dense(2, 2, jnp.tanh), out=lx.Dense(2, 1))
    ps, st = lx.setup(key, model)

    def mse(model, ps, st, data):
        y, st = model(data[0], ps, st)
        return jnp.mean((y - data[1]) ** 2), st, {}

    ts = TrainState(model, ps, st, optax.adam(0.05), ties=(("d2", "d1"),))
    for _ in range(3):
        _, _, _, ts = single_train_step(mse, data, ts)
    assert list(ts.parameters) == ["d1", "d2", "out"]
    save_train_state(tmp_path / "ts.safetensors", ts)
    loaded = load_train_state(tmp_path / "ts.safetensors", model, optax.adam(0.05))
    assert loaded.step == 3 and loaded.ties == ts.ties
    assert loaded.parameters["d1"]["weight"] is loaded.parameters["d2"]["weight"]
    assert_trees_equal(loaded.optimizer_state, ts.optimizer_state)
    for _ in range(3):
        _, _, _, ts = single_train_step(mse, data, ts)
        _, _, _, loaded = single_train_step(mse, data, loaded)
    assert_trees_equal(loaded.parameters, ts.parameters)
    with pytest.raises(
        lx.CheckpointError, match=r"holds a train state, not only `ps` and `st`; use `load_train_state`"
    ):
        load(tmp_path / "ts.safetensors")


def test_truncated_file_is_a_clear_error(key, tmp_path, seed_model):
    ps, st = lx.setup(key, seed_model)
    path = tmp_path / "model.safetensors"
    save(path, ps, st)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(lx.CheckpointError, match=r"is truncated: its tensors need \d+ bytes of data, the file has"):
        load(path)
    path.write_bytes(data[:100])
    with pytest.raises(lx.CheckpointError, match=r"is truncated or not a luxjax checkpoint: its header claims"):
        load(path)
    path.write_bytes(data[:5])
    with pytest.raises(lx.CheckpointError, match=r"5 bytes, too short for a header"):
        load(path)


def test_foreign_files_are_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path)
    with pytest.raises(lx.CheckpointError, match=r"is not a luxjax checkpoint \(no 'luxjax.checkpoint' metadata"):
        load(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(lx.CheckpointError, match=r"is not a luxjax checkpoint: its safetensors header is not JSON"):
        load(path)
    header = '{"format": "luxjax.checkpoint", "version": 99, "tree": {}}'
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"luxjax.checkpoint": header})
    with pytest.raises(lx.CheckpointError, match=r"version 99; this luxjax reads 'luxjax.checkpoint' versions 1 and 2"):
        load(path)
    tree = '{"ps": {"t": "array", "name": "w"}, "st": {"t": "none"}}'
    header = f'{{"format": "luxjax.checkpoint", "version": 1, "tree": {tree}, "ties": []}}'
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"luxjax.checkpoint": header})
    with pytest.raises(lx.CheckpointError, match=r"is malformed: ps has an unknown entry .*'name': 'w'.* in its tree"):
        load(path)
    tree = '{"ps": {"t": "code", "run": "rm"}, "st": {"t": "none"}}'
    header = f'{{"format": "luxjax.checkpoint", "version": 1, "tree": {tree}, "ties": []}}'
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"luxjax.checkpoint": header})
    with pytest.raises(lx.CheckpointError, match=r"has an unknown entry .* in its tree"):
        load(path)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import jax.numpy as jnp
    from luxjax.training import _checkpoint, save

    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hook":
        real_fsync = os.fsync
        def slow_fsync(fd):
            print("writing", flush=True)
            time.sleep(60)
            real_fsync(fd)
        _checkpoint.os.fsync = slow_fsync
        save(path, {"w": jnp.full((1000,), 2.0)}, {})
    else:
        print("writing", flush=True)
        version = 2.0
        while True:  # overwrite as fast as possible until killed
            save(path, {"w": jnp.full((2_000_000,), version)}, {})
            version += 1.0
    """
)


@pytest.mark.parametrize("mode", ["hook", "loop"])
def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path, mode):
    path = tmp_path / "model.safetensors"
    save(path, {"w": jnp.full((1000,), 1.0)}, {})
    env = dict(os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), mode], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        if mode == "loop":
            time.sleep(1.5)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    ps, _ = load(path)
    values = np.unique(np.asarray(ps["w"]))
    assert values.size == 1
    if mode == "hook":  # killed after writing the temporary file, before the rename
        assert ps["w"].shape == (1000,) and values[0] == 1.0
        assert any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    else:  # killed at an arbitrary moment: the file is one of the complete versions
        assert values[0] == 1.0 or ps["w"].shape == (2_000_000,)


def test_frozen_values_and_ties_round_trip(key, tmp_path, seed_model):
    model = seed_model
    ps, st = lx.setup(key, model)
    ps = share_parameters(ps, (("d3.l2", "d1"),))
    frozen, ps, st = freeze(model, ps, st, ("d2.weight",))
    save(tmp_path / "frozen.safetensors", ps, st)
    ps2, st2 = load(tmp_path / "frozen.safetensors")
    assert_trees_equal(st, st2)
    assert ps2["d1"]["weight"] is ps2["d3"]["l2"]["weight"]
    np.testing.assert_array_equal(st2["d2"]["frozen_params"]["weight"], st["d2"]["frozen_params"]["weight"])
    x = jnp.ones((3, 2))
    np.testing.assert_array_equal(frozen(x, ps2, st2)[0], frozen(x, ps, st)[0])


# -- checked against the model (issue 14) ----------------------------------------------------------


def another_model():
    """The seed model with `d2` widened to 3 outputs: same keys, one shape differs."""
    return lx.Chain(d1=lx.Dense(2, 4, jnp.tanh), d3=lx.Chain(l1=lx.Dense(4, 2), l2=lx.Dense(2, 4)), d2=lx.Dense(4, 3))


def test_load_train_state_into_another_model_names_the_path(key, tmp_path, seed_model):
    path = tmp_path / "run.safetensors"
    save_train_state(path, TrainState(seed_model, *lx.setup(key, seed_model), optax.adam(0.1)))
    expected = (
        r"load_train_state: '.*run.safetensors' does not fit `model`: at ps.d2.weight `model` has float32\[3, 4\] "
        r"but the file holds float32\[2, 4\]. The file was saved for Chain\(d1=Dense\(2 => 4, tanh\), .*d2=Dense\(4 => "
        r"2\)\) \(44 parameters, plus 0 states\); `model` is .*d2=Dense\(4 => 3\)\) \(49 parameters, plus 0 states\)."
    )
    with pytest.raises(lx.CheckpointError, match=expected):
        load_train_state(path, another_model(), optax.adam(0.1))
    fewer = lx.Chain(d1=lx.Dense(2, 4, jnp.tanh), d3=lx.Chain(l1=lx.Dense(4, 2), l2=lx.Dense(2, 4)))
    expected = r"at ps.d2 `model` has nothing but the file holds a dict with keys '(weight|bias)', '(weight|bias)'"
    with pytest.raises(lx.CheckpointError, match=expected):
        load_train_state(path, fewer, optax.adam(0.1))
    with_state = lx.Chain(
        d1=lx.Dense(2, 4, jnp.tanh),
        d3=lx.Chain(l1=lx.Dense(4, 2), l2=lx.Dense(2, 4)),
        d2=lx.Dense(4, 2),
        bn=lx.BatchNorm(2),
    )
    with pytest.raises(
        lx.CheckpointError, match=r"at ps.bn `model` has a dict with keys 'scale', 'bias' but the file holds nothing"
    ):
        load_train_state(path, with_state, optax.adam(0.1))
    assert load_train_state(path, seed_model, optax.adam(0.1)).step == 0


def test_load_checks_like_a_model_or_trees_with_dtypes(key, tmp_path, seed_model):
    path = tmp_path / "model.safetensors"
    ps, st = lx.setup(key, seed_model)
    save(path, ps, st, model=seed_model)
    with pytest.raises(
        lx.CheckpointError, match=r"at ps.d2.weight `like` has float32\[3, 4\] but the file holds float32\[2, 4\]"
    ):
        load(path, like=another_model())
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), ps)
    expected = (
        r"at ps.d1.bias `like` has bfloat16\[4\] but the file holds float32\[4\]. The file was saved for "
        r"Chain\(d1=Dense\(2 => 4, tanh\).* \(44 parameters, plus 0 states\); `like` is trees \(44 parameters"
    )
    with pytest.raises(lx.CheckpointError, match=expected):
        load(path, like=(half, st))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ps)
    assert_trees_equal(load(path, like=(shapes, st))[0], ps)
    assert_trees_equal(load(path, like=seed_model)[0], ps)
    with pytest.raises(TypeError, match=r"load: `like` must be a luxjax Layer or a pair \(ps, st\) of trees, got \[\]"):
        load(path, like=[])


def test_state_and_frozen_models_are_checked_with_flags_keys_and_dtypes(key, tmp_path):
    model = lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3), lx.Dropout(0.5))
    ps, st = lx.setup(key, model)
    st = lx.testmode(st)  # the flag's value is state, not structure
    path = tmp_path / "bn.safetensors"
    save(path, ps, st, model=model)
    ps2, st2 = load(path, like=model)
    assert st2["layer_2"]["training"] == lx.Training(False)
    assert_trees_equal(st2, st)
    header = json.loads(safetensors.safe_open(path, "numpy").metadata()["luxjax.checkpoint"])
    assert header["model"] == {
        "repr": repr(model),
        "parameters": lx.parameter_count(model),
        "states": lx.state_count(model),
    }
    no_dropout = lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3), lx.Dense(3, 3))
    with pytest.raises(
        lx.CheckpointError,
        match=r"at ps.layer_3.weight `like` has float32\[3, 3\] but the file holds nothing",
    ):
        load(path, like=no_dropout)
    frozen, fps, fst = freeze(model, ps, st, ("layer_1.weight",))
    save(path, fps, fst, model=frozen)
    assert_trees_equal(load(path, like=frozen)[1], fst)
    with pytest.raises(
        lx.CheckpointError,
        match=r"at ps.layer_1.weight `like` has float32\[3, 2\] but the file holds nothing. The file was saved for "
        r"Chain\(FrozenLayer",
    ):
        load(path, like=model)


def test_save_refuses_trees_that_do_not_fit_the_model(key, tmp_path, seed_model):
    ps, st = lx.setup(key, seed_model)
    expected = (
        r"save: the trees do not fit `model`: at ps.d2.weight `model` has float32\[3, 4\] but the trees hold "
        r"float32\[2, 4\]"
    )
    with pytest.raises(lx.StructureError, match=expected):
        save(tmp_path / "x.safetensors", ps, st, model=another_model())
    # a train state of misfit trees cannot be built, so it never reaches `save_train_state`
    with pytest.raises(lx.StructureError, match=r"TrainState: `ps` does not fit the layer: 'd2.bias' has shape"):
        TrainState(another_model(), ps, st, optax.sgd(0.1))
    assert not os.listdir(tmp_path)


def test_optimizer_mismatch_names_both_optimizer_states(key, tmp_path, seed_model):
    path = tmp_path / "run.safetensors"
    save_train_state(path, TrainState(seed_model, *lx.setup(key, seed_model), optax.adam(0.1)))
    expected = (
        r"load_train_state: the optimizer state in '.*run.safetensors' does not fit `optimizer`: the file holds "
        r"\(ScaleByAdamState\(count=int32\[\], mu=tree of 8 arrays, nu=tree of 8 arrays\), EmptyState\(\)\), but "
        r"`optimizer` keeps \(TraceState\(trace=tree of 8 arrays\), EmptyState\(\)\). The first difference is at "
        r"optimizer_state.0.trace.d1.bias: `optimizer` keeps float32\[4\], the file holds int32\[\]. Pass the "
        r"optimizer the run was saved with."
    )
    with pytest.raises(lx.CheckpointError, match=expected):
        load_train_state(path, seed_model, optax.sgd(0.1, momentum=0.9))
    with pytest.raises(
        lx.CheckpointError,
        match=r"keeps \(EmptyState\(\), EmptyState\(\)\)\. `optimizer` keeps 0 leaves, the file 17\.",
    ):
        load_train_state(path, seed_model, optax.sgd(0.1))


# -- 64-bit arrays round-trip exactly or are refused ---------------------------------------------------


def test_64_bit_arrays_are_refused_while_64_bit_mode_is_off(tmp_path):
    advice = r"Cast it first \(`x.astype\(np.float32\)`\), or enable 64-bit mode .*jax_enable_x64"
    for value in (np.array([0.1, 1e300]), np.array([2**40]), np.array([1 + 2j])):
        with pytest.raises(
            TypeError, match=rf"save: the {value.dtype} array at st.big would load as a 32-bit array.*{advice}"
        ):
            save(tmp_path / "x.safetensors", {}, {"big": value})
    assert not os.listdir(tmp_path)


def test_64_bit_arrays_round_trip_exactly_in_64_bit_mode(tmp_path):
    path = tmp_path / "wide.safetensors"
    with jax.enable_x64(True):
        st = {
            "f": np.array([0.1, 1e300, -5e-324]),
            "i": jnp.array([2**40, -(2**62)], jnp.int64),
            "u": np.array([2**64 - 1], np.uint64),
            "c": np.array([1e300 + 0.1j], np.complex128),
            "small": np.float32([0.5]),
        }
        save(path, {}, st)
        _, st2 = load(path)
        for name, value in st.items():
            assert st2[name].dtype == value.dtype, name
            np.testing.assert_array_equal(np.asarray(st2[name]), np.asarray(value))
    expected = (
        r"load: '.*wide.safetensors' holds 64-bit arrays \(the first: the float64 array at st.f\), and JAX's 64-bit "
        r"mode is off, so they would be narrowed to 32 bits. Enable it before loading"
    )
    with pytest.raises(lx.CheckpointError, match=expected):
        load(path)


def test_other_dtypes_round_trip(tmp_path):
    st = {
        name: jnp.asarray(np.arange(-2, 4).reshape(2, 3)).astype(name)
        for name in ("bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "int4", "uint8", "bool", "complex64")
    }
    st["empty"] = jnp.zeros((0, 3), jnp.float32)
    st["scalar"] = jnp.array(3.5, jnp.float32)
    save(tmp_path / "x.safetensors", {}, st)
    assert_trees_equal(load(tmp_path / "x.safetensors")[1], st)
    with pytest.raises(
        TypeError, match=r"save: cannot store the float4_e2m1fn array at st.x; checkpoints hold the dtypes bool, int8"
    ):
        save(tmp_path / "x.safetensors", {}, {"x": jnp.zeros(2, "float4_e2m1fn")})


# -- integrity -----------------------------------------------------------------------------------------


def test_a_flipped_bit_in_any_byte_is_a_checkpoint_error(key, tmp_path):
    model = lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3), lx.Dropout(0.5))
    ps, st = lx.setup(key, model)
    path = tmp_path / "model.safetensors"
    save(path, ps, st, model=model)
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    messages = set()
    for i in range(len(data)):  # one bit of every byte, each bit position in turn
        changed = bytearray(data)
        changed[i] ^= 1 << (i % 8)
        path.write_bytes(changed)
        with pytest.raises(lx.CheckpointError) as info:
            load(path)
        messages.add(str(info.value).replace(str(path), "PATH"))
    # flips in the length or the layout luxjax writes have their own messages; all others:
    assert messages >= {
        "load: 'PATH' is damaged: the checksum of its header does not match (the file changed after it was written).",
        "load: 'PATH' is damaged: the checksum of its tensor data does not match (the file changed after it was "
        "written).",
    }, messages
    # verify=False skips only the tensor data: a flipped data byte then loads, a flipped header byte does not
    changed = bytearray(data)
    changed[8 + size] ^= 1
    path.write_bytes(changed)
    with pytest.raises(lx.CheckpointError, match=r"is damaged: the checksum of its tensor data does not match"):
        load(path)
    ps2, _ = load(path, verify=False)
    assert not all(bool((ps2[k]["weight"] == ps[k]["weight"]).all()) for k in ("layer_1",))
    changed = bytearray(data)
    changed[size] ^= 1
    path.write_bytes(changed)
    with pytest.raises(lx.CheckpointError, match=r"is damaged: the checksum of its header does not match"):
        load(path, verify=False)


def test_version_1_files_load_unverified(tmp_path):
    tree = {
        "ps": {"t": "dict", "items": [["w", {"t": "array", "dtype": "bfloat16", "shape": [3], "name": "t0"}]]},
        "st": {"t": "dict", "items": [["training", {"t": "training", "value": True}]]},
    }
    header = {"format": "luxjax.checkpoint", "version": 1, "tree": tree, "ties": []}
    path = tmp_path / "old.safetensors"
    raw = np.asarray(jnp.arange(3, dtype=jnp.bfloat16)).view(np.uint16)
    safetensors.numpy.save_file({"t0": raw}, path, metadata={"luxjax.checkpoint": json.dumps(header)})
    with pytest.raises(lx.CheckpointError, match=r"has no checksum \(luxjax's format version 1, .*`verify=False`"):
        load(path)
    ps, st = load(path, verify=False)
    assert ps["w"].dtype == jnp.bfloat16 and st == {"training": lx.Training(True)}
    save(path, ps, st)  # saving again adds the checksum
    assert_trees_equal(load(path)[0], ps)


# -- paths and temporary files ---------------------------------------------------------------------------


def test_write_errors_name_the_users_path(tmp_path, monkeypatch):
    ps = {"w": jnp.ones(2)}
    missing = tmp_path / "runs" / "model.safetensors"
    expected = rf"save: cannot write '{missing}': its folder '{tmp_path / 'runs'}' does not exist. save does not create"
    with pytest.raises(FileNotFoundError, match=expected):
        save(missing, ps, {})
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=rf"save: cannot write '{tmp_path / 'folder'}': Is a directory\.$"):
        save(tmp_path / "folder", ps, {})
    assert os.listdir(tmp_path) == ["folder"]  # no temporary file left behind

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(kwargs["dir"], kwargs["prefix"] + "x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(
        PermissionError,
        match=rf"^\[Errno 13\] save_train_state: cannot write '{tmp_path / 'm.st'}': Permission denied\.$",
    ):
        save_train_state(
            tmp_path / "m.st", TrainState(lx.Dense(1, 1), *lx.setup(jax.random.key(0), lx.Dense(1, 1)), optax.sgd(1.0))
        )
    with pytest.raises(FileNotFoundError, match=rf"load: cannot read '{tmp_path / 'none'}': No such file or directory"):
        load(tmp_path / "none")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a folder its user cannot write")
def test_read_only_folder_names_the_users_path(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(
            PermissionError, match=rf"save: cannot write '{folder / 'x.safetensors'}': Permission denied"
        ):
            save(folder / "x.safetensors", {}, {})
    finally:
        folder.chmod(0o755)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="stale files are recognised by process id on POSIX")
def test_a_save_removes_the_temp_files_of_killed_saves(tmp_path):
    path = tmp_path / "model.safetensors"
    env = dict(os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "hook"], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    killed = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(killed) == 1 and f"-{child.pid}-" in killed[0]
    host = killed[0].split("-")[1]
    alive = subprocess.Popen(["sleep", "30"])
    try:
        keep = [
            f".model.safetensors.luxjax-{host}-{alive.pid}-abcd1234.tmp",  # a save still running
            f".model.safetensors.luxjax-00000000-{dead_pid()}-abcd1234.tmp",  # another host's
            f".other.safetensors.luxjax-{host}-{dead_pid()}-abcd1234.tmp",  # another file's
            ".model.safetensors.notes.tmp",
            ".model.safetensors.abcd1234.tmp",  # luxjax before checksums, recent
        ]
        remove = [f".model.safetensors.luxjax-{host}-{dead_pid()}-zz_99xy.tmp", ".model.safetensors.wxyz0987.tmp"]
        for name in keep + remove:
            (tmp_path / name).write_bytes(b"partial")
        an_hour_ago = time.time() - 3700
        os.utime(tmp_path / remove[-1], (an_hour_ago, an_hour_ago))
        save(path, {"w": jnp.ones(3)}, {})
        assert sorted(os.listdir(tmp_path)) == sorted([*keep, "model.safetensors"])
    finally:
        alive.kill()
        alive.wait()


def test_one_key_at_two_places_stays_one_key(tmp_path):
    key = jax.random.key(5)
    ps = {"a": {"key": key}, "b": {"key": key}, "w": jnp.ones(2)}
    save(tmp_path / "k.safetensors", ps, {"same": key})
    ps2, st2 = load(tmp_path / "k.safetensors")
    assert ps2["a"]["key"] is ps2["b"]["key"] is st2["same"]
    np.testing.assert_array_equal(jax.random.key_data(ps2["a"]["key"]), jax.random.key_data(key))
    with pytest.raises(TypeError, match=r"save: the int at st.big has more than 3,900 digits; store it as a string"):
        save(tmp_path / "k.safetensors", {}, {"big": 10**5000})
