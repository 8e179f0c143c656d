import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def _normal(shape, seed=11):
    return 2.0 * jax.random.normal(jax.random.key(seed), shape) + 0.5


class _InTestMode(lx.WrapperLayer):
    """Runs the wrapped layer with its state in test mode, so `check_layer` covers that mode."""

    layer: lx.Layer

    def init_state(self, key):
        return lx.testmode(self.layer.init_state(key))

    def __call__(self, x, ps, st):
        return self.layer(x, ps, st)


# Finite-difference gradients where PyTorch's gradients are not compared below (BatchNorm's
# are; in test mode it is affine), which keeps this file fast.
@pytest.mark.parametrize(
    ("model", "shape", "grads"),
    [
        (lx.BatchNorm(3, jnp.tanh), (6, 3), False),
        (_InTestMode(lx.BatchNorm(2, momentum=0.3)), (4, 3, 2), False),
        (lx.BatchNorm(2, affine=False, track_stats=False), (4, 5, 2), False),
        (lx.LayerNorm(4), (3, 4), True),
        (lx.LayerNorm((3, 2), jax.nn.relu, affine=False), (2, 5, 3, 2), False),
        (lx.GroupNorm(4, 2), (2, 3, 3, 4), True),
        (lx.GroupNorm(3, 3, epsilon=1e-3), (2, 5, 3), False),
    ],
    ids=repr,
)
def test_norm_contract(model, shape, grads):
    check_layer(model, _normal(shape), rtol=1e-4, atol=1e-4, check_gradients=grads)


def test_batchnorm_counts_and_display():
    assert (lx.parameter_count(lx.BatchNorm(3)), lx.state_count(lx.BatchNorm(3))) == (6, 7)
    text = str(lx.Chain(lx.Dense(2, 3, jax.nn.relu), lx.BatchNorm(3), lx.Dense(3, 2)))
    assert text.splitlines() == [
        "Chain(",
        "    layer_1 = Dense(2 => 3, relu),                # 9 parameters",
        "    layer_2 = BatchNorm(3),                       # 6 parameters, plus 7 non-trainable",
        "    layer_3 = Dense(3 => 2),                      # 8 parameters",
        ")                                                 # Total: 23 parameters, plus 7 states.",
    ]


def test_batchnorm_state_keys(key):
    ps, st = lx.setup(key, lx.BatchNorm(3))
    assert sorted(ps) == ["bias", "scale"]
    assert sorted(st) == ["running_mean", "running_var", "training"]
    assert st["training"] == lx.Training(True)
    ps, st = lx.setup(key, lx.BatchNorm(3, affine=False, track_stats=False))
    assert ps == {} and st == {"training": lx.Training(True)}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lx.BatchNorm(3), "BatchNorm(3)"),
        (lx.BatchNorm(3, jax.nn.relu, momentum=0.2), "BatchNorm(3, relu, momentum=0.2)"),
        (lx.BatchNorm(8, affine=False, track_stats=False), "BatchNorm(8, affine=False, track_stats=False)"),
        (lx.LayerNorm(64), "LayerNorm(64)"),
        (lx.LayerNorm((4, 4), epsilon=1e-6), "LayerNorm((4, 4), epsilon=1e-06)"),
        (lx.GroupNorm(6, 3, jnp.tanh, affine=False), "GroupNorm(6, 3, tanh, affine=False)"),
    ],
)
def test_norm_repr(model, expected):
    assert repr(model) == expected


def test_batchnorm_gradient_ignores_running_stats(key):
    model = lx.BatchNorm(2)
    ps, st = lx.setup(key, model)
    x = _normal((5, 2))
    # The running statistics are state: the gradient of their sum with respect to x is zero.
    grad = jax.grad(lambda x: jnp.sum(model(x, ps, st)[1]["running_mean"]))(x)
    np.testing.assert_array_equal(grad, np.zeros((5, 2)))


def test_norm_rejects_wrong_shapes(key):
    model = lx.BatchNorm(3)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"BatchNorm\(3\): expected input .* with 3 channels in the last axis, got"):
        model(jnp.ones((4, 2)), ps, st)
    model = lx.LayerNorm((3, 2))
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"LayerNorm\(\(3, 2\)\): expected input with trailing axes \(3, 2\)"):
        model(jnp.ones((4, 2, 3)), ps, st)
    model = lx.GroupNorm(4, 2)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"GroupNorm\(4, 2\): expected input .* with 4 channels in the last axis"):
        model(jnp.ones((4,)), ps, st)


def test_norm_rejects_bad_configuration():
    with pytest.raises(lx.ConfigError, match=r"GroupNorm: `groups` \(4\) must divide `channels` \(6\)"):
        lx.GroupNorm(6, 4)
    with pytest.raises(lx.ConfigError, match=r"BatchNorm: `momentum` must be a number in \[0, 1\], got 1.5"):
        lx.BatchNorm(3, momentum=1.5)
    with pytest.raises(lx.ConfigError, match=r"BatchNorm: `channels` must be a positive int, got 0"):
        lx.BatchNorm(0)
    with pytest.raises(lx.ConfigError, match=r"LayerNorm: `epsilon` must be a positive number, got 0"):
        lx.LayerNorm(3, epsilon=0)
    with pytest.raises(lx.ConfigError, match=r"LayerNorm: `shape` must be a positive int or a tuple of them"):
        lx.LayerNorm(())


# -- against PyTorch's CPU build ----------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _random_affine(ps, seed=5):
    """Non-trivial scale and bias, so the affine part is compared too."""
    keys = jax.random.split(jax.random.key(seed), 2)
    return {
        "scale": 1.0 + 0.5 * jax.random.normal(keys[0], ps["scale"].shape),
        "bias": 0.5 * jax.random.normal(keys[1], ps["bias"].shape),
    }


def _channels_first(x):
    torch = _torch()
    n = x.ndim
    return torch.tensor(np.asarray(x)).permute(0, n - 1, *range(1, n - 1))


def _channels_last(t):
    n = t.dim()
    return t.permute(0, *range(2, n), 1).detach().numpy()


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(8, 3), (2, 4, 3, 3)], ids=["0d", "2d"])
def test_batchnorm_matches_torch_in_both_modes(key, shape):
    torch = _torch()
    model = lx.BatchNorm(3, momentum=0.2, epsilon=1e-4)
    ps, st = lx.setup(key, model)
    ps = _random_affine(ps)
    reference = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)](
        3, momentum=0.2, eps=1e-4
    )
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(np.asarray(ps["scale"])))
        reference.bias.copy_(torch.tensor(np.asarray(ps["bias"])))

    # Two training steps: outputs and the updated running statistics agree.
    reference.train()
    for seed in (1, 2):
        x = _normal(shape, seed=seed)
        y, st = model(x, ps, st)
        expected = reference(_channels_first(x))
        np.testing.assert_allclose(y, _channels_last(expected), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st["running_mean"], reference.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st["running_var"], reference.running_var.numpy(), rtol=1e-5, atol=1e-6)

    # Test mode uses the running statistics and leaves them alone.
    reference.eval()
    x = _normal(shape, seed=3)
    y, test_st = model(x, ps, lx.testmode(st))
    np.testing.assert_allclose(y, _channels_last(reference(_channels_first(x))), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(test_st["running_mean"], st["running_mean"])


@pytest.mark.torch
def test_batchnorm_gradient_matches_torch(key):
    torch = _torch()
    model = lx.BatchNorm(3)
    ps, st = lx.setup(key, model)
    ps = _random_affine(ps)
    x = _normal((4, 5, 3))
    direction = _normal((4, 5, 3), seed=7)
    grads = jax.grad(lambda ps, x: jnp.vdot(model(x, ps, st)[0], direction), argnums=(0, 1))(ps, x)

    reference = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(np.asarray(ps["scale"])))
        reference.bias.copy_(torch.tensor(np.asarray(ps["bias"])))
    xt = _channels_first(x).contiguous().requires_grad_(True)
    (reference(xt) * _channels_first(direction)).sum().backward()
    np.testing.assert_allclose(grads[1], _channels_last(xt.grad), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[0]["scale"], reference.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[0]["bias"], reference.bias.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize(("norm_shape", "x_shape"), [((6,), (4, 6)), ((3, 4), (2, 5, 3, 4))])
def test_layernorm_matches_torch(key, norm_shape, x_shape):
    torch = _torch()
    model = lx.LayerNorm(norm_shape, epsilon=1e-4)
    ps, st = lx.setup(key, model)
    ps = _random_affine(ps)
    x = _normal(x_shape)
    expected = torch.nn.functional.layer_norm(
        torch.tensor(np.asarray(x)),
        norm_shape,
        torch.tensor(np.asarray(ps["scale"])),
        torch.tensor(np.asarray(ps["bias"])),
        eps=1e-4,
    )
    np.testing.assert_allclose(model(x, ps, st)[0], expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("channels", "groups", "shape"), [(6, 3, (2, 4, 4, 6)), (4, 4, (2, 3, 2, 2, 4)), (4, 2, (3, 4))]
)
def test_groupnorm_matches_torch(key, channels, groups, shape):
    torch = _torch()
    model = lx.GroupNorm(channels, groups)
    ps, st = lx.setup(key, model)
    ps = _random_affine(ps)
    x = _normal(shape)
    expected = torch.nn.functional.group_norm(
        _channels_first(x), groups, torch.tensor(np.asarray(ps["scale"])), torch.tensor(np.asarray(ps["bias"]))
    )
    np.testing.assert_allclose(model(x, ps, st)[0], _channels_last(expected), rtol=1e-4, atol=1e-5)


# -- issue 18: InstanceNorm, RMSNorm, WeightNorm, LayerNorm(axes=) --------------------------------


@pytest.mark.torch
def test_instancenorm_matches_torch_with_running_statistics(key):
    torch = _torch()
    model = lx.InstanceNorm(3, affine=True, track_stats=True, momentum=0.2, epsilon=1e-4)
    ps, st = lx.setup(key, model)
    ps = _random_affine(ps)
    reference = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.2, eps=1e-4)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(np.asarray(ps["scale"])))
        reference.bias.copy_(torch.tensor(np.asarray(ps["bias"])))
    reference.train()
    for seed in (1, 2):
        x = _normal((2, 4, 5, 3), seed=seed)
        y, st = model(x, ps, st)
        np.testing.assert_allclose(y, _channels_last(reference(_channels_first(x))), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st["running_mean"], reference.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st["running_var"], reference.running_var.numpy(), rtol=1e-5, atol=1e-6)
    reference.eval()
    x = _normal((2, 4, 5, 3), seed=3)
    y, _ = model(x, ps, lx.testmode(st))
    np.testing.assert_allclose(y, _channels_last(reference(_channels_first(x))), rtol=1e-4, atol=1e-5)


def test_instancenorm_defaults_are_luxs_and_it_needs_a_spatial_axis(key):
    model = lx.InstanceNorm(2)
    ps, st = lx.setup(key, model)
    assert (ps, list(st)) == ({}, ["training"])
    assert repr(model) == "InstanceNorm(2)"
    assert repr(lx.InstanceNorm(2, jax.nn.relu, affine=True, track_stats=True)) == (
        "InstanceNorm(2, relu, affine=True, track_stats=True)"
    )
    y, _ = model(_normal((3, 6, 2)), ps, st)
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"with a spatial axis and 2 channels in the last axis, got shape \(3, 2\)"):
        model(jnp.ones((3, 2)), ps, st)


@pytest.mark.torch
def test_rmsnorm_matches_torch(key):
    torch = _torch()
    model = lx.RMSNorm((3, 4), epsilon=1e-6)
    ps = {"scale": 1.0 + 0.5 * jax.random.normal(key, (3, 4))}
    reference = torch.nn.RMSNorm((3, 4), eps=1e-6)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(np.asarray(ps["scale"])))
    x = _normal((2, 5, 3, 4))
    expected = reference(torch.tensor(np.asarray(x))).detach().numpy()
    np.testing.assert_allclose(model(x, ps, {})[0], expected, rtol=1e-5, atol=1e-6)
    assert repr(model) == "RMSNorm((3, 4), epsilon=1e-06)"
    assert lx.parameter_count(lx.RMSNorm(8, affine=False)) == 0


def test_rmsnorm_keeps_bfloat16(key):
    model = lx.RMSNorm(4)
    ps, st = lx.setup(key, model)
    assert model(jnp.ones((2, 4), jnp.bfloat16), ps, st)[0].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"expected input with trailing axes \(4,\), got shape \(2, 3\)"):
        model(jnp.ones((2, 3)), ps, st)


@pytest.mark.torch
def test_weightnorm_matches_torch_weight_norm(key):
    torch = _torch()
    model = lx.WeightNorm(lx.Dense(3, 2), ("weight",), dims=(0,))
    ps, st = lx.setup(key, model)
    ps["normalized"]["weight_g"] = jnp.array([[0.5], [2.0]])
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 2), dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(torch.tensor(np.asarray(ps["normalized"]["weight_g"])))
        reference.parametrizations.weight.original1.copy_(torch.tensor(np.asarray(ps["normalized"]["weight_v"])))
        reference.bias.copy_(torch.tensor(np.asarray(ps["unnormalized"]["bias"])))
    x = _normal((4, 3))
    xt = torch.tensor(np.asarray(x))
    out = reference(xt)
    np.testing.assert_allclose(model(x, ps, st)[0], out.detach().numpy(), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    grads = jax.grad(lambda p: model(x, p, st)[0].sum())(ps)
    np.testing.assert_allclose(
        grads["normalized"]["weight_g"], reference.parametrizations.weight.original0.grad.numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        grads["normalized"]["weight_v"], reference.parametrizations.weight.original1.grad.numpy(), rtol=1e-4, atol=1e-6
    )


def test_weightnorm_default_keeps_the_last_axis_as_lux_and_checks_names(key):
    model = lx.WeightNorm(lx.Conv((3, 3), 2, 4), ("weight",))
    ps, st = lx.setup(key, model)
    assert ps["normalized"]["weight_g"].shape == (1, 1, 1, 4)  # one norm per output channel
    x = _normal((1, 5, 5, 2))
    plain = {"weight": ps["normalized"]["weight_v"], **ps["unnormalized"]}
    np.testing.assert_allclose(model(x, ps, st)[0], lx.Conv((3, 3), 2, 4)(x, plain, {})[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"WeightNorm: Dense\(2 => 2\) has no parameter array 'wieght'; it has 'weight'"
    ):
        lx.WeightNorm(lx.Dense(2, 2), ("wieght",))
    with pytest.raises(ValueError, match=r"`dims` must have one entry per name in `which_params` \(1\), got \(0, 1\)"):
        lx.WeightNorm(lx.Dense(2, 2), "weight", dims=(0, 1))
    with pytest.raises(ValueError, match=r"`dims` entry for 'weight' must be an axis or a tuple of axes of its 2 axes"):
        lx.WeightNorm(lx.Dense(2, 2), "weight", dims=(5,))


def test_layernorm_axes_normalises_over_the_chosen_axes(key):
    model = lx.LayerNorm((1, 1, 3), axes=(1, 2))
    assert repr(model) == "LayerNorm((1, 1, 3), axes=(1, 2))"
    ps, st = lx.setup(key, model)
    ps = {"scale": jnp.array([[[1.0, 2.0, 3.0]]]), "bias": jnp.array([[[0.0, 1.0, -1.0]]])}
    x = _normal((2, 4, 5, 3))
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    expected = (x - mean) / jnp.sqrt(var + 1e-5) * ps["scale"][None] + ps["bias"][None]
    np.testing.assert_allclose(model(x, ps, st)[0], expected, rtol=1e-5, atol=1e-5)
    # Negative axes count from the end: the same as the default for a trailing shape.
    x2 = _normal((2, 4))
    default, by_axes = lx.LayerNorm(4), lx.LayerNorm(4, axes=-1)
    ps2, _ = lx.setup(key, default)
    np.testing.assert_array_equal(default(x2, ps2, {})[0], by_axes(x2, ps2, {})[0])
    with pytest.raises(ValueError, match=r"trailing axes broadcast with \(1, 1, 3\), got shape \(2, 4, 5, 2\)"):
        model(jnp.ones((2, 4, 5, 2)), ps, st)
    with pytest.raises(ValueError, match=r"`axes` must be None, an int or a tuple of distinct ints, got \(1, 1\)"):
        lx.LayerNorm(3, axes=(1, 1))
