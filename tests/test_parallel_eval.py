"""Concurrent evaluation (evaluation.parallel) gives the numbers of sequential evaluation."""
import functools
import threading
import time

import jax
import numpy as np
import pytest

from sslsteal_jax.data.splits import ExperimentData
from sslsteal_jax.evaluation import parallel
from sslsteal_jax.evaluation.features import default_batch_size, extract_features, make_apply
from sslsteal_jax.evaluation.report import evaluate_features
from sslsteal_jax.host_devices import usable_cores
from sslsteal_jax.models import SurrogateModel, build_encoder
from sslsteal_jax.training import mesh as mesh_lib


def test_run_concurrently_keeps_order_and_overlaps():
    seen = []

    def job(i, delay):
        time.sleep(delay)
        seen.append((i, threading.get_ident()))
        return i * 10

    out = parallel.run_concurrently([functools.partial(job, 0, 0.3), functools.partial(job, 1, 0.0)],
                                    max_workers=2)
    assert out == [0, 10]
    assert [i for i, _ in seen] == [1, 0]  # the second job finished first: they ran side by side
    seen.clear()
    assert parallel.run_concurrently([functools.partial(job, 0, 0.1), functools.partial(job, 1, 0.0)],
                                     max_workers=1) == [0, 10]
    assert [i for i, _ in seen] == [0, 1] and {t for _, t in seen} == {threading.get_ident()}


def test_run_concurrently_reraises_and_validates(monkeypatch):
    def bad():
        raise KeyError("probe 2")
    with pytest.raises(KeyError, match="probe 2"):
        parallel.run_concurrently([lambda: 1, bad], max_workers=2)
    with pytest.raises(ValueError, match="max_workers=0"):
        parallel.run_concurrently([lambda: 1], max_workers=0)
    monkeypatch.setenv("SSLSTEAL_EVAL_WORKERS", "two")
    with pytest.raises(ValueError, match="SSLSTEAL_EVAL_WORKERS='two'"):
        parallel.default_workers()
    monkeypatch.setenv("SSLSTEAL_EVAL_WORKERS", "3")
    assert parallel.default_workers() == 3
    monkeypatch.delenv("SSLSTEAL_EVAL_WORKERS")
    monkeypatch.setenv("SSLSTEAL_DISTRIBUTED", "1")  # multi-host: cross-host gathers, one worker
    assert parallel.default_workers() == 1
    monkeypatch.setenv("SSLSTEAL_DISTRIBUTED", "0")
    assert parallel.default_workers() == min(parallel.DEFAULT_WORKERS, usable_cores())


def _data(rng, n_train=600, n_test=200, classes=4):
    ytr, yte = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    return ExperimentData(probe_train_x=None, probe_train_y=ytr, probe_test_x=None, probe_test_y=yte,
                          query_pool=None, victim_train=None, names={})


@pytest.mark.slow
def test_evaluate_features_concurrent_equals_sequential(monkeypatch):
    rng = np.random.default_rng(3)
    data = _data(rng)
    centers = rng.normal(size=(4, 12)) * 1.5
    tr = (centers[data.probe_train_y] + rng.normal(size=(600, 12))).astype(np.float32)
    te = (centers[data.probe_test_y] + rng.normal(size=(200, 12))).astype(np.float32)
    kw = dict(per_class=10, probe_epochs=5, select_probe=True)
    monkeypatch.setenv("SSLSTEAL_EVAL_WORKERS", "1")
    seq = evaluate_features("enc", tr, te, data, jax.random.key(5), **kw)
    monkeypatch.setenv("SSLSTEAL_EVAL_WORKERS", "2")
    par = evaluate_features("enc", tr, te, data, jax.random.key(5), **kw)
    assert par == seq
    assert 60.0 < seq["probe_full"] <= 100.0 and 25.0 < seq["knn"] <= 100.0


@pytest.mark.slow
def test_default_inference_batch_and_multi_output_apply():
    mesh8 = mesh_lib.data_mesh()
    assert default_batch_size(mesh8) == 128  # CPU: 128 images per call, a multiple of 8 devices
    mesh3 = mesh_lib.data_mesh(jax.devices()[:3])
    assert default_batch_size(mesh3) == 129
    model = SurrogateModel(build_encoder("resnet10", 4), 6)
    imgs = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    v = model.init(jax.random.key(0), imgs[:2] / 255.0)
    rep = extract_features(make_apply(model, v, 0), imgs)
    out = extract_features(make_apply(model, v, 1), imgs)
    both = extract_features(make_apply(model, v, (0, 1)), imgs, batch_size=8)
    np.testing.assert_allclose(both, np.concatenate([rep, out], 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        extract_features(make_apply(model, v, 0), imgs, batch_size=0)


def test_inference_program_has_no_collective():
    """The compiled feature-extraction program on a 2-device mesh contains no collective
    (all-gather, all-reduce, ...): its output stays batch-sharded and is assembled on the
    host. With a replicated output it ended in an all-gather, and that collective in
    flight beside other threads' probe programs deadlocked XLA:CPU (the main job's
    concurrent evaluation; ``benchmarks/eval_stress.py --threads 5`` stalled after 2
    extraction passes, 20 passes in 60 s without it)."""
    mesh = mesh_lib.data_mesh(jax.devices()[:2])
    enc = build_encoder("resnet10", width=4)
    v = enc.init(jax.random.key(0), np.zeros((2, 28, 28, 1), np.float32), train=False)
    apply = make_apply(enc, v, mesh=mesh)
    x = jax.device_put(np.zeros((4, 28, 28, 1), np.uint8), mesh_lib.batch_sharding(mesh))
    hlo = apply.jitted.lower(apply.variables, x).compile().as_text()
    found = [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute",
                           "reduce-scatter") if op in hlo]
    assert found == [], found
    assert "all-gather" in jax.jit(lambda a: a, out_shardings=mesh_lib.replicated(mesh)).lower(
        x).compile().as_text()  # the check can see an all-gather when there is one
    feats = extract_features(apply, np.zeros((5, 28, 28, 1), np.uint8))
    assert feats.shape == (5, enc.representation_dim) and feats.dtype == np.float32


def test_interrupt_stops_running_jobs_and_drops_queued_ones():
    """Ctrl-C while ``run_concurrently`` waits: the exception reaches the caller at once,
    running jobs end at their next ``raise_if_cancelled`` and queued jobs never start
    (before, the pool finished every queued evaluation job, minutes, before the process
    could exit, and then aborted)."""
    import os
    import signal

    class Interrupted(Exception):
        pass

    def on_signal(signum, frame):
        raise Interrupted()

    started, stopped = [], []

    def job(i):
        started.append(i)
        try:
            for _ in range(200):  # 10 s unless cancelled
                time.sleep(0.05)
                parallel.raise_if_cancelled()
        except parallel.Cancelled:
            stopped.append(i)
            raise
        return i

    old = signal.signal(signal.SIGALRM, on_signal)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t0 = time.time()
        with pytest.raises(Interrupted):
            parallel.run_concurrently([functools.partial(job, i) for i in range(6)], max_workers=2)
        deadline = time.time() + 5
        while len(stopped) < 2 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.time() - t0 < 3.0
    assert sorted(started) == [0, 1] and sorted(stopped) == [0, 1]  # 2-5 never started
    parallel.raise_if_cancelled()  # the caller's thread is not cancelled
    assert parallel.run_concurrently([lambda: 1, lambda: 2], max_workers=2) == [1, 2]
