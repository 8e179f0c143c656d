import jax.numpy as jnp

import luxjax as lx


class Counter(lx.Layer):
    dims: int

    def init_params(self, key):
        return {"w": jnp.ones((self.dims,))}

    def init_state(self, key):
        return {"mean": jnp.zeros((self.dims,)), "training": lx.Training(True)}

    def __call__(self, x, ps, st):
        return x, st

    def __repr__(self):
        return f"Counter({self.dims})"


def test_seed_model_prints_like_lux(seed_model):
    text = str(seed_model)
    lines = text.splitlines()
    assert lines[0] == "Chain("
    assert lines[1].startswith("    d1 = Dense(2 => 4, tanh),") and lines[1].endswith("# 12 parameters")
    assert lines[2] == "    d3 = Chain("
    assert lines[3].startswith("        l1 = Dense(4 => 2),") and lines[3].endswith("# 10 parameters")
    assert lines[5] == "    ),"
    assert lines[-1].startswith(")") and lines[-1].endswith("# Total: 44 parameters, plus 0 states.")


def test_per_child_counts_with_a_stateful_layer():
    text = str(lx.Chain(lx.Dense(2, 3, jnp.tanh), Counter(3), lx.Dense(3, 2)))
    assert "layer_1 = Dense(2 => 3, tanh)," in text and "# 9 parameters" in text
    assert "layer_2 = Counter(3)," in text and "# 3 parameters, plus 4 non-trainable" in text
    assert "Total: 20 parameters, plus 4 states." in text


def test_runs_of_identical_children_collapse():
    text = str(lx.Chain(lx.Dense(2, 1), lx.Dense(2, 1), lx.Dense(1, 1)))
    assert "layer_(1-2) = Dense(2 => 1)," in text
    assert "# 6 (3 x 2) parameters" in text
    assert "layer_3 = Dense(1 => 1)," in text


def test_large_counts_use_underscores_and_leaf_prints_one_line():
    assert str(lx.Dense(1000, 1000)) == "Dense(1000 => 1000)  # 1_001_000 parameters"
    assert str(lx.NoOpLayer()) == "NoOpLayer()"


def test_containers_show_their_connection():
    text = str(lx.Parallel(jnp.add, lx.Dense(2, 2), lx.Chain(lx.Dense(2, 2))))
    assert "connection = add," in text
    assert str(lx.SkipConnection(lx.Dense(2, 2), jnp.add)) == "SkipConnection(Dense(2 => 2), add)  # 6 parameters"
