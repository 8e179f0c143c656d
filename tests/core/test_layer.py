import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


class Scale(lx.Layer):
    dims: int

    def init_params(self, key):
        del key
        return {"scale": jnp.full((self.dims,), 2.0)}

    def init_state(self, key):
        del key
        return {"calls": jnp.zeros((), jnp.int32)}

    def __call__(self, x, ps, st):
        return x * ps["scale"][None], {"calls": st["calls"] + 1}


class Pair(lx.ContainerLayer):
    dense: lx.Layer
    scale: lx.Layer

    def __call__(self, x, ps, st):
        y, st_dense = self.dense(x, ps["dense"], st["dense"])
        y, st_scale = self.scale(y, ps["scale"], st["scale"])
        return y, {"dense": st_dense, "scale": st_scale}


class Negate(lx.WrapperLayer):
    layer: lx.Layer

    def __call__(self, x, ps, st):
        y, st = self.layer(x, ps, st)
        return -y, st


def test_layers_are_immutable_hashable_and_equal_by_value():
    a, b = lx.Dense(2, 3, jax.nn.relu), lx.Dense(2, 3, jax.nn.relu)
    assert a == b and hash(a) == hash(b)
    assert a != lx.Dense(2, 3)
    with pytest.raises(AttributeError, match=r"Dense is immutable; make a changed copy: `dataclasses.replace\(layer"):
        a.in_dims = 5


def test_custom_leaf_layer_with_state_passes_contract(key):
    model = Scale(3)
    ps, st = lx.setup(key, model)
    y, st = model(jnp.ones((2, 3)), ps, st)
    np.testing.assert_array_equal(y, np.full((2, 3), 2.0))
    assert int(st["calls"]) == 1
    assert lx.parameter_count(model) == 3 and lx.state_count(model) == 1
    check_layer(model, jnp.ones((2, 3)))


def test_custom_container_and_wrapper_trees(key):
    inner = Pair(lx.Dense(2, 3), Scale(3))
    model = Negate(inner)
    ps, st = lx.setup(key, model)
    assert list(ps) == ["dense", "scale"]
    assert list(st) == ["dense", "scale"]
    expected, _ = inner(jnp.ones((4, 2)), ps, st)
    y, _ = model(jnp.ones((4, 2)), ps, st)
    np.testing.assert_array_equal(y, -expected)
    assert lx.parameter_count(model) == 9 + 3
    check_layer(model, jnp.ones((4, 2)))


def test_wrapper_must_hold_exactly_one_layer():
    class Bad(lx.WrapperLayer):
        a: lx.Layer
        b: lx.Layer

    with pytest.raises(TypeError, match="must hold exactly one layer field, found 2: a, b"):
        Bad(lx.NoOpLayer(), lx.NoOpLayer()).children()


def test_model_is_a_static_pytree_for_jit(key):
    model = lx.Chain(lx.Dense(2, 3, jnp.tanh), lx.Dense(3, 1))
    ps, st = lx.setup(key, model)
    assert jax.tree.leaves(model) == []
    traces = []

    @jax.jit
    def run(model, x, ps, st):
        traces.append(1)
        return model(x, ps, st)[0]

    x = jnp.ones((5, 2))
    np.testing.assert_allclose(run(model, x, ps, st), model(x, ps, st)[0], rtol=1e-6)
    run(lx.Chain(lx.Dense(2, 3, jnp.tanh), lx.Dense(3, 1)), x, ps, st)  # equal model: cached
    assert len(traces) == 1


def test_model_as_static_argnum(key):
    model = lx.Dense(2, 2)
    ps, st = lx.setup(key, model)
    run = jax.jit(lx.apply, static_argnums=0)
    y, _ = run(model, jnp.ones((1, 2)), ps, st)
    np.testing.assert_allclose(y, model(jnp.ones((1, 2)), ps, st)[0], rtol=1e-6)
