"""Steal-step training at several dispatch depths: images/s and hangs on a busy CPU.

    python benchmarks/dispatch_depth.py --depths 2,0 --steps 3000 --busy 2 \\
        --out benchmarks/results/dispatch_depth.json

For each depth in ``--depths`` (``training.loop.MAX_STEPS_IN_FLIGHT``; 0 =
unbounded, what the loop did before the bound: JAX's own asynchronous dispatch
with nothing waiting until a log line), a fresh process set up like
``python -m sslsteal_jax.main`` (one XLA CPU device per core, the CLI's
collective timeouts) trains the main job's InfoNCE surrogate step
(``trainers.surrogate``, ResNet-10, ``--width``, batch ``--batch``) for
``--steps`` steps through ``training.loop.run_training`` on random uint8
28x28 images and random 64-d answers (throughput and hangs do not depend on
the values). ``--busy N`` keeps N extra processes spinning on the CPU, the
load under which the unbounded loop deadlocked twice in the claim-5 run. A
run with no finished step for ``--stall`` seconds is a hang: its thread
stacks go to stderr and the child exits with status 3. ``--repeats`` runs
each depth that many times, in alternating order.

Writes ``{"runs": [{"depth", "rc", "steps_done", "images_per_second",
"hang"}], "config": ...}``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNBOUNDED = 10 ** 9  # a depth no run reaches


def _spin():
    while True:
        pass


def one_run(depth: int, width: int, batch: int, steps: int, stall: float) -> None:
    """Child process: ``steps`` steal steps at dispatch depth ``depth``; prints one JSON line."""
    from sslsteal_jax.host_devices import configure_cpu_devices
    configure_cpu_devices()
    import faulthandler
    import threading

    import numpy as np

    from sslsteal_jax import watchdog
    from sslsteal_jax.trainers import surrogate
    from sslsteal_jax.training import loop

    loop.MAX_STEPS_IN_FLIGHT = depth or UNBOUNDED
    seen = {"time": time.monotonic(), "steps": 0, "first": None}

    def progress(what=None):
        seen["time"] = time.monotonic()
        seen["steps"] += 1
        if seen["steps"] == 2:  # after the first (compiling) step
            seen["first"] = (time.monotonic(), 1)

    watchdog.progress = progress
    loop.watchdog.progress = progress

    def guard():
        while True:
            time.sleep(2.0)
            if time.monotonic() - seen["time"] > stall:
                print(json.dumps({"depth": depth, "rc": 3, "steps_done": seen["steps"],
                                  "hang": True}), flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(3)

    threading.Thread(target=guard, daemon=True).start()
    rng = np.random.default_rng(0)
    n = 4096
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    answers = rng.normal(size=(n, 64)).astype(np.float32)
    cfg = surrogate.surrogate_config("infonce", epochs=1, batch_size=batch, steps=steps,
                                     model={"arch": "resnet10", "width": width, "stem": "cifar"})
    surrogate.train_surrogate(images, answers, cfg, None, progress=False)
    t_first, s_first = seen["first"]
    sec = time.monotonic() - t_first
    print(json.dumps({"depth": depth, "rc": 0, "steps_done": seen["steps"], "hang": False,
                      "images_per_second": batch * (steps - s_first - 1) / sec}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="2,0", help="comma list of depths >= 0 (0 = unbounded)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--busy", type=int, default=2, help="extra spinning processes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--stall", type=float, default=120.0, help="seconds without a step = hang")
    p.add_argument("--limit", type=float, default=3600.0, help="hard cap per run (seconds)")
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        one_run(args.child, args.width, args.batch, args.steps, args.stall)
        return
    try:
        depths = [int(d) for d in args.depths.split(",")]
        if any(d < 0 for d in depths) or not depths:
            raise ValueError
    except ValueError:
        p.error(f"--depths {args.depths!r}: allowed: a comma list of integers >= 0")
    for name in ("steps", "width", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: allowed: an integer >= 1")
    if args.steps < 3:
        p.error(f"--steps {args.steps}: allowed: an integer >= 3 (the first step compiles)")
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    runs = []
    try:
        for r in range(args.repeats):
            for depth in (depths if r % 2 == 0 else depths[::-1]):
                cmd = [sys.executable, os.path.abspath(__file__), "--child", str(depth),
                       "--steps", str(args.steps), "--width", str(args.width),
                       "--batch", str(args.batch), "--stall", str(args.stall)]
                t0 = time.time()
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT,
                                         timeout=args.limit)
                    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                    rec = json.loads(lines[-1]) if lines else {"depth": depth, "rc": out.returncode,
                                                               "hang": False}
                    if out.returncode not in (0, 3):
                        sys.stderr.write(out.stderr[-3000:])
                    if rec.get("hang"):
                        sys.stderr.write(f"depth {depth}: hang; thread stacks:\n{out.stderr[-6000:]}\n")
                except subprocess.TimeoutExpired:
                    rec = {"depth": depth, "rc": 124, "hang": True}
                rec["seconds"] = round(time.time() - t0, 1)
                runs.append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        for s in spinners:
            s.terminate()
    result = {"runs": runs, "config": {k: getattr(args, k) for k in
                                       ("depths", "steps", "width", "batch", "busy", "repeats",
                                        "stall")},
              "host": {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
