"""Import PyTorch / timm self-supervised checkpoints as this toolkit's victim encoders.

Supported layouts (docs/public_encoders.md lists the public checkpoints' conventions):

* **torchvision ResNet-18/34/50** (``conv1``, ``bn1``, ``layer<i>.<j>.conv1`` ...,
  ``downsample.0/1``, ``fc``): SimCLR, MoCo v2/v3, SimSiam, BYOL, Barlow Twins,
  DINO ResNet-50 checkpoints. The stem is read from ``conv1.weight``: 7x7 = the
  ImageNet stem (stride 2 + max-pool), 3x3 = the CIFAR stem (stride 1, the
  max-pool replaced by identity). The classification head ``fc.*`` is dropped;
  with ``head="projection"`` an ``nn.Sequential`` projection head stored under
  ``fc.`` (SimSiam, MoCo v2/v3) is imported as ``models.heads.SequentialHead``.
* **timm ViT** (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.<i>.norm1 /
  attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm`` or ``fc_norm``,
  ``head``): DINO, MoCo v3, MAE ViT-S/16 and ViT-B/16. ``head.*`` is dropped
  unless ``head="projection"`` (a Sequential head, as MoCo v3's); MAE's decoder
  (``decoder_*``, ``mask_token``) is dropped.

The state dict is found under the usual wrappers (``state_dict``, ``model``,
``teacher``: :data:`WRAPPERS`, descended in that order) and key prefixes
(:data:`PREFIXES`; any other prefix is found too when only one encoder carries
it). Every array of the encoder must be present with the right shape and no key
under the prefix may be left over: missing or unexpected keys, shape
mismatches and unknown layouts raise :class:`CheckpointImportError` (one line
listing the offending keys), never a partial load (the ``strict=False`` quirk
of the reference code, docs/science.md section 4). Keys outside the prefix
(predictor, momentum encoder, DINO head, optimizer) are not part of the
encoder; they are counted in the import report.

Normalisation happens inside the imported model (``mean``/``std`` attributes of
the encoder, default ImageNet's): the API, the attacks and the evaluation give
every model float images in [0, 1].

torch (for ``.pth`` / ``.pth.tar`` / ``.ckpt`` / ``.pt``) and safetensors (for
``.safetensors``) are imported lazily, only here: ``pip install 'sslsteal_jax[torch]'``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax.errors import ConfigError, key_mismatch, name_some
from sslsteal_jax.models import (ARCHITECTURES, VIT_ARCHITECTURES, ImportedModel, SequentialHead,
                                 arch_family, build_encoder)
from sslsteal_jax.models.resnet import Bottleneck

#: File suffixes read by :func:`read_checkpoint` (torch.load for all but .safetensors).
SUFFIXES = (".pth.tar", ".pth", ".ckpt", ".pt", ".safetensors")
#: Wrapper keys descended into, in this order, until a flat state dict is found.
WRAPPERS = ("state_dict", "model", "teacher")
#: Key prefixes of the known conventions, preferred in this order when several match.
PREFIXES = ("module.encoder.", "module.base_encoder.", "module.encoder_q.", "module.backbone.",
            "backbone.", "encoder.", "module.", "")
#: ImageNet channel statistics (torchvision / timm defaults) for [0, 1] RGB inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``head`` argument values.
HEAD_CHOICES = ("none", "projection")

_ANCHORS = {"resnet": ("conv1.weight", "layer1.0.conv1.weight"),
            "vit": ("patch_embed.proj.weight", "cls_token", "pos_embed")}
_HEAD_PREFIX = {"resnet": "fc.", "vit": "head."}
_DROPPED = {"resnet": (), "vit": ("decoder_", "mask_token")}  # MAE's decoder
_BOOKKEEPING = ("num_batches_tracked",)


class CheckpointImportError(ConfigError):
    """A PyTorch checkpoint that cannot be imported as the requested encoder.

    One line naming the file and the offending keys: missing, unexpected, shape
    mismatches (stored vs expected, PyTorch layout), an unknown layout or wrapper.
    Attributes ``missing``, ``unexpected`` (lists of keys) and ``shape_mismatches``
    (``[(key, stored shape, expected shape)]``) are set (empty when not the cause).
    """

    def __init__(self, message: str, missing=(), unexpected=(), shape_mismatches=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)


@dataclasses.dataclass
class ImportedCheckpoint:
    """The result of :func:`import_checkpoint`.

    model_cfg: JSON-ready model config (``arch``, ``width``, ``stem``, ``dtype``,
      ``mean``, ``std``, ViT ``depth`` / ``heads`` / ``pool`` / ``fc_norm``,
      ``head_layers``, ``image_shape``) that ``models.build_model("simclr", ...)``
      rebuilds as an ``ImportedModel``.
    variables: ``{'params', 'batch_stats'}`` of that model, float32 numpy arrays.
    image_shape: ``(H, W, C)`` input size recorded for the victim.
    info: the import report (source path and SHA-256, format, wrapper, prefix,
      architecture, stem, normalisation, head, dropped and ignored keys, source dtypes).
    """

    model_cfg: dict
    variables: dict
    image_shape: tuple
    info: dict


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_format(path: str) -> str:
    """``"safetensors"`` or ``"torch"`` from the file name.

    Raises:
      ConfigError: a suffix not in :data:`SUFFIXES`.
    """
    low = path.lower()
    for suffix in SUFFIXES:
        if low.endswith(suffix):
            return "safetensors" if suffix == ".safetensors" else "torch"
    raise ConfigError(f"checkpoint file {path!r} has an unknown suffix; allowed: {list(SUFFIXES)}")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConfigError("reading a PyTorch checkpoint needs torch: pip install "
                          "'sslsteal_jax[torch]' (or pip install torch safetensors)") from e
    return torch


def read_checkpoint(path: str, trust_pickle: bool = False):
    """Read a checkpoint file into Python objects (tensors stay torch tensors or numpy).

    Args:
      path: a ``.pth`` / ``.pth.tar`` / ``.ckpt`` / ``.pt`` file written by ``torch.save``
        or a ``.safetensors`` file.
      trust_pickle: allow ``torch.load(weights_only=False)``, which runs code stored in
        the file (needed for checkpoints that pickle Python objects such as training
        arguments, e.g. DINO's full checkpoints). Only for files you trust.
    Returns:
      The loaded object (a dict for every supported layout).
    Raises:
      ConfigError: no such file, unknown suffix, torch / safetensors not installed, an
        unreadable file, or pickled objects without ``trust_pickle``.
    """
    if os.path.isdir(path):
        raise ConfigError(f"checkpoint file {path!r} is a directory; give the checkpoint "
                          f"file inside it ({' / '.join(SUFFIXES)})")
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint file {path!r} does not exist")
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ConfigError("reading .safetensors needs safetensors: pip install "
                              "'sslsteal_jax[torch]' (or pip install safetensors)") from e
        try:
            return load_file(path)
        except TypeError:  # a dtype numpy lacks (bfloat16): read through torch
            from safetensors.torch import load_file as load_torch
            _torch()
            return load_torch(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"cannot read {path} as safetensors: {str(e).splitlines()[0]}") from e
    torch = _torch()
    import pickle
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        msg = str(e).lower()  # torch names a refused Python object ("unsupported global")
        if not trust_pickle and ("can still be loaded" in msg or "unsupported global" in msg):
            raise ConfigError(
                f"{path} stores pickled Python objects besides tensors, which torch refuses to "
                "load safely; if you trust the file, import it with trust_pickle=true (runs code "
                "from the file), or save only its state dict") from e
        raise ConfigError(f"cannot read {path} as a PyTorch checkpoint (not a file written "
                          "by torch.save: unpickling failed)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read {path} as a PyTorch checkpoint ({first}); is the file "
                          "complete?") from e


def _is_array(v) -> bool:
    return isinstance(v, np.ndarray) or (hasattr(v, "shape") and hasattr(v, "dtype")
                                         and hasattr(v, "detach"))


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and _is_array(v) for k, v in obj.items())


def find_state_dict(obj, wrapper: str | None = None, source: str = "checkpoint"):
    """The flat ``{key: tensor}`` state dict inside a loaded checkpoint.

    Args:
      obj: what :func:`read_checkpoint` returned.
      wrapper: None = descend :data:`WRAPPERS` in order until a flat state dict is
        found; else a dot-separated path of keys (e.g. ``"teacher"``, ``"model.ema"``).
      source: the file name for messages.
    Returns:
      ``(state_dict, wrapper_path)`` (``wrapper_path`` "" when the file is the state dict).
    Raises:
      CheckpointImportError: no state dict found (names the keys that were there).
    """
    path = []
    if wrapper:
        for part in wrapper.split("."):
            if not isinstance(obj, dict) or part not in obj:
                keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise CheckpointImportError(
                    f"{source}: wrapper key {'.'.join(path + [part])!r} not found; the object "
                    f"there has keys {name_some(keys, 10)}")
            obj = obj[part]
            path.append(part)
    while not _is_state_dict(obj):
        if not isinstance(obj, dict):
            raise CheckpointImportError(f"{source}: unknown layout, {'.'.join(path) or 'the file'} "
                                        f"holds a {type(obj).__name__}, not a state dict")
        nxt = next((w for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
        if nxt is None:
            tensors = [k for k, v in obj.items() if _is_array(v)]
            what = (f"a mix of {len(tensors)} tensors and other values" if tensors else
                    "no tensors")
            raise CheckpointImportError(
                f"{source}: unknown layout, {'.'.join(path) or 'the top level'} holds {what} "
                f"(keys {name_some(sorted(map(str, obj)), 10)}) and none of the wrappers "
                f"{list(WRAPPERS)}; pass wrapper=KEY naming the state dict")
        obj = obj[nxt]
        path.append(nxt)
    return obj, ".".join(path)


def find_prefix(keys, family: str, prefix: str | None = None, source: str = "checkpoint") -> str:
    """The key prefix of the encoder in a state dict.

    A candidate is a prefix ``P`` with every anchor key of the family (ResNet:
    ``conv1.weight``, ``layer1.0.conv1.weight``; ViT: ``patch_embed.proj.weight``,
    ``cls_token``, ``pos_embed``) present as ``P + anchor``. The first candidate in
    :data:`PREFIXES` order wins; without one, a single other candidate is used.

    Args:
      keys: the state dict's keys.
      family: "resnet" or "vit".
      prefix: None = detect; else the prefix to use (checked).
    Raises:
      CheckpointImportError: no candidate (an unknown layout), several candidates
        none of which is a known convention, or a given ``prefix`` without the
        anchor keys.
    """
    keys = set(keys)
    anchors = _ANCHORS[family]
    if prefix is not None:
        absent = [prefix + a for a in anchors if prefix + a not in keys]
        if absent:
            raise CheckpointImportError(
                f"{source}: prefix {prefix!r} does not lead to a {family} encoder: missing keys "
                f"{name_some(absent)}", missing=absent)
        return prefix
    cands = {k[:-len(anchors[0])] for k in keys if k.endswith(anchors[0])}
    cands = {p for p in cands if all(p + a in keys for a in anchors)}
    known = [p for p in PREFIXES if p in cands]
    if known:
        return known[0]
    if len(cands) == 1:
        return cands.pop()
    if cands:
        raise CheckpointImportError(
            f"{source}: several {family} encoders found (prefixes {sorted(cands)}) and none is a "
            f"known convention {list(PREFIXES)}; pass prefix=... to choose one")
    raise CheckpointImportError(
        f"{source}: unknown layout, no {family} encoder keys ({', '.join(anchors)}) under any "
        f"prefix; its keys start with {name_some(sorted(keys), 6)}; pass prefix=... if the "
        "encoder's keys carry another prefix, or check arch")


def detect_arch(sd: dict) -> str | None:
    """A guess of the architecture of a prefix-stripped state dict, for messages:
    an ``ARCHITECTURES`` / ``VIT_ARCHITECTURES`` name, a description of an unsupported
    ResNet / ViT, or None."""
    if "conv1.weight" in sd:
        blocks = tuple(len({m.group(1) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                       for i in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in sd
        for name, (stages, block) in ARCHITECTURES.items():
            if tuple(stages) == blocks and (block is Bottleneck) == bottleneck:
                return name
        return f"a ResNet with blocks {blocks}" + (" (bottleneck)" if bottleneck else "")
    if "cls_token" in sd:
        width = int(np.shape(sd["cls_token"])[-1])
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        for name, (w, d, _) in VIT_ARCHITECTURES.items():
            if (w, d) == (width, depth):
                return name
        return f"a ViT of width {width} and depth {depth}"
    return None


def _numpy(v) -> np.ndarray:
    """float32 numpy copy of a torch tensor or numpy array."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if not v.dtype.is_floating_point:
            return v.numpy()
        return v.float().numpy()
    v = np.asarray(v)
    return v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v


def _torch_shape(flax_leaf: str, shape: tuple) -> tuple:
    """The PyTorch shape of a flax array: conv kernels HWIO -> OIHW, dense kernels
    (in, out) -> (out, in), everything else unchanged."""
    if flax_leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if flax_leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(flax_leaf: str, arr: np.ndarray) -> np.ndarray:
    """A PyTorch array in the flax layout (inverse of :func:`_torch_shape`)."""
    if flax_leaf == "kernel" and arr.ndim == 4:
        return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
    if flax_leaf == "kernel" and arr.ndim == 2:
        return np.ascontiguousarray(arr.T)
    return arr


_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}


def _resnet_key(path: tuple, n_convs: int) -> str:
    """torchvision key of a flax ResNet array path, e.g. ``("stage2_block1", "Conv_2",
    "kernel")`` -> ``"layer2.0.downsample.0.weight"`` (basic block: ``n_convs=2``)."""
    *mods, leaf = path
    if mods[0] in ("stem_conv", "stem_bn"):
        base = "conv1" if mods[0] == "stem_conv" else "bn1"
    else:
        stage, block = re.match(r"stage(\d+)_block(\d+)$", mods[0]).groups()
        kind, k = mods[1].rsplit("_", 1)
        k = int(k)
        if kind == "Conv":
            sub = f"conv{k + 1}" if k < n_convs else "downsample.0"
        else:
            sub = f"bn{k + 1}" if k < n_convs else "downsample.1"
        base = f"layer{stage}.{int(block) - 1}.{sub}"
    return f"{base}.{_LEAF[leaf]}"


def _vit_key(path: tuple) -> str:
    """timm key of a flax ViT array path, e.g. ``("blocks_3", "attn", "qkv", "kernel")``
    -> ``"blocks.3.attn.qkv.weight"``, ``("patch_embed", "bias")`` -> ``"patch_embed.proj.bias"``."""
    *mods, leaf = path
    mods = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", m) for m in mods]
    if mods and mods[0] == "patch_embed":
        mods = ["patch_embed.proj"]
    return ".".join(mods + [_LEAF.get(leaf, leaf)]) if mods else leaf


def parse_head(sd: dict, head_prefix: str, in_dim: int, source: str) -> tuple:
    """The ``SequentialHead`` layer specs of the head stored under ``head_prefix``.

    ``nn.Sequential`` indices without parameters are ReLUs (SimSiam, MoCo v2/v3
    heads); a bare ``<prefix>weight`` / ``bias`` is one Linear layer.

    Returns:
      ``(layers, {torch key: (layer index, kind)})`` for the conversion.
    Raises:
      CheckpointImportError: no head under ``head_prefix``, a layer that is neither
        Linear nor BatchNorm1d, or inconsistent layer sizes (names the keys).
    """
    keys = [k for k in sd if k.startswith(head_prefix)]
    if not keys:
        raise CheckpointImportError(
            f"{source}: head=projection asked, but there are no {head_prefix}* keys next to the "
            "encoder; import without a head (head=none)")
    rest = [k[len(head_prefix):] for k in keys]
    if set(rest) <= {"weight", "bias"}:
        groups = {0: {r: head_prefix + r for r in rest}}
    else:
        groups = {}
        odd = sorted(k for r, k in zip(rest, keys) if not re.match(r"\d+\.\w+$", r))
        if odd:
            raise CheckpointImportError(
                f"{source}: the head under {head_prefix!r} is not an nn.Sequential of Linear / "
                f"BatchNorm1d layers (keys {name_some(odd)}); import without a head (head=none)",
                unexpected=odd)
        for r, k in zip(rest, keys):
            i, name = r.split(".", 1)
            groups.setdefault(int(i), {})[name] = k
    layers, dim = [], in_dim
    for i in range(max(groups) + 1):
        g = groups.get(i)
        names = set(g or ()) - set(_BOOKKEEPING)
        if not names:
            layers.append(("relu",))
        elif names <= {"weight", "bias"} and np.ndim(sd[g["weight"]]) == 2:
            out, inp = np.shape(sd[g["weight"]])
            if inp != dim:
                raise CheckpointImportError(
                    f"{source}: head layer {g['weight']} takes {inp} features but receives {dim}",
                    shape_mismatches=[(g["weight"], tuple(np.shape(sd[g["weight"]])), (out, dim))])
            layers.append(("linear", int(out), "bias" in names))
            dim = int(out)
        elif {"running_mean", "running_var"} <= names <= {"running_mean", "running_var",
                                                           "weight", "bias"}:
            if np.shape(sd[g["running_mean"]]) != (dim,):
                raise CheckpointImportError(
                    f"{source}: head BatchNorm {g['running_mean']} has shape "
                    f"{tuple(np.shape(sd[g['running_mean']]))}, expected ({dim},)",
                    shape_mismatches=[(g["running_mean"], tuple(np.shape(sd[g["running_mean"]])),
                                       (dim,))])
            layers.append(("batchnorm", "weight" in names))
        else:
            raise CheckpointImportError(
                f"{source}: head layer {head_prefix}{i} is neither Linear nor BatchNorm1d (keys "
                f"{name_some(sorted(g.values()))}); import without a head (head=none)",
                unexpected=sorted(g.values()))
    if not any(layer[0] == "linear" for layer in layers):
        raise CheckpointImportError(f"{source}: the head under {head_prefix!r} has no Linear layer")
    return tuple(layers), groups


def _head_key(path: tuple, head_prefix: str, groups: dict) -> str:
    """Torch key of a flax head array ``("layer<i>", leaf)`` (collection-free path)."""
    i = int(path[0][len("layer"):])
    leaf = path[-1]
    return groups[i][_LEAF[leaf]]


def _vit_image_size(sd: dict, patch: int, image_size: int | None, source: str) -> int:
    """Square image side of a ViT checkpoint from its position embedding."""
    n = int(np.shape(sd["pos_embed"])[1]) - 1
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointImportError(
            f"{source}: pos_embed has shape {tuple(np.shape(sd['pos_embed']))}: {n} patch "
            "positions plus a class token is not a square grid (non-square inputs and position "
            "embeddings without a class-token row are not supported)")
    if image_size is not None and int(image_size) != side * patch:
        raise CheckpointImportError(
            f"{source}: image_size={image_size} but pos_embed holds {n} = {side}x{side} patches of "
            f"{patch} pixels, i.e. {side * patch}x{side * patch} inputs (position embeddings are "
            "not resampled); pass image_size="
            f"{side * patch} or leave it unset", shape_mismatches=[
                ("pos_embed", tuple(np.shape(sd["pos_embed"])),
                 (1, (int(image_size) // patch) ** 2 + 1, int(np.shape(sd["pos_embed"])[2])))])
    return side * patch


@functools.lru_cache(maxsize=32)
def _abstract_init(module, shape: tuple) -> dict:
    """Shapes of ``module``'s variables for inputs of ``shape`` (``jax.eval_shape`` of
    its init; cached: flax modules hash by their attributes)."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape)))


def _abstract_variables(model: ImportedModel) -> dict:
    """Shapes of an ``ImportedModel``'s variables, ``{collection: {"encoder": ..., "head":
    ...}}``, from the encoder's and the head's own (cached) inits."""
    parts = {"encoder": _abstract_init(model.encoder, (1, *model.image_shape))}
    if model.head_layers:
        parts["head"] = _abstract_init(SequentialHead(model.head_layers),
                                       (1, model.encoder.representation_dim))
    out = {}
    for name, tree in parts.items():
        for collection, value in tree.items():
            out.setdefault(collection, {})[name] = value
    return out


def convert_state_dict(sd: dict, arch: str, *, stem: str | None = None, pool: str = "cls",
                       heads: int | None = None, head: str = "none",
                       image_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       source: str = "checkpoint"):
    """Convert a prefix-stripped PyTorch state dict into ``ImportedModel`` variables.

    Args:
      sd: ``{key: tensor or array}`` with the encoder's keys at the top level
        (torchvision ResNet or timm ViT names), plus optionally its head.
      arch: "resnet18" | "resnet34" | "resnet50" (any ``ARCHITECTURES`` name) or
        "vit_s" | "vit_b".
      stem: ResNet: None (read from ``conv1.weight``), "imagenet" or "cifar"
        (checked). ViT: None or "patch<N>" (checked against ``patch_embed``).
      pool: ViT representation, "cls" or "mean" (``fc_norm`` checkpoints need "mean").
      heads: ViT attention heads (None: 6 for vit_s, 12 for vit_b; MoCo v3's ViT-S
        uses 12). Not stored in the weights: a wrong value gives wrong outputs.
      head: "none" (drop ``fc.*`` / ``head.*``) or "projection" (import it).
      image_size: input side recorded for the victim (ResNet default 224 for the
        ImageNet stem, 32 for the CIFAR stem; ViT: read from ``pos_embed``, checked).
      mean, std: normalisation of [0, 1] RGB inputs applied inside the model.
      source: name used in messages.
    Returns:
      ``(model_cfg, variables, report)``: see :class:`ImportedCheckpoint`; ``report``
      has ``stem``, ``width``, ``dropped`` (keys not imported), ``source_dtypes``.
    Raises:
      CheckpointImportError: missing / unexpected keys, shape mismatches (names
        them and the architecture the keys look like), a bad head.
      ConfigError: bad ``arch`` / ``stem`` / ``pool`` / ``heads`` / ``head`` values.
    """
    family = arch_family(arch)
    if head not in HEAD_CHOICES:
        raise ConfigError(f"head={head!r}; allowed: {list(HEAD_CHOICES)}")
    absent = [a for a in _ANCHORS[family] if a not in sd]
    if absent:
        raise CheckpointImportError(
            f"{source}: not a {family} state dict (missing {name_some(absent)}; it looks like "
            f"{detect_arch(sd) or 'an unknown layout'})", missing=absent)
    head_prefix = _HEAD_PREFIX[family]
    opts = {"mean": tuple(mean), "std": tuple(std)}
    if family == "resnet":
        if stem not in (None, "", "imagenet", "cifar"):
            raise ConfigError(f"stem={stem!r}; allowed: imagenet | cifar (or unset: read from "
                              "conv1.weight)")
        w = np.shape(sd["conv1.weight"])
        found = {7: "imagenet", 3: "cifar"}.get(int(w[-1]))
        if found is None or (stem and stem != found):
            raise CheckpointImportError(
                f"{source}: conv1.weight has shape {tuple(w)}, "
                + ("which is neither stem (7x7 imagenet, 3x3 cifar)" if found is None else
                   f"a {found} stem, but stem={stem!r} was asked; pass stem={found} or leave it "
                   "unset"), shape_mismatches=[("conv1.weight", tuple(w), None)])
        stem, width, channels = found, int(w[0]), int(w[1])
        side = int(image_size or (224 if stem == "imagenet" else 32))
    else:
        w = np.shape(sd["patch_embed.proj.weight"])
        width, channels, patch = int(w[0]), int(w[1]), int(w[-1])
        if stem and stem != f"patch{patch}":
            raise CheckpointImportError(
                f"{source}: patch_embed.proj.weight has shape {tuple(w)} (patch{patch}), but "
                f"stem={stem!r} was asked", shape_mismatches=[("patch_embed.proj.weight", tuple(w),
                                                               None)])
        stem = f"patch{patch}"
        fc_norm = "fc_norm.weight" in sd and "norm.weight" not in sd
        if fc_norm and pool != "mean":
            raise CheckpointImportError(
                f"{source}: the checkpoint normalises after mean pooling (fc_norm.weight, timm's "
                "global_pool='avg' layout) and has no norm.weight: pass pool=mean")
        opts.update(heads=heads, pool=pool, fc_norm=fc_norm)
        side = _vit_image_size(sd, patch, image_size, source)
        if arch in VIT_ARCHITECTURES and width != VIT_ARCHITECTURES[arch][0]:
            raise CheckpointImportError(
                f"{source}: arch={arch} has width {VIT_ARCHITECTURES[arch][0]} but cls_token has "
                f"shape {tuple(np.shape(sd['cls_token']))}; it looks like {detect_arch(sd)}",
                shape_mismatches=[("cls_token", tuple(np.shape(sd["cls_token"])),
                                   (1, 1, VIT_ARCHITECTURES[arch][0]))])
        width = None
    image_shape = (side, side, channels)
    enc = build_encoder(arch, width, stem, jnp.float32, **opts)
    layers, groups = (), {}
    if head == "projection":
        layers, groups = parse_head(sd, head_prefix, enc.representation_dim, source)
    model = ImportedModel(enc, layers, image_shape)
    target = _abstract_variables(model)
    n_convs = 3 if family == "resnet" and ARCHITECTURES[arch][1] is Bottleneck else 2
    variables, used, missing, bad = {}, set(), [], []
    leaves = [(path, leaf) for collection in ("params", "batch_stats")  # weights first in messages
              for path, leaf in jax.tree_util.tree_leaves_with_path({collection: target.get(
                  collection, {})})]
    for path, leaf in leaves:
        names = tuple(getattr(p, "key", str(p)) for p in path)  # (collection, module, ..., leaf)
        collection, part, rest = names[0], names[1], names[2:]
        if part == "head":
            key = _head_key(rest, head_prefix, groups)
        elif family == "resnet":
            key = _resnet_key(rest, n_convs)
        else:
            key = _vit_key(rest)
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        arr = _to_flax(rest[-1], _numpy(sd[key]))
        if arr.shape != tuple(leaf.shape):
            bad.append((key, tuple(np.shape(sd[key])), _torch_shape(rest[-1], leaf.shape)))
            continue
        node = variables.setdefault(collection, {})
        for n in names[1:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = arr.astype(np.float32)
    dropped = sorted(k for k in sd if k not in used and not k.endswith(_BOOKKEEPING)
                     and (k.startswith(head_prefix) or k.startswith(_DROPPED[family])))
    unexpected = sorted(k for k in sd if k not in used and not k.endswith(_BOOKKEEPING)
                        and k not in dropped)
    if missing or unexpected or bad:
        parts = key_mismatch(missing, unexpected, bad, missing_label="missing keys",
                             extra_label="unexpected keys", shown=5, shapes_shown=3)
        looks = detect_arch(sd)
        hint = f"; the keys look like {looks}" if looks and looks != arch else ""
        raise CheckpointImportError(f"{source} does not fit {arch} (stem {stem}): "
                                    + parts + hint,
                                    missing=missing, unexpected=unexpected, shape_mismatches=bad)
    variables.setdefault("params", {})
    variables.setdefault("batch_stats", {})
    model_cfg = {"arch": arch, "width": int(enc.width), "stem": stem, "dtype": "float32",
                 "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                 "head_layers": [list(layer) for layer in layers],
                 "image_shape": list(image_shape)}
    if family == "vit":
        model_cfg.update(depth=int(enc.depth), heads=int(enc.heads), pool=enc.pool,
                         fc_norm=bool(enc.fc_norm))
    dtypes = Counter(str(getattr(sd[k], "dtype", "")).replace("torch.", "") for k in used)
    report = {"stem": stem, "width": int(enc.width), "dropped": dropped,
              "source_dtypes": dict(dtypes)}
    return model_cfg, variables, report


def import_checkpoint(path: str, arch: str, *, stem: str | None = None, pool: str = "cls",
                      heads: int | None = None, head: str = "none",
                      image_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      prefix: str | None = None, wrapper: str | None = None,
                      trust_pickle: bool = False) -> ImportedCheckpoint:
    """Read a PyTorch / timm checkpoint file and convert its encoder (module docstring).

    Args:
      path: ``.pth`` / ``.pth.tar`` / ``.ckpt`` / ``.pt`` / ``.safetensors`` file.
      arch, stem, pool, heads, head, image_size, mean, std: see :func:`convert_state_dict`.
      prefix: None = detect (:func:`find_prefix`), else the encoder's key prefix
        ("" for none).
      wrapper: None = detect (:func:`find_state_dict`), else the dot path of the state dict.
      trust_pickle: see :func:`read_checkpoint`.
    Returns:
      :class:`ImportedCheckpoint` (variables and model config of the victim, the report).
    Raises:
      ConfigError / CheckpointImportError: every user mistake above, one line each.
    """
    family = arch_family(arch)
    src = os.path.basename(path)
    obj = read_checkpoint(path, trust_pickle)
    sd, wrapper_path = find_state_dict(obj, wrapper, src)
    try:
        pre = find_prefix(sd.keys(), family, prefix, src)
    except CheckpointImportError as e:
        other = "vit" if family == "resnet" else "resnet"
        try:
            p = find_prefix(sd.keys(), other, prefix, src)
        except CheckpointImportError:
            raise e from None
        looks = detect_arch({k[len(p):]: v for k, v in sd.items() if k.startswith(p)})
        raise CheckpointImportError(f"{src}: arch={arch} asked, but the file holds a {other} "
                                    f"encoder ({looks}) under prefix {p!r}: pass arch={looks}"
                                    if looks in ARCHITECTURES or looks in VIT_ARCHITECTURES else
                                    f"{e}; the file holds {looks} under prefix {p!r}") from None
    inner = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    outside = sorted(k for k in sd if not k.startswith(pre))
    model_cfg, variables, report = convert_state_dict(
        inner, arch, stem=stem, pool=pool, heads=heads, head=head, image_size=image_size,
        mean=mean, std=std, source=f"{src} (prefix {pre!r})")
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"])))
    info = {"source": os.path.abspath(path), "sha256": sha256_file(path),
            "format": checkpoint_format(path), "wrapper": wrapper_path, "prefix": pre,
            "arch": arch, "stem": report["stem"], "width": report["width"],
            "image_shape": model_cfg["image_shape"],
            "normalization": {"mean": model_cfg["mean"], "std": model_cfg["std"],
                              "where": "inside the model, on [0, 1] RGB inputs"},
            "head": ({"layers": model_cfg["head_layers"], "prefix": pre + _HEAD_PREFIX[family]}
                     if model_cfg["head_layers"] else None),
            "dropped_keys": [pre + k for k in report["dropped"]],
            "ignored_keys": {"count": len(outside), "first": outside[:10]},
            "source_dtypes": report["source_dtypes"], "parameters": n_params}
    return ImportedCheckpoint(model_cfg, variables, tuple(model_cfg["image_shape"]), info)
