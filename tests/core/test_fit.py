"""A model's outermost call checks `ps` and `st` against the model (issue 13): nothing silently wrong."""

import jax
import jax.numpy as jnp
import pytest

import luxjax as lx
from luxjax import experimental as lxe

X = jnp.ones((5, 2))


def test_parameters_of_another_model_are_an_error_naming_the_paths(key):
    model = lx.Chain(enc=lx.Dense(2, 4), dec=lx.Dense(4, 1))
    _, st = lx.setup(key, model)
    other, _ = lx.setup(key, lx.Chain(enc=lx.Dense(2, 3), dec=lx.Dense(3, 1)))
    message = r"`ps` does not fit the layer: 'dec.weight' has shape \(1, 3\), expected \(1, 4\)"
    with pytest.raises(lx.StructureError, match=message):
        model(X, other, st)
    with pytest.raises(lx.StructureError, match=message):  # at trace time under jit too
        jax.jit(model)(X, other, st)


def test_a_bias_that_would_broadcast_is_an_error(key):
    model = lx.Dense(2, 4)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.StructureError, match=r"'bias' has shape \(1,\), expected \(4,\)"):
        model(X, {**ps, "bias": jnp.zeros(1)}, st)


def test_swapped_trees_are_recognised(key):
    model = lx.Chain(lx.Dense(2, 3), lx.BatchNorm(3))
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.StructureError, match=r"`ps` and `st` are swapped: call it as `model\(x, ps, st\)`"):
        model(X, st, ps)


def test_a_frozen_layer_given_its_frozen_weight_in_ps_is_an_error(key):
    frozen, ps, st = lxe.freeze(lx.Dense(2, 2), *lx.setup(key, lx.Dense(2, 2)), ("weight",))
    with pytest.raises(lx.StructureError, match=r"`ps` does not fit the layer: unexpected 'weight'"):
        frozen(X, {**ps, "weight": st["frozen_params"]["weight"]}, st)


def test_a_sub_model_called_alone_is_checked_against_itself(key):
    model = lx.Chain(enc=lx.Dense(2, 4), dec=lx.Dense(4, 1))
    ps, st = lx.setup(key, model)
    y, _ = model["enc"](X, ps["enc"], st["enc"])
    assert y.shape == (5, 4)
    with pytest.raises(lx.StructureError, match=r"Dense\(2 => 4\): `ps` does not fit the layer: missing 'bias'"):
        model["enc"](X, {"weight": ps["enc"]["weight"]}, st["enc"])


def test_a_misspelled_state_name_is_an_error(key):
    _, st = lx.setup(key, lx.Chain(lx.Dense(2, 2), lx.BatchNorm(2)))
    with pytest.raises(KeyError, match=r"update_state: no entry 'trainng' anywhere in `st`; its entries are named"):
        lx.update_state(st, "trainng", lx.Training(False))
    assert lx.testmode({"layer_1": {}}) == {"layer_1": {}}  # a model without a training flag: nothing to set


@pytest.mark.parametrize("name", ["a.b", "", "7"])
def test_child_names_must_be_path_parts(name):
    with pytest.raises(lx.ConfigError, match=rf"child names are paths' parts, .* got '{name}'"):
        lx.Chain(**{name: lx.Dense(1, 1)})


def test_a_missing_or_extra_empty_entry_is_named(key):
    model = lx.Chain(enc=lx.Dense(2, 4), dec=lx.Dense(4, 1))
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.StructureError, match=r"`ps` does not fit the layer: unexpected 'extra'\."):
        model(X, {**ps, "extra": {}}, st)
    with pytest.raises(lx.StructureError, match=r"`st` does not fit the layer: missing 'dec'\."):
        model(X, ps, {"enc": {}})
