import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import luxjax as lx
from luxjax.experimental import freeze, share_parameters
from luxjax.training import TrainState, load, load_train_state, save, save_train_state, single_train_step

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.result_type(x) == jnp.result_type(y)
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
    with pytest.raises(TypeError, match=r"save: cannot store <object .*> of type object at a.b"):
        save(tmp_path / "x.safetensors", {"a": {"b": object()}}, {})
    with pytest.raises(TypeError, match=r"save: dict keys must be strings, got 1 at the root"):
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
    with pytest.raises(lx.CheckpointError, match=r"does not fit `optimizer`"):
        load_train_state(tmp_path / "ts.safetensors", model, optax.sgd(0.1, momentum=0.9))
    with pytest.raises(lx.CheckpointError, match=r"holds \['optimizer_state', 'ps', 'st'\], not `ps` and `st`"):
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
    with pytest.raises(lx.CheckpointError, match=r"is not a luxjax checkpoint"):
        load(path)
    header = '{"format": "luxjax.checkpoint", "version": 99, "tree": {}}'
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"luxjax.checkpoint": header})
    with pytest.raises(lx.CheckpointError, match=r"version 99; this luxjax reads 'luxjax.checkpoint' version 1"):
        load(path)
    header = '{"format": "luxjax.checkpoint", "version": 1, "tree": {"ps": {"t": "array", "name": "w"}}}'
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"luxjax.checkpoint": header})
    with pytest.raises(lx.CheckpointError, match=r"has a damaged tree description: KeyError\('dtype'\)"):
        load(path)
    header = '{"format": "luxjax.checkpoint", "version": 1, "tree": {"ps": {"t": "code", "run": "rm"}}}'
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
