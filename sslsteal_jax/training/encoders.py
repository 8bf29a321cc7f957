"""Build encoders from config dicts and load them from orbax checkpoints.

A checkpoint written by this toolkit stores its model config in the JSON
"meta" item, so any saved victim or surrogate can be rebuilt and evaluated
without retraining. Restoring never ignores missing or extra keys (a quirk of
the reference code, docs/science.md section 4).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from sslsteal_jax.models import SimCLRModel, SurrogateModel, build_encoder
from sslsteal_jax.training import checkpoint as ckpt


def build_model(kind: str, model_cfg: dict):
    """Rebuild the flax module of a checkpoint.

    Args:
      kind: "simclr" (victim: encoder + projection head) or "surrogate".
      model_cfg: dict with arch, width, stem (+ head_hidden, head_out for
        simclr, and watermark_hidden, watermark_classes for a watermarked
        victim, see ``models.watermark``; adapter_dim and optional
        predictor_hidden for surrogate).
    Raises:
      ValueError: unknown kind or architecture.
    """
    enc = build_encoder(model_cfg["arch"], model_cfg["width"], model_cfg.get("stem", "cifar"),
                        model_cfg.get("dtype", "float32"))
    if kind == "simclr" and model_cfg.get("watermark_classes"):
        from sslsteal_jax.training.watermark import build_watermarked  # avoid an import cycle
        return build_watermarked(model_cfg)
    if kind == "simclr":
        return SimCLRModel(enc, int(model_cfg["head_hidden"]), int(model_cfg["head_out"]))
    if kind == "surrogate":
        return SurrogateModel(enc, model_cfg.get("adapter_dim"), model_cfg.get("predictor_hidden"))
    raise ValueError(f"unknown checkpoint kind {kind!r}; allowed: 'simclr', 'surrogate'")


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a checkpoint.

    kind: "simclr" or "surrogate"; module: flax module whose call returns
    ``(representation, head_or_adapter_output)``; variables: ``{'params',
    'batch_stats'}``; meta: the checkpoint's JSON metadata; image_shape: (H,W,C).
    Representations of a loaded model ``m``:
    ``evaluation.features.make_apply(m.module, m.variables, output_index=0)``.
    """

    kind: str
    module: object
    variables: dict
    meta: dict
    image_shape: tuple


def load_model(ckpt_dir: str, model_override: dict | None = None, step: int | None = None) -> LoadedModel:
    """Load a victim or surrogate checkpoint written by this toolkit.

    Args:
      ckpt_dir: directory holding orbax step folders (``<workdir>/checkpoints``).
      model_override: keys replacing the stored model config (e.g. to assert
        an expected architecture); a mismatch with the stored arrays raises.
      step: checkpoint step (default latest).
    Raises:
      FileNotFoundError: no checkpoint in ``ckpt_dir``.
      CheckpointMismatchError: the stored arrays do not fit the (overridden)
        architecture.
    """
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist")
    meta = ckpt.read_meta(ckpt_dir, step)
    kind = meta.get("kind")
    model_cfg = dict(meta["config"]["model"])
    if kind == "surrogate":
        model_cfg["adapter_dim"] = meta.get("adapter_dim")
        model_cfg["predictor_hidden"] = meta.get("predictor_hidden")
    if model_override:
        model_cfg.update({k: v for k, v in model_override.items() if v is not None})
    module = build_model(kind, model_cfg)
    image_shape = tuple(meta["image_shape"])
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((2, *image_shape))))
    try:
        items, meta = ckpt.restore(ckpt.manager(ckpt_dir), {"model": {
            "params": target["params"], "batch_stats": target["batch_stats"]}}, step)
    except ckpt.CheckpointMismatchError as e:
        stored = {k: meta["config"]["model"].get(k) for k in ("arch", "width", "stem")}
        asked = {k: model_cfg.get(k) for k in ("arch", "width", "stem")}
        raise ckpt.CheckpointMismatchError(
            f"the checkpoint holds a {kind} model with {stored}, but {asked} was requested. "
            f"{e}") from None
    return LoadedModel(kind, module, items["model"], meta, image_shape)
