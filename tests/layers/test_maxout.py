import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx


def test_maxout_is_the_elementwise_maximum_of_its_branches(key):
    model = lx.Maxout(a=lx.Dense(2, 3), b=lx.Dense(2, 3, use_bias=False), c=lx.Dense(2, 3))
    ps, st = lx.setup(key, model)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    branches = [model[name](x, ps[name], st[name])[0] for name in ("a", "b", "c")]
    y, new_st = model(x, ps, st)
    np.testing.assert_array_equal(y, jnp.maximum(jnp.maximum(branches[0], branches[1]), branches[2]))
    assert new_st == {"a": {}, "b": {}, "c": {}}
    assert repr(model) == "Maxout(a=Dense(2 => 3), b=Dense(2 => 3, use_bias=False), c=Dense(2 => 3))"
    assert repr(model[0:2]) == "Maxout(a=Dense(2 => 3), b=Dense(2 => 3, use_bias=False))"
    assert lx.parameter_count(model) == 9 + 6 + 9


def test_maxout_needs_a_layer():
    with pytest.raises(ValueError, match=r"Maxout: give at least one layer"):
        lx.Maxout()
    with pytest.raises(TypeError, match=r"Maxout: child 'layer_1' must be a luxjax Layer"):
        lx.Maxout(jnp.tanh)
