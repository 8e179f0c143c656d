"""Bad inputs found by probing (issue 13): each is an error naming what went wrong and the fix."""

import jax
import jax.numpy as jnp
import optax
import pytest

import luxjax as lx
from luxjax import experimental as lxe
from luxjax.training import TrainState, single_train_step


def test_a_tuple_into_dense(key):
    model = lx.Dense(2, 3)
    with pytest.raises(lx.ShapeError, match=r"Dense\(2 => 3\): expected one array of shape \(\.\.\., 2\), got a tuple"):
        model((jnp.ones((1, 2)), jnp.ones((1, 2))), *lx.setup(key, model))


def test_a_recurrence_of_a_layer_that_is_not_a_cell(key):
    model = lx.Recurrence(lx.Dense(2, 3))
    with pytest.raises(lx.ShapeError, match=r"the cell must return `\(y, carry\)` .* returned an array of shape"):
        model(jnp.ones((1, 4, 2)), *lx.setup(key, model))


def test_toolkit_arguments_of_the_wrong_kind(key):
    with pytest.raises(lx.NotALayerError, match=r"debug_mode: `model` must be a luxjax Layer, got None"):
        lxe.debug_mode(None)
    with pytest.raises(TypeError, match=r"DebugLayer: `location` must be a KeyPath, a dotted string .* got 5"):
        lxe.DebugLayer(lx.Dense(2, 2), location=5)
    ps, st = lx.setup(key, lx.Dense(2, 2))
    with pytest.raises(TypeError, match=r"layer_at: `path` must be a KeyPath, a dotted string .* got 5"):
        lxe.layer_at(lx.Dense(2, 2), ps, st, 5)
    with pytest.raises(ValueError, match=r"share_parameters: group 0 of `sharing` is empty"):
        lxe.share_parameters({"a": jnp.ones(2)}, ((),))


def test_an_objective_that_returns_only_the_loss(key):
    model = lx.Dense(2, 1)
    ts = TrainState(model, *lx.setup(key, model), optax.sgd(0.1))

    def loss_only(model, ps, st, x):
        return jnp.sum(model(x, ps, st)[0])

    with pytest.raises(TypeError, match=r"`objective` must return `\(loss, st, stats\)` .* returned an array of shape"):
        single_train_step(loss_only, jnp.ones((2, 2)), ts)
    assert jax.tree.leaves(ts.parameters)  # the state is still usable


def test_parameters_of_an_integer_dtype(key):
    model = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1))
    ps, st = lx.setup(key, model)
    ints = jax.tree.map(lambda a: a.astype(jnp.int32), ps)
    with pytest.raises(lx.StructureError, match=r"'layer_1.bias' has dtype int32, expected a float dtype such as"):
        model(jnp.ones((4, 2)), ints, st)
    with pytest.raises(lx.StructureError, match=r"freeze: `ps` does not fit the layer: 'layer_1.bias' has dtype int32"):
        lxe.freeze(model, ints, st, ("layer_1.weight",))


def test_another_precision_of_the_same_kind_fits(key):
    model = lx.Dense(2, 3)
    ps, st = lx.setup(key, model)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), ps)
    assert model(jnp.ones((4, 2), jnp.bfloat16), half, st)[0].dtype == jnp.bfloat16


def test_freeze_unfreeze_and_train_state_check_the_trees(key):
    model = lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1))
    ps, st = lx.setup(key, model)
    wrong = {**ps, "layer_2": {**ps["layer_2"], "weight": jnp.ones((5, 5))}}
    with pytest.raises(lx.StructureError, match=r"freeze: `ps` does not fit .* 'layer_2.weight' has shape \(5, 5\)"):
        lxe.freeze(model, wrong, st, ("layer_1.weight",))
    frozen, ps_f, st_f = lxe.freeze(model, ps, st, None)
    with pytest.raises(lx.StructureError, match=r"unfreeze: `ps` does not fit the layer: unexpected 'layer_1.bias'"):
        lxe.unfreeze(frozen, ps, st_f)
    with pytest.raises(lx.StructureError, match=r"TrainState: `ps` does not fit .* missing 'layer_2.bias'"):
        TrainState(model, {"layer_1": ps["layer_1"], "layer_2": {}}, st, optax.sgd(0.1))
    ts = TrainState(model, ps, st, optax.sgd(0.1))
    with pytest.raises(lx.StructureError, match=r"TrainState.replace: `ps` does not fit .* 'layer_2.weight' has shape"):
        ts.replace(parameters=wrong)


def test_a_call_without_states(key):
    model = lx.Dense(2, 3)
    ps, _ = lx.setup(key, model)
    with pytest.raises(TypeError, match=r"Dense\(2 => 3\) was called without `st`: call it as `y, st = model"):
        model(jnp.ones((1, 2)), ps)  # type: ignore[call-arg]


def test_setup_with_its_arguments_swapped(key):
    with pytest.raises(TypeError, match=r"setup: the arguments are swapped: call it as `luxjax.setup\(key, model\)`"):
        lx.setup(lx.Dense(2, 3), key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: lx.Dense(2, 3, use_bias="no"), "use_bias"),
        (lambda: lx.LayerNorm(3, affine=0), "affine"),
        (lambda: lx.Recurrence(lx.LSTMCell(2, 3), return_sequence="yes"), "return_sequence"),
        (lambda: lxe.DebugLayer(lx.Dense(2, 2), error_check=None), "error_check"),
    ],
)
def test_a_flag_that_is_not_a_bool(build, name):
    with pytest.raises(lx.ConfigError, match=rf"`{name}` must be True or False, got "):
        build()


def test_errors_print_as_luxjax_names():
    for error in (lx.ShapeError, lx.StructureError, lx.ConfigError, lx.NotALayerError, lx.NaNError, lx.CheckpointError):
        assert error.__module__ == "luxjax" and getattr(lx, error.__name__) is error
    assert lxe.NaNError is lx.NaNError


def test_help_shows_readable_defaults():
    import inspect

    from luxjax import testing, training

    for module in (lx, lxe, training, testing):
        for name in dir(module):
            obj = getattr(module, name)
            if callable(obj) and not name.startswith("_"):
                try:
                    signature = str(inspect.signature(obj))
                except (TypeError, ValueError):
                    continue
                assert " at 0x" not in signature, f"{module.__name__}.{name}{signature}"


class Boom(lx.Layer):
    """Raises an error carrying a note of its own."""

    def __call__(self, x, ps, st):
        error = ValueError("boom")
        error.add_note("the layer's own note")
        raise error


@pytest.mark.parametrize("error_check", [False, True])
def test_debug_mode_keeps_the_original_error_and_its_notes(key, error_check):
    model = lx.Chain(lx.Dense(2, 2), Boom())
    ps, st = lx.setup(key, model)
    with pytest.raises(ValueError, match=r"^boom\n") as caught:
        lxe.debug_mode(model, error_check=error_check)(jnp.ones((1, 2)), ps, st)
    notes = caught.value.__notes__
    assert notes[0] == "the layer's own note"
    assert not any("JAX has removed its internal frames" in note for note in notes)
    assert len(notes) == (2 if error_check else 1)


def test_a_nan_under_jit_prints_nothing_but_the_error(key, capfd):
    model = lx.Chain(lx.Dense(2, 2), lx.Dense(2, 1))
    ps, st = lx.setup(key, model)
    ps["layer_2"]["bias"] = jnp.full((1,), jnp.nan)
    with pytest.raises(lx.NaNError, match=r"NaN detected in parameters \(bias\) of layer Dense\(2 => 1\) at location"):
        lxe.raise_nan_errors(jax.jit(lxe.debug_mode(model)))(jnp.ones((1, 2)), ps, st)
    assert capfd.readouterr().err == ""


def test_raise_nan_errors_in_a_thread_other_than_the_one_that_compiled(key):
    import threading

    model = lx.Chain(lx.Dense(2, 2), lx.Dense(2, 1))
    ps, st = lx.setup(key, model)
    step = lxe.raise_nan_errors(jax.jit(lxe.debug_mode(model)))
    step(jnp.ones((1, 2)), ps, st)  # compiled here
    bad = {**ps, "layer_2": {**ps["layer_2"], "bias": jnp.full((1,), jnp.nan)}}
    raised = []

    def run():
        try:
            step(jnp.ones((1, 2)), bad, st)
        except Exception as error:  # whatever comes out, to inspect below
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(raised) == 1 and type(raised[0]) is lx.NaNError
    with pytest.raises(lx.NaNError, match=r"NaN detected in parameters \(bias\) of layer Dense\(2 => 1\) at location"):
        raise raised[0]
