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


def test_keys_must_be_strings():
    with pytest.raises(TypeError, match="KeyPath keys must be strings, got 1 of type int"):
        lx.KeyPath("a", 1)
