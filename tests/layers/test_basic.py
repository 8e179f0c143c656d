import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def test_wrapped_function_and_noop():
    check_layer(lx.WrappedFunction(jnp.tanh), jnp.linspace(-1, 1, 6).reshape(3, 2))
    check_layer(lx.NoOpLayer(), jnp.ones((3, 2)))
    assert repr(lx.WrappedFunction(jax.nn.relu)) == "WrappedFunction(relu)"
    with pytest.raises(ValueError, match="WrappedFunction: `fn` must be a plain function of the input, got 3"):
        lx.WrappedFunction(3)


def test_reshape_and_flatten():
    x = jnp.arange(24.0).reshape(4, 6)
    check_layer(lx.ReshapeLayer((2, 3)), x)
    y, _ = lx.ReshapeLayer((2, 3))(x, {}, {})
    np.testing.assert_array_equal(y, np.arange(24.0).reshape(4, 2, 3))
    check_layer(lx.FlattenLayer(), y)
    np.testing.assert_array_equal(lx.FlattenLayer()(y, {}, {})[0], x)


def test_reshape_rejects_wrong_size():
    with pytest.raises(
        ValueError, match=r"ReshapeLayer\(\(4,\)\): expected samples of 4 elements \(batch first\), got shape \(2, 6\)"
    ):
        lx.ReshapeLayer((4,))(jnp.ones((2, 6)), {}, {})
    with pytest.raises(ValueError, match=r"ReshapeLayer: `dims` must be positive ints, got \(0, 2\)"):
        lx.ReshapeLayer((0, 2))
