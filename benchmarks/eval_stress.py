"""Back-to-back main-job evaluations on a busy machine: hangs, failures and wall time.

    python benchmarks/eval_stress.py --runs 20 --busy 1 --out benchmarks/results/eval_stress.json

Each run is a fresh process set up like ``python -m sslsteal_jax.main`` (one
XLA CPU device per core, the CLI's collective timeouts) that evaluates the
main job's four result rows on real Fashion-MNIST, two rows in flight
(``pipeline.evaluate.evaluate_rows``): the shipped victim
(``victims/fashion_mnist_resnet10_w16_ft6``, fidelity to itself), the
stage-1 victim standing in for the surrogate (same architecture, fidelity to
the victim), an independent random encoder and raw pixels; probe train = the
first ``--probe-train`` train images, probe test = the last ``--probe-test``
test images (the main job: 60,000 and 5,000).
``--busy N`` keeps N extra processes spinning on the CPU throughout. A run
that makes no progress for ``--watchdog`` seconds is stopped by the watchdog
(exit status 3) and counted as a hang; ``--limit`` is a hard wall-clock cap.
Writes ``{"runs": [{"rc", "seconds", "evaluation_seconds"}], "hangs", ...}``.

``--threads N`` instead stresses the concurrency rule directly, in one process for
``--seconds`` seconds: one thread extracts features of 1,024 random images with the
shipped victim on the CPU mesh, again and again (multi-device programs), while N
threads fit linear probes and kNN on random features (single-device programs), the
mix ``evaluation.parallel`` produces when two rows and their probes are in flight.
It prints how many extraction passes and probe fits finished; a run with no
extraction pass for ``--stall`` seconds (default 60) is a hang (exit status 3). With the inference program
ending in an all-gather (its output replicated: before ``training.mesh.compile_apply``
kept it batch-sharded) ``--threads 5`` hung within seconds on the 2-core machine
(0 extraction passes in 120 s); without it, 17 passes and 940 probe fits in 240 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.busy import spinning  # noqa: E402


def one_run(probe_train: int, probe_test: int, watchdog_s: float) -> None:
    """Child process: one main-job evaluation; prints one JSON line."""
    from sslsteal_jax.host_devices import configure_cpu_devices
    configure_cpu_devices()
    sys.path.insert(0, _ROOT)

    import jax

    from sslsteal_jax.data.splits import experiment_data
    from sslsteal_jax.evaluation.encoder import Encoder
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.pipeline import evaluate
    from sslsteal_jax.models import SurrogateModel
    from sslsteal_jax.training.checkpoint import load_model
    from sslsteal_jax.watchdog import Watchdog

    with Watchdog(watchdog_s):
        data = experiment_data("fashion_mnist", with_victim_train=False, probe_train_size=probe_train,
                               probe_test_size=probe_test)
        victim = load_model(os.path.join(_ROOT, "victims/fashion_mnist_resnet10_w16_ft6/checkpoints"))
        stage1 = load_model(os.path.join(_ROOT, "victims/fashion_mnist_resnet10_w16/checkpoints"))
        key = jax.random.key(0)
        t0 = time.time()
        owner = extract_features(make_apply(victim.module, victim.variables, 0), data.probe_test_x)
        ev = dict(per_class=100, probe_epochs=60, select_probe=True)
        rows = evaluate.evaluate_encoders([
            Encoder.victim(victim.module, victim.variables),
            Encoder.victim(stage1.module, stage1.variables, name="stage-1 victim"),
            evaluate.independent_encoder(SurrogateModel(victim.module.encoder), data, 0, 1)],
            data, key, owner, ev)
        print(json.dumps({"evaluation_seconds": time.time() - t0, "devices": jax.device_count(),
                          "probe_full": [r["probe_full"] for r in rows]}), flush=True)


def threads_run(threads: int, seconds: float, stall_s: float = 60.0) -> None:
    """One process: a feature-extraction thread beside ``threads`` probe threads for
    ``seconds``; prints one JSON line; ends the process (``os._exit``) with status 0,
    or 3 when no extraction pass finished for ``stall_s`` seconds."""
    import threading

    from sslsteal_jax.host_devices import configure_cpu_devices
    configure_cpu_devices()
    sys.path.insert(0, _ROOT)

    import jax
    import numpy as np

    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.evaluation.probe import fit_linear_probe, knn_accuracy
    from sslsteal_jax.training.checkpoint import load_model

    victim = load_model(os.path.join(_ROOT, "victims/fashion_mnist_resnet10_w16_ft6/checkpoints"))
    apply = make_apply(victim.module, victim.variables, 0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1024, 28, 28, 1), dtype=np.uint8)
    feats = rng.normal(size=(8000, 128)).astype(np.float32)
    labels = rng.integers(0, 10, 8000)
    done = {"extraction_passes": 0, "probe_fits": 0}
    last = [time.time()]

    def extract():
        while True:
            extract_features(apply, images)
            done["extraction_passes"] += 1
            last[0] = time.time()

    def probe(i):
        key = jax.random.key(i)
        while True:
            fit_linear_probe(feats, labels, key, epochs=20)
            knn_accuracy(feats[:6000], labels[:6000], feats[6000:], labels[6000:])
            done["probe_fits"] += 1

    for target, args in [(extract, ())] + [(probe, (i,)) for i in range(threads)]:
        threading.Thread(target=target, args=args, daemon=True).start()
    t0 = time.time()
    stalled = False
    while time.time() - t0 < seconds and not stalled:
        time.sleep(1.0)
        stalled = time.time() - last[0] > stall_s
    print(json.dumps({"threads": threads, "seconds": round(time.time() - t0, 1),
                      "devices": jax.device_count(), "stalled": stalled, **done}), flush=True)
    os._exit(3 if stalled else 0)  # daemon threads may be inside a compiled program


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--busy", type=int, default=1, help="extra CPU-spinning processes")
    ap.add_argument("--probe-train", type=int, default=10000)
    ap.add_argument("--probe-test", type=int, default=5000)
    ap.add_argument("--watchdog", type=float, default=300.0)
    ap.add_argument("--limit", type=float, default=1200.0, help="hard seconds per run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=0,
                    help="stress mode: probe threads beside one extraction thread (0: off)")
    ap.add_argument("--seconds", type=float, default=240.0, help="stress mode duration")
    ap.add_argument("--stall", type=float, default=60.0,
                    help="stress mode: seconds without an extraction pass that count as a hang")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        return threads_run(args.threads, args.seconds, args.stall)
    if args.one:
        return one_run(args.probe_train, args.probe_test, args.watchdog)
    runs = []
    with spinning(args.busy):
        for i in range(args.runs):
            t0 = time.time()
            try:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                                       "--probe-train", str(args.probe_train), "--probe-test",
                                       str(args.probe_test), "--watchdog",
                                       str(args.watchdog)], capture_output=True, text=True,
                                      timeout=args.limit)
                rc, out, err = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired:
                rc, out, err = "timeout", "", ""
            rec = {"rc": rc, "seconds": round(time.time() - t0, 1)}
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if lines:
                rec.update(json.loads(lines[-1]))
            if rc != 0:
                rec["stderr_tail"] = err[-1500:]
            runs.append(rec)
            print(f"run {i + 1}/{args.runs}: {rec}", flush=True)
    summary = {"runs": runs, "hangs": sum(r["rc"] in (3, "timeout") for r in runs),
               "failures": sum(r["rc"] != 0 for r in runs), "busy_processes": args.busy,
               "probe_train": args.probe_train, "probe_test": args.probe_test}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
