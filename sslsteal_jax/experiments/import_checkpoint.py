"""Import a PyTorch / timm SSL checkpoint as an orbax victim checkpoint (``configs/import_checkpoint.py``).

Steps:
1. ``models.convert.import_checkpoint`` reads the file, finds the encoder's state
   dict (wrapper, key prefix), checks every key and shape and converts it (with
   its projection head when asked for);
2. the variables are written as a "simclr" (victim) checkpoint in
   ``<workdir>/checkpoints`` (step 0) whose metadata holds the model config
   (``models.imported.ImportedModel``: encoder, head, input shape, normalisation
   mean / std), the input shape, the SHA-256 of the source file and the whole
   import report (``meta["import"]``), plus the SimCLR augmentation defaults that
   the defense matrix's query-similarity detector reads;
3. the checkpoint is loaded back with ``training.checkpoint.load_model`` and run
   on a random batch (finite outputs of the recorded sizes); ``results.json``
   holds the report and the check.

``VictimAPI.from_checkpoint``, ``configs/evaluate.py``, the steal job, budget
scans and the defense matrix then take ``<workdir>/checkpoints`` unchanged. The
imported model normalises its [0, 1] inputs itself (``mean`` / ``std``), so
queries are plain images, resized to the recorded input size (``dataset=NAME@HxWxC``).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from sslsteal_jax.data.augment import AugmentConfig
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.pipeline import workdir as wd
from sslsteal_jax.models.convert import import_checkpoint
from sslsteal_jax.training import checkpoint as ckpt


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, variables, x):
    """``module.apply(variables, x)`` compiled once per module (flax modules hash by value)."""
    return module.apply(variables, x, train=False)


def _prefix(value: str | None) -> str | None:
    """Config ``prefix``: "auto" / "" / None -> detect, "none" -> no prefix, else literal."""
    if value in (None, "", "auto"):
        return None
    return "" if value == "none" else value


def _existing(ckpt_dir: str, sha256: str, model_cfg: dict) -> bool:
    """True when ``ckpt_dir`` already holds this import (same file hash and model config:
    an interrupted run that saved the checkpoint but not results.json).

    Raises:
      ConfigError: it holds another checkpoint (never overwritten).
    """
    if ckpt.manager(ckpt_dir).latest_step() is None:
        return False
    meta = ckpt.read_meta(ckpt_dir)
    if (meta.get("import", {}).get("sha256") == sha256
            and meta.get("config", {}).get("model") == model_cfg):
        return True
    raise ConfigError(f"{ckpt_dir} already holds another checkpoint "
                      f"({meta.get('import', {}).get('source') or meta.get('kind')}); choose a new "
                      "--workdir")


def run(cfg, workdir: str) -> dict:
    """Import ``cfg.source`` into ``workdir``; returns the results dict (also
    ``<workdir>/results.json``).

    Raises:
      ConfigError (a ValueError): a missing ``source`` / ``arch``, an unreadable file,
        an unknown layout, missing / unexpected keys or shape mismatches (one line
        naming them, ``models.convert.CheckpointImportError``), a workdir holding
        another checkpoint.
      WorkdirExistsError: ``results.json`` exists and ``overwrite`` is False.
    """
    if not cfg.source:
        raise ConfigError("source is required: configs/import_checkpoint.py:source=PATH,arch=ARCH")
    if not cfg.arch:
        raise ConfigError("arch is required: resnet18 | resnet34 | resnet50 | vit_s | vit_b, e.g. "
                          "configs/import_checkpoint.py:source=PATH,arch=resnet50")
    source = wd.resolve_path(cfg.source)
    if os.path.exists(os.path.join(workdir, "results.json")):  # refuse before reading the file
        wd.prepare_workdir(workdir, cfg.overwrite)
    imp = import_checkpoint(source, cfg.arch, stem=cfg.stem or None, pool=cfg.pool,
                            heads=int(cfg.heads) or None, head=cfg.head,
                            image_size=int(cfg.image_size) or None, mean=tuple(cfg.mean),
                            std=tuple(cfg.std), prefix=_prefix(cfg.prefix),
                            wrapper=cfg.wrapper or None, trust_pickle=bool(cfg.trust_pickle))
    wd.prepare_workdir(workdir, cfg.overwrite)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    meta = {"kind": "simclr", "image_shape": list(imp.image_shape), "import": imp.info,
            "config": {"model": imp.model_cfg,
                       "augment": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in dataclasses.asdict(AugmentConfig()).items()}}}
    if not _existing(ckpt_dir, imp.info["sha256"], imp.model_cfg):
        ckpt.save(ckpt.manager(ckpt_dir), 0, {"model": imp.variables}, meta)

    # ---- check: load it back as every experiment does, run a random batch -------------------
    loaded = ckpt.load_model(ckpt_dir)
    x = np.asarray(jax.random.uniform(jax.random.key(int(cfg.seed)), (8, *imp.image_shape)))
    h, z = _forward(loaded.module, loaded.variables, x)
    h, z = np.asarray(h), np.asarray(z)
    check = {"images": int(len(x)), "representation_dim": int(h.shape[1]),
             "projection_dim": int(z.shape[1]) if imp.model_cfg["head_layers"] else None,
             "finite": bool(np.isfinite(h).all() and np.isfinite(z).all()),
             "mean_representation_norm": float(np.linalg.norm(h, axis=1).mean())}
    if not check["finite"]:
        raise ConfigError(f"the imported encoder gives non-finite outputs on random [0, 1] images "
                          f"({source}): is the checkpoint damaged, or the normalisation wrong?")
    results = {"experiment": "import_checkpoint", "checkpoint": os.path.abspath(ckpt_dir),
               "import": imp.info, "check": check, "config": cfg.to_dict(),
               "environment": wd.run_environment()}
    ckpt.write_json_atomic(os.path.join(workdir, "results.json"), results)
    info = imp.info
    head = ""
    if info["head"]:
        kinds = [layer[0] for layer in imp.model_cfg["head_layers"]]
        head = (f", projection head {check['projection_dim']}-d: "
                + "-".join({"linear": "Linear", "relu": "ReLU", "batchnorm": "BN"}[k] for k in kinds))
        if kinds == ["linear"]:  # a bare Linear: also what a supervised classifier stores
            head += (" (one Linear layer, as a supervised classifier's output layer; if this "
                     "checkpoint is a classifier, import it with head=none)")
    h_, w_, c_ = imp.image_shape
    print(f"imported {info['arch']} ({info['stem']} stem, {check['representation_dim']}-d "
          f"representation{head}, {h_}x{w_}x{c_} inputs) from {source} (sha256 "
          f"{info['sha256'][:12]}..., wrapper {info['wrapper'] or '-'!r}, prefix "
          f"{info['prefix']!r}); dropped {len(info['dropped_keys'])} keys, "
          f"{info['ignored_keys']['count']} keys outside the encoder ignored")
    if imp.model_cfg["arch"].startswith("resnet") and h_ > 64:  # any size works; keep data small
        h_ = w_ = 64
    print(f"victim checkpoint: {ckpt_dir}\nsteal it: python -m sslsteal_jax.main "
          f"--config=configs/quickstart.py --config.victim.checkpoint={ckpt_dir} "
          f"--config.dataset=fashion_mnist@{h_}x{w_}x{c_} --workdir=runs/steal_imported")
    return results
