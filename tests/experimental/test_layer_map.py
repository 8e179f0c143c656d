import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from random_models import DIMS, Gated, Pair, RunningMean, Scaled, leaf_paths, models

import luxjax as lx
from luxjax.experimental import FrozenLayer, freeze, layer_at, layer_map

X = jnp.linspace(-1, 1, 4 * DIMS).reshape(4, DIMS)


def identity(layer, ps, st, path):
    return layer, ps, st


def record(visits):
    def f(layer, ps, st, path):
        visits.append((path, layer, ps, st))
        return layer, ps, st

    return f


def zero_dense_params(layer, ps, st, path):
    if isinstance(layer, lx.Dense):
        print(f"zeroing params of {path!r}")
        ps = {**ps, "weight": jnp.zeros_like(ps["weight"]), "bias": jnp.zeros_like(ps["bias"])}
    return layer, ps, st


def test_seed_example_zeroes_dense_and_leaves_the_batchnorm(key, capsys):
    model = lx.Parallel(
        jnp.add,
        chain=lx.Chain(dense_1=lx.Dense(2, 3), bn=lx.BatchNorm(3), dense_2=lx.Dense(3, 5)),
        dense_3=lx.Dense(5, 1),
    )
    ps, st = lx.setup(key, model)
    new_model, new_ps, new_st = layer_map(zero_dense_params, model, ps, st)
    assert capsys.readouterr().out == (
        "zeroing params of KeyPath('chain', 'dense_1')\n"
        "zeroing params of KeyPath('chain', 'dense_2')\n"
        "zeroing params of KeyPath('dense_3')\n"
    )
    for path in ("chain.dense_1", "chain.dense_2", "dense_3"):
        for name in ("weight", "bias"):
            assert not np.any(lx.KeyPath.parse(path).get(new_ps)[name])
    assert new_ps["chain"]["bn"] is ps["chain"]["bn"]
    assert new_st["chain"]["bn"] is st["chain"]["bn"] and list(st["chain"]["bn"])[:2] == ["running_mean", "running_var"]
    assert new_model == model
    assert list(new_ps) == ["chain", "dense_3"] and list(new_ps["chain"]) == ["dense_1", "bn", "dense_2"]


def test_custom_container_and_wrapper(key):
    inner = Pair(dense=lx.Dense(2, 3), conv=lx.Dense(3, 2))
    for model in (inner, Scaled(inner)):
        ps, st = lx.setup(key, model)
        visits = []
        layer_map(record(visits), model, ps, st)
        assert [(p, layer) for p, layer, _, _ in visits] == [
            (lx.KeyPath("dense"), lx.Dense(2, 3)),
            (lx.KeyPath("conv"), lx.Dense(3, 2)),
        ]
        assert visits[0][2] is ps["dense"] and visits[1][2] is ps["conv"]


def test_wrapper_around_a_single_leaf(key):
    # Lux fails here with an assertion; the leaf is visited at the wrapper's (root) path
    model = lx.SkipConnection(lx.Dense(2, 2), jnp.add)
    ps, st = lx.setup(key, model)
    visits = []
    layer_map(record(visits), model, ps, st)
    assert [(p, layer) for p, layer, _, _ in visits] == [(lx.KeyPath(), lx.Dense(2, 2))]
    new_model, new_ps, _ = layer_map(zero_dense_params, model, ps, st)
    assert new_model == model and not np.any(new_ps["weight"])
    np.testing.assert_array_equal(new_model(X, new_ps, st)[0], X)  # 0 + x


def test_container_whose_connection_is_a_layer(key):
    model = lx.SkipConnection(lx.Dense(2, 2), lx.WrappedFunction(lambda pair: pair[0] * pair[1]))
    ps, st = lx.setup(key, model)
    visits = []
    layer_map(record(visits), model, ps, st)
    assert [p for p, *_ in visits] == [lx.KeyPath("layers"), lx.KeyPath("connection")]
    assert isinstance(visits[1][1], lx.WrappedFunction)


def test_container_with_its_own_parameters_passes_them_through(key):
    model = lx.Chain(g=Gated(lx.Dense(2, 2), RunningMean(2)))
    ps, st = lx.setup(key, model)
    visits = []
    new_model, new_ps, new_st = layer_map(record(visits), model, ps, st)
    assert [p for p, *_ in visits] == [lx.KeyPath("g", "left"), lx.KeyPath("g", "right")]
    assert new_ps["g"]["gate"] is ps["g"]["gate"]
    _, zeroed, _ = layer_map(zero_dense_params, model, ps, st)
    assert zeroed["g"]["gate"] is ps["g"]["gate"] and not np.any(zeroed["g"]["left"]["weight"])
    np.testing.assert_array_equal(new_model(X, new_ps, new_st)[0], model(X, ps, st)[0])


class LowRank(lx.Layer):
    """A low-rank adapter around a frozen-shape Dense: y = x @ (a @ b).T + bias."""

    in_dims: int
    out_dims: int
    rank: int

    def init_params(self, key):
        ka, kb = jax.random.split(key)
        return {
            "a": jax.random.normal(ka, (self.out_dims, self.rank)),
            "b": jax.random.normal(kb, (self.rank, self.in_dims)),
            "bias": jnp.zeros((self.out_dims,)),
        }

    def __call__(self, x, ps, st):
        return x @ (ps["a"] @ ps["b"]).T + jnp.reshape(ps["bias"], (1, -1)), st


def to_low_rank(layer, ps, st, path):
    if not isinstance(layer, lx.Dense):
        return layer, ps, st
    u, s, vt = jnp.linalg.svd(ps["weight"], full_matrices=False)
    new = LowRank(layer.in_dims, layer.out_dims, 1)
    return new, {"a": u[:, :1] * s[:1].reshape(1, 1), "b": vt[:1], "bias": ps["bias"]}, st


def test_f_may_change_the_parameter_structure(key):
    model = lx.Chain(enc=lx.Dense(2, 3), mid=RunningMean(3), dec=lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    new_model, new_ps, new_st = layer_map(to_low_rank, model, ps, st)
    assert new_model == lx.Chain(enc=LowRank(2, 3, 1), mid=RunningMean(3), dec=LowRank(3, 2, 1))
    assert set(new_ps["enc"]) == {"a", "b", "bias"}
    y, _ = new_model(X, new_ps, new_st)
    # the reference: the same forward pass written by hand with rank-1 weights
    h = X @ (new_ps["enc"]["a"] @ new_ps["enc"]["b"]).T + new_ps["enc"]["bias"].reshape(1, -1)
    h = h + ps["mid"]["shift"].reshape(1, -1)
    expected = h @ (new_ps["dec"]["a"] @ new_ps["dec"]["b"]).T + new_ps["dec"]["bias"].reshape(1, -1)
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_f_may_freeze_layers_and_frozen_layers_are_leaves(key):
    model = lx.Chain(enc=lx.Dense(2, 3), mid=RunningMean(3), dec=lx.Dense(3, 2))
    ps, st = lx.setup(key, model)

    def freeze_weights(layer, ps, st, path):
        return freeze(layer, ps, st, ("weight",)) if isinstance(layer, lx.Dense) else (layer, ps, st)

    frozen, ps_f, st_f = layer_map(freeze_weights, model, ps, st)
    assert frozen["enc"] == FrozenLayer(lx.Dense(2, 3), ("weight",))
    np.testing.assert_array_equal(frozen(X, ps_f, st_f)[0], model(X, ps, st)[0])
    visits = []
    layer_map(record(visits), frozen, ps_f, st_f)
    assert [(p, type(layer)) for p, layer, _, _ in visits] == [
        (lx.KeyPath("enc"), FrozenLayer),
        (lx.KeyPath("mid"), RunningMean),
        (lx.KeyPath("dec"), FrozenLayer),
    ]
    # the two-argument freeze gives a layer whose trees were not moved: a clear error
    with pytest.raises(
        ValueError, match=r"FrozenLayer\(Dense\(2 => 3\), \('weight',\)\) at enc: .* unexpected 'weight'"
    ):
        layer_map(lambda layer, ps, st, path: (freeze(layer, ("weight",)), ps, st), model, ps, st)


def test_f_returning_something_else_is_an_error_naming_the_path(key):
    model = lx.Chain(enc=lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2)))
    ps, st = lx.setup(key, model)
    with pytest.raises(TypeError, match=r"`f` must return a tuple \(layer, ps, st\), but at enc.layer_1 .* None"):
        layer_map(lambda layer, ps, st, path: None, model, ps, st)
    with pytest.raises(TypeError, match=r"at enc.layer_1 \(Dense\(2 => 2\)\) it returned tuple"):
        layer_map(lambda layer, ps, st, path: (layer, ps), model, ps, st)


def test_parameters_that_do_not_fit_the_layer_are_an_error_naming_the_path(key):
    model = lx.Chain(enc=lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2)))
    ps, st = lx.setup(key, model)

    def forgets_params(layer, ps, st, path):
        return (LowRank(2, 2, 1), ps, st) if path == ("enc", "layer_2") else (layer, ps, st)

    with pytest.raises(
        ValueError,
        match=r"LowRank\(.*\) at enc.layer_2: .* parameters that do not fit .* missing 'a', 'b'; unexpected 'weight'",
    ):
        layer_map(forgets_params, model, ps, st)

    def wrong_shape(layer, ps, st, path):
        return layer, {**ps, "weight": jnp.ones((3, 2))}, st

    with pytest.raises(
        ValueError, match=r"Dense\(2 => 2\) at enc.layer_1: .* 'weight' has shape \(3, 2\), expected \(2, 2\)"
    ):
        layer_map(wrong_shape, model, ps, st)

    def forgets_state(layer, ps, st, path):
        return RunningMean(2), {"shift": jnp.ones(2)}, st

    with pytest.raises(ValueError, match=r"at enc.layer_1: .* states that do not fit .* missing 'mean', 'training'"):
        layer_map(forgets_state, model, ps, st)


def test_works_under_jit(key):
    model = lx.Chain(lx.Dense(2, 2), RunningMean(2))
    ps, st = lx.setup(key, model)
    zeroed = jax.jit(lambda ps, st: layer_map(zero_dense_params, model, ps, st)[1])(ps, st)
    assert not np.any(zeroed["layer_1"]["weight"])
    np.testing.assert_array_equal(zeroed["layer_2"]["shift"], ps["layer_2"]["shift"])


def test_missing_child_entries_are_an_error(key):
    model = lx.Chain(a=lx.Chain(b=lx.Dense(2, 2)))
    with pytest.raises(ValueError, match=r"at a: parameters have no entry 'b' .*; found a list"):
        layer_map(identity, model, {"a": [1]}, {"a": {"b": {}}})
    with pytest.raises(ValueError, match=r"at a: parameters have no entry 'b' for child Dense\(2 => 2\); found 'c'"):
        layer_map(identity, model, {"a": {"c": {}}}, {"a": {"b": {}}})


def test_layer_at(key):
    model = lx.Chain(
        enc=lx.SkipConnection(lx.Chain(d1=lx.Dense(2, 2), d2=lx.Dense(2, 2)), jnp.add), head=lx.Dense(2, 1)
    )
    ps, st = lx.setup(key, model)
    layer, layer_ps, layer_st = layer_at(model, ps, st, lx.KeyPath("enc", "d2"))
    assert layer == lx.Dense(2, 2) and layer_ps is ps["enc"]["d2"] and layer_st is st["enc"]["d2"]
    assert layer_at(model, ps, st, "head")[1] is ps["head"]
    assert layer_at(model, ps, st, ("enc",))[0] is model["enc"]  # the outermost layer at a wrapper's path
    assert layer_at(model, ps, st, "") == (model, ps, st)
    assert layer_at(model, None, None, "enc.d1") == (lx.Dense(2, 2), None, None)
    with pytest.raises(
        KeyError, match=r"no layer at 'enc.d3': Chain\(.*\) at enc has no child 'd3'; it has children 'd1', 'd2'"
    ):
        layer_at(model, ps, st, "enc.d3")
    with pytest.raises(KeyError, match=r"no layer at 'head.weight': .* 'weight' is a parameter of it, not a layer"):
        layer_at(model, ps, st, "head.weight")
    # every path layer_map visits leads to the same layer and trees
    visits = []
    layer_map(record(visits), model, ps, st)
    for path, _, leaf_ps, leaf_st in visits:
        found = layer_at(model, ps, st, path)
        assert found[1] is leaf_ps and found[2] is leaf_st


@given(models())
def test_identity_changes_nothing_and_visits_the_leaf_paths(model):
    ps, st = lx.setup(jax.random.key(0), model)
    visits = []
    new_model, new_ps, new_st = layer_map(record(visits), model, ps, st)
    assert new_model == model
    assert jax.tree.structure(new_ps) == jax.tree.structure(ps)
    assert all(a is b for a, b in zip(jax.tree.leaves(new_ps), jax.tree.leaves(ps)))
    assert all(a is b for a, b in zip(jax.tree.leaves(new_st), jax.tree.leaves(st)))
    assert [p for p, *_ in visits] == leaf_paths(model)
    for path, layer, leaf_ps, leaf_st in visits:
        assert path.get(ps) is leaf_ps and path.get(st) is leaf_st and not layer.children()


@given(models())
def test_zeroing_every_dense_gives_a_runnable_model(model):
    ps, st = lx.setup(jax.random.key(0), model)
    _, new_ps, new_st = layer_map(lambda layer, ps, st, path: zero_dense_params(layer, ps, st, path), model, ps, st)
    y, _ = model(X, new_ps, new_st)
    assert y.shape == X.shape
