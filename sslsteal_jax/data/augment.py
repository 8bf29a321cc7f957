"""SimCLR augmentations as jitted, vmapped JAX functions (run on device).

Source: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML 2020), Appendix A: random resized crop, horizontal
flip, colour jitter (p=0.8), random grayscale (p=0.2), Gaussian blur. For
single-channel images colour jitter reduces to brightness and contrast and
grayscale is a no-op.

All functions take images float32 ``(H, W, C)`` (or ``(B, H, W, C)`` for the
batched entry point) with values in [0, 1] and return the same shape/dtype,
clipped to [0, 1]. Every sampling function takes an explicit PRNG key.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the SimCLR augmentation pipeline.

    crop_scale: (min, max) fraction of the image area kept by the random crop.
    crop_ratio: (min, max) aspect ratio of the crop.
    flip: probability of a horizontal flip.
    jitter_p: probability colour jitter is applied; ``jitter_strength`` s sets
      brightness/contrast/saturation = 0.8 s and hue = 0.2 s (SimCLR).
    gray_p: probability of converting an RGB image to grayscale.
    blur_p: probability of Gaussian blur with sigma in ``blur_sigma`` (pixels).
    """

    crop_scale: tuple = (0.2, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter_p: float = 0.8
    jitter_strength: float = 0.5
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)


def random_resized_crop(key, image, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``
    and resize it back to the input size with bilinear interpolation."""
    h, w = image.shape[0], image.shape[1]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(k2, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    r = jnp.exp(log_r)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0 / h, 1.0)  # crop height as a fraction of h
    cw = jnp.clip(jnp.sqrt(area * r), 1.0 / w, 1.0)
    y0 = jax.random.uniform(k3, ()) * (1.0 - ch)
    x0 = jax.random.uniform(k4, ()) * (1.0 - cw)
    scale_yx = jnp.array([1.0 / ch, 1.0 / cw])
    translate = jnp.array([-y0 * h / ch, -x0 * w / cw])
    out = jax.image.scale_and_translate(image, image.shape, (0, 1), scale_yx, translate,
                                        method="linear", antialias=False)
    return out


def _grayscale(image):
    if image.shape[-1] == 1:
        return image
    g = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    return jnp.repeat(g[..., None], image.shape[-1], axis=-1)


def color_jitter(key, image, strength=0.5):
    """Brightness, contrast, saturation and hue jitter (random order not used:
    fixed order brightness -> contrast -> saturation -> hue, as in many JAX
    SimCLR ports). Saturation and hue only act on 3-channel images."""
    kb, kc, ks, kh = jax.random.split(key, 4)
    s = 0.8 * strength
    b = jax.random.uniform(kb, (), minval=1 - s, maxval=1 + s)
    image = image * b
    c = jax.random.uniform(kc, (), minval=1 - s, maxval=1 + s)
    mean = jnp.mean(_grayscale(image))
    image = (image - mean) * c + mean
    if image.shape[-1] == 3:
        sat = jax.random.uniform(ks, (), minval=1 - s, maxval=1 + s)
        gray = _grayscale(image)
        image = (image - gray) * sat + gray
        # Hue: rotate chroma in YIQ space by an angle in [-0.2 s, 0.2 s] turns.
        theta = jax.random.uniform(kh, (), minval=-0.2 * strength, maxval=0.2 * strength) * 2 * jnp.pi
        to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        rot = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        m = jnp.linalg.inv(to_yiq) @ rot @ to_yiq
        image = image @ m.T
    return jnp.clip(image, 0.0, 1.0)


def gaussian_blur(key, image, sigma_range=(0.1, 2.0)):
    """Separable Gaussian blur, kernel size ~10% of the image side (odd, >= 3)."""
    sigma = jax.random.uniform(key, (), minval=sigma_range[0], maxval=sigma_range[1])
    size = max(3, int(0.1 * image.shape[0]) // 2 * 2 + 1)
    r = jnp.arange(size) - size // 2
    k = jnp.exp(-(r ** 2) / (2 * sigma ** 2))
    k = k / jnp.sum(k)
    pad = size // 2
    x = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    # Vertical then horizontal pass via shifted sums (size is small).
    v = sum(k[i] * x[i:i + image.shape[0], :, :] for i in range(size))
    hz = sum(k[i] * v[:, i:i + image.shape[1], :] for i in range(size))
    return hz


def augment_image(key, image, cfg: AugmentConfig):
    """One SimCLR view of one image ``(H, W, C)`` float32 in [0, 1]."""
    keys = jax.random.split(key, 8)
    x = random_resized_crop(keys[0], image, cfg.crop_scale, cfg.crop_ratio)
    x = jnp.where(jax.random.bernoulli(keys[1], cfg.flip), x[:, ::-1, :], x)
    if cfg.jitter_p > 0:
        x = jnp.where(jax.random.bernoulli(keys[2], cfg.jitter_p),
                      color_jitter(keys[3], x, cfg.jitter_strength), x)
    if cfg.gray_p > 0 and image.shape[-1] == 3:
        x = jnp.where(jax.random.bernoulli(keys[4], cfg.gray_p), _grayscale(x), x)
    if cfg.blur_p > 0:
        x = jnp.where(jax.random.bernoulli(keys[5], cfg.blur_p),
                      gaussian_blur(keys[6], x, cfg.blur_sigma), x)
    return jnp.clip(x, 0.0, 1.0)


def augment_batch(key, images, cfg: AugmentConfig):
    """Independent SimCLR views of a batch.

    Args:
      key: PRNG key.
      images: float32 ``(B, H, W, C)`` in [0, 1].
      cfg: augmentation strengths.
    Returns:
      float32 ``(B, H, W, C)`` in [0, 1].
    """
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: augment_image(k, im, cfg))(keys, images)
