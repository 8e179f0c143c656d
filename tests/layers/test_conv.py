import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def _normal(shape, seed=11):
    return jax.random.normal(jax.random.key(seed), shape)


# Gradients are checked against finite differences for one layer of each kind (the rest
# compare gradients with PyTorch below), which keeps this file fast.
@pytest.mark.parametrize(
    ("model", "shape", "grads"),
    [
        (lx.Conv(3, 2, 3, jnp.tanh, stride=2, padding=1), (2, 7, 2), True),
        (lx.Conv((3, 2), 4, 6, padding="same", dilation=(2, 1), groups=2), (2, 7, 6, 4), False),
        (lx.Conv((2, 2, 2), 2, 3, padding=((1, 0), (0, 1), (0, 0)), use_bias=False), (1, 3, 4, 3, 2), False),
        (lx.ConvTranspose((3, 3), 2, 3, stride=2, padding=1, output_padding=1), (2, 4, 3, 2), True),
        (lx.ConvTranspose(2, 4, 2, stride=2, groups=2, padding="SAME"), (2, 5, 4), False),
    ],
    ids=repr,
)
def test_conv_contract(model, shape, grads):
    check_layer(model, _normal(shape), rtol=1e-4, atol=1e-4, check_gradients=grads)


def test_conv_default_init_follows_lux(key):
    model = lx.Conv((3, 3), 4, 8, groups=2)
    ps, _ = lx.setup(key, model)
    assert ps["weight"].shape == (3, 3, 2, 8)
    assert ps["bias"].shape == (8,)
    bound = 1 / np.sqrt(2 * 9)
    assert float(jnp.max(jnp.abs(ps["weight"]))) <= bound
    assert float(jnp.max(jnp.abs(ps["weight"]))) > 0.9 * bound
    assert float(jnp.max(jnp.abs(ps["bias"]))) <= bound
    assert lx.parameter_count(model) == 3 * 3 * 2 * 8 + 8


def test_conv_matches_hand_written_sum(key):
    # A 1D VALID convolution written out as a sum over the kernel taps.
    model = lx.Conv(3, 2, 1)
    ps, st = lx.setup(key, model)
    x = _normal((1, 6, 2))
    w, b = np.asarray(ps["weight"]), np.asarray(ps["bias"])
    expected = [sum(np.asarray(x)[0, i + t] @ w[t] for t in range(3)) + b for i in range(4)]
    np.testing.assert_allclose(model(x, ps, st)[0][0], np.stack(expected), rtol=1e-5, atol=1e-6)


def test_issue_18_conv_cross_correlation_false_is_luxs_true_convolution():
    # A non-symmetric kernel tells the two apart. True convolution, by hand:
    # y[i, j] = sum_{a, b} x[i + a, j + b] * w[K - 1 - a, L - 1 - b].
    x = np.arange(20.0, dtype=np.float32).reshape(1, 4, 5, 1) ** 1.5
    w = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], np.float32)  # (2, 3)
    ps = {"weight": jnp.asarray(w[:, :, None, None]), "bias": jnp.zeros(1)}
    true_conv = np.array(
        [
            [sum(x[0, i + a, j + b, 0] * w[1 - a, 2 - b] for a in range(2) for b in range(3)) for j in range(3)]
            for i in range(3)
        ]
    )
    cross = np.array(
        [[sum(x[0, i + a, j + b, 0] * w[a, b] for a in range(2) for b in range(3)) for j in range(3)] for i in range(3)]
    )
    lux_default = lx.Conv((2, 3), 1, 1, cross_correlation=False)
    np.testing.assert_allclose(lux_default(jnp.asarray(x), ps, {})[0][0, :, :, 0], true_conv, rtol=1e-5)
    np.testing.assert_allclose(lx.Conv((2, 3), 1, 1)(jnp.asarray(x), ps, {})[0][0, :, :, 0], cross, rtol=1e-5)
    assert not np.allclose(true_conv, cross)


def test_issue_18_conv_transpose_cross_correlation_false_is_the_transpose_of_a_true_convolution(key):
    # <ConvTranspose(x), y> == <x, Conv(y)> for the matching Conv (weights shared, no bias), in both modes.
    for flag in (True, False):
        conv = lx.Conv((2, 3), 3, 2, stride=2, use_bias=False, cross_correlation=flag)
        transposed = lx.ConvTranspose((2, 3), 2, 3, stride=2, use_bias=False, cross_correlation=flag)
        ps, _ = lx.setup(key, conv)
        y = _normal((1, 6, 7, 3))
        x = _normal((1, 3, 3, 2), seed=5)
        conv_y = conv(y, ps, {})[0]
        t_x = transposed(x, ps, {})[0][:, :6, :7]
        assert t_x.shape == (1, 6, 7, 3)
        np.testing.assert_allclose(jnp.vdot(t_x, y), jnp.vdot(x, conv_y), rtol=1e-4)
    flipped = lx.ConvTranspose((2, 3), 2, 3, use_bias=False, cross_correlation=False)
    ps = lx.setup(key, flipped)[0]
    plain = lx.ConvTranspose((2, 3), 2, 3, use_bias=False)
    np.testing.assert_allclose(
        flipped(x, ps, {})[0], plain(x, {"weight": ps["weight"][::-1, ::-1]}, {})[0], rtol=1e-5, atol=1e-6
    )


def test_conv_cross_correlation_must_be_a_bool():
    with pytest.raises(ValueError, match=r"Conv: `cross_correlation` must be True or False, got 'no'"):
        lx.Conv(3, 1, 1, cross_correlation="no")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lx.Conv((3, 3), 1, 16, jax.nn.relu), "Conv((3, 3), 1 => 16, relu, cross_correlation=True)"),
        (
            lx.Conv((3, 3), 1, 16, padding=1, stride=2),
            "Conv((3, 3), 1 => 16, padding=1, stride=2, cross_correlation=True)",
        ),
        (
            lx.Conv(5, 4, 4, padding="same", dilation=2, groups=4),
            'Conv((5,), 4 => 4, padding="SAME", dilation=2, groups=4, cross_correlation=True)',
        ),
        (
            lx.Conv((3, 3), 1, 2, padding=(1, 0), use_bias=False),
            "Conv((3, 3), 1 => 2, padding=(1, 0), use_bias=False, cross_correlation=True)",
        ),
        # Lux's default (a true convolution) shows no flag, as in Lux.
        (lx.Conv((3, 3), 1, 2, cross_correlation=False), "Conv((3, 3), 1 => 2)"),
        (
            lx.Conv((2, 2), 1, 2, padding=((0, 1), (0, 1))),
            "Conv((2, 2), 1 => 2, padding=((0, 1), (0, 1)), cross_correlation=True)",
        ),
        (
            lx.ConvTranspose((2, 2), 8, 4, stride=(2, 1)),
            "ConvTranspose((2, 2), 8 => 4, stride=(2, 1), cross_correlation=True)",
        ),
        (lx.ConvTranspose((2, 2), 8, 4, cross_correlation=False), "ConvTranspose((2, 2), 8 => 4)"),
        (
            lx.ConvTranspose(3, 1, 1, stride=2, output_padding=1),
            "ConvTranspose((3,), 1 => 1, stride=2, output_padding=1, cross_correlation=True)",
        ),
    ],
)
def test_conv_repr(model, expected):
    assert repr(model) == expected


def test_conv_same_padding_keeps_size_divided_by_stride(key):
    model = lx.Conv((3, 4), 1, 2, padding="SAME", stride=2)
    ps, st = lx.setup(key, model)
    assert model(jnp.ones((1, 7, 8, 1)), ps, st)[0].shape == (1, 4, 4, 2)
    transposed = lx.ConvTranspose((3, 4), 2, 1, padding="same", stride=2)
    ps, st = lx.setup(key, transposed)
    assert transposed(jnp.ones((1, 4, 4, 2)), ps, st)[0].shape == (1, 8, 8, 1)


def test_conv_rejects_wrong_channel_count(key):
    model = lx.Conv((3, 3), 3, 8)
    ps, st = lx.setup(key, model)
    with pytest.raises(
        lx.ShapeError,
        match=r"Conv\(\(3, 3\), 3 => 8, cross_correlation=True\): expected input with 3 channels in the last axis, "
        r"got shape \(2, 8, 8, 1\)",
    ):
        model(jnp.ones((2, 8, 8, 1)), ps, st)


def test_conv_rejects_wrong_rank(key):
    model = lx.Conv((3, 3), 1, 8)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"expected input of rank 4 \(batch, 2 spatial axes, channels\), got shape"):
        model(jnp.ones((8, 8, 1)), ps, st)


def test_conv_rejects_kernel_larger_than_input(key):
    model = lx.Conv((5, 5), 1, 2, padding=1)
    ps, st = lx.setup(key, model)
    with pytest.raises(
        lx.ShapeError, match=r"kernel \(dilated size\) \(5, 5\) is larger than the padded input's spatial size \(4, 6\)"
    ):
        model(jnp.ones((1, 2, 4, 1)), ps, st)
    dilated = lx.Conv(3, 1, 1, dilation=3)
    ps, st = lx.setup(key, dilated)
    with pytest.raises(lx.ShapeError, match=r"kernel \(dilated size\) \(7,\) is larger than the padded input's"):
        dilated(jnp.ones((1, 6, 1)), ps, st)


def test_conv_transpose_rejects_cropping_everything(key):
    model = lx.ConvTranspose(3, 1, 1, padding=2)
    ps, st = lx.setup(key, model)
    with pytest.raises(lx.ShapeError, match=r"the padding \(\(2, 2\),\) crops away the whole output \(size \(-1,\)\)"):
        model(jnp.ones((1, 1, 1)), ps, st)


@pytest.mark.parametrize("padding", ["full", "causal"])
def test_conv_rejects_unknown_padding_mode(padding):
    with pytest.raises(lx.ConfigError, match=rf"Conv: unknown `padding` mode '{padding}'; use 'SAME', 'VALID'"):
        lx.Conv((3, 3), 1, 1, padding=padding)
    with pytest.raises(lx.ConfigError, match=r"ConvTranspose: unknown `padding` mode"):
        lx.ConvTranspose(3, 1, 1, padding=padding)


def test_conv_rejects_bad_configuration():
    with pytest.raises(lx.ConfigError, match=r"Conv: `groups` \(3\) must divide both `in_channels` \(4\)"):
        lx.Conv((3, 3), 4, 6, groups=3)
    with pytest.raises(lx.ConfigError, match=r"Conv: `stride` must be an int >= 1 or a tuple of 2 such ints"):
        lx.Conv((3, 3), 1, 1, stride=(1, 2, 3))
    with pytest.raises(lx.ConfigError, match=r"Conv: `padding` must have one \(lo, hi\) pair per spatial axis \(2\)"):
        lx.Conv((3, 3), 1, 1, padding=((1, 1),))
    with pytest.raises(lx.ConfigError, match=r"Conv: `in_channels` must be a positive int, got 0"):
        lx.Conv(3, 0, 1)
    with pytest.raises(lx.ConfigError, match=r"ConvTranspose: `output_padding` \(2,\) must be smaller than the stride"):
        lx.ConvTranspose(3, 1, 1, stride=2, output_padding=2)


# -- against PyTorch's CPU build ----------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _to_torch(a, *perm):
    torch = _torch()
    t = torch.tensor(np.asarray(a))
    return t.permute(*perm) if perm else t


def _channels_first(x):
    n = x.ndim
    return _to_torch(x, 0, n - 1, *range(1, n - 1))


def _channels_last(t):
    n = t.dim()
    return t.permute(0, *range(2, n), 1).detach().numpy()


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kwargs", "kernel", "in_ch", "out_ch", "spatial", "grads"),
    [
        ({"padding": 2, "dilation": 2, "groups": 2}, (3, 3), 4, 6, (8, 9), True),
        ({"stride": (1, 2), "padding": ((1, 2), (0, 1))}, (2, 3), 2, 3, (6, 7), True),
        ({"padding": "same", "dilation": 3}, (3,), 2, 2, (10,), False),
        ({"stride": 2, "groups": 3}, (2, 2, 3), 3, 3, (4, 5, 6), False),
    ],
    ids=["dilation-groups", "stride-asymmetric-pad", "1d-same", "3d-stride-groups"],
)
def test_conv_matches_torch(key, kwargs, kernel, in_ch, out_ch, spatial, grads):
    torch = _torch()
    model = lx.Conv(kernel, in_ch, out_ch, **kwargs)
    ps, st = lx.setup(key, model)
    x = _normal((2, *spatial, in_ch))
    n = len(kernel)
    # luxjax weight (*k, in/g, out) -> PyTorch (out, in/g, *k)
    w = _to_torch(ps["weight"], n + 1, n, *range(n)).contiguous().requires_grad_(True)
    b = _to_torch(ps["bias"]).requires_grad_(True)
    xt = _channels_first(x).contiguous().requires_grad_(True)
    pads = model.padding
    if pads == "SAME":
        conv_padding = "same"
    else:
        # PyTorch pads symmetrically only: pad explicitly with F.pad (last axis first).
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        conv_padding = 0
    xin = xt if pads == "SAME" else torch.nn.functional.pad(xt, flat)
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[n]
    yt = conv(xin, w, b, stride=model.stride, padding=conv_padding, dilation=model.dilation, groups=model.groups)
    y = model(x, ps, st)[0]
    np.testing.assert_allclose(y, _channels_last(yt), rtol=1e-4, atol=1e-5)
    if not grads:
        return

    # Gradients of a weighted sum of the output, for the input and both parameters.
    direction = _normal(y.shape, seed=2)
    (yt * _channels_first(direction)).sum().backward()
    grads = jax.jit(jax.grad(lambda ps, x: jnp.vdot(model(x, ps, st)[0], direction), argnums=(0, 1)))(ps, x)
    np.testing.assert_allclose(grads[1], _channels_last(xt.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads[0]["bias"], b.grad.numpy(), rtol=1e-4, atol=1e-4)
    w_grad = np.moveaxis(w.grad.numpy(), (0, 1), (n + 1, n))
    np.testing.assert_allclose(grads[0]["weight"], w_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kwargs", "kernel", "in_ch", "out_ch", "spatial"),
    [
        ({"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2)}, (3, 3), 2, 3, (5, 4)),
        ({"dilation": 2, "groups": 2, "padding": 1}, (3, 2), 4, 6, (4, 4)),
        ({"stride": 2, "padding": 1}, (3, 3, 3), 2, 2, (3, 2, 3)),
    ],
    ids=["stride-outpad", "dilation-groups", "3d"],
)
def test_conv_transpose_matches_torch(key, kwargs, kernel, in_ch, out_ch, spatial):
    torch = _torch()
    model = lx.ConvTranspose(kernel, in_ch, out_ch, **kwargs)
    ps, st = lx.setup(key, model)
    x = _normal((2, *spatial, in_ch))
    n = len(kernel)
    # luxjax weight (*k, out/g, in) -> PyTorch (in, out/g, *k)
    w = _to_torch(ps["weight"], n + 1, n, *range(n)).contiguous()
    conv = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d}.get(
        n, torch.nn.functional.conv_transpose3d
    )
    yt = conv(
        _channels_first(x),
        w,
        _to_torch(ps["bias"]),
        stride=model.stride,
        padding=tuple(lo for lo, _ in model.padding),
        output_padding=model.output_padding,
        groups=model.groups,
        dilation=model.dilation,
    )
    np.testing.assert_allclose(model(x, ps, st)[0], _channels_last(yt), rtol=1e-4, atol=1e-5)
