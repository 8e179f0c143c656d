import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import luxjax as lx
from luxjax.experimental import freeze, share_parameters
from luxjax.training import TrainState, apply_gradients, compute_gradients, eval_step, single_train_step


class Reuse(lx.ContainerLayer):
    """The explicit reference for a tie: one block called twice, then a head."""

    block: lx.Layer
    out: lx.Layer

    def __call__(self, x, ps, st):
        h, _ = self.block(x, ps["block"], st["block"])
        h, _ = self.block(h, ps["block"], st["block"])
        y, _ = self.out(h, ps["out"], st["out"])
        return y, st


def tied_model():
    return lx.Chain(d1=lx.Dense(3, 3, jnp.tanh), d2=lx.Dense(3, 3, jnp.tanh), out=lx.Dense(3, 1))


def mse(model, ps, st, data):
    y, st = model(data[0], ps, st)
    return jnp.mean((y - data[1]) ** 2), st, {"mean": jnp.mean(y)}


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture
def data():
    x = jax.random.normal(jax.random.key(1), (16, 3))
    return x, jnp.sin(x[:, :1]) + x[:, 1:2] ** 2


def build_pair(key):
    model = tied_model()
    ps, st = lx.setup(key, model)
    ps = share_parameters(ps, (("d1", "d2"),))
    ref = Reuse(lx.Dense(3, 3, jnp.tanh), lx.Dense(3, 1))
    ref_ps = {"block": copy(ps["d1"]), "out": copy(ps["out"])}
    ref_st = lx.setup(key, ref)[1]
    return model, ps, st, ref, ref_ps, ref_st


@pytest.mark.parametrize("optimizer", [optax.adam(0.05), optax.sgd(0.1, momentum=0.9)], ids=["adam", "momentum"])
def test_tied_model_trains_like_one_reused_layer(key, data, optimizer):
    model, ps, st, ref, ref_ps, ref_st = build_pair(key)
    ts = TrainState(model, ps, st, optimizer)
    ref_ts = TrainState(ref, ref_ps, ref_st, optimizer)
    # an independent reference: a hand-written optax loop on the explicitly reusing model
    hand_ps, hand_opt = copy(ref_ps), optimizer.init(copy(ref_ps))

    @jax.jit
    def hand_step(p, o):
        with jax.numpy_dtype_promotion("standard"):
            loss, g = jax.value_and_grad(lambda p: mse(ref, p, ref_st, data)[0])(p)
            updates, o = optimizer.update(g, o, p)
            return optax.apply_updates(p, updates), o, loss

    losses = []
    for _ in range(20):
        _, loss, _, ts = single_train_step(mse, data, ts)
        _, ref_loss, _, ref_ts = single_train_step(mse, data, ref_ts)
        hand_ps, hand_opt, hand_loss = hand_step(hand_ps, hand_opt)
        losses.append(float(loss))
        np.testing.assert_allclose(loss, hand_loss, rtol=1e-5)
        np.testing.assert_allclose(ref_loss, hand_loss, rtol=1e-5)
    assert losses[-1] < 0.5 * losses[0]
    p = ts.parameters
    assert p["d1"]["weight"] is p["d2"]["weight"] and p["d1"]["bias"] is p["d2"]["bias"]
    for name in ("weight", "bias"):
        np.testing.assert_allclose(p["d1"][name], hand_ps["block"][name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p["out"][name], hand_ps["out"][name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref_ts.parameters["block"][name], hand_ps["block"][name], rtol=1e-5, atol=1e-6)
    assert ts.step == 20


def test_optimizer_state_is_kept_once_per_tie_group(key):
    model, ps, st, ref, ref_ps, ref_st = build_pair(key)
    ts = TrainState(model, ps, st, optax.adam(1e-3))
    ref_ts = TrainState(ref, ref_ps, ref_st, optax.adam(1e-3))
    size = sum(x.size for x in jax.tree.leaves(ts.optimizer_state))
    assert size == sum(x.size for x in jax.tree.leaves(ref_ts.optimizer_state))
    assert size == 1 + 2 * (12 + 4)  # count, and adam's two moments of d1 and out
    assert ts.ties == (
        (lx.KeyPath("d1", "bias"), lx.KeyPath("d2", "bias")),
        (lx.KeyPath("d1", "weight"), lx.KeyPath("d2", "weight")),
    )


def test_explicit_ties_are_applied_at_construction(key):
    model = tied_model()
    ps, st = lx.setup(key, model)
    ts = TrainState(model, ps, st, optax.sgd(0.1), ties=(("d2", "d1"),))
    assert ts.parameters["d1"]["weight"] is ts.parameters["d2"]["weight"]
    # the group takes the value at its first accessor (a copy: the state owns its arrays)
    np.testing.assert_array_equal(ts.parameters["d1"]["weight"], ps["d2"]["weight"])
    with pytest.raises(ValueError, match=r"`ps` has no 'd3'"):
        TrainState(model, ps, st, optax.sgd(0.1), ties=(("d3", "d1"),))


def test_ties_survive_a_tree_map_of_the_state(key, data):
    model, ps, st, *_ = build_pair(key)
    ts = TrainState(model, ps, st, optax.adam(0.01))
    # identity is put back when the pytree is rebuilt, even from parameters that differ
    untied = ts.replace(parameters=copy(ps)).parameters
    flat, treedef = jax.tree.flatten(ts)
    rebuilt = jax.tree.unflatten(treedef, [x * 1 for x in flat])
    assert rebuilt.parameters["d1"]["weight"] is rebuilt.parameters["d2"]["weight"]
    assert untied["d1"]["weight"] is untied["d2"]["weight"]
    _, _, _, ts = single_train_step(mse, data, jax.tree.map(lambda x: x * 1, ts))
    assert ts.parameters["d1"]["weight"] is ts.parameters["d2"]["weight"]


def test_steps_scanned_inside_jit_equal_the_python_loop(key, data):
    model, ps, st, *_ = build_pair(key)
    ts_loop = TrainState(model, copy(ps), st, optax.adam(0.05), ties=(("d1", "d2"),))
    ts_scan = TrainState(model, ps, st, optax.adam(0.05))

    @jax.jit
    def twenty_steps(ts):
        def body(ts, _):
            _, loss, _, ts = single_train_step(mse, data, ts)
            return ts, loss

        return jax.lax.scan(body, ts, None, length=20)

    ts_scan, losses = twenty_steps(ts_scan)
    for _ in range(20):
        _, loss, _, ts_loop = single_train_step(mse, data, ts_loop)
    np.testing.assert_allclose(losses[-1], loss, rtol=1e-5)
    assert int(ts_scan.step) == 20
    assert ts_scan.parameters["d1"]["weight"] is ts_scan.parameters["d2"]["weight"]
    for a, b in zip(jax.tree.leaves(ts_scan.parameters), jax.tree.leaves(ts_loop.parameters)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_compiles_once_and_is_reused(key, data):
    model, ps, st, *_ = build_pair(key)
    traces = []

    def objective(model, ps, st, data):
        traces.append(1)
        return mse(model, ps, st, data)

    ts = TrainState(model, ps, st, optax.adam(0.01))
    for _ in range(5):
        _, _, stats, ts = single_train_step(objective, data, ts)
    assert len(traces) == 1
    # a state rebuilt from its pytree finds the same compiled step
    ts = jax.tree.map(lambda x: x, ts)
    _, _, _, ts = single_train_step(objective, data, ts)
    assert len(traces) == 1
    assert set(stats) == {"mean"}


def test_objective_may_be_an_unhashable_callable(key, data):
    class Objective:
        __hash__ = None

        def __init__(self):
            self.traces = 0

        def __call__(self, model, ps, st, data):
            self.traces += 1
            return mse(model, ps, st, data)

    model, ps, st, *_ = build_pair(key)
    objective = Objective()
    ts = TrainState(model, ps, st, optax.sgd(0.1))
    for _ in range(3):
        _, _, _, ts = single_train_step(objective, data, ts)
    assert objective.traces == 1 and ts.step == 3


def test_step_donates_parameters_and_optimizer_state(key, data):
    model = lx.Dense(3, 1)
    ps, st = lx.setup(key, model)
    ts = TrainState(model, ps, st, optax.adam(0.01))
    old = ts
    single_train_step(mse, data, ts)
    assert old.parameters["weight"].is_deleted()
    assert all(x.is_deleted() for x in jax.tree.leaves(old.optimizer_state))


def test_compute_then_apply_equals_single_step(key, data):
    model, ps, st, ref, ref_ps, ref_st = build_pair(key)
    ts_a = TrainState(model, copy(ps), st, optax.adam(0.05), ties=(("d1", "d2"),))
    ts_b = TrainState(model, ps, st, optax.adam(0.05))
    for _ in range(3):
        grads, loss_a, _, ts_a = compute_gradients(mse, data, ts_a)
        ts_a = apply_gradients(ts_a, grads)
        _, loss_b, _, ts_b = single_train_step(mse, data, ts_b)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert ts_a.parameters["d1"]["weight"] is ts_a.parameters["d2"]["weight"]
    np.testing.assert_allclose(ts_a.parameters["d1"]["weight"], ts_b.parameters["d1"]["weight"], rtol=1e-6)
    assert ts_a.step == 3


def test_gradients_are_per_place_and_sum_to_the_reused_layer(key, data):
    model, ps, st, ref, ref_ps, ref_st = build_pair(key)
    grads, loss, _, _ = compute_gradients(mse, data, TrainState(model, ps, st, optax.sgd(0.1)))
    ref_grads = jax.grad(lambda p: mse(ref, p, ref_st, data)[0])(ref_ps)
    total = grads["d1"]["weight"] + grads["d2"]["weight"]
    np.testing.assert_allclose(total, ref_grads["block"]["weight"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(grads["d1"]["weight"], grads["d2"]["weight"])


def test_states_are_carried_and_never_optimized(key, data):
    class Counted(lx.Layer):
        """A Dense with a constant in its state (like a frozen value) and a call counter."""

        def init_params(self, key):
            return {"weight": jax.random.normal(key, (1, 3))}

        def init_state(self, key):
            return {"frozen": jnp.ones((1, 3)), "calls": jnp.zeros((), jnp.int32)}

        def __call__(self, x, ps, st):
            y = x @ (ps["weight"] + st["frozen"]).T
            return y, {"frozen": st["frozen"], "calls": st["calls"] + 1}

    model = Counted()
    ps, st = lx.setup(key, model)
    ts = TrainState(model, ps, st, optax.adam(0.01))
    assert sum(x.size for x in jax.tree.leaves(ts.optimizer_state)) == 1 + 2 * 3
    for _ in range(4):
        _, _, _, ts = single_train_step(mse, data, ts)
    assert int(ts.states["calls"]) == 4
    np.testing.assert_array_equal(ts.states["frozen"], jnp.ones((1, 3)))


def test_train_state_is_immutable_and_checks_its_arguments(key):
    model = lx.Dense(2, 1)
    ps, st = lx.setup(key, model)
    ts = TrainState(model, ps, st, optax.sgd(0.1))
    with pytest.raises(AttributeError, match=r"TrainState is immutable; use `ts.replace\(step=...\)`"):
        ts.step = 3
    with pytest.raises(ValueError, match=r"TrainState.replace: can change .*, got 'model'"):
        ts.replace(model=lx.Dense(2, 2))
    with pytest.raises(ValueError, match=r"the new `parameters` tie \[\['bias', 'weight'\]\] but the state ties \[\]"):
        ts.replace(parameters={"weight": ps["bias"], "bias": ps["bias"]})
    with pytest.raises(TypeError, match=r"`optimizer` must be an optax GradientTransformation"):
        TrainState(model, ps, st, 0.1)
    with pytest.raises(lx.NotALayerError, match=r"TrainState: `model` must be a luxjax Layer"):
        TrainState(jnp.tanh, ps, st, optax.sgd(0.1))
    assert repr(ts) == "TrainState(Dense(2 => 1), step=0)"


def test_helpers_reject_bad_arguments(key, data):
    model = lx.Dense(3, 1)
    ps, st = lx.setup(key, model)
    ts = TrainState(model, ps, st, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"apply_gradients: `grads` must have the structure and shapes of `ts.param"):
        apply_gradients(ts, {"weight": jnp.ones((1, 3))})
    with pytest.raises(TypeError, match=r"single_train_step: `objective` must be a function"):
        single_train_step("mse", data, ts)
    with pytest.raises(TypeError, match=r"compute_gradients: `ts` must be a luxjax.training.TrainState, got dict"):
        compute_gradients(mse, data, {"ps": ps})


def test_frozen_values_get_no_optimizer_state_and_never_change(key, data):
    model = tied_model()
    ps, st = lx.setup(key, model)
    frozen_weight = jnp.copy(ps["d1"]["weight"])
    fmodel, fps, fst = freeze(model, copy(ps), st, ("d1.weight",))
    assert "weight" not in fps["d1"]
    ts = TrainState(fmodel, fps, fst, optax.adam(0.05))
    assert sum(x.size for x in jax.tree.leaves(ts.optimizer_state)) == 1 + 2 * (3 + 12 + 4)

    # reference: the same model with d1's weight a constant of the loss
    def ref_loss(p):
        full = {**p, "d1": {"weight": frozen_weight, "bias": p["d1"]["bias"]}}
        return mse(model, full, st, data)[0]

    optimizer = optax.adam(0.05)
    ref = copy(fps)
    ref_opt = optimizer.init(ref)

    @jax.jit
    def ref_step(p, o):
        with jax.numpy_dtype_promotion("standard"):
            loss, g = jax.value_and_grad(ref_loss)(p)
            updates, o = optimizer.update(g, o, p)
            return optax.apply_updates(p, updates), o, loss

    for _ in range(10):
        _, loss, _, ts = single_train_step(mse, data, ts)
        ref, ref_opt, ref_l = ref_step(ref, ref_opt)
        np.testing.assert_allclose(loss, ref_l, rtol=1e-5)
    np.testing.assert_array_equal(ts.states["d1"]["frozen_params"]["weight"], frozen_weight)
    for a, b in zip(jax.tree.leaves(ts.parameters), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Issue 15: gradients only when asked for, the caller's arrays survive, a compiled eval step.


def bn_model():
    """A model with running statistics, a dropout key and the training flag in its state.

    (BatchNorm comes first: a bias just before it would get only rounding noise as gradient,
    which adam scales up to full steps, so two compilations of one step would drift apart.)
    """
    return lx.Chain(lx.BatchNorm(3), lx.Dense(3, 8, jnp.tanh), lx.Dropout(0.5), lx.Dense(8, 1))


def values(tree):
    """The leaves of `tree` as NumPy arrays (PRNG keys as their key data)."""
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(tree)
    ]


def model_and_trees(kind, key):
    if kind == "tied":
        return build_pair(key)[:3]
    return bn_model(), *lx.setup(key, bn_model())


@pytest.mark.parametrize("kind", ["stateful", "tied"])
def test_issue_15_return_gradients_false_trains_the_same(key, data, kind):
    model, ps, st = model_and_trees(kind, key)
    ts_with = TrainState(model, ps, st, optax.adam(0.05))
    ts_without = TrainState(model, ps, st, optax.adam(0.05))
    for _ in range(10):
        grads, loss_with, _, ts_with = single_train_step(mse, data, ts_with)
        nothing, loss_without, _, ts_without = single_train_step(mse, data, ts_without, return_gradients=False)
        np.testing.assert_allclose(loss_without, loss_with, rtol=1e-6)
    assert nothing is None and jax.tree.structure(grads) == jax.tree.structure(ps)
    assert ts_without.step == ts_with.step == 10
    for a, b in zip(values((ts_without.parameters, ts_without.states)), values((ts_with.parameters, ts_with.states))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if kind == "tied":
        assert ts_without.parameters["d1"]["weight"] is ts_without.parameters["d2"]["weight"]


def test_issue_15_return_gradients_must_be_a_bool(key, data):
    ts = TrainState(lx.Dense(3, 1), *lx.setup(key, lx.Dense(3, 1)), optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"single_train_step: `return_gradients` must be True or False, got 0\."):
        single_train_step(mse, data, ts, return_gradients=0)


@pytest.mark.parametrize("kind", ["stateful", "tied"])
def test_issue_15_callers_arrays_are_readable_after_training(key, data, kind):
    model, ps, st = model_and_trees(kind, key)
    before = values((ps, st))
    ts = TrainState(model, ps, st, optax.adam(0.05))
    for _ in range(3):
        _, _, _, ts = single_train_step(mse, data, ts, return_gradients=False)
    # Before the fix, reading `ps` here raised `RuntimeError: Array has been deleted`.
    for a, b in zip(values((ps, st)), before):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(values(ts.parameters)[0], values(ps)[0])  # trained a copy
    if kind == "tied":  # the caller's tie and the state's tie both hold
        assert ps["d1"]["weight"] is ps["d2"]["weight"]
        assert ts.parameters["d1"]["weight"] is ts.parameters["d2"]["weight"]


def test_issue_15_arrays_given_to_replace_survive_training(key, data):
    model, ps, st = model_and_trees("stateful", key)
    ts = TrainState(model, ps, st, optax.adam(0.05))
    mine = copy(ts.parameters)
    _, _, _, after = single_train_step(mse, data, ts.replace(parameters=mine))
    assert not any(x.is_deleted() for x in jax.tree.leaves(mine))
    assert after.step == 1


def test_issue_15_prng_keys_given_to_the_state_survive_training(key, data):
    model = lx.Chain(lx.Dense(3, 1), lx.Dropout(0.5))
    ps, st = lx.setup(key, model)
    before = jax.random.key_data(st["layer_2"]["key"])
    ts = TrainState(model, ps, st, optax.adam(0.05))
    for _ in range(2):
        _, _, _, ts = single_train_step(mse, data, ts)
    assert not st["layer_2"]["key"].is_deleted()
    np.testing.assert_array_equal(jax.random.key_data(st["layer_2"]["key"]), before)
    assert not jnp.array_equal(jax.random.key_data(ts.states["layer_2"]["key"]), before)  # the state's key moved on


def test_issue_15_eval_step_keeps_the_state_and_compiles_once(key, data):
    traces = []

    def objective(model, ps, st, data):
        traces.append(st["layer_1"]["training"])
        return mse(model, ps, st, data)

    model = bn_model()
    ts = TrainState(model, *lx.setup(key, model), optax.adam(0.05))
    _, _, _, ts = single_train_step(objective, data, ts, return_gradients=False)
    kept = values((ts.parameters, ts.states, ts.optimizer_state))
    loss, stats = eval_step(objective, data, ts)
    again, _ = eval_step(objective, data, ts)
    assert traces == [lx.Training(True), lx.Training(False)]  # one trace per step kind, eval in test mode
    # nothing donated, nothing changed: the state trains on from where it was
    for a, b in zip(values((ts.parameters, ts.states, ts.optimizer_state)), kept):
        np.testing.assert_array_equal(a, b)
    assert ts.step == 1
    # test mode: running statistics used (not the batch's), dropout off, deterministic
    by_hand, _, by_hand_stats = mse(model, ts.parameters, lx.testmode(ts.states), data)
    np.testing.assert_allclose(loss, by_hand, rtol=1e-6)
    np.testing.assert_allclose(stats["mean"], by_hand_stats["mean"], rtol=1e-6)
    assert float(again) == float(loss)
    train_mode_loss = mse(model, ts.parameters, ts.states, data)[0]
    assert not np.allclose(loss, train_mode_loss)
    # the states a training step returns share the cache: no retrace
    _, _, _, ts = single_train_step(objective, data, ts, return_gradients=False)
    eval_step(objective, data, ts)
    assert len(traces) == 2


def test_issue_15_predict_is_the_test_mode_forward_pass(key, data):
    traces = []

    def count(x):
        traces.append(1)
        return x

    model = lx.Chain(bn_model(), lx.WrappedFunction(count))
    ts = TrainState(model, *lx.setup(key, model), optax.adam(0.05))
    _, _, _, ts_1 = single_train_step(mse, data, ts, return_gradients=False)
    y = ts_1.predict(data[0])
    assert len(traces) == 2  # the step's trace, the forward pass's
    expected, _ = model(data[0], ts_1.parameters, lx.testmode(ts_1.states))
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    _, _, _, ts_2 = single_train_step(mse, data, ts_1, return_gradients=False)  # predict donated nothing
    ts_2.predict(data[0])
    assert len(traces) == 3  # only the eager call above: the states of one loop share the compiled pass


def test_issue_15_eval_step_checks_its_arguments(key, data):
    ts = TrainState(lx.Dense(3, 1), *lx.setup(key, lx.Dense(3, 1)), optax.sgd(0.1))
    with pytest.raises(TypeError, match=r"eval_step: `objective` must be a function"):
        eval_step(None, data, ts)
    with pytest.raises(TypeError, match=r"eval_step: `ts` must be a luxjax.training.TrainState, got tuple"):
        eval_step(mse, data, (ts,))


def test_a_tie_frozen_into_the_states_trains(key):
    # Both places of a tie frozen: the states hold one array twice, and the step donates them.
    model = lx.Chain(embed=lx.Dense(3, 3), mid=lx.Dense(3, 3), out=lx.Dense(3, 3))
    ps, st = lx.setup(key, model)
    ps = share_parameters(ps, (("out.weight", "embed.weight"),))
    model, ps, st = freeze(model, ps, st, ("embed", "out"))
    ts = TrainState(model, ps, st, optax.sgd(0.1))

    def objective(model, ps, st, x):
        y, st = model(x, ps, st)
        return jnp.mean(y**2), st, {}

    for _ in range(2):
        _, loss, _, ts = single_train_step(objective, jnp.ones((2, 3)), ts)
    frozen = ts.states["embed"]["frozen_params"]["weight"]
    np.testing.assert_array_equal(frozen, ts.states["out"]["frozen_params"]["weight"])


def test_gradients_of_the_wrong_shape_are_an_error_not_a_broadcast(key):
    model = lx.Dense(2, 1)
    ts = TrainState(model, *lx.setup(key, model), optax.sgd(1.0))
    with pytest.raises(ValueError, match=r"apply_gradients: .* 'weight' has shape \(1,\), expected \(1, 2\)"):
        apply_gradients(ts, {"weight": jnp.ones(1), "bias": jnp.zeros(1)})


def test_a_new_objective_each_step_warns_and_the_caches_stay_bounded(key):
    model = lx.Dense(2, 1)
    ts = TrainState(model, *lx.setup(key, model), optax.sgd(0.1))
    x = jnp.ones((3, 2))
    with pytest.warns(UserWarning, match=r"a new function object each call .* Define the objective once"):
        for _ in range(6):
            _, _, _, ts = single_train_step(lambda model, ps, st, x: (jnp.sum(model(x, ps, st)[0]), st, {}), x, ts)
    assert len(ts._cache) <= 16
