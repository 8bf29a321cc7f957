"""The concurrency rule of ``training.mesh``: no two programs with collectives are
ever in flight at once from different threads (a cross-thread collective
deadlock once hung the main job's evaluation), and a stalled run is stopped by
the watchdog instead of hanging.

(a) ``test_no_two_collective_programs_overlap``: every jitted program is
    recorded (thread, dispatch time, completion time, whether it spans several
    devices and so may hold collectives) while the toolkit's concurrent paths run
    (``tests/concurrency_workload.py``); two collective programs of different
    threads must never overlap. On the code before the fix the main job's
    evaluation dispatched two rows' feature extraction at once and this failed.
(b) ``test_concurrent_paths_stress``: the same paths, two rounds, in a
    subprocess with 2 devices and collective timeouts of 20 s: a deadlock makes
    XLA abort (non-zero exit) or the subprocess hang (caught by the wall-clock
    limit). (a) runs the paths with the conftest's 8 devices.
"""
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

class _Recorded:
    """A jitted function whose calls are recorded: (thread, dispatch time, completion
    time, whether the program spans several devices, i.e. may hold collectives)."""

    def __init__(self, jitted, log, lock):
        self._jitted, self._log, self._lock = jitted, log, lock

    def __getattr__(self, name):
        return getattr(self._jitted, name)

    def __call__(self, *args, **kwargs):
        if any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((args, kwargs))):
            return self._jitted(*args, **kwargs)  # called inside another traced program
        start = time.perf_counter()
        out = self._jitted(*args, **kwargs)
        jax.block_until_ready(out)
        end = time.perf_counter()
        devices = set()
        for leaf in jax.tree_util.tree_leaves((args, kwargs, out)):
            if isinstance(leaf, jax.Array):
                devices |= set(leaf.sharding.device_set)
        with self._lock:
            self._log.append((threading.get_ident(), start, end, len(devices) > 1))
        return out


@pytest.fixture
def recorded_programs(monkeypatch):
    log, lock = [], threading.Lock()
    real_jit = jax.jit

    def recording_jit(fun=None, *args, **kwargs):
        if fun is None:  # used as @jax.jit(...) with keyword arguments only
            return lambda f: recording_jit(f, *args, **kwargs)
        return _Recorded(real_jit(fun, *args, **kwargs), log, lock)

    monkeypatch.setattr(jax, "jit", recording_jit)
    monkeypatch.setenv("SSLSTEAL_EVAL_WORKERS", "2")
    return log


def _overlaps(log):
    coll = sorted((e for e in log if e[3]), key=lambda e: e[1])
    bad = []
    for i, (ti, si, ei, _) in enumerate(coll):
        for tj, sj, ej, _ in coll[i + 1:]:
            if sj >= ei:
                break
            if tj != ti:
                bad.append(((ti, si, ei), (tj, sj, ej)))
    return coll, bad


@pytest.fixture(scope="module")
def data():
    return workload.small_data(n_train=256, n_test=128)


@pytest.mark.slow
def test_no_two_collective_programs_overlap(recorded_programs, data):
    assert jax.device_count() >= 2
    victim, surrogate = workload.tiny_models()
    workload.main_job_evaluation(data, victim, surrogate, jax.random.key(0), probe_epochs=2)
    workload.api_and_features(data, victim, surrogate)
    workload.training_and_features(data, surrogate, victim)
    coll, bad = _overlaps(recorded_programs)
    threads = {e[0] for e in coll}
    # the workload really dispatched collective programs from several threads ...
    assert len(coll) >= 20 and len(threads) >= 3, (len(coll), len(threads))
    # ... and none of them were in flight at the same time as another thread's
    assert not bad, f"{len(bad)} overlapping collective programs of different threads, e.g. {bad[:3]}"


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
def test_concurrent_paths_stress():
    """Every concurrent path twice (the second round reuses the compiled programs, so it is
    nearly all concurrent dispatch), 2 devices, 20 s collective timeouts.

    One launch only: an 8-device, 1-round launch used to run too (67 s); the 8-device
    case is covered by ``test_no_two_collective_programs_overlap`` (the same paths in
    this process with the conftest's 8 devices, every collective program's dispatch and
    completion recorded and checked for cross-thread overlap: the cause of the deadlock
    itself, not only its symptom). Data and probes are the in-process test's sizes
    (256 / 128 images, 2 probe epochs): the concurrency is the same with fewer images."""
    devices, rounds = 2, 2
    script = os.path.join(os.path.dirname(__file__), "concurrency_workload.py")
    env = dict(os.environ, SSLSTEAL_EVAL_WORKERS="2")
    env.pop("XLA_FLAGS", None)  # the script sets its own (device count, 20 s collective timeouts)
    try:
        proc = subprocess.run([sys.executable, script, "--devices", str(devices), "--rounds",
                               str(rounds), "--timeout", "20", "--n-train", "256",
                               "--n-test", "128", "--probe-epochs", "2"], env=env,
                              capture_output=True, text=True, timeout=480)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"concurrent paths hung with {devices} devices (no exit in 480 s): "
                    f"{(e.stdout or '')[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert proc.stdout.count("done at") == rounds


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
