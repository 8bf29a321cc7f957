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
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402

ARGS = ("source", "arch", "stem", "image_size", "pool", "heads", "head", "normalization", "mean",
        "std", "prefix", "wrapper", "trust_pickle")
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "none": ((0.0,), (1.0,))}


def _floats(key: str, text: str) -> list:
    try:
        return [float(v) for v in text.split("+")]
    except ValueError:
        raise ValueError(f"config argument {key}={text!r}: give 1 or 3 numbers separated by '+', "
                         "e.g. 0.485+0.456+0.406") from None


def get_config(arg: str = ""):
    """The import experiment's ConfigDict (arguments: module docstring).

    Raises:
      ValueError: unknown argument or bad value (one line naming it).
    """
    a = parse_arg(arg, ARGS)
    c = ml_collections.ConfigDict()
    c.experiment = "import_checkpoint"
    c.source = a.get("source", "")
    c.arch = a.get("arch", "")
    c.stem = a.get("stem", "")
    c.image_size = a.int("image_size", 0, minimum=0)  # 0 = the default / from the checkpoint
    c.pool = a.get("pool", "cls")
    if c.pool not in ("cls", "mean"):
        raise ValueError(f"config argument pool={c.pool!r}; allowed: 'cls', 'mean'")
    c.heads = a.int("heads", 0, minimum=0)  # 0 = the architecture's
    c.head = a.get("head", "none")
    if c.head not in ("none", "projection"):
        raise ValueError(f"config argument head={c.head!r}; allowed: 'none', 'projection'")
    norm = a.get("normalization", "imagenet")
    if norm not in NORMALIZATIONS:
        raise ValueError(f"config argument normalization={norm!r}; allowed: "
                         f"{sorted(NORMALIZATIONS)} (or mean=...,std=...)")
    mean, std = NORMALIZATIONS[norm]
    c.mean = _floats("mean", a["mean"]) if "mean" in a else list(mean)
    c.std = _floats("std", a["std"]) if "std" in a else list(std)
    c.prefix = a.get("prefix", "auto")  # auto = detect; none = no prefix
    c.wrapper = a.get("wrapper", "")  # "" = detect
    trust = a.get("trust_pickle", "false").lower()
    if trust not in ("true", "false"):
        raise ValueError(f"config argument trust_pickle={trust!r}; allowed: true, false")
    c.trust_pickle = trust == "true"
    c.seed = 0  # PRNG seed of the random check batch
    c.overwrite = False
    return c
