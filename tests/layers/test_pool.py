import jax
import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx
from luxjax.testing import check_layer


def _normal(shape, seed=11):
    return jax.random.normal(jax.random.key(seed), shape)


# Finite-difference gradients for the layers whose gradients are not compared with
# PyTorch below (MaxPool/MeanPool are), which keeps this file fast.
@pytest.mark.parametrize(
    ("model", "shape", "grads"),
    [
        (lx.MaxPool((2, 2)), (2, 4, 6, 3), False),
        (lx.MaxPool(3, stride=2, padding="same"), (2, 7, 2), False),
        (lx.MeanPool((2, 2, 2), padding=1), (1, 3, 4, 2, 2), False),
        (lx.MeanPool((3, 2), stride=1, padding=((1, 0), (0, 1))), (2, 4, 5, 1), False),
        (lx.GlobalMaxPool(), (2, 3, 4, 2), True),
        (lx.GlobalMeanPool(), (2, 5, 3), False),
        (lx.AdaptiveMaxPool((2, 3)), (2, 5, 7, 2), False),
        (lx.AdaptiveMeanPool(3), (2, 7, 2), True),
    ],
    ids=repr,
)
def test_pool_contract(model, shape, grads):
    check_layer(model, _normal(shape), check_gradients=grads)


def test_pools_by_hand():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(lx.MaxPool(2)(x[:, 0], {}, {})[0][0, :, 0], [1.0, 3.0])
    np.testing.assert_array_equal(lx.MeanPool((2, 2))(x, {}, {})[0][0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    # MaxPool ignores padding (it never wins); MeanPool counts it as zeros.
    neg = -jnp.ones((1, 2, 1))
    np.testing.assert_array_equal(lx.MaxPool(2, padding=1)(neg, {}, {})[0][0, :, 0], [-1.0, -1.0])
    np.testing.assert_array_equal(lx.MeanPool(2, padding=1)(neg, {}, {})[0][0, :, 0], [-0.5, -0.5])
    y = lx.GlobalMeanPool()(x, {}, {})[0]
    assert y.shape == (1, 1, 1, 1) and float(y[0, 0, 0, 0]) == 7.5
    assert float(lx.GlobalMaxPool()(x, {}, {})[0][0, 0, 0, 0]) == 15.0


def test_adaptive_pool_uses_pytorch_windows():
    # L = 5, out = 3: windows [0, 2), [1, 4), [3, 5).
    x = jnp.array([1.0, 5.0, 2.0, 0.0, 3.0]).reshape(1, 5, 1)
    np.testing.assert_array_equal(lx.AdaptiveMaxPool(3)(x, {}, {})[0][0, :, 0], [5.0, 5.0, 3.0])
    np.testing.assert_allclose(lx.AdaptiveMeanPool(3)(x, {}, {})[0][0, :, 0], [3.0, 7.0 / 3.0, 1.5])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lx.MaxPool((2, 2)), "MaxPool((2, 2))"),
        (lx.MaxPool(3, stride=1, padding=1), "MaxPool((3,), padding=1, stride=1)"),
        (lx.MeanPool((2, 2), padding="valid", stride=(1, 2)), 'MeanPool((2, 2), padding="VALID", stride=(1, 2))'),
        (lx.GlobalMeanPool(), "GlobalMeanPool()"),
        (lx.AdaptiveMaxPool((4, 4)), "AdaptiveMaxPool((4, 4))"),
        (lx.AdaptiveMeanPool(2), "AdaptiveMeanPool((2,))"),
    ],
)
def test_pool_repr(model, expected):
    assert repr(model) == expected


def test_pool_rejects_window_larger_than_input():
    with pytest.raises(
        lx.ShapeError,
        match=r"MaxPool\(\(3, 3\)\): window \(3, 3\) is larger than the padded input's spatial size \(2, 5\)",
    ):
        lx.MaxPool((3, 3))(jnp.ones((1, 2, 5, 1)), {}, {})
    with pytest.raises(lx.ShapeError, match=r"MeanPool\(\(4,\), padding=1\): window \(4,\) is larger than .* \(3,\)"):
        lx.MeanPool(4, padding=1)(jnp.ones((1, 1, 1)), {}, {})


def test_pool_rejects_wrong_rank():
    with pytest.raises(lx.ShapeError, match=r"expected input of rank 4 \(batch, 2 spatial axes, channels\), got shape"):
        lx.MaxPool((2, 2))(jnp.ones((4, 4, 1)), {}, {})
    with pytest.raises(lx.ShapeError, match=r"AdaptiveMeanPool\(\(2,\)\): expected input of rank 3"):
        lx.AdaptiveMeanPool(2)(jnp.ones((4, 4, 1, 1)), {}, {})
    with pytest.raises(lx.ShapeError, match=r"GlobalMaxPool\(\): expected input \(batch, \*spatial, channels\)"):
        lx.GlobalMaxPool()(jnp.ones((4, 3)), {}, {})


def test_pool_rejects_bad_configuration():
    with pytest.raises(lx.ConfigError, match=r"MaxPool: unknown `padding` mode 'full'; use 'SAME', 'VALID'"):
        lx.MaxPool(2, padding="full")
    with pytest.raises(lx.ConfigError, match=r"MeanPool: `stride` must be an int >= 1 or a tuple of 2 such ints"):
        lx.MeanPool((2, 2), stride=0)
    with pytest.raises(lx.ConfigError, match=r"AdaptiveMaxPool: `out_size` must be an int >= 1"):
        lx.AdaptiveMaxPool(0)


# -- against PyTorch's CPU build ----------------------------------------------------------------


def _torch_run(fn, x, **kwargs):
    torch = pytest.importorskip("torch")
    n = x.ndim
    y = fn(torch.tensor(np.asarray(x)).permute(0, n - 1, *range(1, n - 1)), **kwargs)
    return y.permute(0, *range(2, n), 1).numpy()


@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "window", "stride", "padding", "shape"),
    [
        ("max", (2, 2), None, 0, (2, 6, 7, 3)),
        ("max", (3, 3), (2, 1), (1, 1), (2, 7, 6, 2)),
        ("mean", (3,), 2, 1, (2, 9, 3)),
        ("mean", (2, 3, 2), (1, 2, 2), 0, (1, 4, 7, 5, 2)),
    ],
)
def test_pool_matches_torch(kind, window, stride, padding, shape):
    torch = pytest.importorskip("torch")
    layer = {"max": lx.MaxPool, "mean": lx.MeanPool}[kind](window, stride=stride, padding=padding)
    fn = getattr(torch.nn.functional, f"{kind.replace('mean', 'avg')}_pool{len(window)}d")
    x = _normal(shape)
    expected = _torch_run(fn, x, kernel_size=window, stride=stride or window, padding=padding)
    np.testing.assert_allclose(layer(x, {}, {})[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("out_size", "shape"), [((3, 2), (2, 7, 5, 3)), ((4,), (2, 10, 2)), ((2, 3, 2), (1, 5, 7, 3, 2))]
)
def test_adaptive_pool_matches_torch(out_size, shape):
    torch = pytest.importorskip("torch")
    x = _normal(shape)
    n = len(out_size)
    for layer, fn in [
        (lx.AdaptiveMaxPool(out_size), getattr(torch.nn.functional, f"adaptive_max_pool{n}d")),
        (lx.AdaptiveMeanPool(out_size), getattr(torch.nn.functional, f"adaptive_avg_pool{n}d")),
    ]:
        np.testing.assert_allclose(layer(x, {}, {})[0], _torch_run(fn, x, output_size=out_size), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["max", "mean"])
def test_pool_gradient_under_jit_matches_torch(kind):
    # reduce_window is only differentiable when its initial value is a known constant;
    # under jit a traced one used to fail ("Linearization failed").
    torch = pytest.importorskip("torch")
    layer = {"max": lx.MaxPool, "mean": lx.MeanPool}[kind]((3, 2), stride=(2, 1), padding=1)
    x = _normal((2, 6, 5, 3))
    direction = _normal((2, 3, 6, 3), seed=2)
    grad = jax.jit(jax.grad(lambda x: jnp.vdot(layer(x, {}, {})[0], direction)))(x)
    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    fn = getattr(torch.nn.functional, f"{kind.replace('mean', 'avg')}_pool2d")
    yt = fn(xt, kernel_size=(3, 2), stride=(2, 1), padding=1)
    (yt * torch.tensor(np.asarray(direction)).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


# -- issue 18: LPPool, GlobalLPPool, AdaptiveLPPool ---------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("p", [2, 3])
def test_lppool_matches_torch_on_non_negative_inputs(p):
    torch = pytest.importorskip("torch")
    x = np.abs(np.random.default_rng(0).standard_normal((2, 6, 5, 3))).astype(np.float32)
    model = lx.LPPool((2, 2), stride=(2, 1), p=p)
    reference = torch.nn.LPPool2d(p, (2, 2), stride=(2, 1))
    expected = reference(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model(jnp.asarray(x), {}, {})[0], expected, rtol=1e-5, atol=1e-6)


def test_lp_pools_are_p_norms_of_their_windows():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 4, 3)), jnp.float32)
    norm = lambda w, p: (jnp.abs(w) ** p).sum(axis=(1, 2)) ** (1 / p)  # noqa: E731
    np.testing.assert_allclose(lx.GlobalLPPool(p=3)(x, {}, {})[0][:, 0, 0], norm(x, 3), rtol=1e-5)
    y = lx.AdaptiveLPPool((2, 2), p=1.5)(x, {}, {})[0]
    # Output (0, 1) covers rows [0, 3) and columns [2, 4), AdaptiveMaxPool's windows.
    np.testing.assert_allclose(y[:, 0, 1], norm(x[:, 0:3, 2:4], 1.5), rtol=1e-5)
    assert repr(lx.LPPool((2, 2), p=3)) == "LPPool((2, 2), p=3)"
    assert repr(lx.LPPool(2, stride=1)) == "LPPool((2,), stride=1)"
    assert repr(lx.GlobalLPPool()) == "GlobalLPPool()"
    assert repr(lx.AdaptiveLPPool((2, 2), p=1.5)) == "AdaptiveLPPool((2, 2), p=1.5)"
    with pytest.raises(ValueError, match=r"LPPool: `p` must be a positive number, got 0"):
        lx.LPPool(2, p=0)
