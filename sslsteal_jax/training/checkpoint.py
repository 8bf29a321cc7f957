"""Orbax checkpoints with resume, strict structure checks and clear errors.

A checkpoint written by this toolkit stores its model config in the JSON
"meta" item, so any saved victim or surrogate can be rebuilt
(``models.build_model``) and evaluated without retraining (``load_model``).
Restoring never ignores missing or extra keys (a quirk of the reference code,
docs/science.md section 4).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sslsteal_jax.models import build_model


class CheckpointMismatchError(ValueError):
    """A checkpoint's structure (architecture) differs from the expected model."""


ITEMS = ("model", "opt", "meta")


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """CheckpointManager over ``directory`` (created if missing), keeping the
    ``max_to_keep`` most recent steps. Items: "model" (params + batch_stats),
    "opt" (optimizer state), "meta" (JSON: config, metrics). Writes are atomic
    (orbax commits a step directory only when fully written)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={"model": ocp.StandardCheckpointHandler(),
                       "opt": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, items: dict, meta: dict) -> None:
    """Save pytrees ``items`` (subset of "model", "opt") and JSON ``meta`` at ``step``; waits."""
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    args["meta"] = ocp.args.JsonSave(meta)
    mngr.save(int(step), args=ocp.args.Composite(**args), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, targets: dict, step: int | None = None):
    """Restore ``(items, meta)`` from ``step`` (default latest).

    Args:
      targets: item name -> pytree of arrays/ShapeDtypeStructs giving the
        expected structure (e.g. ``{"model": variables}``).
    Raises:
      FileNotFoundError: no checkpoint in the manager's directory.
      CheckpointMismatchError: the stored tree does not match the target (e.g.
        a checkpoint of another architecture or width); missing keys are never
        ignored.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {mngr.directory}")
    abstract = {k: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, v)
                for k, v in targets.items()}
    stored = mngr.item_metadata(step)
    for k, v in abstract.items():
        _check_structure(stored[k], v, f"{mngr.directory} step {step} item {k!r}")
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    args["meta"] = ocp.args.JsonRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**args))
    return {k: out[k] for k in targets}, dict(out["meta"])


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _shapes(tree) -> dict:
    """``"a/b/0/c" -> shape`` for every array leaf. Paths are normalised so that a
    stored tree (orbax metadata: nested dicts/lists) and the live tree (which may
    hold namedtuples, e.g. optax states, reached by attribute) name leaves alike;
    ``np.shape`` also accepts Python scalars."""
    return {"/".join(_key_name(k) for k in p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _check_structure(stored, expected, where: str) -> None:
    """Compare stored array metadata with the expected tree; raise a clear error."""
    if stored is None:
        raise CheckpointMismatchError(f"checkpoint {where} is missing")
    s, e = _shapes(stored), _shapes(expected)
    missing, extra = sorted(set(e) - set(s)), sorted(set(s) - set(e))
    bad = [(k, s[k], e[k]) for k in sorted(set(s) & set(e)) if s[k] != e[k]]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} arrays the model needs are absent (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} stored arrays the model lacks (first: {extra[0]})")
        if bad:
            k, got, want = bad[0]
            parts.append(f"{len(bad)} shape mismatches (first: {k} stored {got}, model expects {want})")
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit the requested model: " + "; ".join(parts) +
            ". Is it a checkpoint of another architecture or width?")


def read_meta(directory: str, step: int | None = None) -> dict:
    """Read only the JSON metadata of a checkpoint (config used to build the model)."""
    mngr = manager(directory)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {directory}")
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to ``path`` atomically (temp file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)


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
    Returns:
      :class:`LoadedModel` (module rebuilt with ``models.build_model``).
    Raises:
      FileNotFoundError: no checkpoint in ``ckpt_dir``.
      CheckpointMismatchError: the stored arrays do not fit the (overridden)
        architecture.
    """
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist")
    meta = read_meta(ckpt_dir, step)
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
        items, meta = restore(manager(ckpt_dir), {"model": {
            "params": target["params"], "batch_stats": target["batch_stats"]}}, step)
    except CheckpointMismatchError as e:
        stored = {k: meta["config"]["model"].get(k) for k in ("arch", "width", "stem")}
        asked = {k: model_cfg.get(k) for k in ("arch", "width", "stem")}
        raise CheckpointMismatchError(
            f"the checkpoint holds a {kind} model with {stored}, but {asked} was requested. "
            f"{e}") from None
    return LoadedModel(kind, module, items["model"], meta, image_shape)
