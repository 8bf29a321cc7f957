"""Vision Transformer (ViT) encoder in Flax (linen), usable as victim and surrogate.

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale" (ICLR 2021), Section 3.1 (patch embedding, class
token, learned position embedding, pre-norm Transformer blocks); ViT-S from
Touvron et al., "Training data-efficient image transformers" (DeiT, ICML 2021).
The computation and parameter names follow timm's ``VisionTransformer`` (the
layout of DINO, MoCo v3 and MAE checkpoints), so ``models.convert`` maps a
state dict one to one: ``patch_embed`` (a ``p x p`` convolution, stride ``p``),
``cls_token``, ``pos_embed``, ``blocks_<i>`` with ``norm1``, ``attn/qkv``,
``attn/proj``, ``norm2``, ``mlp/fc1``, ``mlp/fc2``, then ``norm`` (or
``fc_norm`` after mean pooling, timm's ``global_pool="avg"`` default).
LayerNorm epsilon 1e-6, exact (erf) GELU, MLP ratio 4, biases on qkv.

Representation: ``pool="cls"`` the normalised class token; ``pool="mean"`` the
mean of the patch tokens (class token excluded) after the final LayerNorm, or
before ``fc_norm`` when ``fc_norm`` is set. Inputs are float images in [0, 1];
the model normalises them with its ``mean``/``std`` (as ``models.resnet``).
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.models.resnet import PIXEL_MEAN, PIXEL_STD, normalize

#: name -> (width = embedding dimension, depth, heads): ViT-S (DeiT-S / DINO / timm
#: ``vit_small_patch16_224``) and ViT-B. MoCo v3's ViT-S uses 12 heads: pass ``heads=12``.
VIT_ARCHITECTURES = {
    "vit_s": (384, 12, 6),
    "vit_b": (768, 12, 12),
}

#: LayerNorm epsilon of timm / DINO / MoCo v3 / MAE ViTs.
LN_EPS = 1e-6
POOLS = ("cls", "mean")
_STEM = re.compile(r"^patch(\d+)$")


def patch_size(stem: str) -> int:
    """Patch size of a ViT ``stem`` name ``"patch<N>"`` (e.g. "patch16" -> 16).

    Raises:
      ConfigError: not of the form ``patch<N>`` with N >= 1.
    """
    m = _STEM.match(str(stem))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"unknown ViT stem {stem!r}; allowed: 'patch<N>' (patch size N, "
                          "e.g. 'patch16'; N must divide the image height and width)")
    return int(m.group(1))


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (timm layout: the
    3 * width outputs are ordered (q|k|v, head, channel)) and an output ``proj``.

    Call: ``x`` ``(B, N, width)``; returns ``(B, N, width)``.
    """

    width: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, _ = x.shape
        hd = self.width // self.heads
        qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * hd ** -0.5, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.width)
        return nn.Dense(self.width, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
    """``fc1`` (4 x width) -> exact GELU -> ``fc2`` (width). Call: ``(B, N, width)``."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4 * self.width, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(self.width, dtype=self.dtype, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    width: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        ln = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)  # noqa: E731
        x = x + Attention(self.width, self.heads, self.dtype, name="attn")(ln("norm1")(x))
        return x + Mlp(self.width, self.dtype, name="mlp")(ln("norm2")(x))


class VisionTransformer(nn.Module):
    """ViT encoder returning pooled representations.

    Attributes:
      arch: its name in ``VIT_ARCHITECTURES`` ("vit_s", "vit_b"); ``models.arch_name``
        returns it.
      width: embedding dimension D (384 ViT-S, 768 ViT-B); the representation size.
      depth: number of Transformer blocks (12).
      heads: attention heads (must divide ``width``).
      patch: patch size p (16 for ViT-S/16, ViT-B/16); the config name of the
        patch embedding is the ``stem`` "patch<p>".
      pool: "cls" (class token) or "mean" (mean of the patch tokens).
      fc_norm: with ``pool="mean"``, apply the final LayerNorm after pooling
        (parameters ``fc_norm``, timm's ``global_pool="avg"`` default) instead of
        before it (parameters ``norm``).
      mean, std: per-channel input normalisation (tuples of 1 or C floats).
      dtype: compute dtype (parameters stay float32).

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1], H and W multiples of ``patch``;
    ``train`` is accepted for the encoder interface (no dropout, no BatchNorm).
    Returns float32 ``(B, width)``. The position embedding has one row per patch
    plus one, fixed when the model is initialised: applying it to another image
    size raises ConfigError.
    """

    arch: str = "vit_s"
    width: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 16
    pool: str = "cls"
    fc_norm: bool = False
    mean: tuple = PIXEL_MEAN
    std: tuple = PIXEL_STD
    dtype: Any = jnp.float32

    @property
    def stem(self) -> str:
        """Config name of the patch embedding, ``"patch<p>"``."""
        return f"patch{self.patch}"

    @property
    def representation_dim(self) -> int:
        """Size D of the pooled representation (int)."""
        return int(self.width)

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, _ = x.shape
        p = self.patch
        if h % p or w % p:
            raise ConfigError(f"ViT with patch size {p} cannot take {h}x{w} images: height and "
                              f"width must be multiples of {p} (resize the data, e.g. "
                              f"dataset=NAME@{-(-h // p) * p}x{-(-w // p) * p}x{x.shape[-1]})")
        n = (h // p) * (w // p)
        if self.has_variable("params", "pos_embed"):
            stored = self.get_variable("params", "pos_embed").shape[1]
            if stored != n + 1:
                raise ConfigError(f"this ViT was built for {stored - 1} patches of {p}x{p} "
                                  f"pixels, got {h}x{w} images ({n} patches); use the image "
                                  "size recorded with the checkpoint (its image_shape)")
        x = normalize(x, self.mean, self.std, self.dtype)
        x = nn.Conv(self.width, (p, p), (p, p), padding="VALID", dtype=self.dtype,
                    name="patch_embed")(x).reshape(b, n, self.width)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, n + 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(self.dtype), x],
                            axis=1) + pos.astype(self.dtype)
        for i in range(self.depth):
            x = Block(self.width, self.heads, self.dtype, name=f"blocks_{i}")(x)
        if self.fc_norm:
            pooled = jnp.mean(x[:, 1:], axis=1)
            out = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="fc_norm")(pooled)
        else:
            x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
            out = x[:, 0] if self.pool == "cls" else jnp.mean(x[:, 1:], axis=1)
        return out.astype(jnp.float32)


def build_vit(arch: str, width: int | None = None, stem: str | None = None,
              dtype: Any = jnp.float32, *, depth: int | None = None, heads: int | None = None,
              pool: str = "cls", fc_norm: bool = False, mean=PIXEL_MEAN, std=PIXEL_STD
              ) -> VisionTransformer:
    """An (uninitialised) ViT encoder.

    Args:
      arch: "vit_s" or "vit_b" (``VIT_ARCHITECTURES``).
      width: embedding dimension (None or 0: the architecture's, 384 / 768).
      stem: "patch<N>" (None or "": "patch16").
      dtype: compute dtype (a jnp dtype).
      depth, heads: None = the architecture's (12; 6 for ViT-S, 12 for ViT-B; a
        width other than the architecture's defaults to ``width // 64`` heads).
      pool: "cls" or "mean"; fc_norm: LayerNorm after mean pooling (needs pool "mean").
      mean, std: input normalisation (tuples or lists of 1 or 3 floats).
    Raises:
      ConfigError: unknown arch / stem / pool, heads not dividing width, non-positive
        sizes, or fc_norm with pool "cls".
    """
    if arch not in VIT_ARCHITECTURES:
        raise ConfigError(f"unknown ViT architecture {arch!r}; allowed: {sorted(VIT_ARCHITECTURES)}")
    w0, d0, h0 = VIT_ARCHITECTURES[arch]
    width = int(width or w0)
    depth = int(depth or d0)
    heads = int(heads or (h0 if width == w0 else max(width // 64, 1)))
    if width <= 0 or depth <= 0 or heads <= 0 or width % heads:
        raise ConfigError(f"ViT width={width}, depth={depth}, heads={heads}: all must be positive "
                          "and heads must divide width")
    if pool not in POOLS:
        raise ConfigError(f"unknown ViT pool {pool!r}; allowed: {list(POOLS)}")
    if fc_norm and pool != "mean":
        raise ConfigError("fc_norm (LayerNorm after pooling) needs pool='mean'")
    return VisionTransformer(arch=arch, width=width, depth=depth, heads=heads,
                             patch=patch_size(stem or "patch16"), pool=pool, fc_norm=bool(fc_norm),
                             mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                             dtype=dtype)
