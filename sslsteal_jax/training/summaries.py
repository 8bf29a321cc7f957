"""TensorBoard event files next to the JSON logs, from process 0 only.

Every training run that writes a JSONL log (``training.loop.run_training`` with
``log_path``) also writes TensorBoard events to ``tensorboard/`` beside it:
``train/<metric>`` (the logged means: losses, per stacked member
``train/<metric>/member_<k>``), ``train/learning_rate`` (of the last update),
``train/examples_per_second`` (over the log window, all members together) and,
once the run ends, the run's hyperparameters (its flattened config) with the
final metrics in TensorBoard's HPARAMS tab. Experiments add their results
(:func:`write_results_summary`: probe accuracies, kNN, fidelity, queries charged)
to ``<workdir>/tensorboard``. ``tensorboard --logdir <workdir>`` shows them all,
one run per folder, during a pod job as for any JAX job.

Writer: tensorboardX (event files in TensorBoard's format, no TensorFlow
needed). On a multi-host run only process 0 writes
(``mesh.is_writer``); on the others every method is a no-op. A resumed run
passes ``purge_step``: TensorBoard then drops the events an interrupted run wrote
after its last checkpoint, as the JSONL log drops those lines.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
import re
import sys
import time
from typing import Mapping, Sequence

from sslsteal_jax.training import mesh as mesh_lib

#: Sub-folder of a run directory (beside ``train_log.jsonl`` / ``results.json``) holding events.
TB_DIR = "tensorboard"


def flatten(tree, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for a nested dict (ml_collections ``to_dict()`` output),
    values as TensorBoard hyperparameters take them: bool / int / float / str
    (None and sequences as their ``str``)."""
    out = {}
    for k, v in (tree or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            out[name] = str(v)
    return out


def tag_part(text) -> str:
    """``text`` as one part of a TensorBoard tag: runs of characters other than letters,
    digits, ``_ . -`` become one ``_`` (``"surrogate (infonce)"`` -> ``"surrogate_infonce"``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(text)).strip("_") or "_"


@functools.cache
def _tensorboardx():
    """The ``tensorboardX`` package, imported without torch (once per process).

    tensorboardX's package ``__init__`` imports its ``SummaryWriter`` module, which
    imports torch whenever torch is installed (as with the ``test`` / ``torch`` extras)
    only to name ``torch.Tensor`` in type annotations: about 3 s of CPU and 170 MB of
    memory per process that writes events (a toy steal run on the 2-core dev machine,
    tensorboardX 2.6.5, torch 2.13). This writer uses neither, so while tensorboardX
    loads, ``import torch`` fails (a ``None`` entry in ``sys.modules``, Python's
    documented way to block an import) and the annotations fall back to numpy's array
    type. The entry is removed right after; a later ``import torch`` works, and
    tensorboardX still converts torch tensors (``x2num`` imports torch when given one).
    A tensorboardX that cannot load without torch is imported again the plain way.
    When torch or tensorboardX is already imported, this is a plain import.

    Not thread-safe against other threads importing torch for the first time during
    that import (theirs would fail); this package imports torch only in
    ``models.convert``, on the calling thread.
    """
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            pass  # needs torch after all: the plain import below
        finally:
            if sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]
    import tensorboardX
    return tensorboardX


def _number(v) -> float | None:
    """``float(v)`` for a finite real number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class MetricWriter:
    """Scalars, hyperparameters and text for one TensorBoard run folder.

    Events are written synchronously (tensorboardX's ``EventsWriter``: in the file
    when a call returns, durable after :meth:`flush`), so a hard kill loses no
    logged step; hyperparameters go to a folder of their own, ``hparams/``.

    Args:
      logdir: the run folder (created on first write); None: write nothing.
      purge_step: on resume, the first step TensorBoard should forget from
        earlier event files of this folder (``resumed step + 1``), or None.
    A no-op on processes other than 0 (:func:`mesh.is_writer`).
    """

    _files = itertools.count()

    def __init__(self, logdir: str | None, purge_step: int | None = None):
        self.logdir = logdir if logdir and mesh_lib.is_writer() else None
        self._purge_step = purge_step
        self._events = None

    @property
    def active(self) -> bool:
        """Whether this process writes events."""
        return self.logdir is not None

    def _writer(self):
        if self._events is None:
            _tensorboardx()
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            os.makedirs(self.logdir, exist_ok=True)
            # TensorBoard reads a folder's event files in name order: the counter is
            # zero-padded so a resumed run's file (same second, same process: ".10")
            # sorts after the interrupted run's (".9"), or its purge comes first
            self._events = EventsWriter(os.path.join(self.logdir, "events"),
                                        f".{os.getpid()}.{next(self._files):06d}")
            if self._purge_step is not None:  # TensorBoard drops older events from this step on
                self._events.write_event(Event(wall_time=time.time(), step=int(self._purge_step),
                                               session_log=SessionLog(status=SessionLog.START)))
                self._purge_step = None
        return self._events

    def _write(self, step: int, summary_proto) -> None:
        _tensorboardx()
        from tensorboardX.proto.event_pb2 import Event
        self._writer().write_event(Event(wall_time=time.time(), step=int(step),
                                         summary=summary_proto))

    def scalars(self, step: int, values: Mapping[str, object]) -> None:
        """Write ``{tag: value}`` at ``step``; a list value (K stacked members) becomes
        ``<tag>/member_<k>``; non-numbers and NaN/inf are skipped."""
        if not self.active:
            return
        summary = _tensorboardx().summary
        for tag, v in values.items():
            items = ([(f"{tag}/member_{k}", x) for k, x in enumerate(v)]
                     if isinstance(v, (list, tuple)) else [(tag, v)])
            for t, x in items:
                x = _number(x)
                if x is not None:
                    self._write(step, summary.scalar(t, x))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Write a text summary (shown in TensorBoard's TEXT tab, markdown)."""
        if self.active:
            self._write(step, _tensorboardx().summary.text(tag, text))

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, object]) -> None:
        """Write one HPARAMS-tab entry into ``<logdir>/hparams``: ``hparams`` (flattened,
        see :func:`flatten`) and the numeric ``metrics`` (tags should not repeat
        scalars', e.g. ``hparam/final_loss``)."""
        if not self.active:
            return
        hparams_summaries = _tensorboardx().summary.hparams
        nums = {k: _number(v) for k, v in metrics.items()}
        nums = {k: v for k, v in nums.items() if v is not None}
        # the HPARAMS tab reads the experiment / session protos and the metric scalars of a
        # run folder of their own (as tensorboardX's SummaryWriter.add_hparams lays them out)
        sub = MetricWriter(os.path.join(self.logdir, "hparams"))
        for proto in hparams_summaries(flatten(dict(hparams)), nums):
            sub._write(0, proto)
        sub.scalars(0, nums)
        sub.close()

    def flush(self) -> None:
        """Make every event written so far durable on disk."""
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one)."""
        if self._events is not None:
            self._events.close()
            self._events = None


def write_results_summary(workdir: str, rows: Sequence[Mapping], results: Mapping | None = None,
                          series: Sequence[str] = ("name",), step_key: str | None = None) -> None:
    """Experiment results to ``<workdir>/tensorboard``: for every row and numeric field
    (probe accuracies, kNN, fidelity, ...) the scalar ``results/<field>/<series>`` (the
    ``series`` fields' values through :func:`tag_part`, joined with "/") at step
    ``row[step_key]`` (e.g. the query budget of a scan cell: accuracy against budget)
    or 0; ``results/queries_charged`` when ``results`` has it; the config as
    hyperparameters. Process 0 only.

    Args:
      workdir: the experiment's work directory.
      rows: result rows (dicts); ``series`` fields name a row's curve
        (joined with "/"), ``step_key`` (optional) gives its x value.
      results: the results dict (``config``, ``queries_charged`` used when present).
    """
    w = MetricWriter(os.path.join(workdir, TB_DIR))
    if not w.active:
        return
    skip = set(series) | ({step_key} if step_key else set())
    for row in rows:
        label = "/".join(tag_part(row.get(s)) for s in series)
        step = int(row.get(step_key) or 0) if step_key else 0
        w.scalars(step, {f"results/{k}/{label}": v for k, v in row.items() if k not in skip})
    results = results or {}
    for key in ("queries_charged", "queries_charged_this_run"):
        if key in results:
            w.scalars(0, {f"results/{key}": results[key]})
    if results.get("config"):
        w.hparams(results["config"], {f"hparam/{k}": results[k] for k in
                                      ("queries_charged", "budget") if k in results})
    w.close()
