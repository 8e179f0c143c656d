import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs

import luxjax as lx
from luxjax.experimental import share_parameters, tie, tied_groups


@pytest.fixture
def ps(key, seed_model):
    return lx.setup(key, seed_model)[0]


def test_seed_example_ties_by_identity(ps, seed_model):
    shared = share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")))
    assert shared["d3"]["l2"]["weight"] is shared["d1"]["weight"]
    assert shared["d3"]["l2"]["bias"] is shared["d1"]["bias"]
    assert shared["d2"]["weight"] is shared["d3"]["l1"]["weight"]
    assert shared["d2"]["bias"] is shared["d3"]["l1"]["bias"]
    # each group takes the value at its first accessor
    assert shared["d1"]["weight"] is ps["d3"]["l2"]["weight"]
    assert shared["d3"]["l1"]["weight"] is ps["d2"]["weight"]
    # structure and key order unchanged; the model runs
    assert list(shared) == ["d1", "d3", "d2"]
    assert jax.tree.structure(shared) == jax.tree.structure(ps)
    y, _ = seed_model(jnp.ones((3, 2)), shared, lx.setup(jax.random.key(1), seed_model)[1])
    assert y.shape == (3, 2)


def test_input_is_not_changed(ps):
    before = {k: jax.tree.leaves(v) for k, v in ps.items()}
    share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")))
    after = {k: jax.tree.leaves(v) for k, v in ps.items()}
    assert all(a is b for k in before for a, b in zip(before[k], after[k]))
    assert ps["d1"]["weight"] is not ps["d3"]["l2"]["weight"]


def test_tied_places_get_their_own_dicts(ps):
    shared = share_parameters(ps, (("d3.l2", "d1"),))
    assert shared["d3"]["l2"] is not shared["d1"]
    assert shared["d3"] is not ps["d3"]


def test_new_parameters_are_used_per_group(ps):
    w = jnp.full((4, 2), 3.0)
    b = jnp.zeros(4)
    shared = share_parameters(ps, (("d1", "d3.l2"),), [{"weight": w, "bias": b}])
    assert shared["d1"]["weight"] is w and shared["d3"]["l2"]["weight"] is w
    assert shared["d1"]["bias"] is b
    assert shared["d2"]["weight"] is ps["d2"]["weight"]


def test_leaf_level_ties(ps):
    shared = share_parameters(ps, (("d1.bias", "d3.l2.bias"),))
    assert shared["d1"]["bias"] is shared["d3"]["l2"]["bias"]
    assert shared["d1"]["weight"] is not shared["d3"]["l2"]["weight"]


def test_tied_groups_are_sorted_leaf_groups(ps):
    shared = share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")))
    groups = tied_groups(shared)
    assert groups == (
        (lx.KeyPath("d1", "bias"), lx.KeyPath("d3", "l2", "bias")),
        (lx.KeyPath("d1", "weight"), lx.KeyPath("d3", "l2", "weight")),
        (lx.KeyPath("d2", "bias"), lx.KeyPath("d3", "l1", "bias")),
        (lx.KeyPath("d2", "weight"), lx.KeyPath("d3", "l1", "weight")),
    )
    # independent of dict order, which jit and tree.map change
    assert tied_groups(jax.tree.map(lambda x: x, shared)) == groups
    assert tied_groups(ps) == ()


def test_tie_restores_identity_lost_to_tree_map(ps):
    shared = share_parameters(ps, (("d3.l2", "d1"),))
    groups = tied_groups(shared)
    mapped = jax.tree.map(lambda x: x * 2, shared)
    assert mapped["d1"]["weight"] is not mapped["d3"]["l2"]["weight"]
    retied = tie(mapped, groups)
    assert tied_groups(retied) == groups
    assert retied["d1"]["weight"] is mapped["d1"]["weight"]


def test_overlapping_groups_are_rejected(ps):
    with pytest.raises(ValueError, match=r"accessors 'd1' and 'd1' in groups 0 and 1 overlap"):
        share_parameters(ps, (("d1", "d3.l2"), ("d1", "d2")))


def test_overlap_by_prefix_is_rejected(ps):
    with pytest.raises(ValueError, match=r"accessors 'd3' and 'd3.l1.weight' in groups 0 and 1 overlap"):
        share_parameters(ps, (("d3", "d1"), ("d3.l1.weight", "d2.weight")))
    with pytest.raises(ValueError, match=r"accessors 'd1' and 'd1.weight' in the same group overlap"):
        share_parameters(ps, (("d1", "d1.weight"),))


def test_duplicates_within_a_group_are_rejected(ps):
    with pytest.raises(ValueError, match=r"'d1' appears twice in group \('d1', 'd3.l2', 'd1'\)"):
        share_parameters(ps, (("d1", "d3.l2", "d1"),))


def test_missing_accessor_lists_the_keys_there(ps):
    with pytest.raises(ValueError, match=r"`ps` has no 'd3.l3': no key 'l3' at d3, which has 'l1', 'l2'"):
        share_parameters(ps, (("d1", "d3.l3"),))
    with pytest.raises(ValueError, match=r"no key 'd9' at the root, which has 'd1', 'd3', 'd2'"):
        share_parameters(ps, (("d9", "d1"),))


def test_new_parameters_of_wrong_length(ps):
    with pytest.raises(ValueError, match=r"one value per group of `sharing` \(2\), got 1"):
        share_parameters(ps, (("d3.l2", "d1"), ("d2", "d3.l1")), [ps["d1"]])


def test_shape_mismatch_names_both_accessors(ps):
    with pytest.raises(ValueError, match=r"'d3.l1' has weight of shape \(2, 4\) but 'd1' has \(4, 2\)"):
        share_parameters(ps, (("d1", "d3.l1"),))


def test_structure_mismatch():
    ps = {"a": {"weight": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "b": {"weight": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match=r"'b' has entries 'weight' but 'a' has 'weight', 'bias'"):
        share_parameters(ps, (("a", "b"),))


def test_layer_tied_to_an_array_is_a_structure_mismatch(ps):
    with pytest.raises(ValueError, match=r"'d1.bias' has entries one array but 'd3.l2' has 'weight', 'bias'"):
        share_parameters(ps, (("d3.l2", "d1.bias"),))


def test_dtype_mismatch():
    ps = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(3, jnp.float16)}
    with pytest.raises(ValueError, match=r"'b' has dtype float16 but 'a' has float32"):
        share_parameters(ps, (("a", "b"),))


def test_new_parameters_mismatch_is_named():
    ps = {"a": jnp.ones(3), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"'a' has shape \(3,\) but new_parameters\[0\] has \(4,\)"):
        share_parameters(ps, (("a", "b"),), [jnp.ones(4)])


def test_python_scalars_cannot_be_tied():
    ps = {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match=r"ties are between arrays, but 'a' is 1.0 of type float"):
        share_parameters(ps, (("a", "b"),))


def test_sharing_must_be_groups_of_strings(ps):
    with pytest.raises(ValueError, match=r"`sharing` must be a tuple of groups"):
        share_parameters(ps, "d1")
    with pytest.raises(ValueError, match=r"each group in `sharing` must be a tuple of dotted accessors"):
        share_parameters(ps, ("d1", "d2"))
    with pytest.raises(ValueError, match=r"accessors must be non-empty dotted strings"):
        share_parameters(ps, (("d1", 3),))


@given(hs.lists(hs.integers(1, 3), min_size=2, max_size=5), hs.data())
def test_share_keeps_structure_and_ties_exactly_the_group(sizes, data):
    # a flat model of equal Dense layers: any disjoint grouping keeps the structure and ties
    ps = {f"l{i}": {"weight": jnp.full((2, 2), float(i)), "bias": jnp.zeros(2)} for i in range(len(sizes))}
    names = list(ps)
    perm = data.draw(hs.permutations(names))
    cut = data.draw(hs.integers(2, len(names)))
    group = tuple(perm[:cut])
    shared = share_parameters(ps, (group,))
    assert jax.tree.structure(shared) == jax.tree.structure(ps)
    assert list(shared) == names
    for name in names:
        expected = ps[group[0]] if name in group else ps[name]
        assert shared[name]["weight"] is expected["weight"]
        np.testing.assert_array_equal(shared[name]["bias"], expected["bias"])


def test_tying_keeps_each_place_in_its_own_key_order():
    ps = {"a": {"w": jnp.ones(2), "b": jnp.zeros(2)}, "c": {"b": jnp.zeros(2), "w": jnp.ones(2)}}
    tied = share_parameters(ps, (("a", "c"),))
    assert list(tied["a"]) == ["w", "b"] and list(tied["c"]) == ["b", "w"]
    assert tied["c"]["w"] is tied["a"]["w"] and tied["c"]["b"] is tied["a"]["b"]
