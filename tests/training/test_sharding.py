"""Sharding rules on 8 virtual CPU devices, and FSDP across 2 processes on localhost (issue 17).

The main test process has already imported jax with one CPU device, so each check runs in a
subprocess that sets the device count before jax loads. The model (`sharding_model.py`)
has attention, a `Stacked` pair of blocks, a frozen layer and an embedding tied to the head.
After 10 adam steps every sharded run must match the one-device run: losses to 1e-5 relative,
parameters and states to `rtol=1e-4, atol=1e-6` (float32 sums in another order).
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import luxjax as lx
from luxjax.sharding import Parameter, data_parallel, fsdp, shard_batch, shardings, tensor_parallel

HERE = os.path.dirname(__file__)
SRC = os.path.join(HERE, "..", "..", "src")

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    sys.path.insert(0, {here!r})
    import sharding_model as m
    import luxjax as lx
    from luxjax.experimental import share_parameters
    from luxjax.sharding import data_parallel, fsdp, shard_batch, tensor_parallel

    assert jax.device_count() == 8, jax.devices()
    model = m.make_model()
    ps, st = lx.setup(jax.random.key(0), model)
    reference, ref_losses = m.train(model, ps, st, m.batch())

    def leaves(tree):
        return jax.tree_util.tree_leaves_with_path(tree)

    for name, shape, rules in [
        ("data parallel", (8,), data_parallel()),
        ("fsdp", (8,), fsdp(min_size=64)),
        ("tensor parallel", (2, 4), tensor_parallel()),
    ]:
        if name != sys.argv[1]:
            continue
        mesh = Mesh(np.array(jax.devices()).reshape(shape), ("data", "model")[: len(shape)])
        sharded_ps, sharded_st = lx.setup(jax.random.key(0), model, mesh=mesh, rules=rules)
        # the values setup gives without a mesh, each leaf created split: no device holds more than its shard
        for (path, a), b in zip(leaves((sharded_ps, sharded_st)), jax.tree.leaves((ps, st))):
            np.testing.assert_array_equal(a, b, err_msg=f"{{name}} {{path}}")
            assert a.sharding.mesh == mesh and len(a.sharding.device_set) == 8, (name, path)
            expected = a.sharding.shard_shape(a.shape)
            assert all(s.data.shape == expected for s in a.addressable_shards), (name, path)
        placed = {{jax.tree_util.keystr(p): a.sharding for p, a in leaves((sharded_ps, sharded_st))}}
        split = [p for p, s in placed.items() if any(s.spec)]
        ts, losses = m.train(model, sharded_ps, sharded_st, shard_batch(m.batch(), mesh))
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=name)
        trained = jax.tree.leaves((reference.parameters, reference.states))
        for (path, a), b in zip(leaves((ts.parameters, ts.states)), trained):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{{name}} {{path}}")
            assert a.sharding.is_equivalent_to(placed[jax.tree_util.keystr(path)], a.ndim), (name, path, a.sharding)
        p = ts.parameters
        assert p["embed"]["weight"] is p["head"]["weight"], name
        frozen = ts.states["frozen"]["frozen_params"]["weight"]
        np.testing.assert_array_equal(frozen, st["frozen"]["frozen_params"]["weight"])
        adam = ts.optimizer_state[0]
        for (path, moment), (_, param) in zip(leaves(adam.mu), leaves(p)):
            assert moment.sharding.is_equivalent_to(param.sharding, param.ndim), (name, path)
        if name == "tensor parallel":  # a tie between places sharded differently is refused
            bad = dict(sharded_ps, head=dict(sharded_ps["head"]))
            bad["head"]["weight"] = jax.device_put(bad["head"]["weight"], NamedSharding(mesh, P()))
            try:
                share_parameters(bad, m.TIES)
            except ValueError as error:
                assert "tied places must be sharded alike" in str(error), error
            else:
                raise AssertionError("share_parameters accepted a tie sharded two ways")
        print(name, "split:", len(split))
    print("ok")
    """
).format(here=HERE)


def _run(args: list[str], devices: int, timeout: int = 120) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
    )
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: int = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    return out


@pytest.mark.parametrize("rule_set", ["data parallel", "fsdp", "tensor parallel"])
def test_rule_set_on_eight_devices_matches_one_device(rule_set):
    out = _finish(_run(["-c", SCRIPT, rule_set], 8))
    lines = out.strip().splitlines()
    assert lines[-1] == "ok"
    split = int(lines[-2].rsplit(" split: ", 1)[1])
    assert split == 0 if rule_set == "data parallel" else split > 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_fsdp_like_one_process_with_four_devices(tmp_path):
    script = os.path.join(HERE, "sharding_multihost.py")
    port = _free_port()
    one = _run([script, "0", "1", "0", str(tmp_path / "one.npz")], 4)
    two = [_run([script, str(port), "2", str(i), str(tmp_path / "two.npz")], 2) for i in range(2)]
    for process in (one, *two):
        _finish(process)
    expected, got = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(expected.files) == sorted(got.files) and "ps.embed.weight" in got.files
    for name in expected.files:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


# -- rules on one device: what they select and the errors they give ----------------------------------


def _mesh(*names: str) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape((1,) * len(names)), names)


def test_patterns_types_and_functions_select_parameters_first_rule_winning():
    model = lx.Chain(a=lx.Dense(2, 4), b=lx.Chain(c=lx.Dense(4, 4), d=lx.Dense(4, 2)))
    seen = []

    def rows(param: Parameter) -> P | None:
        seen.append((str(param.path), param.name, param.shape, param.frozen))
        return P("x", None) if param.name == ("weight",) else None

    rules = {"b.c.weight": P(None, "x"), lx.Dense: rows}
    ps_sh, st_sh = shardings(model, _mesh("x"), rules)
    specs = jax.tree.map(lambda s: s.spec, ps_sh)
    assert specs == {
        "a": {"weight": P("x", None), "bias": P()},
        "b": {"c": {"weight": P(None, "x"), "bias": P()}, "d": {"weight": P("x", None), "bias": P()}},
    }
    assert ("b.d.weight", ("weight",), (2, 4), False) in seen
    assert st_sh == {"a": {}, "b": {"c": {}, "d": {}}}


def test_frozen_and_stacked_parameters_follow_their_layer_rule():
    from luxjax.experimental import freeze

    model = lx.Chain(s=lx.Stacked(lx.Dense(4, 4), 3), f=lx.Dense(4, 2))
    model = freeze(model, which_params=("f.weight",))
    ps_sh, st_sh = shardings(model, _mesh("x"), {"*.weight": P("x", None)})
    assert ps_sh["s"]["weight"].spec == P(None, "x", None)  # the block axis is never split
    assert st_sh["f"]["frozen_params"]["weight"].spec == P("x", None)


def test_fsdp_and_tensor_parallel_choose_axes():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    model = lx.Chain(small=lx.Dense(2, 2), big=lx.Dense(64, 96), attn=lx.MultiHeadAttention(8, 2))
    specs = jax.tree.map(lambda s: s.spec, shardings(model, mesh, fsdp(min_size=1024))[0])
    assert specs["big"]["weight"] == P("data", None) and specs["small"]["weight"] == P()
    specs = jax.tree.map(lambda s: s.spec, shardings(model, mesh, tensor_parallel())[0])
    assert specs["attn"]["q_proj"]["weight"] == P("model", None) and specs["attn"]["q_proj"]["bias"] == P("model")
    assert specs["attn"]["out_proj"]["weight"] == P(None, "model") and specs["attn"]["out_proj"]["bias"] == P()
    assert jax.tree.map(lambda s: s.spec, shardings(model, mesh, data_parallel())[0])["big"]["weight"] == P()


def test_tied_places_with_different_rules_are_an_error():
    model = lx.Chain(embed=lx.Embedding(4, 2), head=lx.Dense(2, 4))
    rules = {"embed.weight": P("x", None), "head.weight": P(None, "x")}
    with pytest.raises(ValueError, match=r"'head.weight' and 'embed.weight' are tied, so they must be sharded alike"):
        shardings(model, _mesh("x"), rules, ties=(("embed.weight", "head.weight"),))


def test_bad_rules_say_what_and_where():
    mesh, model = _mesh("x"), lx.Chain(a=lx.Dense(2, 4))
    with pytest.raises(
        ValueError, match=r"gives P\(None, None, 'x'\) for 'a.weight' of shape \(4, 2\), which has 2 axes"
    ):
        shardings(model, mesh, {"a.weight": P(None, None, "x")})
    with pytest.raises(ValueError, match=r"the mesh has no axis 'model'; its axes are \('x',\)"):
        shardings(model, mesh, {"a.weight": P("model")})
    with pytest.raises(TypeError, match=r"the rule for 'a.weight' must be a PartitionSpec"):
        shardings(model, mesh, {"a.weight": "x"})
    with pytest.raises(TypeError, match=r"`rules` say how to split parameters over a mesh; pass the `mesh` too"):
        lx.setup(jax.random.key(0), model, rules={})


def test_setup_under_a_one_device_mesh_gives_setup_values():
    model = lx.Chain(lx.Dense(2, 4), lx.BatchNorm(4), lx.Dropout(0.5))
    ps, st = lx.setup(jax.random.key(0), model)
    mesh = _mesh("data")
    ps_m, st_m = lx.setup(jax.random.key(0), model, mesh=mesh, rules=fsdp(min_size=1))
    assert list(ps_m["layer_2"]) == list(ps["layer_2"]) and list(st_m["layer_2"]) == list(st["layer_2"])
    for a, b in zip(jax.tree.leaves((ps_m, st_m)), jax.tree.leaves((ps, st))):
        np.testing.assert_array_equal(
            jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
            jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b,
        )
    x, y = shard_batch((np.ones((4, 2), np.float32), np.zeros(4, np.float32)), mesh)
    assert x.sharding.spec == P("data") and y.shape == (4,)
