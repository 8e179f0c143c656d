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
    with pytest.raises(TypeError, match=r"Parallel: `connection` must be a function or None, got Dense\(2 => 2\)"):
        lx.Parallel(lx.Dense(2, 2), lx.Dense(2, 2))


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
