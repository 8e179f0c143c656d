"""Laws over random nested models (issue 13), as many as the hypothesis profile asks (conftest.py).

Freeze/unfreeze and `layer_map(identity)` have their own law tests beside their units; here are
the ones that cross modules: checkpoint and flatten round trips, `share_parameters` keeping each
place's key order, debug mode changing nothing on a clean model, and a NaN planted in a
parameter a container holds itself being found there, eagerly, under jit and under grad.
"""

import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as hs
from random_models import DIMS, Gated, models

import luxjax as lx
from luxjax import experimental as lxe
from luxjax.training import flatten_parameters, load, save

X = jnp.linspace(-1.0, 1.0, 3 * DIMS).reshape(3, DIMS)


def same_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def key_orders(tree, path=()):
    """Every dict's key order, by place."""
    if not isinstance(tree, dict):
        return {}
    out = {path: list(tree)}
    for k, v in tree.items():
        out.update(key_orders(v, (*path, k)))
    return out


@given(models(), hs.integers(0, 2**16))
def test_checkpoint_round_trip(model, seed):
    ps, st = lx.setup(jax.random.key(seed), model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        save(path, ps, st, model=model)
        ps_l, st_l = load(path, like=model)
    same_trees(ps_l, ps)
    same_trees(st_l, st)
    np.testing.assert_array_equal(model(X, ps_l, st_l)[0], model(X, ps, st)[0])


@given(models())
def test_flatten_round_trip(model):
    ps, _ = lx.setup(jax.random.key(0), model)
    vector, unflatten = flatten_parameters(ps)
    assert vector.shape == (lx.parameter_count(model),)
    same_trees(unflatten(vector), ps)
    assert key_orders(unflatten(vector)) == key_orders(ps)


@given(models(), hs.data())
def test_share_parameters_keeps_each_places_key_order(model, data):
    model = lx.Chain(a=lx.Dense(DIMS, DIMS), body=model, z=lx.Dense(DIMS, DIMS))
    ps, _ = lx.setup(jax.random.key(0), model)
    places = [str(path) for path, layer in lx.core.iter_layers(model) if path and layer == lx.Dense(DIMS, DIMS)]
    group = tuple(data.draw(hs.lists(hs.sampled_from(places), min_size=2, max_size=4, unique=True)))
    reordered = {"bias": jnp.full((DIMS,), 2.0), "weight": jnp.full((DIMS, DIMS), 3.0)}  # not the layers' order
    for new in (None, [reordered]):
        tied = lxe.share_parameters(ps, (group,), new)
        assert key_orders(tied) == key_orders(ps)
        first = lx.KeyPath.parse(group[0]).get(tied)
        assert all(lx.KeyPath.parse(p).get(tied)["weight"] is first["weight"] for p in group)


@given(models())
def test_debug_mode_changes_nothing_on_a_clean_model(model):
    ps, st = lx.setup(jax.random.key(0), model)
    debug = lxe.debug_mode(model)
    y, st_new = model(X, ps, st)
    y_debug, st_debug = debug(X, ps, st)
    np.testing.assert_array_equal(y_debug, y)
    same_trees(st_debug, st_new)
    # under jit the checks' reductions may change XLA's fusion: equal up to float rounding (docs/debugging.md)
    np.testing.assert_allclose(jax.jit(debug)(X, ps, st)[0], jax.jit(model)(X, ps, st)[0], rtol=1e-6, atol=1e-6)


@hs.composite
def models_with_a_gate(draw):
    """A random model with at least one `Gated`, and the path and layer of one of its gates.

    The layer is the `Gated` itself, which may sit inside wrappers that share its path.
    """
    model = lx.Chain(inner=draw(models()), gated=Gated(draw(models()), lx.Dense(DIMS, DIMS)))
    gates = [(path, layer) for path, layer in lx.core.iter_layers(model) if isinstance(layer, Gated)]
    return model, *draw(hs.sampled_from(gates))


@settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: a failure is reported as found
@given(models_with_a_gate(), hs.integers(0, DIMS - 1))
def test_a_nan_in_a_containers_own_parameter_is_found_there(model_and_path, index):
    model, path, layer = model_and_path
    ps, st = lx.setup(jax.random.key(0), model)
    gate = path.get(ps)
    gate["gate"] = gate["gate"].at[index].set(jnp.nan)
    debug = lxe.debug_mode(model)
    expected = (
        re.escape(f"NaN detected in parameters (gate) of layer {layer!r}")
        + r".*"
        + re.escape(f"at location {path} (forward pass)")
    )
    with pytest.raises(lxe.NaNError, match=expected):
        debug(X, ps, st)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(debug))(X, ps, st)
    with pytest.raises(lxe.NaNError, match=expected):
        jax.grad(lambda ps: jnp.sum(debug(X, ps, st)[0]))(ps)
