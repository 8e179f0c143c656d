import jax.numpy as jnp
import numpy as np
import pytest

import luxjax as lx


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.torch
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    ("ours", "theirs"), [({"scale": 2}, {"scale_factor": 2}), ({"size": (7, 4)}, {"size": (7, 4)})]
)
def test_bilinear_upsample_matches_torch(align_corners, ours, theirs):
    torch = pytest.importorskip("torch")
    x = _x((2, 3, 5, 4))
    model = lx.Upsample(mode="bilinear", align_corners=align_corners, **ours)
    expected = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), mode="bilinear", align_corners=align_corners, **theirs
    )
    np.testing.assert_allclose(model(jnp.asarray(x), {}, {})[0], expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("ours", "theirs"), [({"scale": (2, 3)}, {"scale_factor": (2, 3)}), ({"size": (7, 4)}, {"size": (7, 4)})]
)
def test_nearest_upsample_matches_torch(ours, theirs):
    torch = pytest.importorskip("torch")
    x = _x((2, 3, 5, 4))
    expected = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), mode="nearest", **theirs)
    np.testing.assert_array_equal(lx.Upsample(**ours)(jnp.asarray(x), {}, {})[0], expected.permute(0, 2, 3, 1).numpy())


def test_upsample_defaults_follow_what_lux_computes():
    # Lux's bilinear Upsample aligns corners (NNlib's default): [1, 2] -> [1, 4/3, 5/3, 2].
    model = lx.Upsample(mode="bilinear", scale=2)
    y = model(jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1), {}, {})[0]
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, 5 / 3, 7 / 3, 3.0], rtol=1e-6)
    # nearest works for any number of spatial axes; an int scale applies to each.
    assert lx.Upsample(scale=2)(jnp.ones((1, 2, 3, 4, 5)), {}, {})[0].shape == (1, 4, 6, 8, 5)
    assert lx.Upsample(mode="bilinear", size=5)(jnp.ones((1, 2, 3, 1)), {}, {})[0].shape == (1, 5, 5, 1)
    assert repr(lx.Upsample(mode="bilinear", size=(5, 6), align_corners=False)) == (
        'Upsample("bilinear", size=(5, 6), align_corners=False)'
    )
    assert lx.Upsample(scale=2)(jnp.ones((1, 2, 1), jnp.bfloat16), {}, {})[0].dtype == jnp.bfloat16


def test_upsample_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"give exactly one of `scale` and `size`, got scale=\(2,\), size=\(3,\)"):
        lx.Upsample(scale=2, size=3)
    with pytest.raises(ValueError, match=r"`mode` must be one of 'nearest', 'bilinear', got 'cubic'"):
        lx.Upsample(mode="cubic", scale=2)
    with pytest.raises(ValueError, match=r"bilinear upsampling takes 2 spatial axes, got scale=\(2, 2, 2\)"):
        lx.Upsample(mode="bilinear", scale=(2, 2, 2))
    with pytest.raises(ValueError, match=r"expected input of rank 4 \(batch, 2 spatial axes, channels\), got shape"):
        lx.Upsample(mode="bilinear", scale=2)(jnp.ones((1, 3, 2)), {}, {})
    with pytest.raises(TypeError, match=r"positional argument"):
        lx.Upsample(2)  # keyword arguments only, so Lux's two argument orders cannot be confused


@pytest.mark.torch
def test_pixel_shuffle_matches_torch():
    torch = pytest.importorskip("torch")
    x = _x((2, 3, 5, 8))
    expected = torch.nn.functional.pixel_shuffle(torch.tensor(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    y = lx.PixelShuffle(2)(jnp.asarray(x), {}, {})[0]
    assert y.shape == (2, 6, 10, 2)
    np.testing.assert_array_equal(y, expected.numpy())


def test_pixel_shuffle_in_one_and_three_dimensions():
    y = lx.PixelShuffle(3)(jnp.arange(6.0).reshape(1, 1, 6), {}, {})[0]
    np.testing.assert_array_equal(y[0, :, :], [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]])  # channel c*3 + i
    assert lx.PixelShuffle(2)(jnp.ones((1, 2, 3, 4, 16)), {}, {})[0].shape == (1, 4, 6, 8, 2)
    with pytest.raises(ValueError, match=r"channels divisible by r\*\*d = 2\*\*2, got shape \(1, 2, 2, 6\)"):
        lx.PixelShuffle(2)(jnp.ones((1, 2, 2, 6)), {}, {})
