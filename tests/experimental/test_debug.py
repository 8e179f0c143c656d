"""Debug mode: Lux's DebugLayer cases, plus jit, grad, ordering and a fuzz test of the location."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import luxjax as lx
from luxjax import experimental as lxe
from luxjax.testing import check_layer

logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)


class Scale(lx.Layer):
    """`y = x * scale`; with `poison`, its backward pass makes NaN in the input gradient."""

    dims: int
    poison: bool = False

    def init_params(self, key):
        return {"scale": 1.0 + 0.1 * jax.random.normal(key, (self.dims,))}

    def __call__(self, x, ps, st):
        @jax.custom_vjp
        def scale(x, s):
            return x * s[None, :]

        def fwd(x, s):
            return scale(x, s), (x, s)

        def bwd(res, g):
            x, s = res
            gx = g * s[None, :]
            return (gx * jnp.nan if self.poison else gx), jnp.sum(g * x, axis=0)

        scale.defvjp(fwd, bwd)
        return scale(x, ps["scale"]), st

    def __repr__(self):
        return f"Scale({self.dims}{', poison' if self.poison else ''})"


def lux_model():
    return lx.Chain(lx.Dense(1, 16, jax.nn.relu), lx.Chain(lx.Dense(16, 3), lx.Dense(1, 1)), lx.BatchNorm(1))


def fixed_model():
    return lx.Chain(lx.Dense(1, 16, jax.nn.relu), lx.Chain(lx.Dense(16, 3), lx.Dense(3, 1)), lx.BatchNorm(1))


def close(actual, expected):
    """Equal up to float rounding, measured against the largest value in the tree."""
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(expected) if jnp.size(leaf))
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * scale), actual, expected)


def total(model, x, st):
    return lambda ps: jnp.sum(model(x, ps, st)[0] ** 2)


# -- construction --------------------------------------------------------------------------------
def test_nan_check_must_be_one_of_the_four_modes():
    with pytest.raises(ValueError, match=r"DebugLayer: `nan_check` must be one of 'both', .* got 'always'"):
        lxe.DebugLayer(lx.Dense(2, 2), nan_check="always")
    with pytest.raises(ValueError, match=r"debug_mode: `nan_check` must be one of .*'none', got 'fwd'"):
        lxe.debug_mode(lux_model(), nan_check="fwd")


def test_debug_mode_wraps_every_leaf_with_its_ps_path_and_never_nests(key):
    model = fixed_model()
    debug = lxe.debug_mode(model, nan_check="forward")
    ps, st = lx.setup(key, model)
    seen = []

    def record(layer, ps, st, path):
        seen.append((path, layer))
        return layer, ps, st

    lxe.layer_map(record, debug, ps, st)  # goes through the DebugLayers to the layers inside
    assert seen == [
        (lx.KeyPath("layer_1"), model[0]),
        (lx.KeyPath("layer_2", "layer_1"), model[1][0]),
        (lx.KeyPath("layer_2", "layer_2"), model[1][1]),
        (lx.KeyPath("layer_3"), model[2]),
    ]
    assert debug[1][1] == lxe.DebugLayer(model[1][1], "forward", True, lx.KeyPath("layer_2", "layer_2"))
    again = lxe.debug_mode(debug, nan_check="backward", error_check=False)
    assert again[1][1] == lxe.DebugLayer(model[1][1], "backward", False, lx.KeyPath("layer_2", "layer_2"))
    assert again == lxe.debug_mode(model, nan_check="backward", error_check=False)
    assert "DebugLayer(Dense(16 => 3), nan_check='forward', location=KeyPath('layer_2', 'layer_1'))" in str(debug)


@pytest.mark.parametrize("nan_check", ["both", "forward", "backward", "none"])
def test_debug_model_takes_the_same_ps_and_gives_bit_identical_results(key, nan_check):
    model = fixed_model()
    debug = lxe.debug_mode(model, nan_check=nan_check)
    ps, st = lx.setup(key, model)
    x = jax.random.normal(jax.random.key(1), (5, 1))

    # Eagerly the very same operations run: bit-identical. Under jit the extra checks may change
    # how XLA fuses (and so sums) a reduction: equal up to float rounding (the gradients that
    # BatchNorm makes zero in exact arithmetic show it most).
    def identical(actual, expected):
        jax.tree.map(np.testing.assert_array_equal, actual, expected)

    for transform, same in ((lambda f: f, identical), (jax.jit, close)):
        y, new_st = transform(model)(x, ps, st)
        y_debug, new_st_debug = transform(debug)(x, ps, st)
        same((y_debug, new_st_debug), (y, new_st))
        grads = transform(jax.grad(total(model, x, st)))(ps)
        grads_debug = transform(jax.grad(total(debug, x, st)))(ps)
        same(grads_debug, grads)


def test_debug_layer_passes_the_layer_contract(key):
    check_layer(lxe.DebugLayer(lx.Dense(3, 2, jnp.tanh)), jnp.ones((4, 3)), key=key)


# -- errors --------------------------------------------------------------------------------------
def test_shape_error_is_the_same_with_a_note_naming_the_location(key, caplog):
    model = lux_model()
    ps, st = lx.setup(key, model)
    x = jnp.ones((2, 1))
    message = r"Dense\(1 => 1\) at layer_2.layer_2: expected input with last axis 1, got shape \(2, 3\)"
    with pytest.raises(lx.ShapeError, match=message) as plain:
        model(x, ps, st)
    with caplog.at_level(logging.ERROR, logger="luxjax"), pytest.raises(lx.ShapeError, match=message) as debugged:
        lxe.debug_mode(model)(x, ps, st)
    assert str(debugged.value) == str(plain.value)
    assert debugged.value.__notes__[0] == (
        "luxjax debug_mode: ShapeError raised in layer Dense(1 => 1) at location layer_2.layer_2 (forward pass)."
    )
    assert "ShapeError raised in layer Dense(1 => 1) at location layer_2.layer_2 (forward pass)" in caplog.text
    with pytest.raises(lx.ShapeError, match=message) as untouched:
        lxe.debug_mode(model, error_check=False)(x, ps, st)
    assert not any("debug_mode" in note for note in getattr(untouched.value, "__notes__", []))


def test_error_in_the_backward_pass_is_noted_with_the_backward_pass(key):
    class BrokenGrad(lx.Layer):
        def __call__(self, x, ps, st):
            @jax.custom_vjp
            def f(x):
                return x

            def bwd(res, g):
                raise RuntimeError("backward rule failed")

            f.defvjp(lambda x: (x, None), bwd)
            return f(x), st

    model = lxe.debug_mode(lx.Chain(lx.Dense(2, 2), BrokenGrad()))
    ps, st = lx.setup(key, model)
    with pytest.raises(RuntimeError, match="backward rule failed") as info:
        jax.grad(total(model, jnp.ones((1, 2)), st))(ps)
    assert info.value.__notes__[0] == (
        "luxjax debug_mode: RuntimeError raised in layer BrokenGrad() at location layer_2 (backward pass)."
    )


# -- NaNs in the forward pass ---------------------------------------------------------------------
def planted_weight(key):
    model = fixed_model()
    ps, st = lx.setup(key, model)
    ps["layer_2"]["layer_2"]["weight"] = ps["layer_2"]["layer_2"]["weight"].at[0, 1].set(jnp.nan)
    return model, ps, st


WEIGHT_MESSAGE = re.escape(
    "NaN detected in parameters (weight) of layer Dense(3 => 1) at location layer_2.layer_2 (forward pass)"
)


@pytest.mark.parametrize("nan_check", ["both", "forward"])
def test_nan_in_one_weight_is_found_by_location(key, nan_check):
    model, ps, st = planted_weight(key)
    debug = lxe.debug_mode(model, nan_check=nan_check)
    x = jnp.ones((4, 1))
    with pytest.raises(lxe.NaNError, match=WEIGHT_MESSAGE):
        debug(x, ps, st)
    with pytest.raises(lxe.NaNError, match=WEIGHT_MESSAGE):
        jax.grad(total(debug, x, st))(ps)
    with pytest.raises(jax.errors.JaxRuntimeError, match=WEIGHT_MESSAGE):
        jax.block_until_ready(jax.jit(debug)(x, ps, st))
    with pytest.raises(lxe.NaNError, match=WEIGHT_MESSAGE) as info:
        lxe.raise_nan_errors(jax.jit(debug))(x, ps, st)
    assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)
    with pytest.raises(lxe.NaNError, match=WEIGHT_MESSAGE):
        lxe.raise_nan_errors(jax.jit(jax.value_and_grad(total(debug, x, st))))(ps)


@pytest.mark.parametrize("nan_check", ["backward", "none"])
def test_nan_in_one_weight_passes_without_forward_check(key, nan_check):
    model, ps, st = planted_weight(key)
    y, _ = lxe.debug_mode(model, nan_check=nan_check)(jnp.ones((4, 1)), ps, st)
    assert jnp.isnan(y).all()


def test_nan_input_is_reported_at_the_first_layer_and_inf_when_asked(key):
    model = fixed_model()
    ps, st = lx.setup(key, model)
    x = jnp.ones((4, 1)).at[2, 0].set(jnp.nan)
    expected = re.escape("NaN detected in input of layer Dense(1 => 16, relu) at location layer_1 (forward pass)")
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.debug_mode(model)(x, ps, st)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(lxe.debug_mode(model)))(x, ps, st)
    huge = jnp.ones((4, 1)).at[0, 0].set(jnp.inf)
    made_nan = re.escape("NaN detected in output of layer Dense(16 => 3) at location layer_2.layer_1 (forward pass)")
    with pytest.raises(lxe.NaNError, match=made_nan):  # the inf only turns into NaN (inf - inf) there
        lxe.debug_mode(model)(huge, ps, st)
    with pytest.raises(
        lxe.NaNError, match=r"Inf detected in input of layer Dense\(1 => 16, relu\) at location layer_1"
    ):
        lxe.debug_mode(model, check_inf=True)(huge, ps, st)


def test_nan_made_inside_a_layer_is_reported_as_its_output_under_vmap(key):
    model = lx.Chain(lx.Dense(2, 2), lx.WrappedFunction(jnp.log), lx.Dense(2, 1))
    ps, st = lx.setup(key, model)
    x = -jnp.ones((3, 1, 2))
    expected = re.escape("NaN detected in output of layer WrappedFunction(log) at location layer_2 (forward pass)")
    debug = lxe.debug_mode(model)
    ps["layer_1"] = {"weight": jnp.eye(2), "bias": jnp.zeros(2)}
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(jax.vmap(lambda x: debug(x, ps, st)[0])))(x)


# -- NaNs in the backward pass -------------------------------------------------------------------
def poisoned_model():
    return lx.Chain(lx.Dense(2, 3, jnp.tanh), Scale(3, poison=True), lx.Dense(3, 1))


BACKWARD_MESSAGE = re.escape(
    "NaN detected in gradient of input of layer Scale(3, poison) at location layer_2 (backward"
)


@pytest.mark.parametrize("nan_check", ["both", "backward"])
def test_nan_made_in_a_backward_pass_is_found_by_location(key, nan_check):
    model = lxe.debug_mode(poisoned_model(), nan_check=nan_check)
    ps, st = lx.setup(key, model)
    x = jnp.ones((4, 2))
    loss = total(model, x, st)
    with pytest.raises(lxe.NaNError, match=BACKWARD_MESSAGE):
        jax.grad(loss)(ps)
    with pytest.raises(lxe.NaNError, match=BACKWARD_MESSAGE):
        jax.vjp(loss, ps)[1](jnp.ones(()))
    with pytest.raises(lxe.NaNError, match=BACKWARD_MESSAGE):
        lxe.raise_nan_errors(jax.jit(jax.value_and_grad(loss)))(ps)
    with pytest.raises(jax.errors.JaxRuntimeError, match=BACKWARD_MESSAGE):
        jax.block_until_ready(jax.jit(jax.grad(loss))(ps))


@pytest.mark.parametrize("nan_check", ["forward", "none"])
def test_nan_made_in_a_backward_pass_passes_without_backward_check(key, nan_check):
    model = lxe.debug_mode(poisoned_model(), nan_check=nan_check)
    ps, st = lx.setup(key, model)
    grads = jax.jit(jax.grad(total(model, jnp.ones((4, 2)), st)))(ps)
    assert jnp.isnan(grads["layer_1"]["weight"]).all()
    assert not jnp.isnan(grads["layer_3"]["weight"]).any()


def test_nan_coming_from_the_loss_is_reported_as_the_incoming_gradient(key):
    model = lxe.debug_mode(fixed_model())
    ps, st = lx.setup(key, model)
    loss = lambda ps: jnp.sum(jnp.sqrt(model(jnp.ones((4, 1)), ps, st)[0] * 0.0))  # noqa: E731  d sqrt at 0
    with pytest.raises(
        lxe.NaNError, match=r"in incoming gradient of output of layer BatchNorm\(1\) at location layer_3 \("
    ):
        lxe.raise_nan_errors(jax.jit(jax.grad(loss)))(ps)


def compiled_checks(fn, *args):
    """How many run-time checks XLA keeps in the compiled `fn`: each makes one host callback."""
    return jax.jit(fn).lower(*args).compile().as_text().count("python_cpu_callback")


def test_checks_along_a_chain_pass_their_answer_on_and_xla_keeps_one_per_pass(key):
    n = 5
    model = lx.Chain(*(lx.Dense(8, 8, jnp.tanh) for _ in range(n)))
    ps, st = lx.setup(key, model)
    x = jnp.ones((4, 8))
    # Without backward checks or notes each layer runs inline, and only the last layer's check,
    # which holds every earlier answer, stays.
    forward = lxe.debug_mode(model, nan_check="forward", error_check=False)
    assert compiled_checks(lambda ps: forward(x, ps, st)[0], ps) == 1
    debug = lxe.debug_mode(model)
    loss = total(debug, x, st)
    # the last forward check, and each layer's check of its parameters' gradients (they are used one by one)
    assert compiled_checks(jax.grad(loss), ps) == n + 1
    # A NaN in layer_2's weight spoils every later output and gradient; layer_2's own check is
    # gone from the program, and the checks that stay report it.
    ps["layer_2"]["weight"] = ps["layer_2"]["weight"].at[0, 0].set(jnp.nan)
    expected = re.escape("NaN detected in parameters (weight) of layer Dense(8 => 8, tanh) at location layer_2 (fo")
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(jax.grad(loss)))(ps)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(lambda ps: forward(x, ps, st)[0]))(ps)


class Vote(lx.Layer):
    """`argmax(x @ weight)`: integer outputs, floating-point parameters."""

    def init_params(self, key):
        return {"weight": jax.random.normal(key, (3, 4))}

    def __call__(self, x, ps, st):
        return jnp.argmax(x @ ps["weight"], axis=-1), st


class Key(lx.Layer):
    """A PRNG key made from its input: an output that a check cannot tie to its answer."""

    def __call__(self, x, ps, st):
        return jax.random.wrap_key_data(jnp.stack([x.sum(), x.sum()]).astype(jnp.uint32)), st


def test_a_layer_with_integer_or_key_outputs_keeps_the_checks_before_it(key):
    x = jnp.ones((2, 3))
    voting = lx.Chain(lx.Dense(3, 3), Vote())
    ps, st = lx.setup(key, voting)
    ps["layer_2"]["weight"] = ps["layer_2"]["weight"].at[1, 2].set(jnp.nan)
    expected = re.escape("NaN detected in parameters (weight) of layer Vote() at location layer_2 (forward pass)")
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(lxe.debug_mode(voting)))(x, ps, st)
    keyed = lx.Chain(lx.Dense(3, 3), Key())
    ps, st = lx.setup(key, keyed)
    ps["layer_1"]["bias"] = ps["layer_1"]["bias"].at[0].set(jnp.nan)
    expected = re.escape("NaN detected in parameters (bias) of layer Dense(3 => 3) at location layer_1 (forward pass)")
    for debug in (lxe.debug_mode(keyed), lxe.debug_mode(keyed, nan_check="forward", error_check=False)):
        with pytest.raises(lxe.NaNError, match=expected):
            lxe.raise_nan_errors(jax.jit(debug))(x, ps, st)


def test_debug_mode_of_conv_and_pooling_wraps_each_layer_and_prints(key):
    model = lx.Chain(lx.Conv((3, 3), 1, 4, jax.nn.relu, padding=1), lx.MaxPool((2, 2)), lx.Conv((3, 3), 4, 2))
    debug = lxe.debug_mode(model)
    assert [type(layer) for layer in debug] == [lxe.DebugLayer] * 3
    assert [layer.layer for layer in debug] == list(model)
    assert str(debug) == "\n".join(
        [
            "Chain(",
            "    layer_1 = DebugLayer(Conv((3, 3), 1 => 4, relu, padding=1, cross_correlation=True), "
            "location=KeyPath('layer_1')),  # 40 parameters",
            "    layer_2 = DebugLayer(MaxPool((2, 2)), location=KeyPath('layer_2')),",
            "    layer_3 = DebugLayer(Conv((3, 3), 4 => 2, cross_correlation=True), location=KeyPath('layer_3')),"
            "                   # 74 parameters",
            ")" + " " * 118 + "# Total: 114 parameters, plus 0 states.",
        ]
    )
    ps, st = lx.setup(key, model)
    x = jnp.ones((1, 8, 8, 1))
    np.testing.assert_array_equal(debug(x, ps, st)[0], model(x, ps, st)[0])


# -- fuzz: a NaN planted anywhere is reported exactly there, eagerly and under jit ---------------------
WIDTH = 2


def add_all(*branches):
    return sum(branches[1:], branches[0])


def leaf(kind):
    return lx.Dense(WIDTH, WIDTH, jnp.tanh) if kind == "dense" else Scale(WIDTH)


models = st.recursive(
    st.sampled_from(["dense", "scale"]).map(leaf),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda layers: lx.Chain(*layers)),
        st.lists(inner, min_size=2, max_size=3).map(lambda layers: lx.Parallel(add_all, *layers)),
        inner.map(lambda layer: lx.SkipConnection(layer, jnp.add)),
    ),
    max_leaves=6,
).map(lambda tree: lx.Chain(leaf("dense"), tree))  # a single first layer reads the input


def leaf_paths(model, ps, st):
    paths = []

    def record(layer, ps, st, path):
        paths.append((path, layer))
        return layer, ps, st

    lxe.layer_map(record, model, ps, st)
    return paths


@given(model=models, place=st.sampled_from(["input", "parameter", "backward"]), pick=st.integers(0, 1000))
def test_fuzz_a_planted_nan_is_reported_at_exactly_its_layer(model, place, pick):
    ps, st_ = lx.setup(jax.random.key(pick), model)
    x = jnp.ones((3, WIDTH))
    paths = leaf_paths(model, ps, st_)
    path, layer = paths[pick % len(paths)]
    if place == "input":
        path, layer = paths[0]
        x = x.at[pick % 3, pick % WIDTH].set(jnp.nan)
        what, pass_ = "input", "forward"
    elif place == "parameter":
        leaf_ps = path.get(ps)
        name = sorted(leaf_ps)[pick % len(leaf_ps)]
        leaf_ps[name] = (
            leaf_ps[name].reshape(-1).at[pick % leaf_ps[name].size].set(jnp.nan).reshape(leaf_ps[name].shape)
        )
        what, pass_ = f"parameters ({name})", "forward"
    else:
        layer = Scale(WIDTH, poison=True)
        poisoned = layer.init_params(jax.random.key(0))
        model, ps, _ = lxe.layer_map(
            lambda old, p, s, at: (layer, poisoned, s) if at == path else (old, p, s), model, ps, st_
        )
        what, pass_ = "gradient of input", "backward"
    debug = lxe.debug_mode(model)
    expected = re.escape(f"NaN detected in {what} of layer {layer!r} at location {path} ({pass_} pass)")
    loss = lambda ps, x: jnp.sum(debug(x, ps, st_)[0])  # noqa: E731
    with pytest.raises(lxe.NaNError, match=expected):
        jax.grad(loss)(ps, x)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(jax.grad(loss)))(ps, x)


# -- parameters a container holds itself ------------------------------------------------------------
class ScaleAround(lx.ContainerLayer):
    """`y = layer(x) * scale`: a learnable scale the container holds beside its child; with `poison`,
    the scale's gradient is NaN."""

    layer: lx.Layer
    poison: bool = False

    def init_params(self, key):
        return {**super().init_params(key), "scale": jnp.ones((WIDTH,))}

    def __call__(self, x, ps, st):
        @jax.custom_vjp
        def scale(y, s):
            return y * s[None, :]

        def bwd(res, g):
            y, s = res
            gs = jnp.sum(g * y, axis=0)
            return g * s[None, :], (gs * jnp.nan if self.poison else gs)

        scale.defvjp(lambda y, s: (scale(y, s), (y, s)), bwd)
        y, st_layer = self.call("layer", x, ps, st)
        return scale(y, ps["scale"]), {"layer": st_layer}


def scaled_model(poison=False):
    inner = lx.Chain(lx.Dense(WIDTH, WIDTH), ScaleAround(lx.Dense(WIDTH, WIDTH), poison))
    return lx.Chain(lx.Dense(WIDTH, WIDTH), inner)


def all_four_ways(debug, ps, st, expected):
    x = jnp.ones((3, WIDTH))
    loss = lambda ps: jnp.sum(debug(x, ps, st)[0])  # noqa: E731
    with pytest.raises(lxe.NaNError, match=expected):
        debug(x, ps, st)[0].block_until_ready()
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(debug))(x, ps, st)
    with pytest.raises(lxe.NaNError, match=expected):
        jax.grad(loss)(ps)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(jax.grad(loss)))(ps)


def test_a_container_holding_a_parameter_is_checked_at_its_own_location(key):
    model = scaled_model()
    debug = lxe.debug_mode(model)
    assert debug[1][1] == lxe.DebugLayer(
        ScaleAround(lxe.DebugLayer(lx.Dense(WIDTH, WIDTH), location="layer_2.layer_2.layer")),
        location="layer_2.layer_2",
        held_only=True,
    )
    assert lxe.debug_mode(debug) == debug  # never nested
    ps, st = lx.setup(key, model)
    x = jnp.ones((3, WIDTH))
    np.testing.assert_array_equal(debug(x, ps, st)[0], model(x, ps, st)[0])
    ps["layer_2"]["layer_2"]["scale"] = ps["layer_2"]["layer_2"]["scale"].at[1].set(jnp.nan)
    expected = re.escape(
        "NaN detected in parameters (scale) of layer ScaleAround(layer=Dense(2 => 2), poison=False) "
        "at location layer_2.layer_2 (forward pass)"
    )
    all_four_ways(debug, ps, st, expected)


def test_a_nan_gradient_of_a_container_held_parameter_blames_the_container(key):
    model = scaled_model(poison=True)
    ps, st = lx.setup(key, model)
    debug = lxe.debug_mode(model)
    x = jnp.ones((3, WIDTH))
    loss = lambda ps: jnp.sum(debug(x, ps, st)[0])  # noqa: E731
    expected = re.escape(
        "NaN detected in gradient of parameters (scale) of layer ScaleAround(layer=Dense(2 => 2), poison=True) "
        "at location layer_2.layer_2 (backward pass)"
    )
    with pytest.raises(lxe.NaNError, match=expected):
        jax.grad(loss)(ps)
    with pytest.raises(lxe.NaNError, match=expected):
        lxe.raise_nan_errors(jax.jit(jax.grad(loss)))(ps)
