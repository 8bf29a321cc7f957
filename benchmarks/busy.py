"""Spinning processes that keep the CPU busy beside a benchmark (``--busy N``).

Used by ``eval_stress.py`` and ``dispatch_depth.py``: hangs under load are
what they look for.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os


def _spin() -> None:
    parent = os.getppid()
    while os.getppid() == parent:  # ends when the benchmark dies, however it dies
        for _ in range(100000):
            pass


@contextlib.contextmanager
def spinning(n: int):
    """Run ``n`` >= 0 processes spinning at 100 % of a core for the block's duration.

    They are terminated when the block ends and exit by themselves if the
    benchmark process dies first (SIGKILL, an uncaught SIGTERM).
    """
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(int(n))]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
