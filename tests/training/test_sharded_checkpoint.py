"""Sharded checkpoints with Orbax: save on one mesh, restore on another, train on identically.

The mesh tests run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8`
set before jax loads (the main test process has one CPU device); the error cases run here.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
from luxjax import CheckpointError
from luxjax.training import (
    TrainState,
    load_sharded,
    load_train_state_sharded,
    save_sharded,
    save_train_state,
    save_train_state_sharded,
)

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    import luxjax as lx
    from luxjax.experimental import freeze
    from luxjax.training import (
        TrainState, load_sharded, load_train_state_sharded, save_sharded, save_train_state_sharded,
        single_train_step,
    )

    assert jax.device_count() == 8, jax.devices()
    folder = tempfile.mkdtemp()

    model = lx.Chain(
        d1=lx.Dense(4, 8, jnp.tanh), d2=lx.Dense(8, 8, jnp.tanh), d3=lx.Dense(8, 8, jnp.tanh), out=lx.Dense(8, 2)
    )
    ps, st = lx.setup(jax.random.key(0), model)
    model, ps, st = freeze(model, ps, st, ("out.weight",))  # frozen: in st, never trained
    frozen = np.asarray(st["out"]["frozen_params"]["weight"])
    x = jax.random.normal(jax.random.key(1), (32, 4))
    data = (x, jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1))


    def mse(model, ps, st, data):
        y, st = model(data[0], ps, st)
        return jnp.mean((y - data[1]) ** 2), st, {}


    def rule(mesh):
        # weights' output axis over "model" where it divides; the rest replicated
        def sharding(place, shape):
            split = len(shape.shape) >= 1 and shape.shape[0] % mesh.shape["model"] == 0 and place.startswith("ps.")
            return NamedSharding(mesh, P("model") if split else P())
        return sharding


    def place(tree, mesh, prefix):
        choose = rule(mesh)
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: jax.device_put(leaf, choose(prefix + str(len(path)), leaf)), tree
        )


    four = Mesh(np.array(jax.devices()[:4]), ("model",))
    two = Mesh(np.array(jax.devices()[4:6]), ("model",))
    sharded_ps = place(ps, four, "ps.")
    sharded_ps["d3"] = sharded_ps["d2"]  # the tie, by identity, as share_parameters makes it
    ts = TrainState(model, sharded_ps, place(st, four, "st."), optax.adam(0.05))
    assert len(ts.parameters["d1"]["weight"].sharding.device_set) == 4
    # the moments are made where their parameters are, not on one device
    assert ts.optimizer_state[0].mu["d1"]["weight"].sharding == ts.parameters["d1"]["weight"].sharding
    for _ in range(3):
        _, _, _, ts = single_train_step(mse, data, ts)
    path = os.path.join(folder, "state")
    save_train_state_sharded(path, ts)
    saved = jax.tree.map(np.asarray, (ts.parameters, ts.states, ts.optimizer_state))
    reference, ref_losses = ts, []
    for _ in range(3):
        _, loss, _, reference = single_train_step(mse, data, reference)
        ref_losses.append(float(loss))

    # restore on 2 devices (others than the 4 it was saved from)
    restored = load_train_state_sharded(path, model, optax.adam(0.05), sharding=rule(two))
    p = restored.parameters
    assert restored.step == 3 and restored.ties == ts.ties
    assert p["d2"]["weight"] is p["d3"]["weight"]
    for got, want in zip(jax.tree.leaves((p, restored.states, restored.optimizer_state)), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(restored.states["out"]["frozen_params"]["weight"], frozen)
    weight = p["d1"]["weight"]
    assert weight.sharding == NamedSharding(two, P("model")), weight.sharding
    assert [s.data.shape for s in weight.addressable_shards] == [(4, 4), (4, 4)]
    assert p["out"]["bias"].sharding == NamedSharding(two, P("model"))  # 2 rows split over 2 devices
    assert restored.states["out"]["frozen_params"]["weight"].sharding == NamedSharding(two, P())
    mu = restored.optimizer_state[0].mu["d1"]["weight"]  # adam's moments follow their parameters
    assert mu.sharding.is_equivalent_to(weight.sharding, 2) and mu.sharding.device_set == set(two.devices.flat)
    assert jax.tree.leaves(restored.optimizer_state[0].mu["d3"]) == []  # one set of moments per tie group

    # training continues as it would have
    sharded_data = jax.device_put(data, NamedSharding(two, P()))
    losses = []
    for _ in range(3):
        _, loss, _, restored = single_train_step(mse, sharded_data, restored)
        losses.append(float(loss))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(restored.parameters), jax.tree.leaves(reference.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert restored.parameters["d2"]["weight"] is restored.parameters["d3"]["weight"]
    np.testing.assert_array_equal(restored.states["out"]["frozen_params"]["weight"], frozen)

    # ps and st with a PRNG key (Dropout), saved sharded over 4, loaded onto one device
    model = lx.Chain(lx.Dense(4, 8), lx.Dropout(0.5))
    ps, st = lx.setup(jax.random.key(2), model)
    path = os.path.join(folder, "model")
    save_sharded(path, place(ps, four, "ps."), place(st, four, "st."), model=model)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[7])
    ps2, st2 = load_sharded(path, like=model, sharding=one)
    np.testing.assert_array_equal(ps2["layer_1"]["weight"], ps["layer_1"]["weight"])
    np.testing.assert_array_equal(jax.random.key_data(st2["layer_2"]["key"]), jax.random.key_data(st["layer_2"]["key"]))
    assert st2["layer_2"]["key"].sharding == one and st2["layer_2"]["training"] == st["layer_2"]["training"]
    ps3, st3 = load_sharded(path, like=model, sharding=NamedSharding(two, P()))  # a key replicated on a mesh
    assert jax.random.key_data(st3["layer_2"]["key"]).sharding == NamedSharding(two, P(None))
    print("ok")
    """
)


def test_save_on_four_devices_restore_on_two_and_train_on():
    env = dict(os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")


@pytest.fixture
def saved(tmp_path):
    model = lx.Chain(d1=lx.Dense(2, 3), d2=lx.Dense(3, 3))
    ps, st = lx.setup(jax.random.key(0), model)
    path = tmp_path / "state"
    save_train_state_sharded(path, TrainState(model, ps, st, optax.adam(1e-3)))
    return model, ps, st, path


def test_ties_given_as_paths_come_back_as_identity(tmp_path):
    model = lx.Chain(d1=lx.Dense(3, 3), d2=lx.Dense(3, 3))
    ps, st = lx.setup(jax.random.key(0), model)
    ts = TrainState(model, ps, st, optax.sgd(0.1), ties=(("d1", "d2"),))
    save_train_state_sharded(tmp_path / "s", ts)
    back = load_train_state_sharded(tmp_path / "s", model, optax.sgd(0.1))
    assert back.parameters["d1"]["weight"] is back.parameters["d2"]["weight"]
    assert [[str(p) for p in g] for g in back.ties] == [["d1.bias", "d2.bias"], ["d1.weight", "d2.weight"]]


def test_wrong_model_names_the_place_and_the_path(saved):
    _, _, _, path = saved
    other = lx.Chain(d1=lx.Dense(2, 4), d2=lx.Dense(4, 3))
    with pytest.raises(
        CheckpointError,
        match=r"load_train_state_sharded: '.*state' does not fit `model`: at ps\.d1\.weight `model` has "
        r"float32\[4, 2\] but the file holds float32\[3, 2\]",
    ):
        load_train_state_sharded(path, other, optax.adam(1e-3))


def test_wrong_optimizer_is_named(saved):
    model, _, _, path = saved
    with pytest.raises(CheckpointError, match=r"the optimizer state in '.*state' does not fit `optimizer`"):
        load_train_state_sharded(path, model, optax.sgd(0.1, momentum=0.9))


def test_kinds_of_checkpoint_are_not_confused(saved, tmp_path):
    model, ps, st, path = saved
    with pytest.raises(
        CheckpointError, match=r"load_sharded: '.*state' holds a train state.*`load_train_state_sharded`"
    ):
        load_sharded(path)
    file = tmp_path / "state.safetensors"
    save_train_state(file, TrainState(model, ps, st, optax.adam(1e-3)))
    with pytest.raises(
        CheckpointError, match=r"'.*state\.safetensors' is not a sharded luxjax checkpoint folder: there is a file"
    ):
        load_train_state_sharded(file, model, optax.adam(1e-3))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"'.*empty' is not a sharded luxjax checkpoint: Orbax cannot read it"):
        load_sharded(empty)


def test_never_writes_over_a_checkpoint(saved):
    model, ps, st, path = saved
    with pytest.raises(FileExistsError, match=r"save_sharded: '.*state' already exists"):
        save_sharded(path, ps, st)
    with pytest.raises(FileNotFoundError, match=r"its folder '.*nowhere' does not exist"):
        save_sharded(path / "nowhere" / "x", ps, st)


def test_fingerprints_catch_changed_arrays(tmp_path):
    model = lx.Dense(2, 3)
    ps, st = lx.setup(jax.random.key(0), model)
    save_sharded(tmp_path / "a", ps, st)
    changed = {"weight": ps["weight"].at[0, 0].add(1.0), "bias": ps["bias"]}  # same order, so same tensor names
    save_sharded(tmp_path / "b", changed, st)
    shutil.rmtree(tmp_path / "a" / "arrays")
    shutil.copytree(tmp_path / "b" / "arrays", tmp_path / "a" / "arrays")  # other values, same header
    with pytest.raises(
        CheckpointError,
        match=r"'.*a' is damaged: the array at ps\.weight \(tensor 't0'\) does not match its fingerprint",
    ):
        load_sharded(tmp_path / "a")
    ps2, _ = load_sharded(tmp_path / "a", verify=False)
    np.testing.assert_array_equal(ps2["weight"], changed["weight"])


def test_sharding_must_be_a_sharding(saved):
    model, _, _, path = saved
    with pytest.raises(TypeError, match=r"`sharding` gave 'cpu' for ps\.d1\.bias, not a `jax.sharding.Sharding`"):
        load_train_state_sharded(path, model, optax.adam(1e-3), sharding=lambda place, shape: "cpu")


def test_dtypes_and_python_leaves_survive(tmp_path):
    ps = {
        "w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
        "n": jnp.array([1, -2], jnp.int8),
        "flag": jnp.array(True),
    }
    st = {"count": 3, "name": "x", "none": None, "keys": jax.random.split(jax.random.key(4), 3)}
    save_sharded(tmp_path / "c", ps, st)
    ps2, st2 = load_sharded(tmp_path / "c", like=(ps, st))
    for k in ps:
        assert ps2[k].dtype == ps[k].dtype
        np.testing.assert_array_equal(np.asarray(ps2[k]), np.asarray(ps[k]))
    assert (st2["count"], st2["name"], st2["none"]) == (3, "x", None)
    np.testing.assert_array_equal(jax.random.key_data(st2["keys"]), jax.random.key_data(st["keys"]))


def test_trees_without_arrays(tmp_path):
    save_sharded(tmp_path / "e", {}, {"n": 3, "training": lx.Training(False)})
    assert load_sharded(tmp_path / "e") == ({}, {"n": 3, "training": lx.Training(False)})
