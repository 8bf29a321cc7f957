"""Import a PyTorch / timm self-supervised checkpoint as a victim checkpoint.

Usage:
  python -m sslsteal_jax.main \
      --config=configs/import_checkpoint.py:source=simsiam_r50.pth.tar,arch=resnet50 \
      --workdir=victims/simsiam_r50
writes <workdir>/checkpoints (an orbax victim checkpoint every experiment takes as
victim.checkpoint / victim_checkpoint) and results.json (the import report: source
file and SHA-256, wrapper, key prefix, architecture, input size, normalisation,
dropped and ignored keys). Conventions and errors: docs/public_encoders.md.
Arguments (``configs/import_checkpoint.py:source=PATH,arch=resnet50,stem=imagenet``):
  source       checkpoint file: .pth | .pth.tar | .ckpt | .pt | .safetensors (required)
  arch         resnet18 | resnet34 | resnet50 (torchvision layout) | vit_s | vit_b (timm
               layout, patch 16) (required)
  stem         ResNet: imagenet | cifar (default: read from conv1.weight, checked when
               given); ViT: patch16 (read from patch_embed)
  image_size   input side recorded for the victim (ResNet default 224 with the imagenet
               stem, 32 with the cifar stem; ViT: from pos_embed)
  pool         ViT representation: cls (class token, default) | mean (patch tokens)
  heads        ViT attention heads (default 6 for vit_s, 12 for vit_b; MoCo v3's ViT-S: 12)
  head         none (default: drop fc.* / head.*) | projection (import the projection
               head stored there; the API's output=projection then returns it)
  normalization  imagenet (default) | none; or mean=R+G+B,std=R+G+B
  prefix       key prefix of the encoder (default: detected; 'none' = no prefix)
  wrapper      key of the state dict inside the file (default: detected among
               state_dict, model, teacher; dots for nested keys)
  trust_pickle true: allow checkpoints that pickle Python objects (runs code from the
               file; only for files you trust). Default false.
"""

from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "import_checkpoint"

#: Named normalisations (per-channel mean and std of the checkpoint's training inputs).
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "none": ((0.0,), (1.0,))}
ARCHS = ("resnet18", "resnet34", "resnet50", "vit_s", "vit_b")

ARGS = {
    "source": Arg("", "checkpoint file: .pth | .pth.tar | .ckpt | .pt | .safetensors (required)"),
    "arch": Arg("", "resnet18 | resnet34 | resnet50 (torchvision layout) | vit_s | vit_b (timm "
                "layout, patch 16) (required)"),
    "stem": Arg("", "ResNet: imagenet | cifar (default: read from conv1.weight)"),
    "image_size": Arg(0, "input side recorded for the victim (0: the default / from the "
                      "checkpoint)", minimum=0),
    "pool": Arg("cls", "ViT representation: cls | mean", choices=("cls", "mean")),
    "heads": Arg(0, "ViT attention heads (0: 6 for vit_s, 12 for vit_b)", minimum=0),
    "head": Arg("none", "none (drop fc.* / head.*) | projection (import the projection head)",
                choices=("none", "projection")),
    "normalization": Arg("imagenet", "imagenet | none (or mean=...,std=...)",
                         choices=tuple(NORMALIZATIONS)),
    "mean": Arg((), "per-channel input mean, 1 or 3 numbers separated by '+'", kind=float),
    "std": Arg((), "per-channel input std, 1 or 3 numbers separated by '+'", kind=float),
    "prefix": Arg("auto", "key prefix of the encoder (auto: detected; none: no prefix)"),
    "wrapper": Arg("", "key of the state dict inside the file ('': detected)"),
    "trust_pickle": Arg(False, "allow checkpoints that pickle Python objects (runs code from "
                        "the file; only for files you trust)"),
}


def build(a) -> ml_collections.ConfigDict:
    """The import config from parsed arguments ``a`` (:data:`ARGS`)."""
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    c.source, c.arch, c.stem = a.source, a.arch, a.stem
    c.image_size, c.pool, c.heads, c.head = a.image_size, a.pool, a.heads, a.head
    mean, std = NORMALIZATIONS[a.normalization]
    c.mean = list(a.mean or mean)
    c.std = list(a.std or std)
    c.prefix, c.wrapper, c.trust_pickle = a.prefix, a.wrapper, a.trust_pickle
    c.seed = 0  # PRNG seed of the random check batch
    c.overwrite = False
    return c


get_config = args.config_getter(build, ARGS, "The import experiment's config")


def validate(cfg) -> None:
    """Check the architecture and the normalisation's length (the file itself is checked
    by the import, which names missing or unexpected keys).

    Raises:
      ConfigError: the first bad field.
    """
    if not cfg.source:
        raise ConfigError("import_checkpoint: source is required (configs/import_checkpoint.py:"
                          "source=PATH,arch=resnet50)")
    if cfg.arch not in ARCHS:
        raise ConfigError(f"arch={cfg.arch!r}; allowed: {list(ARCHS)} (arch is required)")
    for name in ("mean", "std"):
        if len(cfg[name]) not in (1, 3):
            raise ConfigError(f"{name}={list(cfg[name])!r}; allowed: 1 or 3 numbers")
