import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx


def test_repr_str_and_tuple_equality():
    path = lx.KeyPath("chain", "dense_1")
    assert repr(path) == "KeyPath('chain', 'dense_1')"
    assert repr(lx.KeyPath("dense_3")) == "KeyPath('dense_3')"
    assert str(path) == "chain.dense_1"
    assert path == ("chain", "dense_1")
    assert hash(path) == hash(("chain", "dense_1"))


def test_parse_append_and_slice():
    path = lx.KeyPath.parse("a.b")
    assert path / "c" == lx.KeyPath("a", "b", "c")
    assert isinstance(path[:1], lx.KeyPath)
    assert lx.KeyPath.parse("") == lx.KeyPath()


def test_get_reports_missing_key():
    tree = {"a": {"b": 1}}
    assert lx.KeyPath("a", "b").get(tree) == 1
    with pytest.raises(KeyError, match=r"no key 'c' at a of path a\.c; found 'b'"):
        lx.KeyPath("a", "c").get(tree)


def test_keys_are_names_or_block_indices():
    assert str(lx.KeyPath("blocks", 7, "mlp")) == "blocks.7.mlp"
    assert lx.KeyPath.parse("blocks.7.mlp") == ("blocks", 7, "mlp")
    with pytest.raises(TypeError, match=r"KeyPath keys must be strings \(names\) or ints >= 0 .* got 1.5 of"):
        lx.KeyPath("a", 1.5)
    with pytest.raises(TypeError, match=r"got -1 of type int"):
        lx.KeyPath("a", -1)


def test_a_block_index_takes_that_block_of_a_stacked_tree():
    tree = {"blocks": {"w": jnp.arange(6.0).reshape(3, 2)}}
    np.testing.assert_array_equal(lx.KeyPath("blocks", 2, "w").get(tree), [4.0, 5.0])
