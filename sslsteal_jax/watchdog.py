"""Stall watchdog: a run that stops making progress exits loudly instead of hanging.

Long-running code reports progress with :func:`progress` (the training loop
after every step, feature extraction after every batch, concurrent evaluation
jobs as they finish). :class:`Watchdog` runs a daemon thread; when no progress
has been reported for ``timeout_s`` seconds it

1. prints one clear message to stderr (how long, the last progress seen, how
   to resume),
2. dumps the Python stack of every thread (``faulthandler``) to stderr and to
   ``<report_dir>/stalled.<unix time>.txt``, so the place where the run
   hung can be read afterwards,
3. calls the registered ``on_stall`` callbacks (best effort, 30 s at most in
   all; they must only save host-side state: device arrays of a hung program
   can never be read),
4. exits the process with status :data:`EXIT_STALLED` (``os._exit``: a thread
   stuck in a compiled program cannot be interrupted any other way).

What is already on disk survives: training checkpoints (every 2 minutes of
wall time, ``training.loop``), finished budget-scan / defense-matrix cells
and results files are written atomically; rerunning the same command resumes
from them.

Why it exists: a deadlock of two threads' multi-device programs at an XLA:CPU
collective (see ``training.mesh``, concurrency rule) once left the main job at
0 % CPU for 20 minutes with no error, because the collective timeouts are
raised to an hour so that a slow, overloaded core does not abort a healthy
run (``host_devices.COLLECTIVE_TIMEOUT_FLAGS``). The watchdog turns any
future hang, whatever its cause, into a prompt, diagnosable exit.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from typing import Callable

# Exit status of a process stopped by the watchdog.
EXIT_STALLED = 3
# Default seconds without progress before the watchdog stops a command-line run
# (``--watchdog_seconds``; 0 disables). The longest gap between progress reports
# in the shipped experiments is a model's first compilation (well under a minute
# on CPU for ResNet-10/18) or one probe fit (seconds); preparing a large tfds
# dataset for the first time reports nothing and can take far longer: disable
# the watchdog (0) for such a first run.
DEFAULT_TIMEOUT_S = 900.0
# Seconds the watchdog's own wake-up may be late before it asks whether the process was
# stopped (SIGSTOP / Ctrl-Z, a paused VM) rather than stalled: then, with almost no CPU
# time used meanwhile, the stopped time does not count (a hang keeps the clock running).
SUSPENDED_AFTER_S = 30.0

_lock = threading.Lock()
_last = {"time": time.monotonic(), "what": "start", "count": 0}


def progress(what: str | None = None) -> None:
    """Report that the run is making progress (cheap: a lock and a clock read).

    Args:
      what: short label of what just progressed (e.g. ``"training step"``);
        None keeps the previous label.
    """
    with _lock:
        _last["time"] = time.monotonic()
        _last["count"] += 1
        if what is not None:
            _last["what"] = what


def _credit(seconds: float) -> None:
    """Move the last progress report ``seconds`` later (time the process was stopped)."""
    with _lock:
        _last["time"] = min(_last["time"] + seconds, time.monotonic())


def last_progress() -> tuple[float, str, int]:
    """``(seconds since the last progress report, its label, reports so far)``."""
    with _lock:
        return time.monotonic() - _last["time"], _last["what"], _last["count"]


class Watchdog:
    """Daemon thread that stops the process after ``timeout_s`` s without :func:`progress`.

    Args:
      timeout_s: seconds without progress before the process is stopped (> 0).
      report_dir: directory for the ``stalled.<time>.txt`` stack dump (None:
        stderr only); created if missing.
      on_stall: callables run (in order, best effort) before exiting.
      exit_fn: called with the exit status instead of ``os._exit`` (tests).
      poll_s: seconds between checks (default ``min(timeout_s / 4, 10)``).
    Raises:
      ValueError: ``timeout_s`` <= 0.

    Use as a context manager (``with Watchdog(900, workdir): run()``) or with
    :meth:`start` / :meth:`stop`. Entering it counts as progress.
    """

    def __init__(self, timeout_s: float, report_dir: str | None = None,
                 on_stall: tuple[Callable[[], None], ...] = (),
                 exit_fn: Callable[[int], None] | None = None, poll_s: float | None = None):
        if not timeout_s or float(timeout_s) <= 0:
            raise ValueError(f"watchdog timeout_s={timeout_s!r}; allowed: seconds > 0")
        self.timeout_s = float(timeout_s)
        self.report_dir = report_dir
        self.on_stall = list(on_stall)
        self._exit = exit_fn or os._exit
        self._poll = float(poll_s) if poll_s else min(self.timeout_s / 4.0, 10.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False
        self.report_path: str | None = None

    def start(self) -> "Watchdog":
        """Start watching (reports progress once, so the clock starts now)."""
        progress()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="sslsteal-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the run finished or failed on its own)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        while not self._stop.wait(self._poll):
            now, now_cpu = time.monotonic(), time.process_time()
            late = now - wall - self._poll
            if late > SUSPENDED_AFTER_S and now_cpu - cpu < 0.1 * (now - wall):
                # This thread woke late and the process used almost no CPU meanwhile: it
                # was stopped (Ctrl-Z / SIGSTOP, a paused VM), not stalled. That time is
                # not the run's: the clock restarts (found 2026-12-02: a run stopped for
                # 20 minutes and continued was ended as stalled at once).
                _credit(late)
            wall, cpu = now, now_cpu
            idle, what, _ = last_progress()
            if idle >= self.timeout_s:
                self._fire(idle, what)
                return

    def _fire(self, idle: float, what: str) -> None:
        self.fired = True
        msg = (f"error: no progress for {idle:.0f} s (watchdog limit {self.timeout_s:.0f} s; last "
               f"progress: {what}). The run looks hung; the Python stacks of all threads follow"
               + (f" and are saved in {self._report_file()}" if self.report_dir else "")
               + f". Exiting with status {EXIT_STALLED}; rerun the same command to resume from the "
               "last checkpoint (raise or disable the limit with --watchdog_seconds).")
        print(msg, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.report_dir:
            try:
                os.makedirs(self.report_dir, exist_ok=True)
                path = self._report_file()
                with open(path + ".tmp", "w") as f:
                    f.write(msg + "\n\n")
                    f.flush()
                    faulthandler.dump_traceback(file=f, all_threads=True)
                os.replace(path + ".tmp", path)
                self.report_path = path
            except OSError as e:  # the report must not stop the exit
                print(f"watchdog: could not write the stack report: {e}", file=sys.stderr)
        self._run_callbacks()
        sys.stderr.flush()
        self._exit(EXIT_STALLED)

    def _report_file(self) -> str:
        if not hasattr(self, "_stamp"):
            self._stamp = int(time.time())
        # one report per process of a multi-host run (each has its own stacks)
        proc = os.environ.get("JAX_PROCESS_ID") or os.environ.get("SLURM_PROCID") or ""
        return os.path.join(self.report_dir,
                            f"stalled.{self._stamp}{'.p' + proc if proc else ''}.txt")

    def _run_callbacks(self) -> None:
        def run_all():
            for cb in self.on_stall:
                try:
                    cb()
                except Exception as e:  # best effort: report and go on
                    print(f"watchdog: on_stall callback {cb!r} failed: {e}", file=sys.stderr)
        t = threading.Thread(target=run_all, daemon=True)
        t.start()
        t.join(timeout=30.0)
