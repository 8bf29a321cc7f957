"""Encoders (ResNet and ViT families), projection heads, the model wrappers and their builders.

Builders turn model configs into (uninitialised) flax modules:
``build_encoder`` (a ResNet of ``models.resnet`` or a ViT of ``models.vit``),
``arch_name`` / ``encoder_options`` (its inverse: the architecture name and the
non-default options of a built encoder), ``encoder_from_config`` (from a model
config dict), ``build_simclr`` (victim), ``build_watermarked`` (victim with
the secret watermark MLP, ``models.watermark``) and ``build_model`` (any
checkpoint kind, from the model config stored with a checkpoint, including
imported PyTorch checkpoints, ``models.imported``;
``training.checkpoint.load_model`` uses it).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.models.heads import MLPHead, Predictor, ProjectionHead, SequentialHead
from sslsteal_jax.models.imported import ImportedModel
from sslsteal_jax.models.resnet import (ARCHITECTURES, PIXEL_MEAN, PIXEL_STD, BasicBlock,
                                       Bottleneck, ResNet)
from sslsteal_jax.models.vit import VIT_ARCHITECTURES, VisionTransformer, build_vit
from sslsteal_jax.models.watermark import WatermarkedSimCLR

__all__ = ["ARCHITECTURES", "ENCODER_OPTIONS", "ResNet", "BasicBlock", "Bottleneck", "MLPHead",
           "ProjectionHead", "Predictor", "SequentialHead", "ImportedModel", "VIT_ARCHITECTURES",
           "VisionTransformer", "SimCLRModel", "SurrogateModel", "WatermarkedSimCLR", "arch_family",
           "arch_name", "build_encoder", "build_model", "build_simclr", "build_watermarked",
           "compute_dtype", "default_width", "encoder_from_config", "encoder_options", "init_encoder",
           "representation_dim"]

#: Encoder options beyond (arch, width, stem) a model config may carry, per family
#: (``build_encoder`` keywords): input normalisation for both, and the ViT's
#: depth, heads, pooling and final-norm placement.
ENCODER_OPTIONS = {"resnet": ("mean", "std"),
                   "vit": ("mean", "std", "depth", "heads", "pool", "fc_norm")}
_OPTION_DEFAULTS = {"mean": PIXEL_MEAN, "std": PIXEL_STD, "pool": "cls", "fc_norm": False}


def arch_family(arch: str) -> str:
    """``"resnet"`` or ``"vit"``: the family of an architecture name.

    Raises:
      ConfigError: unknown architecture (lists every allowed name).
    """
    if arch in ARCHITECTURES:
        return "resnet"
    if arch in VIT_ARCHITECTURES:
        return "vit"
    raise ConfigError(f"unknown architecture {arch!r}; allowed: "
                      f"{sorted(ARCHITECTURES) + sorted(VIT_ARCHITECTURES)}")


def default_width(arch: str) -> int:
    """The standard width of an architecture: 64 for the ResNets (first-stage channels),
    the embedding dimension for the ViTs (384 vit_s, 768 vit_b).

    Raises:
      ConfigError: unknown architecture.
    """
    return 64 if arch_family(arch) == "resnet" else VIT_ARCHITECTURES[arch][0]


def build_encoder(arch: str, width: int | None = None, stem: str | None = None,
                  dtype: Any = jnp.float32, **options):
    """Return an (uninitialised) encoder: a ResNet or a ViT.

    Args:
      arch: one of ``ARCHITECTURES`` ("resnet10", "resnet18", "resnet34", "resnet50")
        or ``VIT_ARCHITECTURES`` ("vit_s", "vit_b").
      width: ResNet: first-stage channels (None: 64 = standard; 16 or 32 for CPU
        scale). ViT: embedding dimension (None or 0: 384 for vit_s, 768 for vit_b).
      stem: ResNet "cifar" (None or "": the default) or "imagenet"; ViT "patch<N>"
        (None or "": "patch16").
      dtype: compute dtype: "float32" / jnp.float32, or "bfloat16" /
        jnp.bfloat16 (mixed precision: bf16 convolutions and activations,
        float32 parameters, BatchNorm statistics and pooled output).
      options: ``ENCODER_OPTIONS`` of the family: ``mean`` / ``std`` (input
        normalisation, 1 or C values each; default 0.5 / 0.25) and, for a ViT,
        ``depth``, ``heads``, ``pool`` ("cls" | "mean"), ``fc_norm`` (see
        ``models.vit.build_vit``). None values mean the default.
    Returns:
      ``models.resnet.ResNet`` or ``models.vit.VisionTransformer``.
    Raises:
      ConfigError (a ValueError): unknown ``arch``/``stem``/``dtype``/option,
        non-positive ``width``.
    """
    family = arch_family(arch)
    bad = sorted(set(options) - set(ENCODER_OPTIONS[family]))
    if bad:
        raise ConfigError(f"encoder options {bad} do not apply to {arch}; allowed: "
                          f"{list(ENCODER_OPTIONS[family])}")
    opts = {k: v for k, v in options.items() if v is not None}
    for k in ("mean", "std"):
        if k in opts:
            opts[k] = tuple(float(v) for v in opts[k])
    if family == "vit":
        return build_vit(arch, width, stem, compute_dtype(dtype), **opts)
    stem = stem or "cifar"
    if stem not in ("cifar", "imagenet"):
        raise ConfigError(f"unknown stem {stem!r}; allowed: 'cifar', 'imagenet'")
    width = default_width(arch) if width is None else width
    if int(width) <= 0:
        raise ConfigError(f"width must be a positive integer, got {width!r}")
    stages, block = ARCHITECTURES[arch]
    return ResNet(stage_sizes=stages, block_cls=block, width=int(width), stem=stem,
                  dtype=compute_dtype(dtype), **opts)


def encoder_from_config(model_cfg) -> Any:
    """``build_encoder`` from a model config (dict or ConfigDict) with ``arch``, ``width``,
    ``stem``, optional ``dtype`` and any ``ENCODER_OPTIONS`` of the family it holds.

    Raises:
      ConfigError: as ``build_encoder``.
    """
    arch = model_cfg["arch"]
    opts = {k: model_cfg[k] for k in ENCODER_OPTIONS[arch_family(arch)]
            if k in model_cfg and model_cfg[k] not in (None, "")}
    return build_encoder(arch, model_cfg.get("width"), model_cfg.get("stem"),
                         model_cfg.get("dtype", "float32") or "float32", **opts)


def arch_name(encoder) -> str:
    """Name of a built encoder's architecture (the inverse of ``build_encoder``'s
    ``arch``): a ViT's ``arch``, or the ``ARCHITECTURES`` entry with a ResNet's
    stage sizes and block class.

    Args:
      encoder: a ``ResNet`` or ``VisionTransformer`` (e.g. ``model.encoder`` of a
        loaded victim).
    Returns:
      e.g. "resnet10", "vit_s".
    Raises:
      ValueError: no architecture has these stages and block.
    """
    if isinstance(encoder, VisionTransformer):
        return encoder.arch
    for name, (stages, block) in ARCHITECTURES.items():
        if tuple(stages) == tuple(encoder.stage_sizes) and block is encoder.block_cls:
            return name
    raise ValueError("victim encoder matches no known architecture")


def encoder_options(encoder) -> dict:
    """The ``ENCODER_OPTIONS`` of a built encoder that differ from the defaults, as
    JSON-ready values (lists for ``mean``/``std``); ``{}`` for this toolkit's own
    ResNets. With ``arch_name``, ``width`` and ``stem`` they rebuild the encoder."""
    family = "vit" if isinstance(encoder, VisionTransformer) else "resnet"
    out = {}
    for k in ENCODER_OPTIONS[family]:
        v = getattr(encoder, k)
        default = _OPTION_DEFAULTS.get(k)
        if isinstance(v, tuple):
            if default is None or tuple(v) != tuple(default):
                out[k] = list(v)
        elif default is None or v != default:
            out[k] = v
    return out


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
    """Dimension D of the pooled representation of ``build_encoder(arch, width)``.

    Raises:
      ConfigError: unknown architecture."""
    return build_encoder(arch, width).representation_dim


class SimCLRModel(nn.Module):
    """Encoder f plus projection head g (SimCLR, Chen et al. 2020, Section 2.1).

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1]; returns ``(h, z)`` with
    ``h`` the representation ``(B, D)`` and ``z = g(h)`` ``(B, proj_dim)``.
    Parameters live under ``params['encoder']`` and ``params['head']``.
    """

    encoder: nn.Module  # a ResNet or a VisionTransformer
    head_hidden: int
    head_out: int

    def setup(self):
        self.head = MLPHead(self.head_hidden, self.head_out, dtype=self.encoder.dtype)

    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train)
        return h, self.head(h)


def init_variables(module: nn.Module, key: jax.Array, x, **kwargs):
    """``module.init(key, x, **kwargs)`` as one compiled program; the same variables.

    Called eagerly, flax runs every initialiser and layer op by op, and on CPU each
    op is an XLA program of its own: about a hundred small compilations for a
    ResNet-10 (5 s of CPU on a cold compilation cache, and on every launch in a
    process of a multi-host run, whose cache keys process 0 never writes). Jitted,
    it is one program, and the values are the same bit for bit (threefry and the
    initialisers' arithmetic are unchanged by fusion; ``tests/test_models.py``
    checks it).

    Args:
      module: a flax module.
      key: JAX PRNG key.
      x: an example input (array; only its shape and dtype matter, e.g. float32
        ``(2, H, W, C)`` images).
      kwargs: static keyword arguments of the module's ``__call__`` (e.g. ``train=False``).
    Returns:
      the variables (``{'params', ...}``), as ``module.init`` returns them.

    The jitted function is kept per (module, kwargs) (flax modules compare and hash
    by their fields), so initialising an equal module again with an input of the
    same shape, e.g. the surrogate's architecture and the report's independent
    encoder, reuses the compiled program instead of compiling it again.
    """
    try:
        init = _jitted_init(module, tuple(sorted(kwargs.items())))
    except TypeError:  # an unhashable module or keyword value
        init = jax.jit(lambda k, v: module.init(k, v, **kwargs))
    return init(key, x)


@functools.lru_cache(maxsize=32)
def _jitted_init(module: nn.Module, kwargs: tuple):
    """``jax.jit`` of ``module.init`` with static ``kwargs`` (``(name, value)`` pairs)."""
    return jax.jit(lambda k, v: module.init(k, v, **dict(kwargs)))


def init_encoder(encoder: ResNet, key: jax.Array, image_shape) -> dict:
    """Initialise an encoder; returns variables ``{'params', 'batch_stats'}``.

    Args:
      encoder: module from ``build_encoder``.
      key: JAX PRNG key.
      image_shape: ``(H, W, C)`` of one input image.
    """
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return dict(init_variables(encoder, key, dummy, train=False))


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

    encoder: nn.Module  # a ResNet or a VisionTransformer
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
    enc = encoder_from_config(model_cfg)
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
      kind: "simclr" (a victim: encoder + projection head; trained here with
        SimCLR, or imported from PyTorch) or "surrogate".
      model_cfg: dict with arch, width, stem and any ``ENCODER_OPTIONS`` (+
        head_hidden, head_out for a SimCLR victim, watermark_hidden,
        watermark_classes for a watermarked victim, see ``models.watermark``;
        head_layers and image_shape for an imported victim, see
        ``models.imported``; adapter_dim and optional predictor_hidden for a
        surrogate).
    Returns:
      ``SimCLRModel``, ``WatermarkedSimCLR``, ``ImportedModel`` or ``SurrogateModel``.
    Raises:
      ValueError: unknown kind; ConfigError (a ValueError): unknown architecture
        or option.
    """
    enc = encoder_from_config(model_cfg)
    if kind == "simclr" and model_cfg.get("watermark_classes"):
        return build_watermarked(model_cfg)
    if kind == "simclr" and "head_layers" in model_cfg:
        return ImportedModel(enc, tuple(tuple(layer) for layer in model_cfg["head_layers"] or ()),
                             tuple(model_cfg.get("image_shape") or ()))
    if kind == "simclr":
        return SimCLRModel(enc, int(model_cfg["head_hidden"]), int(model_cfg["head_out"]))
    if kind == "surrogate":
        return SurrogateModel(enc, model_cfg.get("adapter_dim"), model_cfg.get("predictor_hidden"))
    raise ValueError(f"unknown checkpoint kind {kind!r}; allowed: 'simclr', 'surrogate'")
