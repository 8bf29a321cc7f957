"""Encoders (ResNet family), projection heads, and the SimCLR model wrapper."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslsteal_jax.models.heads import MLPHead, Predictor, ProjectionHead
from sslsteal_jax.models.resnet import ARCHITECTURES, BasicBlock, Bottleneck, ResNet

__all__ = ["ARCHITECTURES", "ResNet", "BasicBlock", "Bottleneck", "MLPHead", "ProjectionHead", "Predictor",
           "SimCLRModel", "SurrogateModel", "build_encoder", "compute_dtype", "init_encoder", "representation_dim"]


def build_encoder(arch: str, width: int = 64, stem: str = "cifar",
                  dtype: Any = jnp.float32) -> ResNet:
    """Return an (uninitialised) ResNet encoder.

    Args:
      arch: one of ``ARCHITECTURES`` ("resnet10", "resnet18", "resnet34", "resnet50").
      width: first-stage channels (64 = standard ResNet; 16 or 32 for CPU scale).
      stem: "cifar" or "imagenet".
      dtype: compute dtype: "float32" / jnp.float32, or "bfloat16" /
        jnp.bfloat16 (mixed precision: bf16 convolutions and activations,
        float32 parameters, BatchNorm statistics and pooled output).
    Raises:
      ValueError: unknown ``arch``/``stem``/``dtype`` or non-positive ``width``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {sorted(ARCHITECTURES)}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"unknown stem {stem!r}; allowed: 'cifar', 'imagenet'")
    if int(width) <= 0:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    stages, block = ARCHITECTURES[arch]
    return ResNet(stage_sizes=stages, block_cls=block, width=int(width), stem=stem,
                  dtype=compute_dtype(dtype))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: Any):
    """Map a config value ("float32" | "bfloat16" | None, or the jnp dtype) to a jnp dtype.

    None means float32. Raises ValueError for anything else (naming the allowed values).
    """
    if name is None:
        return jnp.float32
    try:
        key = name if isinstance(name, str) else jnp.dtype(name).name
    except TypeError:
        key = None
    if key not in _DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; allowed: {sorted(_DTYPES)}")
    return _DTYPES[key]


def representation_dim(arch: str, width: int) -> int:
    """Dimension D of the pooled representation of ``build_encoder(arch, width)``."""
    return build_encoder(arch, width).representation_dim


class SimCLRModel(nn.Module):
    """Encoder f plus projection head g (SimCLR, Chen et al. 2020, Section 2.1).

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1]; returns ``(h, z)`` with
    ``h`` the representation ``(B, D)`` and ``z = g(h)`` ``(B, proj_dim)``.
    Parameters live under ``params['encoder']`` and ``params['head']``.
    """

    encoder: ResNet
    head_hidden: int
    head_out: int

    def setup(self):
        self.head = MLPHead(self.head_hidden, self.head_out, dtype=self.encoder.dtype)

    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train)
        return h, self.head(h)


def init_encoder(encoder: ResNet, key: jax.Array, image_shape) -> dict:
    """Initialise an encoder; returns variables ``{'params', 'batch_stats'}``.

    Args:
      encoder: module from ``build_encoder``.
      key: JAX PRNG key.
      image_shape: ``(H, W, C)`` of one input image.
    """
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return dict(encoder.init(key, dummy, train=False))


class SurrogateModel(nn.Module):
    """Surrogate (stolen) encoder f_s with an optional linear adapter.

    When the surrogate's representation size differs from the victim API's
    output size, a Dense adapter maps ``h`` to the victim's dimension for the
    stealing loss and fidelity; downstream probes use ``h``.

    With ``predictor_hidden`` set, a SimSiam predictor MLP (Chen & He, CVPR
    2021, Section 3: Dense(hidden) -> ReLU -> Dense(out)) follows the adapter
    and ``o`` is its output (used by the "symmetrized" stealing loss; the
    predictor is trained with the encoder and ``h`` is still the representation).

    Call: ``x`` float32 ``(B,H,W,C)`` in [0,1]; returns ``(h, o)`` with ``h``
    ``(B, D_s)`` and ``o`` ``(B, out_dim)`` (``o is h`` when ``out_dim`` and
    ``predictor_hidden`` are None).
    """

    encoder: ResNet
    out_dim: int | None = None
    predictor_hidden: int | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train)
        o = h if self.out_dim is None else nn.Dense(self.out_dim, name="adapter")(h)
        if self.predictor_hidden:
            o = Predictor(int(self.predictor_hidden), o.shape[-1], name="predictor")(o)
        return h, o
