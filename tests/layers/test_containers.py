import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer

X = jnp.linspace(-1, 1, 8).reshape(4, 2)


def test_chain_contract_and_indexing():
    model = lx.Chain(d1=lx.Dense(2, 3, jnp.tanh), d2=lx.Dense(3, 2))
    check_layer(model, X)
    assert model[0] == lx.Dense(2, 3, jnp.tanh)
    assert model["d2"] == lx.Dense(3, 2)
    assert model[0:1] == lx.Chain(d1=lx.Dense(2, 3, jnp.tanh))
    positional = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 3), lx.Dense(3, 1))
    assert list(positional[1:3].children()) == ["layer_2", "layer_3"]
    assert len(positional) == 3 and list(positional)[2] == lx.Dense(3, 1)
    with pytest.raises(KeyError, match="Chain has no child 'd3'; it has 'd1', 'd2'"):
        model["d3"]


def test_chain_equals_composition(key):
    model = lx.Chain(lx.Dense(2, 3, jnp.tanh), lx.Dense(3, 2))
    ps, st = lx.setup(key, model)
    h, _ = model[0](X, ps["layer_1"], st["layer_1"])
    expected, _ = model[1](h, ps["layer_2"], st["layer_2"])
    np.testing.assert_array_equal(model(X, ps, st)[0], expected)


def test_chain_rejects_non_layers_naming_them():
    with pytest.raises(TypeError, match=r"Chain: child 'layer_2' must be a luxjax Layer, got .* Wrap plain functions"):
        lx.Chain(lx.Dense(2, 2), jax.nn.relu)
    with pytest.raises(TypeError, match=r"Chain: child 'head' must be a luxjax Layer, got 3 of type int"):
        lx.Chain(head=3)
    with pytest.raises(TypeError, match="either all positionally or all by name"):
        lx.Chain(lx.Dense(2, 2), head=lx.Dense(2, 2))


def test_chain_reports_missing_parameters(key):
    model = lx.Chain(a=lx.Dense(2, 2))
    with pytest.raises(lx.StructureError, match=r"`ps` does not fit the layer: missing 'a.bias', 'a.weight'"):
        model(X, {"b": {}}, {"a": {}})


def test_parallel_same_input_and_tuple_input(key):
    model = lx.Parallel(jnp.add, lx.Dense(2, 3), lx.Dense(2, 3))
    check_layer(model, X)
    ps, st = lx.setup(key, model)
    a, _ = model[0](X, ps["layer_1"], st["layer_1"])
    b, _ = model[1](2 * X, ps["layer_2"], st["layer_2"])
    np.testing.assert_allclose(model((X, 2 * X), ps, st)[0], a + b, rtol=1e-6)
    as_tuple = lx.Parallel(None, lx.Dense(2, 3), lx.Dense(2, 1))
    ys, _ = as_tuple(X, *lx.setup(key, as_tuple))
    assert [y.shape for y in ys] == [(4, 3), (4, 1)]
    with pytest.raises(TypeError, match=r"Parallel: `connection` must be a function, a layer or None, got 3"):
        lx.Parallel(3, lx.Dense(2, 2), lx.Dense(2, 2))


def test_branch_layer(key):
    model = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 4))
    check_layer(model, X)
    fused = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 3), fusion=jnp.multiply)
    check_layer(fused, X)
    ps, st = lx.setup(key, fused)
    a, _ = fused[0](X, ps["layer_1"], st["layer_1"])
    b, _ = fused[1](X, ps["layer_2"], st["layer_2"])
    np.testing.assert_allclose(fused(X, ps, st)[0], a * b, rtol=1e-6)


def test_pairwise_fusion_follows_lux(key):
    model = lx.PairwiseFusion(jnp.add, lx.Dense(2, 2), lx.Dense(2, 2))
    check_layer(model, X)
    ps, st = lx.setup(key, model)
    l1 = lambda h: model[0](h, ps["layer_1"], st["layer_1"])[0]  # noqa: E731
    l2 = lambda h: model[1](h, ps["layer_2"], st["layer_2"])[0]  # noqa: E731
    np.testing.assert_allclose(model(X, ps, st)[0], X + l2(X + l1(X)), rtol=1e-6)
    x0, x1, x2 = X, 2 * X, 3 * X
    np.testing.assert_allclose(model((x0, x1, x2), ps, st)[0], x2 + l2(x1 + l1(x0)), rtol=1e-6)
    with pytest.raises(ValueError, match="a tuple input needs 3 entries .* got 2"):
        model((x0, x1), ps, st)


def _vcat(a, b):
    return jnp.concatenate([jnp.atleast_1d(a), jnp.atleast_1d(b)])


def test_issue_18_pairwise_fusion_calls_connection_as_lux_code_does(key):
    # Lux's test/core_layers/containers_tests.jl, "PairwiseFusion": connection(layer_i(y), x[i + 1]).
    model = lx.PairwiseFusion(
        _vcat,
        lx.WrappedFunction(lambda x: x + 1),
        lx.WrappedFunction(lambda x: x + 2),
        lx.WrappedFunction(lambda x: x**3),
    )
    ps, st = lx.setup(key, model)
    x = tuple(jnp.array(v) for v in (2, 10, 20, 40))
    np.testing.assert_array_equal(model(x, ps, st)[0], [125, 1728, 8000, 40])
    np.testing.assert_array_equal(model(jnp.array(7), ps, st)[0], [1000, 729, 343, 7])
    with pytest.raises(TypeError, match=r"PairwiseFusion: `connection` must be a function of two arguments"):
        lx.PairwiseFusion(lx.NoOpLayer(), lx.Dense(2, 2))


def _hstack_then_norm(width):
    """A combining layer with parameters and states of its own: it takes the tuple of branch outputs."""
    return lx.Chain(lx.WrappedFunction(jnp.hstack), lx.BatchNorm(width))


@pytest.mark.parametrize("widths", [(3, 1), (3, 1, 2)], ids=["two branches", "three branches"])
def test_issue_18_parallel_connection_layer_has_its_own_entry(key, widths):
    branches = [lx.Dense(2, w, jnp.tanh) for w in widths]
    connection = _hstack_then_norm(sum(widths))
    model = lx.Parallel(connection, *branches)
    check_layer(model, X)
    ps, st = lx.setup(key, model)
    assert list(ps) == ["layers", "connection"] and list(st) == ["layers", "connection"]
    assert list(ps["layers"]) == [f"layer_{i + 1}" for i in range(len(widths))]
    inputs = tuple((i + 1) * X for i in range(len(widths)))  # a tuple: one input per branch
    y, new_st = model(inputs, ps, st)
    outs = tuple(b(x, ps["layers"][n], {})[0] for b, x, n in zip(branches, inputs, ps["layers"]))
    expected, expected_st = connection(outs, ps["connection"], st["connection"])
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(
        new_st["connection"]["layer_2"]["running_mean"], expected_st["layer_2"]["running_mean"], rtol=1e-6
    )
    assert y.shape == (4, sum(widths))
    with pytest.raises(lx.ShapeError, match=r"Dense\(2 => 3, tanh\) at layers.layer_1: expected input with last axis"):
        model(jnp.ones((4, 5)), ps, st)


@pytest.mark.parametrize("widths", [(3, 1), (3, 1, 2)], ids=["two branches", "three branches"])
def test_issue_18_branch_layer_fusion_layer_has_its_own_entry(key, widths):
    branches = [lx.Dense(2, w) for w in widths]
    fusion = _hstack_then_norm(sum(widths))
    model = lx.BranchLayer(*branches, fusion=fusion)
    check_layer(model, X)
    ps, st = lx.setup(key, model)
    assert list(ps) == ["layers", "fusion"] and list(st) == ["layers", "fusion"]
    y, new_st = model(X, ps, st)
    outs = tuple(b(X, ps["layers"][n], {})[0] for b, n in zip(branches, ps["layers"]))
    expected, expected_st = fusion(outs, ps["fusion"], st["fusion"])
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(new_st["fusion"]["layer_2"]["running_var"], expected_st["layer_2"]["running_var"])
    assert model[0] == branches[0] and model["fusion"] == fusion and model["layer_2"] == branches[1]


def test_combining_layer_survives_model_surgery(key):
    model = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 3), fusion=lx.WrappedFunction(sum), name="fork")
    visited = []

    def widen(layer, path):
        visited.append(str(path))
        return lx.Dense(2, 5) if isinstance(layer, lx.Dense) else layer

    wider = lx.core.map_layers(widen, model)
    assert visited == ["layers.layer_1", "layers.layer_2", "fusion"]
    assert wider == lx.BranchLayer(lx.Dense(2, 5), lx.Dense(2, 5), fusion=lx.WrappedFunction(sum), name="fork")
    ps, st = lx.setup(key, wider)
    assert wider(X, ps, st)[0].shape == (4, 5)
    with pytest.raises(lx.ConfigError, match=r"BranchLayer: its `layers` child holds the branches and must stay"):
        model.replace_children({"layers": lx.Dense(2, 3)})


def test_containers_take_a_name_shown_in_the_display():
    chain = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1), name="encoder")
    assert str(chain).startswith("encoder(\n    layer_1 = Dense(2 => 3),")
    assert repr(chain) == "Chain(Dense(2 => 3), Dense(3 => 1), name='encoder')"
    assert chain != lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1))
    assert chain[0:1].name is None  # a slice is another model (Lux drops the name too)
    assert lx.core.map_layers(lambda layer, path: layer, chain, is_leaf=lambda _: False).name == "encoder"
    fused = lx.Parallel(lx.WrappedFunction(jnp.hstack), lx.Dense(2, 3), lx.Dense(2, 1), name="mix")
    assert str(fused).splitlines()[:2] == ["mix(", "    layers = Parallel("]
    for model in (
        lx.Parallel(None, lx.Dense(2, 2), name="p"),
        lx.BranchLayer(lx.Dense(2, 2), name="p"),
        lx.PairwiseFusion(jnp.add, lx.Dense(2, 2), name="p"),
        lx.SkipConnection(lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2)), jnp.add, name="p"),
    ):
        assert str(model).startswith("p(") and repr(model).endswith("name='p')")
    with pytest.raises(lx.ConfigError, match=r"Chain: `name` must be a non-empty string or None, got 3"):
        lx.Chain(lx.Dense(2, 2), name=3)
    with pytest.raises(lx.ConfigError, match=r"Parallel: `name` is the container's display name, so no child can"):
        lx.Parallel(None, name=lx.Dense(2, 2))


def test_skip_connection_wrapper_and_container(key):
    wrapper = lx.SkipConnection(lx.Dense(2, 2), jnp.add)
    check_layer(wrapper, X)
    ps, st = lx.setup(key, wrapper)
    assert sorted(ps) == ["bias", "weight"]
    np.testing.assert_allclose(wrapper(X, ps, st)[0], X + lx.Dense(2, 2)(X, ps, st)[0], rtol=1e-6)

    fuse = lx.WrappedFunction(lambda pair: pair[0] * pair[1])
    container = lx.SkipConnection(lx.Dense(2, 2), fuse)
    check_layer(container, X)
    ps, st = lx.setup(key, container)
    assert list(ps) == ["layers", "connection"]
    np.testing.assert_allclose(container(X, ps, st)[0], X * lx.Dense(2, 2)(X, ps["layers"], {})[0], rtol=1e-6)


def test_jitted_train_step_compiles_once(key):
    model = lx.Chain(lx.Dense(2, 8, jnp.tanh), lx.Dense(8, 1))
    ps, st = lx.setup(key, model)
    traces = []

    @jax.jit
    def step(ps, x):
        traces.append(1)
        grads = jax.grad(lambda ps: jnp.mean(model(x, ps, st)[0] ** 2))(ps)
        return jax.tree.map(lambda p, g: p - 0.1 * g, ps, grads)

    for _ in range(5):
        ps = step(ps, X)
    assert len(traces) == 1
