"""Tests for sslsteal_jax/data/augment.py (small images, CPU)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.data.augment import (AugmentConfig, augment_batch, augment_image, color_jitter,
                                       gaussian_blur, random_resized_crop)

H = W = 12

# One jitted entry point shared by the tests: compiled once per (config, shape),
# far cheaper on a busy CPU than op-by-op dispatch of the vmapped pipeline.
_aug = jax.jit(augment_batch, static_argnums=2)

# Everything off: crop is the identity, no flip, no jitter/gray/blur.
_OFF = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0,
                     gray_p=0.0, blur_p=0.0)


def _images(c, b=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0, 1, size=(b, H, W, c)), jnp.float32)


# Default pipeline plus blur so every branch is exercised.
_FULL = AugmentConfig(blur_p=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_augment_batch_shape_dtype_range(c):
    x = _images(c)
    out = _aug(jax.random.PRNGKey(0), x, _FULL)
    assert out.shape == x.shape
    assert out.dtype == jnp.float32
    o = np.asarray(out)
    assert np.all(np.isfinite(o))
    assert o.min() >= 0.0 and o.max() <= 1.0


@pytest.mark.parametrize("c", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_augment_batch_same_key_same_output_different_key_differs(c):
    x = _images(c)
    a = _aug(jax.random.PRNGKey(1), x, _FULL)
    b = _aug(jax.random.PRNGKey(1), x, _FULL)
    d = _aug(jax.random.PRNGKey(2), x, _FULL)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(d))


@pytest.mark.slow
def test_augment_batch_views_independent_across_batch():
    # The same image repeated in the batch should get different views.
    x = jnp.repeat(_images(3, b=1), 3, axis=0)
    out = np.asarray(_aug(jax.random.PRNGKey(3), x, _FULL))
    assert not np.allclose(out[0], out[1])


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_crop_full_scale_unit_ratio_is_identity(c):
    img = _images(c, b=1)[0]
    for seed in range(3):
        out = random_resized_crop(jax.random.PRNGKey(seed), img, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        assert out.shape == img.shape and out.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out), np.asarray(img), atol=1e-5)


@pytest.mark.slow
def test_crop_small_scale_changes_image_keeps_shape():
    img = _images(3, b=1)[0]
    out = random_resized_crop(jax.random.PRNGKey(0), img, scale=(0.2, 0.3))
    assert out.shape == img.shape
    assert not np.allclose(np.asarray(out), np.asarray(img))
    # bilinear interpolation of values in [0,1] stays in [0,1]
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


def test_crop_area_fraction_on_ramp():
    # Horizontal ramp I(y, x) = x. A crop keeping 1/4 of the area with ratio 1 covers half
    # the width, so after resizing back the interior slope is 0.5 per output pixel.
    ramp = jnp.tile(jnp.arange(W, dtype=jnp.float32)[None, :, None], (H, 1, 1))
    for seed in range(3):
        out = np.asarray(random_resized_crop(jax.random.PRNGKey(seed), ramp, scale=(0.25, 0.25),
                                             ratio=(1.0, 1.0)))
        slope = np.diff(out[:, 2:-2, 0], axis=1)
        np.testing.assert_allclose(slope, 0.5, atol=1e-4)
        # constant along the vertical axis (no mixing of columns)
        np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(out[:1, :, 0], (H, W)), atol=1e-5)
        assert out.min() >= -1e-5 and out.max() <= W - 1 + 1e-5


@pytest.mark.slow
def test_pipeline_all_off_is_identity():
    x = _images(3)
    out = _aug(jax.random.PRNGKey(0), x, _OFF)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_flip_probability_one_mirrors(c):
    x = _images(c)
    cfg = dataclasses.replace(_OFF, flip=1.0)
    out = _aug(jax.random.PRNGKey(5), x, cfg)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x)[:, :, ::-1, :], atol=1e-5)


@pytest.mark.slow
def test_gray_probability_one_makes_channels_equal():
    x = _images(3)
    cfg = dataclasses.replace(_OFF, gray_p=1.0)
    out = np.asarray(_aug(jax.random.PRNGKey(6), x, cfg))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)
    xn = np.asarray(x)
    lum = 0.299 * xn[..., 0] + 0.587 * xn[..., 1] + 0.114 * xn[..., 2]
    np.testing.assert_allclose(out[..., 0], lum, atol=1e-5)


def test_color_jitter_grayscale_keeps_one_channel_and_range():
    img = _images(1, b=1)[0]
    out = color_jitter(jax.random.PRNGKey(0), img, strength=1.0)
    assert out.shape == (H, W, 1) and out.dtype == jnp.float32
    o = np.asarray(out)
    assert o.min() >= 0.0 and o.max() <= 1.0
    assert not np.allclose(o, np.asarray(img))


@pytest.mark.slow
def test_color_jitter_rgb_shape_range_and_changes():
    img = _images(3, b=1)[0]
    out = color_jitter(jax.random.PRNGKey(1), img, strength=1.0)
    assert out.shape == img.shape and out.dtype == jnp.float32
    o = np.asarray(out)
    assert o.min() >= 0.0 and o.max() <= 1.0
    assert not np.allclose(o, np.asarray(img))


def test_color_jitter_zero_strength_is_identity():
    img = _images(3, b=1)[0]
    out = color_jitter(jax.random.PRNGKey(2), img, strength=0.0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(img), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_gaussian_blur_preserves_constant_image(c):
    img = jnp.full((H, W, c), 0.37, jnp.float32)
    out = gaussian_blur(jax.random.PRNGKey(0), img, sigma_range=(0.5, 2.0))
    assert out.shape == img.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), 0.37, atol=1e-6)
    np.testing.assert_allclose(float(out.mean()), 0.37, atol=1e-6)


@pytest.mark.slow
def test_gaussian_blur_smooths_delta():
    img = jnp.zeros((H, W, 1), jnp.float32).at[H // 2, W // 2, 0].set(1.0)
    out = np.asarray(gaussian_blur(jax.random.PRNGKey(0), img, sigma_range=(1.0, 1.0)))
    # peak reduced, mass spread to neighbours, total mass conserved away from borders
    assert out[H // 2, W // 2, 0] < 1.0
    assert out[H // 2 + 1, W // 2, 0] > 0.0 and out[H // 2, W // 2 - 1, 0] > 0.0
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-5)
    # symmetric kernel -> symmetric response
    np.testing.assert_allclose(out[H // 2 - 1, W // 2, 0], out[H // 2 + 1, W // 2, 0], atol=1e-7)
    np.testing.assert_allclose(out[H // 2, W // 2 - 1, 0], out[H // 2, W // 2 + 1, 0], atol=1e-7)
    # the peak stays the maximum
    assert out.argmax() == np.ravel_multi_index((H // 2, W // 2, 0), out.shape)


@pytest.mark.slow
def test_gaussian_blur_in_pipeline_probability_one():
    img = jnp.zeros((3, H, W, 1), jnp.float32).at[0, H // 2, W // 2, 0].set(1.0)
    cfg = dataclasses.replace(_OFF, blur_p=1.0, blur_sigma=(1.0, 1.0))
    out = np.asarray(_aug(jax.random.PRNGKey(0), img, cfg))
    assert out[0, H // 2, W // 2, 0] < 1.0 and out[0, H // 2 + 1, W // 2, 0] > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_augment_works_under_jit(c):
    x = _images(c)
    a = _aug(jax.random.PRNGKey(7), x, _FULL)
    assert a.shape == x.shape and a.dtype == jnp.float32
    o = np.asarray(a)
    assert o.min() >= 0.0 and o.max() <= 1.0
    if c == 1:  # (eager op-by-op dispatch is slow on CPU: compare once)
        # jitted == eager execution
        np.testing.assert_allclose(o, np.asarray(augment_batch(jax.random.PRNGKey(7), x, _FULL)),
                                   atol=1e-5)
        # single-image entry point also jits
        g = jax.jit(lambda k, im: augment_image(k, im, _FULL))
        assert g(jax.random.PRNGKey(0), x[0]).shape == x[0].shape
