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


# -- issue 18: SelectDim and ReverseSequence ----------------------------------------------------


def test_select_dim_is_zero_based():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(lx.SelectDim(1, 0)(x, {}, {})[0], x[:, 0])
    np.testing.assert_array_equal(lx.SelectDim(-1, (3, 1))(x, {}, {})[0], x[:, :, [3, 1]])
    assert repr(lx.SelectDim(2, [0, 1])) == "SelectDim(dim=2, index=(0, 1))"
    with pytest.raises(ValueError, match=r"index 3 is out of range for axis 1 of size 3"):
        lx.SelectDim(1, 3)(x, {}, {})
    with pytest.raises(ValueError, match=r"axis 3 is out of range for an input of shape \(2, 3, 4\)"):
        lx.SelectDim(3, 0)(x, {}, {})


def test_reverse_sequence_defaults_to_the_time_axis():
    x = jnp.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_array_equal(lx.ReverseSequence()(x, {}, {})[0], x[:, ::-1])
    np.testing.assert_array_equal(lx.ReverseSequence(-1)(x, {}, {})[0], x[:, :, ::-1])
    assert repr(lx.ReverseSequence(0)) == "ReverseSequence(0)"
    with pytest.raises(ValueError, match=r"axis 3 is out of range for an input of shape \(2, 3, 2\)"):
        lx.ReverseSequence(3)(x, {}, {})
