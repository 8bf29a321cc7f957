"""The concurrency rule of ``training.mesh``: no two programs with collectives are
ever in flight at once from different threads (a cross-thread collective
deadlock once hung the main job's evaluation), and a stalled run is stopped by
the watchdog instead of hanging.

``test_concurrent_paths_no_overlap_no_deadlock`` runs the toolkit's concurrent paths
(``tests/concurrency_workload.py``) twice in a subprocess with 2 devices and
collective timeouts of 20 s, every jitted program of the first round recorded
(thread, dispatch time, completion time, whether it spans several devices and so
may hold collectives), the second dispatched as usual:

* two collective programs of different threads must never overlap (the cause of
  the deadlock itself: on the code before the fix the main job's evaluation
  dispatched two rows' feature extraction at once and this check failed);
* a deadlock makes XLA abort (non-zero exit) or the subprocess hang (caught by the
  wall-clock limit): the symptom.
"""
import json
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import concurrency_workload as workload
from sslsteal_jax import watchdog
from sslsteal_jax.training import mesh as mesh_lib


@pytest.mark.slow
def test_single_device_programs_do_not_wait_for_the_guard():
    """The rule costs no concurrency where there are no collectives: a linear probe
    (single-device programs) finishes while another thread holds the guard, so one
    row's probes still overlap another row's feature extraction."""
    from sslsteal_jax.evaluation.probe import linear_probe
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)).astype(np.float32), rng.integers(0, 3, 200)
    done = []
    with mesh_lib.COLLECTIVES.hold():
        t = threading.Thread(target=lambda: done.append(
            linear_probe(x, y, x, y, jax.random.key(0), epochs=2)))
        t.start()
        t.join(120)
        assert done and 0.0 <= done[0] <= 100.0


def test_guard_is_reentrant_and_blocks_until_done():
    guard = mesh_lib.CollectiveGuard()
    inner = []
    with guard.hold():
        assert guard.held()
        out = guard.call(lambda: jax.numpy.ones(3) * 2)  # nested: no deadlock on itself
        inner.append(out)
    assert not guard.held()
    np.testing.assert_array_equal(np.asarray(inner[0]), [2, 2, 2])
    # another thread waits while this one holds the guard
    order = []
    with guard.hold():
        t = threading.Thread(target=lambda: guard.call(lambda: order.append("other")))
        t.start()
        time.sleep(0.2)
        order.append("holder")
    t.join(5)
    assert order == ["holder", "other"]


@pytest.mark.slow
def test_concurrent_paths_no_overlap_no_deadlock():
    """Every concurrent path twice, 2 devices, 20 s collective timeouts. Round 1: every
    program's dispatch and completion recorded (each waited for in its thread) and
    checked for cross-thread overlap of collective programs. Round 2, unrecorded, reuses
    the compiled programs, so it is nearly all concurrent, asynchronous dispatch: the
    deadlock stress. Data and probes are small (256 / 128 images, 2 probe epochs): the
    concurrency is the same with fewer images.

    One launch for both checks: the overlap check used to run a third time in this
    process with the conftest's 8 devices (37 s of compiles of the same programs for 8
    devices); the rule does not depend on the device count, only on programs spanning
    more than one."""
    devices, rounds = 2, 2
    script = os.path.join(os.path.dirname(__file__), "concurrency_workload.py")
    env = dict(os.environ, SSLSTEAL_EVAL_WORKERS="2")
    env.pop("XLA_FLAGS", None)  # the script sets its own (device count, 20 s collective timeouts)
    try:
        proc = subprocess.run([sys.executable, script, "--devices", str(devices), "--rounds",
                               str(rounds), "--timeout", "20", "--n-train", "256",
                               "--n-test", "128", "--probe-epochs", "2", "--record"], env=env,
                              capture_output=True, text=True, timeout=480)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"concurrent paths hung with {devices} devices (no exit in 480 s): "
                    f"{(e.stdout or '')[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ok" and proc.stdout.count("done at") == rounds, proc.stdout[-2000:]
    rec = json.loads(lines[-2].removeprefix("recorded "))
    # the workload really dispatched collective programs from several threads ...
    assert rec["collective_programs"] >= 20 and rec["threads"] >= 3, rec
    # ... and none of them were in flight at the same time as another thread's
    assert rec["overlaps"] == 0, (f"{rec['overlaps']} overlapping collective programs of "
                                  f"different threads, e.g. {rec['examples']}")


def test_watchdog_stops_a_stalled_run(tmp_path, capfd):
    exits = []
    saved = []
    dog = watchdog.Watchdog(0.4, str(tmp_path), on_stall=(lambda: saved.append(1),),
                            exit_fn=exits.append, poll_s=0.05)
    with dog:
        for _ in range(5):  # progress keeps it quiet
            time.sleep(0.1)
            watchdog.progress("working")
        assert not dog.fired
        time.sleep(1.0)  # no progress: it fires once
    assert dog.fired and exits == [watchdog.EXIT_STALLED] and saved == [1]
    err = capfd.readouterr().err
    assert "no progress for" in err and "last progress: working" in err
    assert "test_watchdog_stops_a_stalled_run" in err  # the stacks of all threads
    text = open(dog.report_path).read()
    assert dog.report_path.startswith(str(tmp_path)) and "Thread" in text
    with pytest.raises(ValueError, match="timeout_s=0"):
        watchdog.Watchdog(0)


def test_watchdog_exits_a_hung_process(tmp_path):
    """A real process that hangs (a thread blocked forever) exits with status 3."""
    code = ("import threading, time; from sslsteal_jax import watchdog\n"
            f"watchdog.Watchdog(1.0, {str(tmp_path)!r}, poll_s=0.1).start()\n"
            "threading.Event().wait()\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=workload.ROOT)
    assert proc.returncode == watchdog.EXIT_STALLED
    assert "no progress for" in proc.stderr and time.time() - t0 < 30
    assert len(list(tmp_path.glob("stalled.*.txt"))) == 1


def test_watchdog_does_not_count_time_the_process_was_stopped(tmp_path):
    """Ctrl-Z / SIGSTOP for longer than the limit, then SIGCONT: the run goes on (the
    watchdog woke late with no CPU used: stopped, not stalled). Before, a run stopped
    for 20 minutes was ended as stalled the moment it continued (2026-12-02)."""
    import signal
    code = ("import time; from sslsteal_jax import watchdog\n"
            "watchdog.SUSPENDED_AFTER_S = 1.0\n"
            f"watchdog.Watchdog(2.0, {str(tmp_path)!r}, poll_s=0.2).start()\n"
            "print('ready', flush=True)\n"
            "for _ in range(4):\n"
            "    time.sleep(1.5)\n"
            "    watchdog.progress('tick')\n"
            "print('done', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=workload.ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5.0)  # 2.5x the watchdog's limit
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.strip() == "done", err[-2000:]
    assert not list(tmp_path.glob("stalled.*.txt"))

