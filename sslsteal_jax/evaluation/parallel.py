"""Run independent evaluation jobs (probe fits, kNN) concurrently in threads.

A linear probe is a long chain of tiny XLA programs (per step a 512 x D x 10
matmul and an Adam update, about 0.5 ms of mostly per-op overhead at D = 64):
it keeps one CPU core busy and leaves the others idle. JAX releases the GIL
while a compiled program runs, so independent fits started from separate
threads run side by side. Measured on the 2-core dev machine: two 60-epoch
probes on 54k x 64 random features (the main job's representations are
128-d) take 3.8 s concurrently vs 5.9 s one after the other, with
bitwise-identical weights (each job's numbers depend only on its own inputs
and PRNG key, never on scheduling).

Concurrency rule (``training.mesh``): jobs may run single-device programs
(probes, kNN) freely; programs that span several devices (feature
extraction, API answers, training steps) go through
``training.mesh.COLLECTIVES`` (``extract_features`` and the training loop
do this themselves), so two jobs never wait for each other at a collective.
A job that calls a multi-device jitted function directly must wrap the call
in ``training.mesh.run_collective``. A program with a collective must also
not be in flight beside other threads' programs at all: the feature-extraction
program therefore has none on one host (``training.mesh.compile_apply``), and
a multi-host run, whose extraction gathers across hosts, evaluates with one
worker (:func:`default_workers`).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from sslsteal_jax import watchdog
from sslsteal_jax.host_devices import usable_cores

# Threads used by ``run_concurrently`` when ``max_workers`` is None. Environment
# override: SSLSTEAL_EVAL_WORKERS (1 = run jobs one after the other).
DEFAULT_WORKERS = 2


def default_workers() -> int:
    """``$SSLSTEAL_EVAL_WORKERS`` if set; else 1 on a multi-host run
    (``$SSLSTEAL_DISTRIBUTED`` set, ``cluster.distributed_mode``); else
    ``min(DEFAULT_WORKERS, usable cores)`` (``host_devices.usable_cores``: the CPU
    affinity mask, as for the device count).

    Why one worker on a multi-host run: every extraction batch there ends in a
    cross-host gather (``training.mesh.to_host``, a collective), and a collective
    in flight beside another thread's programs on the same devices can deadlock
    XLA:CPU (``training.mesh.compile_apply``). On one host the extraction program
    has no collective and the probes overlap it safely.

    Raises:
      ValueError: the environment variable is not an integer >= 1.
    """
    raw = os.environ.get("SSLSTEAL_EVAL_WORKERS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"SSLSTEAL_EVAL_WORKERS={raw!r}; allowed: an integer >= 1")
        return int(raw)
    from sslsteal_jax.cluster import distributed_mode
    if distributed_mode() is not None:
        return 1
    return max(1, min(DEFAULT_WORKERS, usable_cores()))


class Cancelled(Exception):
    """Raised inside a job of :func:`run_concurrently` whose caller stopped (Ctrl-C,
    SIGTERM, another job's error): the job ends at its next :func:`raise_if_cancelled`."""


_local = threading.local()


def raise_if_cancelled() -> None:
    """Raise :class:`Cancelled` when the calling thread runs a job of a
    :func:`run_concurrently` call (or of one nested in it) that has been cancelled;
    nothing otherwise. Long loops inside jobs call it once per step
    (``evaluation.features.extract_features``: once per batch)."""
    for event in getattr(_local, "cancel", ()):
        if event.is_set():
            raise Cancelled("evaluation stopped")


def run_concurrently(jobs: Sequence[Callable[[], object]], max_workers: int | None = None) -> list:
    """Call every zero-argument function in ``jobs``, up to ``max_workers`` at a time.

    Args:
      jobs: callables taking no arguments (e.g. ``functools.partial(linear_probe, ...)``);
        they must not depend on each other's side effects.
      max_workers: threads (None: :func:`default_workers`); 1 runs the jobs in order
        in the calling thread.
    Returns:
      the jobs' return values, in the order of ``jobs``.
    Raises:
      ValueError: ``max_workers`` < 1. With several threads, the first job (in
        ``jobs`` order) that raised re-raises its exception here after all jobs
        have finished; with one, the first exception stops the jobs after it.
      KeyboardInterrupt (or any exception raised in the waiting thread): jobs not yet
        started are dropped, running ones stop at their next
        :func:`raise_if_cancelled`, and the exception propagates at once, so Ctrl-C
        during evaluation ends the run in seconds instead of after every queued job.
    """
    workers = default_workers() if max_workers is None else int(max_workers)
    if workers < 1:
        raise ValueError(f"max_workers={max_workers}; allowed: an integer >= 1 or None")
    cancel = threading.Event()
    chain = (*getattr(_local, "cancel", ()), cancel)  # a nested call stops with its parent

    def tracked(job):
        outer = getattr(_local, "cancel", ())  # restored: with one worker this is the caller
        _local.cancel = chain
        try:
            raise_if_cancelled()
            out = job()
        finally:
            _local.cancel = outer
        watchdog.progress("evaluation job")
        return out

    if workers == 1 or len(jobs) <= 1:
        return [tracked(job) for job in jobs]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)))
    try:
        futures = [pool.submit(tracked, job) for job in jobs]
        for f in futures:  # wait here (interruptible), not in the pool's shutdown
            f.exception()
    except BaseException:
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]
