"""Generic resumable training loop shared by victim (SimCLR) and surrogate training.

One jitted step per batch; the data order is a deterministic function of
(seed, epoch), step keys are ``fold_in(key, step)``, so a run resumed from a
checkpoint produces the same numbers as an uninterrupted run. Checkpoints
(orbax) are written every ``checkpoint_every`` steps, every ``checkpoint_seconds``
of wall time, at the end, and when the
process receives SIGTERM or Ctrl-C (then KeyboardInterrupt is re-raised); the
processes of a multi-process job first agree on the step to stop at
(``training.stop``), so their collective save cannot wait on each other.
Each checkpoint's JSON metadata also holds the metrics window
(``METRICS_WINDOW_KEY``: the last logged means and the per-step metrics since),
so the final metrics of a resumed run equal an uninterrupted run's.
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sslsteal_jax import watchdog
from sslsteal_jax.data.order import epoch_batches  # noqa: F401  (the data order; re-exported)
from sslsteal_jax.training import checkpoint as ckpt
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training import optim, summaries
from sslsteal_jax.training.state import TrainState
from sslsteal_jax.training.stop import AgreedStop, ForcedStop, StopAgreement


#: Optimizer steps the loop lets run ahead of the host: before dispatching step
#: s it waits until step ``s - MAX_STEPS_IN_FLIGHT`` has finished. Before this
#: bound the loop let JAX dispatch asynchronously without limit (nothing waited
#: until the next log line, 50 steps on), so each XLA:CPU device's admission
#: semaphore (at most 32 programs in flight per device, "pacing, not correctness"
#: in XLA's source) was full most of the time. In the two stalls of the claim-5
#: run (2026-12-01, 2 CPU devices, a loaded host) one device's launch of a step
#: was blocked on that semaphore while the other device's part waited at an
#: all-to-all for it. That this wait is the cause is a hypothesis (BUILD.md,
#: "Stall watchdog"; ``benchmarks/dispatch_depth.py`` counts hangs per depth);
#: the bound removes that state at no measurable cost: two steps in flight keep
#: the devices busy while the host prepares the next batch (2026-12-01, 2 CPU
#: devices: 312 images/s at depth 2, 309 unbounded, run-to-run spread +-10 %;
#: benchmarks/README.md).
#: The numbers do not change, only when steps are dispatched. ``step_fn`` must
#: return at least one metric (the loop waits on the metrics).
MAX_STEPS_IN_FLIGHT = 2

#: Key of the checkpoint metadata holding the loop's metrics window:
#: ``{"logged_at": step of the last log line, "pending": per-step metrics of the
#: steps after it (host floats, or lists of K floats for stacked members),
#: "last": the means written at ``logged_at``}``.
METRICS_WINDOW_KEY = "metrics_window"


def process_batch_indices(n: int, batch_size: int, seed: int, step: int, mesh) -> np.ndarray:
    """Indices of the examples this process reads for optimizer ``step``: its rows
    (``mesh.process_rows``: a contiguous block of ``batch_size / process_count``)
    of :func:`epoch_batches`. The processes' blocks are disjoint and together
    form the global batch, so over an epoch every example (but the dropped
    incomplete last batch) is read exactly once, by one host. Returns int64
    ``(batch_size / process_count,)`` (the whole batch with one process)."""
    return epoch_batches(n, batch_size, seed, step)[mesh_lib.process_rows(batch_size, mesh)]


def _items(state: TrainState) -> dict:
    # ``TrainState.create`` sets ``step`` to the Python int 0; store / expect it as an
    # int32 array so a fresh state's tree matches a checkpoint's (resume needs this).
    return {"model": {"params": state.params, "batch_stats": state.batch_stats},
            "opt": {"opt_state": state.opt_state, "step": jnp.asarray(state.step, jnp.int32)}}


class StepsInFlight:
    """Bounded asynchronous dispatch: at most ``depth`` dispatched steps unfinished.

    The loop calls :meth:`wait_for_room` before dispatching a step and
    :meth:`add` with the step's outputs right after; the wait blocks
    (``jax.block_until_ready``) on the oldest outputs while ``depth`` steps are
    held. See :data:`MAX_STEPS_IN_FLIGHT` for why.

    Args:
      depth: int >= 1, steps allowed in flight.
    Raises:
      ValueError: ``depth`` < 1.
    """

    def __init__(self, depth: int):
        if int(depth) < 1:
            raise ValueError(f"depth={depth!r}; allowed: an integer >= 1")
        self.depth = int(depth)
        self._outputs = collections.deque()

    def wait_for_room(self) -> None:
        """Block until fewer than ``depth`` of the added steps may still be running."""
        while len(self._outputs) >= self.depth:
            _block(self._outputs.popleft())

    def add(self, outputs) -> None:
        """Hold a just-dispatched step's outputs (any pytree of arrays)."""
        self._outputs.append(outputs)


def _block(tree) -> None:
    """``jax.block_until_ready(tree)`` (one name, so tests can watch the waits)."""
    jax.block_until_ready(tree)


def restore_state(state: TrainState, ckpt_dir: str) -> tuple[TrainState, bool, dict | None]:
    """Restore ``state`` from the latest checkpoint in ``ckpt_dir`` if one exists.

    Returns ``(state, resumed, meta)``: ``meta`` is the checkpoint's JSON
    metadata (None when nothing was resumed). Raises ``CheckpointMismatchError``
    if the checkpoint belongs to another model."""
    mngr = ckpt.manager(ckpt_dir)
    if mngr.latest_step() is None:
        return state, False, None
    items, meta = ckpt.restore(mngr, _items(state))
    return state.replace(params=items["model"]["params"], batch_stats=items["model"]["batch_stats"],
                         opt_state=items["opt"]["opt_state"], step=items["opt"]["step"]), True, meta


def _host_metrics_list(ms) -> list[dict]:
    """Per-step metrics as JSON-able host values (float32 -> Python float is exact)."""
    return [{name: np.asarray(v).tolist() for name, v in m.items()} for m in ms]


def _restored_window(meta: dict | None, step: int, desc: str) -> tuple[int, list, dict]:
    """``(logged_at, pending, last)`` of a checkpoint's metrics window at ``step``.

    A checkpoint without a window (written before windows existed) or with one
    that does not end at ``step`` gives ``(step, [], {})``: the final metrics
    then cover only the steps run after the resume (a message says so).
    """
    win = (meta or {}).get(METRICS_WINDOW_KEY)
    if win and int(win["logged_at"]) + len(win["pending"]) == step:
        return int(win["logged_at"]), list(win["pending"]), dict(win["last"])
    if meta is not None:
        print(f"{desc}: the checkpoint at step {step} holds no metrics window; final metrics "
              "cover the steps after the resume only")
    return step, [], {}


def run_training(state: TrainState, step_fn: Callable, arrays: Sequence, *,
                 batch_size: int, total_steps: int, key: jax.Array, seed,
                 ckpt_dir: str | None, meta: dict, desc: str,
                 checkpoint_every: int = 500, log_every: int = 50,
                 log_path: str | None = None, progress: bool = True, members: int = 0,
                 checkpoint_seconds: float = 120.0):
    """Run ``step_fn`` for ``total_steps`` steps over shuffled batches of ``arrays``.

    Everything after ``arrays`` is keyword-only.

    Args:
      state: initial TrainState (overwritten by the checkpoint in ``ckpt_dir`` if any).
      step_fn: ``(state, *batch, key) -> (state, metrics dict of scalars)``, at
        least one metric (the loop waits on them, :data:`MAX_STEPS_IN_FLIGHT`); it is
        jitted here for the ("data",) mesh over all devices
        (``mesh.compile_step``: state and key replicated, batch split over
        devices, state donated), so the same call trains data-parallel on 1
        CPU, N devices or a multi-host pod.
      arrays: host arrays with equal leading dimension N; each step receives
        ``[a[idx] for a in arrays]`` with ``idx = epoch_batches(N, batch_size, seed, step)``,
        sharded over the ("data",) mesh axis (each process keeps its own rows).
      batch_size: examples per step (divisible by the number of devices).
      total_steps: optimizer steps to reach.
      key: PRNG key; step s uses ``fold_in(key, s)``.
      ckpt_dir: checkpoint directory or None (no checkpoints, no resume).
      meta: JSON metadata stored with each checkpoint (the loop adds ``step``
        and ``METRICS_WINDOW_KEY``).
      desc: progress-bar label.
      checkpoint_seconds: also checkpoint when this many seconds of wall time
        have passed since the last checkpoint (a hard kill, e.g. an XLA abort
        or the OOM killer, then loses at most this much work; 0 disables).
      log_path: JSONL file receiving ``{"step", "epoch", <metrics>}`` every
        ``log_every`` steps; on resume, lines past the restored step (written
        after the last checkpoint of an interrupted run) are dropped first.
        The same steps go to TensorBoard events in ``tensorboard/`` beside it
        (``training.summaries``: ``train/<metric>``, ``train/learning_rate``,
        ``train/examples_per_second``; at the end the flattened ``meta["config"]``
        as hyperparameters with the final metrics). Process 0 writes both.
      members: 0 (one model, as above) or K >= 1 stacked models trained by
        one compiled step (``training.vmap.make_vmapped_steal_step``): then
        ``state`` has a leading axis K on every leaf, ``arrays`` is a
        sequence of K per-member sequences of host arrays (member k's own
        N_k examples; the j-th arrays of all members agree in trailing
        shape and dtype), ``seed`` a sequence of K ints, ``key`` a key array
        ``(K,)``. Member k's batch at step s is exactly the batch a
        single-model run with ``(arrays[k], seed[k], key[k])`` would use
        (indices ``epoch_batches(N_k, batch_size, seed[k], s)``, key
        ``fold_in(key[k], s)``), stacked to ``(K, batch_size, ...)`` with the
        batch axis split over "data". Metrics are per member (lists of K
        floats in the log and ``final_metrics``); epochs in the log count
        over the smallest member. Checkpoints hold the stacked state.
    Returns:
      ``(state, summary)`` with summary keys ``steps``, ``wall_seconds``,
      ``examples_per_second`` (all members together), ``final_metrics``
      (means over the last log window: the steps after the last multiple of
      ``log_every`` below ``total_steps``; after a resume, also of a run that
      was already finished, equal to an uninterrupted run's), ``resumed_from``.
    Raises:
      ValueError: inconsistent array lengths, batch size, or member counts; a
        ``step_fn`` that returns no metrics.
      KeyboardInterrupt: on Ctrl-C / SIGTERM, after saving a checkpoint (with several
        processes: at the step they agree on, ``training.stop``; a second signal stops
        at once without one, ``training.stop.ForcedStop``).
      RuntimeError: the processes could not agree on a stop step (``training.stop``).
    """
    k = int(members)
    groups = [arrays] if not k else list(arrays)
    seeds = [seed] if not k else [int(x) for x in seed]
    if k and not (len(groups) == len(seeds) == k == int(np.shape(key)[0])):
        raise ValueError(f"members={k} needs {k} array groups, seeds and keys, got "
                         f"{len(groups)}, {len(seeds)} and key shape {np.shape(key)}")
    sizes = [len(g[0]) for g in groups]
    for g in groups:
        if any(len(a) != len(g[0]) for a in g):
            raise ValueError(f"arrays have different lengths: {[len(a) for a in g]}")
    n = min(sizes)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, number of examples={n}]")
    mesh = mesh_lib.data_mesh()
    mesh_lib.check_batch_divisible(batch_size, mesh)
    mngr = ckpt.manager(ckpt_dir) if ckpt_dir else None
    resumed_from = 0
    # A fresh TrainState's step is a weak-typed Python int, a restored one a strict
    # int32 array: make them alike so a resumed run reuses the same compiled step.
    state = state.replace(step=jnp.asarray(state.step, jnp.int32))
    ckpt_meta = None
    if ckpt_dir:
        state, resumed, ckpt_meta = restore_state(state, ckpt_dir)
        if resumed:
            resumed_from = _step_of(state)
            print(f"{desc}: resumed from checkpoint at step {resumed_from} of {total_steps}")
    if log_path and jax.process_index() == 0:
        _truncate_log(log_path, resumed_from)
    tb = summaries.MetricWriter(
        os.path.join(os.path.dirname(os.path.abspath(log_path)), summaries.TB_DIR)
        if log_path else None, purge_step=resumed_from + 1 if resumed_from else None)
    lr_fn = optim.learning_rate_fn(state.tx)
    # Metrics window: per-step metrics since the last log line (acc) and the means
    # written there (final); restored with the state so a resume continues it.
    logged_at, acc, final = _restored_window(ckpt_meta, resumed_from, desc)
    state = mesh_lib.replicate(state, mesh)
    key = mesh_lib.replicate(key, mesh)
    jstep = mesh_lib.compile_step(step_fn, mesh, len(groups[0]), leading_axes=int(k > 0))
    fold_in = mesh_lib.compile_fold_in(mesh, batched=k > 0)
    steps_per_epoch = n // batch_size

    def host_batch(step):
        # this process's rows of the global batch only (each host reads a disjoint shard)
        parts = [[a[process_batch_indices(len(g[0]), batch_size, sd, step, mesh)] for a in g]
                 for g, sd in zip(groups, seeds)]
        return parts[0] if not k else [np.stack(xs) for xs in zip(*parts)]

    def host_metrics(ms):
        out = {name: np.mean([np.asarray(m[name], np.float64) for m in ms], axis=0)
               for name in ms[0]}
        return {name: v.tolist() if k else float(v) for name, v in out.items()}

    window = {"step": resumed_from, "time": time.time()}  # start of the images/s window

    def log_line(step):
        if log_path and jax.process_index() == 0:  # one log line per step on a pod
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "epoch": step / steps_per_epoch,
                                    **final}) + "\n")
        if tb.active:
            now = time.time()
            extra = {"train/epoch": step / steps_per_epoch}
            if step > window["step"]:
                extra["train/examples_per_second"] = (batch_size * max(k, 1) * (step - window["step"])
                                                      / max(now - window["time"], 1e-9))
            if lr_fn is not None and step > 0:
                extra["train/learning_rate"] = float(lr_fn(step - 1))
            tb.scalars(step, {**{f"train/{name}": v for name, v in final.items()}, **extra})
            tb.flush()  # on disk like the JSONL line: a hard kill loses no logged step
            window.update(step=step, time=now)

    if acc and (resumed_from % log_every == 0 or resumed_from == total_steps):
        # Interrupted between a step and its log line: write the line now.
        final, acc, logged_at = host_metrics(acc), [], resumed_from
        log_line(resumed_from)

    def save(step):
        if mngr is not None:
            window = {"logged_at": int(logged_at), "pending": _host_metrics_list(acc),
                      "last": final}
            ckpt.save(mngr, step, _items(state),
                      dict(meta, step=int(step), **{METRICS_WINDOW_KEY: window}))

    # SIGTERM / Ctrl-C: one process stops at once; the processes of a pod agree on a step
    stop = StopAgreement(lead=MAX_STEPS_IN_FLIGHT + 2)
    t0 = time.time()
    last_save = t0
    step = _step_of(state)
    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not progress or jax.process_index() != 0, unit="step",
               mininterval=2.0, leave=False)
    # Multi-device steps hold the collective guard for the whole run (training.mesh,
    # concurrency rule): no other thread's sharded program can interleave with them.
    inflight = StepsInFlight(MAX_STEPS_IN_FLIGHT)
    with mesh_lib.collective_section(mesh), stop:
        try:
            while step < total_steps:
                local = host_batch(step)  # host work first: it overlaps the steps in flight
                inflight.wait_for_room()
                batch = mesh_lib.place_local_rows(local, batch_size, mesh, leading_axes=int(k > 0))
                state, m = jstep(state, *batch, fold_in(key, step))
                acc.append(m)  # right after the step: the window always matches the state
                if not m:
                    raise ValueError(f"{desc}: step_fn returned no metrics; it must return at "
                                     "least one (the loop waits on them to bound dispatch)")
                inflight.add(m)
                step += 1
                watchdog.progress(desc)
                if step % log_every == 0 or step == total_steps:
                    final = host_metrics(acc)
                    acc, logged_at = [], step
                    log_line(step)
                    bar.set_postfix({name: f"{np.mean(v):.4f}" for name, v in final.items()})
                bar.update(1)
                due = step % checkpoint_every == 0 or (
                    checkpoint_seconds and time.time() - last_save >= checkpoint_seconds)
                if mngr is not None and due and step < total_steps:
                    save(step)
                    last_save = time.time()
                if stop.check(step):  # after this step's own save: see training.stop
                    raise AgreedStop()
            if mngr is not None and (mngr.latest_step() or -1) < total_steps:
                save(total_steps)
            if resumed_from < total_steps:  # trained here: the run's entry in the HPARAMS tab
                tb.hparams(dict(meta.get("config") or {}, steps=total_steps,
                                batch_size=batch_size, members=k),
                           {f"hparam/final_{name}": v for name, v in final.items()})
            if stop.check_end(step):  # a process was interrupted: all stop after the last step
                raise AgreedStop()
        except ForcedStop:
            bar.close()
            last = mngr.latest_step() if mngr is not None else None
            print(f"{desc}: stopped at once at step {step} without saving (second interrupt); "
                  f"its last checkpoint is {'none' if last is None else f'at step {last}'}")
            raise
        except KeyboardInterrupt:
            bar.close()
            at = _step_of(state)
            if mngr is not None and mngr.latest_step() != at:
                save(at)
            print(f"{desc}: interrupted, checkpoint saved at step {at}; rerun to resume")
            raise KeyboardInterrupt
        finally:
            _wait_quietly(state)  # nothing of ours still runs on a device when the guard is let go
            bar.close()
            tb.close()
    wall = time.time() - t0
    return state, {"steps": total_steps, "wall_seconds": wall, "resumed_from": resumed_from,
                   "examples_per_second": batch_size * max(k, 1) * (total_steps - resumed_from)
                   / max(wall, 1e-9),
                   "final_metrics": final}


def _truncate_log(path: str, step: int) -> None:
    """Keep only the JSONL lines of ``path`` with ``"step" <= step`` (atomic rewrite)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def _wait_quietly(tree) -> None:
    """``jax.block_until_ready(tree)``, ignoring arrays already deleted (donated) by an
    interrupted step: their successor is what the devices run."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.block_until_ready()


def _step_of(state) -> int:
    """Optimizer steps taken (the first member's of a stacked state: all members step together)."""
    return int(np.asarray(state.step).reshape(-1)[0])
