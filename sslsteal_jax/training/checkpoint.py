"""Orbax checkpoints with resume, strict structure checks and clear errors.

A checkpoint written by this toolkit stores its model config in the JSON
"meta" item, so any saved victim or surrogate can be rebuilt
(``models.build_model``) and evaluated without retraining (``load_model``).
Restoring never ignores missing or extra keys (a quirk of the reference code,
docs/science.md section 4).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sslsteal_jax.defaults import REPO_ROOT, resolve_path
from sslsteal_jax.errors import ConfigError, key_mismatch, root_cause
from sslsteal_jax.models import build_model
from sslsteal_jax.training import mesh as mesh_lib


class CheckpointNotFoundError(ConfigError, FileNotFoundError):
    """No checkpoint at the given path (a user mistake: one CLI line; still a
    FileNotFoundError for callers that catch that)."""


class CheckpointMismatchError(ConfigError):
    """A checkpoint's structure (architecture) differs from the expected model.

    The message names the checkpoint, the arrays the model needs that it lacks, the
    arrays it holds that the model lacks, and the first shape mismatch. A
    :class:`~sslsteal_jax.errors.ConfigError` (so a ValueError): the command line
    prints it as one ``error:`` line (the path or ``expect_model`` given was wrong).
    """


class CheckpointCorruptError(ConfigError):
    """A checkpoint whose files are missing, truncated or corrupted (orbax / TensorStore
    could not read them).

    The message names the checkpoint directory and step, the file (when the reader
    names it; else the item folder and the array that could not be read) and the
    reader's reason, on one line; the raw TensorStore exception is kept as
    ``__cause__``. A ConfigError, so the command line prints it as one ``error:`` line.
    """


_TS_LOCAL_FILE = re.compile(r'local file "([^"]+)"')
_TS_ARRAY = re.compile(r'(?:Error reading|Metadata at) "([^"]+?)(?:/[^"/]*)?" in OCDBT')


def _is_read_failure(e: BaseException) -> bool:
    """True for the exceptions orbax / TensorStore raise on unreadable checkpoint files:
    ValueError (TensorStore status errors), OSError, and orbax's plain ``Exception``
    wrapper ("Encountered error while reading array index ...")."""
    return isinstance(e, (ValueError, OSError)) or type(e) is Exception


def corrupt_error(directory: str, step, error: BaseException) -> CheckpointCorruptError:
    """The one-line :class:`CheckpointCorruptError` for a read failure ``error`` of
    checkpoint ``directory`` at ``step``: names the file TensorStore reports (or the
    item folder and the array), and the reason without TensorStore's spec dump."""
    root = root_cause(error)
    text = " ".join(str(root).split()).split(" [tensorstore_spec=")[0]
    files = _TS_LOCAL_FILE.findall(text)
    data_file = next((f for f in reversed(files) if not f.endswith("/")), None)
    array = _TS_ARRAY.search(text)
    if data_file:
        what = f"file {data_file}"
    elif files:
        what = (f"array {array.group(1)} in " if array else "") + f"{files[-1].rstrip('/')}"
    else:
        m = re.search(r"File (\S+) not found", text)
        what = f"file {m.group(1)}" if m else f"step folder {os.path.join(directory, str(step))}"
    reason = text.rsplit('": ', 1)[-1] if files else text
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return CheckpointCorruptError(
        f"checkpoint {directory} (step {step}) is corrupt or incomplete: cannot read {what} "
        f"({reason}); a file of it is missing, truncated or damaged: copy the checkpoint "
        "again from its source or retrain it")


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


@functools.cache
def _single_process_array_handler() -> None:
    """With one process, write each replicated ``jax.Array`` from one replica.

    Orbax's default (replica-parallel saving) cuts a replicated array into one slice
    per device so that several hosts share the writing; with one process it gains
    nothing and compiles a slice program per (array shape, device): about 120 small
    compiles (37 s of compile time on a busy 2-core machine at the test suite's 8
    host devices) on a process's first save of a ResNet-10. The file format is the
    same either way. Registered once, at the first save (never at import: that would
    start the backend before ``jax.distributed.initialize``); a multi-process run
    keeps orbax's default (the process count is fixed once the first save runs, so
    the decision is made once: ``functools.cache``)."""
    if jax.process_count() > 1:
        return
    from orbax.checkpoint._src.metadata import array_metadata_store
    from orbax.checkpoint._src.serialization import type_handler_registry
    # the registry's own add(): it can skip the "overriding jax.Array" warning that
    # ocp.type_handlers.register_type_handler prints on every run (the override is the point)
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
        override=True, ignore_warnings=True)  # as orbax's default handler, but serial


def save(mngr: ocp.CheckpointManager, step: int, items: dict, meta: dict) -> None:
    """Save pytrees ``items`` (subset of "model", "opt") and JSON ``meta`` at ``step``; waits."""
    _single_process_array_handler()
    args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
    args["meta"] = ocp.args.JsonSave(meta)
    mngr.save(int(step), args=ocp.args.Composite(**args), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, targets: dict, step: int | None = None,
            sharding=None):
    """Restore ``(items, meta)`` from ``step`` (default latest).

    Args:
      targets: item name -> pytree of arrays/ShapeDtypeStructs giving the
        expected structure (e.g. ``{"model": variables}``).
      sharding: a ``jax.sharding.Sharding`` for every restored array (e.g.
        replicated over the data mesh on a multi-host run), or None: each
        target leaf's own sharding, and this process's first device for leaves
        without one (``jax.eval_shape`` targets), never the devices recorded at
        save time: a checkpoint written by a pod loads on one machine and vice
        versa. On a multi-host run None means replicated over all devices
        (``default_sharding``), since every process must take part.
    Raises:
      FileNotFoundError: no checkpoint in the manager's directory.
      CheckpointMismatchError: the stored tree does not match the target (e.g.
        a checkpoint of another architecture or width); missing keys are never
        ignored.
      CheckpointCorruptError: a file of the step is missing, truncated or damaged
        (names the directory, step and file or array).
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointNotFoundError(f"no checkpoint found in {mngr.directory}")
    sharding = sharding if sharding is not None else default_sharding()
    abstract = {k: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, v)
                for k, v in targets.items()}
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding or getattr(x, "sharding", None) or local),
        abstract)
    directory = str(mngr.directory)
    try:
        stored = mngr.item_metadata(step)
    except Exception as e:  # noqa: BLE001 - only read failures are re-raised as corrupt
        if not _is_read_failure(e):
            raise
        raise corrupt_error(directory, step, e) from e
    for k, v in abstract.items():
        if stored.get(k) is None:
            raise CheckpointCorruptError(
                f"checkpoint {directory} (step {step}) is corrupt or incomplete: item {k!r} "
                f"has no readable metadata (file {os.path.join(directory, str(step), k, '_METADATA')}"
                " missing or damaged); copy the checkpoint again from its source or retrain it")
        _check_structure(stored[k], v, f"{directory} step {step} item {k!r}")
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    args["meta"] = ocp.args.JsonRestore()
    try:
        out = mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - only read failures are re-raised as corrupt
        if not _is_read_failure(e):
            raise
        raise corrupt_error(directory, step, e) from e
    return {k: out[k] for k in targets}, dict(out["meta"])


def default_sharding():
    """None with one process; on a multi-host run, replicated over the data mesh of
    all devices (restored arrays are then global arrays every process holds)."""
    if jax.process_count() == 1:
        return None
    return mesh_lib.replicated(mesh_lib.data_mesh())


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
    """Compare stored array metadata with the expected tree.

    Raises:
      CheckpointMismatchError: ``stored`` is None, or arrays are missing, extra or of
        another shape; the message names them (first four of each kind) and carries
        them as attributes ``missing``, ``extra`` (lists of ``"params/a/b"`` paths)
        and ``shape_mismatches`` (``[(path, stored shape, expected shape)]``).
    """
    if stored is None:
        raise CheckpointMismatchError(f"checkpoint {where} is missing")
    s, e = _shapes(stored), _shapes(expected)
    missing, extra = sorted(set(e) - set(s)), sorted(set(s) - set(e))
    bad = [(k, s[k], e[k]) for k in sorted(set(s) & set(e)) if s[k] != e[k]]
    if missing or extra or bad:
        parts = key_mismatch(
            missing, extra, bad, shown=4, shapes_shown=1,
            missing_label="the model needs arrays the checkpoint does not hold",
            extra_label="the checkpoint holds arrays the model does not have",
            shape_hint="; is it a checkpoint of another architecture or width?")
        err = CheckpointMismatchError(
            f"checkpoint {where} does not fit the requested model: {parts}")
        err.missing, err.extra, err.shape_mismatches = missing, extra, bad
        raise err


def read_meta(directory: str, step: int | None = None) -> dict:
    """Read only the JSON metadata of a checkpoint (config used to build the model).

    Raises:
      FileNotFoundError: no checkpoint in ``directory``.
      CheckpointCorruptError: the step's ``meta`` item is missing or unreadable.
    """
    mngr = manager(directory)
    step = mngr.latest_step() if step is None else step
    if step is None:
        sub = os.path.join(directory, "checkpoints")
        hint = (f" (a run directory? its checkpoints are in {sub})"
                if os.path.isdir(sub) else "")
        raise CheckpointNotFoundError(f"no checkpoint found in {directory}{hint}")
    try:
        out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - only read failures are re-raised as corrupt
        if not _is_read_failure(e):
            raise
        raise corrupt_error(os.path.abspath(directory), step, e) from e
    return dict(out["meta"])


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to ``path`` atomically (temp file + rename).

    On a multi-host run only process 0 writes (``mesh.is_writer``): every process
    holds the same values, and two writers would race on the temporary file.
    """
    if not mesh_lib.is_writer():
        return
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
      ckpt_dir: directory holding orbax step folders (``<workdir>/checkpoints``). A
        relative path is tried from the current directory, then from the repository
        root (the command line's rule, ``defaults.resolve_path``), so the
        shipped victims load by their documented names from any directory.
      model_override: keys replacing the stored model config (e.g. to assert
        an expected architecture); a mismatch with the stored arrays raises.
      step: checkpoint step (default latest).
    Returns:
      :class:`LoadedModel` (module rebuilt with ``models.build_model``).
    Raises:
      FileNotFoundError (``CheckpointNotFoundError``): no checkpoint in ``ckpt_dir``
        (a relative path: in neither place; the message names both).
      CheckpointMismatchError: the stored arrays do not fit the (overridden)
        architecture; the message names the missing / extra arrays and, for a
        watermarked victim loaded with ``watermark_classes`` overridden, says so.
      CheckpointCorruptError: a file of the checkpoint is missing, truncated or
        damaged (names the directory and the file or array).
    """
    if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise CheckpointNotFoundError(f"{ckpt_dir!r} is a file, not a checkpoint directory "
                                      "(e.g. victims/fashion_mnist_resnet10_w16_ft6/checkpoints)")
    if not os.path.isdir(ckpt_dir):
        found = resolve_path(ckpt_dir)  # a relative path: the repository root's copy
        if not os.path.isdir(found):
            where = "" if os.path.isabs(ckpt_dir) else (f" (looked in the current directory "
                                                        f"{os.getcwd()!r} and the repository "
                                                        f"root {REPO_ROOT!r})")
            raise CheckpointNotFoundError(f"checkpoint directory {ckpt_dir!r} does not exist"
                                          + where)
        ckpt_dir = found
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
            "params": target["params"], "batch_stats": target.get("batch_stats", {})}}, step)
    except CheckpointCorruptError:
        raise
    except CheckpointMismatchError as e:
        stored = {k: meta["config"]["model"].get(k) for k in ("arch", "width", "stem")}
        asked = {k: model_cfg.get(k) for k in ("arch", "width", "stem")}
        extra, missing = getattr(e, "extra", []), getattr(e, "missing", [])
        if stored != asked:
            hint = (f"; the checkpoint holds a {kind} model with {stored}, but {asked} was "
                    "requested (another architecture or width)")
        elif any("/watermark/" in k for k in extra):
            hint = ("; it is a watermarked victim (watermark_classes="
                    f"{meta['config']['model'].get('watermark_classes')}): load it without "
                    "overriding watermark_classes")
        elif any("/watermark/" in k for k in missing):
            hint = "; it is not a watermarked victim: load it without watermark_classes"
        else:
            hint = (f"; stored model config {meta['config']['model']}, overrides "
                    f"{model_override}")
        err = CheckpointMismatchError(f"{e}{hint}")
        err.missing, err.extra = missing, extra
        err.shape_mismatches = getattr(e, "shape_mismatches", [])
        raise err from None
    return LoadedModel(kind, module, items["model"], meta, image_shape)
