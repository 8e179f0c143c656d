"""`single_train_step` on a 4-device mesh gives the one-device result.

The main test process has already imported jax with one CPU device, so the check runs in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4` set before jax loads.
"""

import os
import subprocess
import sys
import textwrap

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    import luxjax as lx
    from luxjax.experimental import freeze
    from luxjax.training import TrainState, single_train_step

    assert jax.device_count() == 4, jax.devices()


    model = lx.Chain(d1=lx.Dense(4, 4, jnp.tanh), d2=lx.Dense(4, 4, jnp.tanh), out=lx.Dense(4, 2))
    ps, st = lx.setup(jax.random.key(0), model)
    frozen_weight = jnp.copy(ps["out"]["weight"])
    model, ps, st = freeze(model, ps, st, ("out.weight",))  # frozen: in st, never trained
    x = jax.random.normal(jax.random.key(1), (32, 4))
    data = (x, jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1))


    def mse(model, ps, st, data):
        y, st = model(data[0], ps, st)
        return jnp.mean((y - data[1]) ** 2), st, {}


    def train(ps, st, data, steps=6):
        ts = TrainState(model, ps, st, optax.adam(0.05), ties=(("d1", "d2"),))
        losses = []
        for _ in range(steps):
            _, loss, _, ts = single_train_step(mse, data, ts)
            losses.append(loss)
        return ts, losses


    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    reference, ref_losses = train(copy(ps), copy(st), data)


    def check(ts, losses, name):
        p = ts.parameters
        assert p["d1"]["weight"] is p["d2"]["weight"], name
        np.testing.assert_allclose(np.array(losses), np.array(ref_losses), rtol=1e-5, err_msg=name)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(reference.parameters)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(ts.states["out"]["frozen_params"]["weight"], frozen_weight)
        assert "weight" not in p["out"]
        assert ts.step == 6


    # data parallel: the batch sharded over 4 devices, parameters replicated
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(data, NamedSharding(mesh, P("data")))
    replicated = NamedSharding(mesh, P())
    ts, losses = train(jax.device_put(copy(ps), replicated), jax.device_put(copy(st), replicated), sharded)
    check(ts, losses, "data parallel")
    assert len(ts.parameters["d1"]["weight"].sharding.device_set) == 4

    # 2 x 2: batch over "data", the weights' output axis over "model"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    def place(leaf):
        spec = P("model", None) if leaf.ndim == 2 else P("model")
        return jax.device_put(leaf, NamedSharding(mesh, spec))
    sharded_ps = jax.tree.map(place, copy(ps))
    sharded_ps["d2"] = sharded_ps["d1"]  # the tie, by identity, as share_parameters makes it
    sharded = jax.device_put(data, NamedSharding(mesh, P("data")))
    ts, losses = train(sharded_ps, jax.device_put(copy(st), NamedSharding(mesh, P())), sharded)
    check(ts, losses, "data and model parallel")
    mu = jax.tree.leaves(ts.optimizer_state)[1]
    assert len(mu.sharding.device_set) == 4
    print("ok")
    """
)


def test_four_device_mesh_matches_one_device():
    env = dict(
        os.environ,
        PYTHONPATH=SRC,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")
