"""Encoders (ResNet family), projection heads, the model wrappers and their builders.

Builders turn model configs into (uninitialised) flax modules:
``build_encoder`` (ResNet), ``arch_name`` (its inverse: the architecture name
of a built encoder), ``build_simclr`` (victim), ``build_watermarked``
(victim with the secret watermark MLP, ``models.watermark``) and
``build_model`` (any checkpoint kind, from the model config stored with a
checkpoint; ``training.checkpoint.load_model`` uses it).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.models.heads import MLPHead, Predictor, ProjectionHead
from sslsteal_jax.models.resnet import ARCHITECTURES, BasicBlock, Bottleneck, ResNet
from sslsteal_jax.models.watermark import WatermarkedSimCLR

__all__ = ["ARCHITECTURES", "ResNet", "BasicBlock", "Bottleneck", "MLPHead", "ProjectionHead", "Predictor",
           "SimCLRModel", "SurrogateModel", "WatermarkedSimCLR", "arch_name", "build_encoder",
           "build_model", "build_simclr", "build_watermarked", "compute_dtype", "init_encoder",
           "representation_dim"]


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
        raise ConfigError(f"unknown architecture {arch!r}; allowed: {sorted(ARCHITECTURES)}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"unknown stem {stem!r}; allowed: 'cifar', 'imagenet'")
    if int(width) <= 0:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    stages, block = ARCHITECTURES[arch]
    return ResNet(stage_sizes=stages, block_cls=block, width=int(width), stem=stem,
                  dtype=compute_dtype(dtype))


def arch_name(encoder: ResNet) -> str:
    """Name in ``ARCHITECTURES`` of a built encoder (the inverse of ``build_encoder``'s
    ``arch``): the entry with the encoder's stage sizes and block class.

    Args:
      encoder: a ``ResNet`` (e.g. ``model.encoder`` of a loaded victim).
    Returns:
      e.g. "resnet10".
    Raises:
      ValueError: no architecture has these stages and block.
    """
    for name, (stages, block) in ARCHITECTURES.items():
        if tuple(stages) == tuple(encoder.stage_sizes) and block is encoder.block_cls:
            return name
    raise ValueError("victim encoder matches no known architecture")


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: Any):
    """Map a config value ("float32" | "bfloat16" | None, or the jnp dtype) to a jnp dtype.

    None means float32. Raises ConfigError (a ValueError) for anything else, naming the
    value and the allowed ones (a config's ``model.dtype`` is user input).
    """
    if name is None:
        return jnp.float32
    try:
        key = name if isinstance(name, str) else jnp.dtype(name).name
    except TypeError:
        key = None
    if key not in _DTYPES:
        raise ConfigError(f"unknown compute dtype {name!r}; allowed: {sorted(_DTYPES)}")
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


def build_simclr(model_cfg) -> SimCLRModel:
    """SimCLR model from a ConfigDict with arch, width, stem, head_hidden, head_out and
    optional dtype ("float32" default, or "bfloat16": bf16 compute, float32
    parameters and optimizer state).

    Raises:
      ValueError: unknown architecture, stem or dtype (see ``build_encoder``).
    """
    enc = build_encoder(model_cfg.arch, model_cfg.width, model_cfg.stem,
                        model_cfg.get("dtype", "float32"))
    return SimCLRModel(enc, int(model_cfg.head_hidden), int(model_cfg.head_out))


def build_watermarked(model_cfg) -> WatermarkedSimCLR:
    """``WatermarkedSimCLR`` from a model config with arch, width, stem,
    head_hidden, head_out, watermark_hidden, watermark_classes (float32).

    Raises:
      ValueError: unknown architecture, or ``watermark_classes`` not 2 or 4.
    """
    classes = int(model_cfg["watermark_classes"])
    if classes not in (2, 4):
        raise ValueError(f"watermark_classes={classes} is not allowed; allowed: 2, 4")
    enc = build_encoder(model_cfg["arch"], model_cfg["width"], model_cfg.get("stem", "cifar"))
    return WatermarkedSimCLR(enc, int(model_cfg["head_hidden"]), int(model_cfg["head_out"]),
                             int(model_cfg["watermark_hidden"]), classes)


def build_model(kind: str, model_cfg: dict):
    """Rebuild the flax module of a checkpoint.

    Args:
      kind: "simclr" (victim: encoder + projection head) or "surrogate".
      model_cfg: dict with arch, width, stem (+ head_hidden, head_out for
        simclr, and watermark_hidden, watermark_classes for a watermarked
        victim, see ``models.watermark``; adapter_dim and optional
        predictor_hidden for surrogate).
    Returns:
      ``SimCLRModel``, ``WatermarkedSimCLR`` or ``SurrogateModel``.
    Raises:
      ValueError: unknown kind or architecture.
    """
    enc = build_encoder(model_cfg["arch"], model_cfg["width"], model_cfg.get("stem", "cifar"),
                        model_cfg.get("dtype", "float32"))
    if kind == "simclr" and model_cfg.get("watermark_classes"):
        return build_watermarked(model_cfg)
    if kind == "simclr":
        return SimCLRModel(enc, int(model_cfg["head_hidden"]), int(model_cfg["head_out"]))
    if kind == "surrogate":
        return SurrogateModel(enc, model_cfg.get("adapter_dim"), model_cfg.get("predictor_hidden"))
    raise ValueError(f"unknown checkpoint kind {kind!r}; allowed: 'simclr', 'surrogate'")
