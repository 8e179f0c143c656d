import jax
import jax.numpy as jnp

import luxjax as lx


def test_update_state_sets_every_match_and_leaves_input_alone():
    st = {"a": {"training": lx.Training(True), "x": 1}, "b": [{"training": lx.Training(True)}]}
    new = lx.testmode(st)
    assert new == {"a": {"training": lx.Training(False), "x": 1}, "b": [{"training": lx.Training(False)}]}
    assert st["a"]["training"] == lx.Training(True)
    assert lx.trainmode(new) == st


def test_training_flag_is_static_under_jit_and_counts_as_a_state():
    traces = []

    @jax.jit
    def f(x, st):
        traces.append(1)
        return x * 2 if st["training"] else x

    train, test = {"training": lx.Training(True)}, {"training": lx.Training(False)}
    assert jax.tree.leaves(train) == []
    assert float(f(jnp.ones(()), train)) == 2.0
    assert float(f(jnp.ones(()), test)) == 1.0
    f(jnp.ones(()), train)
    assert len(traces) == 2

    class Flagged(lx.Layer):
        def init_state(self, key):
            return {"training": lx.Training(True)}

        def __call__(self, x, ps, st):
            return x, st

    assert lx.state_count(Flagged()) == 1
