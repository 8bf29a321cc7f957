"""sslsteal_jax.interrupts: a signal never turns into an exception the garbage collector
discards, and main.entry counts an interrupted import as an interrupt."""
import gc
import signal
import sys
import time

import pytest

from sslsteal_jax import interrupts


def test_interrupt_landing_in_a_gc_callback_is_sent_again():
    """Inside a ``gc.callbacks`` function (where JAX's ``_xla_gc_callback`` runs) the
    handler does not raise (the collector would print and discard it: 4 of 5 early
    signals were lost that way, 2026-12-02) but sends the signal again; outside, it raises."""
    got = []

    def callback(phase, info):
        if phase == "start" and not got:
            got.append("in callback")
            interrupts.raise_interrupt(signal.SIGUSR1, sys._getframe())  # must not raise

    old = signal.signal(signal.SIGUSR1, lambda s, f: got.append("sent again"))
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    try:
        deadline = time.time() + 10
        while "sent again" not in got and time.time() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == ["in callback", "sent again"]
    assert interrupts.in_gc_callback(sys._getframe()) is False
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_interrupt(signal.SIGUSR1, sys._getframe())
    with pytest.raises(KeyboardInterrupt):
        interrupts.interrupt_handler(signal.SIGTERM, sys._getframe())


def test_an_import_interrupted_by_ctrl_c_counts_as_an_interrupt():
    """numpy turns a KeyboardInterrupt during its import into an ImportError (a new
    user's Ctrl-C 0.2 s after the start ended with exit 1 and a 120-line traceback)."""
    from sslsteal_jax.main import _interrupted
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as k:
            raise ImportError("numpy._core.multiarray failed to import") from k
    except ImportError as e:
        assert _interrupted(e)
    assert not _interrupted(ImportError("no module named foo"))
    assert not _interrupted(ValueError("x"))
