import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as hs
from random_models import DIMS, Gated, RunningMean, models

import luxjax as lx
from luxjax.experimental import FrozenLayer, freeze, layer_map, unfreeze
from luxjax.testing import check_layer

X = jnp.linspace(-1, 1, 4 * DIMS).reshape(4, DIMS)


def test_seed_display_line_and_counts():
    model = freeze(lx.Dense(2, 2), ("weight",))
    assert model == FrozenLayer(lx.Dense(2, 2), ("weight",))
    assert str(model) == "FrozenLayer(Dense(2 => 2), ('weight',))  # 2 parameters, plus 4 non-trainable"
    assert lx.parameter_count(model) == 2 and lx.state_count(model) == 4
    ps, st = lx.setup(jax.random.key(0), model)
    assert sum(a.size for a in jax.tree.leaves(ps)) == 2
    assert sum(a.size for a in jax.tree.leaves(st)) == 4
    assert repr(freeze(lx.Dense(2, 2))) == "FrozenLayer(Dense(2 => 2), None)"


def test_fully_frozen_dense_keeps_its_output_and_input_gradients(key):
    model = lx.Dense(5, 5, jnp.tanh)
    ps, st = lx.setup(key, model)
    frozen, ps_f, st_f = freeze(model, ps, st)
    assert frozen == FrozenLayer(model, None)
    assert ps_f == {} and list(st_f) == ["frozen_params", "states"]
    assert st_f["frozen_params"]["weight"] is ps["weight"] and st_f["states"] is st
    x = jax.random.normal(jax.random.key(3), (3, 5))
    np.testing.assert_array_equal(frozen(x, ps_f, st_f)[0], model(x, ps, st)[0])
    # gradient with respect to the input still flows, and matches finite differences
    jax.test_util.check_grads(lambda x: jnp.sum(frozen(x, ps_f, st_f)[0] ** 2), (x,), order=1, modes=["rev"])
    # the frozen values get no gradient, even when read from the state
    grads = jax.grad(lambda st: jnp.sum(frozen(x, ps_f, st)[0]))(st_f)
    assert not np.any(grads["frozen_params"]["weight"]) and not np.any(grads["frozen_params"]["bias"])


def test_partial_freeze_gradients_only_for_trainable(key):
    model = lx.Dense(3, 2)
    ps, st = lx.setup(key, model)
    frozen, ps_f, st_f = freeze(model, ps, st, ("weight",))
    assert list(ps_f) == ["bias"] and list(st_f["frozen_params"]) == ["weight"]
    grads = jax.grad(lambda ps: jnp.sum(frozen(X @ jnp.ones((DIMS, 3)), ps, st_f)[0]))(ps_f)
    assert list(grads) == ["bias"]
    np.testing.assert_allclose(grads["bias"], jnp.full((2,), 4.0))  # d/db of sum over 4 rows


def test_check_layer_on_frozen_layers():
    # unfreeze removes every FrozenLayer, these ones too: the battery compares with unfreeze(model).
    check_layer(freeze(lx.Dense(2, 3, jnp.tanh), ("weight",)), X)
    check_layer(freeze(lx.Chain(lx.Dense(2, 3), RunningMean(3))), X)
    check_layer(freeze(lx.Chain(lx.Dense(2, 3), RunningMean(3)), ("layer_2.shift",)), X)


def test_unknown_names_list_what_the_layer_has(key):
    with pytest.raises(
        ValueError, match=r"^freeze: Dense\(2 => 2\) has no parameter 'wieght'; it has 'weight', 'bias'\.$"
    ):
        freeze(lx.Dense(2, 2), ("wieght",))
    model = lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2))
    ps, st = lx.setup(key, model)
    with pytest.raises(
        ValueError, match=r"Dense\(2 => 2\) at layer_2 has no parameter 'wieght'; it has 'weight', 'bias'"
    ):
        freeze(model, ps, st, ("layer_2.wieght",))
    with pytest.raises(ValueError, match=r"Chain\(.*\) has no parameter 'layer_3.weight'; it has 'layer_1', 'layer_2'"):
        freeze(model, ("layer_3.weight",))
    with pytest.raises(
        ValueError, match=r"^FrozenLayer: Dense\(2 => 2\) has no parameter 'b'; it has 'weight', 'bias'"
    ):
        FrozenLayer(lx.Dense(2, 2), ("b",))
    with pytest.raises(TypeError, match=r"got the string 'weight'; write \('weight',\) with the trailing comma"):
        freeze(lx.Dense(2, 2), ("weight"))
    with pytest.raises(TypeError, match=r"To freeze the current values, call freeze\(layer, ps, st, which_params\)"):
        freeze(lx.Dense(2, 2), ps["layer_1"])


def test_empty_which_params_returns_the_inputs_unchanged(key):
    model = lx.Dense(2, 2)
    ps, st = lx.setup(key, model)
    assert freeze(model, ()) is model
    out = freeze(model, ps, st, ())
    assert out[0] is model and out[1] is ps and out[2] is st


def test_unfreeze_restores_order_and_values_bit_identically(key):
    model = lx.Chain(a=lx.Dense(2, 3), b=RunningMean(3), c=lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    for names in (None, ("a.bias",), ("c.weight", "a"), ("b.shift", "a.weight", "c.bias")):
        frozen, ps_f, st_f = freeze(model, ps, st, names)
        assert unfreeze(frozen) == model
        back, ps_u, st_u = unfreeze(frozen, ps_f, st_f)
        assert back == model
        assert list(ps_u) == list(ps) and all(list(ps_u[k]) == list(ps[k]) for k in ps)
        assert all(a is b for a, b in zip(jax.tree.leaves(ps_u), jax.tree.leaves(ps)))
        assert all(a is b for a, b in zip(jax.tree.leaves(st_u), jax.tree.leaves(st)))
    dense = lx.Dense(2, 2)
    assert unfreeze(freeze(dense, ("bias",))) is dense


def test_dotted_names_freeze_inside_containers(key):
    model = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    frozen, ps_f, st_f = freeze(model, ps, st, ("layer_2.weight",))
    assert frozen == lx.Chain(lx.Dense(2, 3), FrozenLayer(lx.Dense(3, 2), ("weight",)))
    assert ps_f["layer_1"] is ps["layer_1"] and list(ps_f["layer_2"]) == ["bias"]
    assert st_f["layer_2"] == {"frozen_params": {"weight": ps["layer_2"]["weight"]}, "states": {}}
    np.testing.assert_array_equal(frozen(X, ps_f, st_f)[0], model(X, ps, st)[0])
    # a whole child by name; the chain keeps its structure and paths
    whole = freeze(model, ("layer_1",))
    assert whole == lx.Chain(FrozenLayer(lx.Dense(2, 3), None), lx.Dense(3, 2))
    # through a wrapper, to the layer that owns the parameter
    skip = lx.SkipConnection(lx.Dense(2, 2), jnp.add)
    assert freeze(skip, ("weight",)) == lx.SkipConnection(FrozenLayer(lx.Dense(2, 2), ("weight",)), jnp.add)
    # a parameter a container holds beside its children: the container is wrapped
    gated = Gated(lx.Dense(2, 2), lx.Dense(2, 2))
    ps_g, st_g = lx.setup(key, gated)
    frozen_g, ps_gf, st_gf = freeze(gated, ps_g, st_g, ("gate", "left.bias"))
    assert frozen_g == FrozenLayer(Gated(FrozenLayer(lx.Dense(2, 2), ("bias",)), lx.Dense(2, 2)), ("gate",))
    assert "gate" not in ps_gf and st_gf["frozen_params"]["gate"] is ps_g["gate"]
    np.testing.assert_array_equal(frozen_g(X, ps_gf, st_gf)[0], gated(X, ps_g, st_g)[0])


def test_freezing_more_of_a_frozen_layer_extends_it(key):
    model = lx.Dense(2, 2)
    ps, st = lx.setup(key, model)
    once = freeze(model, ps, st, ("weight",))
    twice = freeze(*once, ("bias",))
    assert twice[0] == FrozenLayer(model, ("weight", "bias")) and twice[1] == {}
    assert freeze(freeze(model, ("weight",)), ("bias",)) == FrozenLayer(model, ("weight", "bias"))
    assert freeze(freeze(model), ("bias",)) == FrozenLayer(model, None)


def test_where_freezes_every_layer_of_a_type_and_a_subtree(key):
    model = lx.Chain(
        backbone=lx.Chain(lx.Dense(2, 4), RunningMean(4), lx.Dense(4, 4)),
        head=lx.Chain(lx.Dense(4, 4), RunningMean(4), lx.Dense(4, 2)),
    )
    ps, st = lx.setup(key, model)
    by_type, ps_t, st_t = freeze(model, ps, st, where=lambda path, layer: isinstance(layer, RunningMean))
    assert [type(layer) for layer in by_type["backbone"]] == [lx.Dense, FrozenLayer, lx.Dense]
    assert by_type["head"][1] == FrozenLayer(RunningMean(4), None)
    assert ps_t["head"]["layer_2"] == {} and "shift" in st_t["head"]["layer_2"]["frozen_params"]
    by_path, ps_p, _ = freeze(model, ps, st, where=lambda path, layer: path[:1] == ("backbone",))
    assert all(isinstance(layer, FrozenLayer) for layer in by_path["backbone"])
    assert by_path["head"] is model["head"]
    assert jax.tree.leaves(ps_p["backbone"]) == [] and ps_p["head"] is not None
    # a tuple of names from the predicate freezes part of each chosen layer
    weights = freeze(model, where=lambda path, layer: ("weight",) if isinstance(layer, lx.Dense) else False)
    assert weights["head"][0] == FrozenLayer(lx.Dense(4, 4), ("weight",))
    with pytest.raises(TypeError, match="either `which_params` or `where`"):
        freeze(model, ("backbone",), where=lambda path, layer: True)
    # the selectors `lora` takes: a type, a dotted pattern, a list of both
    assert freeze(model, where=RunningMean) == by_type
    assert freeze(model, where="backbone.*") == by_path
    both = freeze(model, where=["backbone.*", RunningMean])
    assert isinstance(both["head"][1], FrozenLayer) and isinstance(both["head"][0], lx.Dense)
    with pytest.raises(TypeError, match=r"freeze: `where` must be dotted path patterns, layer types or a function"):
        freeze(model, where=[3])


def test_frozen_batchnorm_still_updates_its_running_statistics(key):
    # freezing is not eval mode (as in Lux): in training mode the running statistics move
    model = lx.BatchNorm(3)
    ps, st = lx.setup(key, model)
    frozen, ps_f, st_f = freeze(model, ps, st)
    assert ps_f == {} and list(st_f["frozen_params"]) == ["scale", "bias"]
    x = jax.random.normal(jax.random.key(5), (8, 3))
    y, new_st = frozen(x, ps_f, st_f)
    np.testing.assert_allclose(new_st["states"]["running_mean"], 0.1 * np.mean(x, axis=0), rtol=1e-5)
    unbiased = np.var(np.asarray(x), axis=0, ddof=1)
    np.testing.assert_allclose(new_st["states"]["running_var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    xn = np.asarray(x)
    np.testing.assert_allclose(y, (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5), rtol=1e-4, atol=1e-5)
    assert new_st["frozen_params"] is st_f["frozen_params"]
    # test mode, reached inside the frozen state by lx.testmode, leaves them alone
    _, test_st = frozen(x, ps_f, lx.testmode(st_f))
    np.testing.assert_array_equal(test_st["states"]["running_mean"], st["running_mean"])
    check_layer(freeze(lx.BatchNorm(3), ("scale",)), x)


def test_wrong_state_is_a_clear_error(key):
    frozen = freeze(lx.Dense(2, 2), ("weight",))
    ps, st = lx.setup(key, lx.Dense(2, 2))
    with pytest.raises(lx.StructureError, match=r"`st` does not fit the layer: missing 'frozen_params.weight'"):
        frozen(X, {"bias": ps["bias"]}, {"weight": ps["weight"]})


def test_optax_step_leaves_frozen_values_bit_identical(key):
    model = lx.Chain(backbone=lx.Dense(2, 8, jnp.tanh), head=lx.Dense(8, 1))
    ps, st = lx.setup(key, model)
    model, ps, st = freeze(model, ps, st, ("backbone",))
    optimizer = optax.adam(1e-1)
    opt_state = optimizer.init(ps)
    # no optimizer state for frozen values: adam's moments mirror the trainable tree only
    assert jax.tree.leaves(opt_state[0].mu["backbone"]) == []
    assert sum(a.size for a in jax.tree.leaves(opt_state[0].mu)) == lx.parameter_count(model) == 9

    @jax.jit
    def step(ps, st, opt_state):
        def loss(ps):
            y, st_new = model(X, ps, st)
            return jnp.mean((y - 1.0) ** 2), st_new

        grads, st_new = jax.grad(loss, has_aux=True)(ps)
        updates, opt_state = optimizer.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), st_new, opt_state

    frozen_before = np.asarray(st["backbone"]["frozen_params"]["weight"]).copy()
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes a Python float with its int32 step count
        new_ps, new_st, _ = step(ps, st, opt_state)
    np.testing.assert_array_equal(np.asarray(new_st["backbone"]["frozen_params"]["weight"]), frozen_before)
    assert not np.array_equal(new_ps["head"]["weight"], ps["head"]["weight"])


def all_places(tree, prefix=()):
    """Every dotted place in a parameter tree: sub-trees (layers, nested dicts) and arrays."""
    out = []
    for key, value in tree.items():
        out.append(".".join((*prefix, key)))
        if isinstance(value, dict):
            out += all_places(value, (*prefix, key))
    return out


@hs.composite
def model_and_names(draw):
    model = draw(models())
    ps, _ = lx.setup(jax.random.key(0), model)
    names = all_places(ps)
    chosen = draw(hs.lists(hs.sampled_from(names), max_size=4, unique=True)) if names else []
    return model, tuple(chosen)


@given(model_and_names())
def test_freeze_then_unfreeze_round_trips(model_and_names):
    model, names = model_and_names
    ps, st = lx.setup(jax.random.key(0), model)
    frozen, ps_f, st_f = freeze(model, ps, st, names)
    assert lx.parameter_count(frozen) + lx.state_count(frozen) == lx.parameter_count(model) + lx.state_count(model)
    np.testing.assert_allclose(frozen(X, ps_f, st_f)[0], model(X, ps, st)[0], rtol=1e-6)
    assert unfreeze(frozen) == model and freeze(model, names) == frozen
    back, ps_u, st_u = unfreeze(frozen, ps_f, st_f)
    assert back == model
    assert jax.tree.structure(ps_u) == jax.tree.structure(ps) and jax.tree.structure(st_u) == jax.tree.structure(st)
    assert all(a is b for a, b in zip(jax.tree.leaves(ps_u), jax.tree.leaves(ps)))
    assert all(a is b for a, b in zip(jax.tree.leaves(st_u), jax.tree.leaves(st)))
    # FrozenLayer is a leaf for layer_map: its paths are places in the frozen trees
    layer_map(lambda layer, p, s, path: (layer, path.get(ps_f), path.get(st_f)), frozen, ps_f, st_f)
