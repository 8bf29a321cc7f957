"""SimCLR victim carrying a secret watermark MLP on its representation, and its task.

Source: Dziedzic et al. (ICML 2022), Section 5 (watermarking defense: a small
MLP on the representation ``h`` solves a secret rotation task and is trained
jointly with the encoder, so the task's signal is entangled with the
representation the API sells).

The task (used by ``trainers.watermark`` to train and by
``verification.watermark`` to verify): each watermark image is shown in the
four rotations 0, 90, 180, 270 degrees (``jnp.rot90``, exact: no
interpolation). With ``num_classes=4`` the label is the rotation index (chance
1/4); with ``num_classes=2`` it is the binary task of docs/science.md section
3, "angle in [0, 180) vs [180, 360)", restricted to multiples of 90 degrees
(chance 1/2). The MLP sees the scale-free ``watermark_input(h)``.

The call signature is the one of ``SimCLRModel`` (returns ``(h, g(h))``), so a
watermarked checkpoint is served by ``VictimAPI`` and stolen by the attacks
exactly like an ordinary victim; the watermark MLP is reached only through
``watermark_logits`` (the owner's secret).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sslsteal_jax.models.heads import MLPHead
from sslsteal_jax.models.resnet import ResNet

ALLOWED_CLASSES = (2, 4)


def rotate_images(images, k):
    """Rotate each image counter-clockwise by ``90 * k[i]`` degrees.

    Args:
      images: ``(N, H, W, C)`` array (any dtype), square images ``H == W``.
      k: int ``(N,)`` rotation indices in {0, 1, 2, 3}.
    Returns:
      ``(N, H, W, C)`` jax array of the same dtype.
    Raises:
      ValueError: non-square images, wrong rank, or ``k`` of the wrong shape.
    """
    images = jnp.asarray(images)
    k = jnp.asarray(k, jnp.int32)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square (N, H, W, C) with H == W, got {images.shape}")
    if k.shape != images.shape[:1]:
        raise ValueError(f"k must have shape ({images.shape[0]},), got {k.shape}")
    rots = jnp.stack([jnp.rot90(images, r, axes=(1, 2)) for r in range(4)])  # (4, N, H, W, C)
    return jnp.take_along_axis(rots, (k % 4)[None, :, None, None, None], axis=0)[0]


def rotation_labels(k, num_classes: int = 4):
    """Watermark labels of rotation indices ``k`` (int ``(N,)`` in {0..3}).

    ``num_classes=4``: the rotation index; ``num_classes=2``: ``k // 2``
    (0 for 0 and 90 degrees, 1 for 180 and 270). Returns int32 ``(N,)``.
    Raises:
      ValueError: ``num_classes`` not in ``ALLOWED_CLASSES``.
    """
    if num_classes not in ALLOWED_CLASSES:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: {ALLOWED_CLASSES}")
    k = jnp.asarray(k, jnp.int32) % 4
    return k if num_classes == 4 else k // 2


def rotation_task(images, num_classes: int = 4):
    """All four rotations of every image with their watermark labels.

    Args:
      images: ``(N, H, W, C)`` square images.
      num_classes: 4 (rotation index) or 2 (binary, see ``rotation_labels``).
    Returns:
      ``(rotated (4N, H, W, C) numpy array of the input dtype, labels int32 (4N,))``,
      rotation-major order: rows ``r*N:(r+1)*N`` are rotated by ``90*r`` degrees.
    Raises:
      ValueError: see ``rotate_images`` / ``rotation_labels``.
    """
    n = len(images)
    k = jnp.repeat(jnp.arange(4, dtype=jnp.int32), n)
    rotated = rotate_images(jnp.concatenate([jnp.asarray(images)] * 4), k)
    return np.asarray(rotated), np.asarray(rotation_labels(k, num_classes))


def watermark_input(h):
    """Scale-free input of the watermark MLP: ``sqrt(D) * h / ||h||`` per row.

    Args:
      h: float ``(B, D)`` representations.
    Returns:
      float32 ``(B, D)`` rows of Euclidean norm ``sqrt(D)`` (zero rows stay zero).
    """
    h = jnp.asarray(h, jnp.float32)
    norm = jnp.linalg.norm(h, axis=-1, keepdims=True)
    return jnp.sqrt(h.shape[-1]) * h / jnp.maximum(norm, 1e-12)


class WatermarkedSimCLR(nn.Module):
    """Encoder f, projection head g, and watermark MLP w.

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1] -> ``(h (B, D), z (B, head_out))``.
    ``watermark_logits(h)``: float32 ``(B, D)`` -> ``(B, watermark_classes)``
    logits of ``w(sqrt(D) h / ||h||)`` (scale-free input, see
    :func:`watermark_input`).
    Parameters: ``params['encoder']``, ``params['head']`` (same layout as
    ``SimCLRModel``) and ``params['watermark']``.
    """

    encoder: ResNet
    head_hidden: int
    head_out: int
    watermark_hidden: int = 256
    watermark_classes: int = 4

    def setup(self):
        self.head = MLPHead(self.head_hidden, self.head_out, dtype=self.encoder.dtype)
        self.watermark = MLPHead(self.watermark_hidden, self.watermark_classes)

    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train)
        if self.is_initializing():
            self.watermark_logits(h)  # create the watermark parameters at init
        return h, self.head(h)

    def watermark_logits(self, h):
        """Watermark logits float32 ``(B, watermark_classes)`` of representations ``h``
        float ``(B, D)``: ``w(watermark_input(h))``."""
        return self.watermark(watermark_input(h))
