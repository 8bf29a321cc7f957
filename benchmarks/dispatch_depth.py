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
the values). ``--busy N`` keeps N extra processes spinning on the CPU (at the
same priority), the kind of load under which the unbounded loop stalled twice
in the claim-5 run. After the first step (which compiles), a run in which no
further step is dispatched for ``--stall`` seconds is a hang (with at most
``depth`` steps in flight, dispatch stops exactly when the device work stops):
its thread stacks go to stderr and the child exits with status 3.
``--repeats`` runs each depth that many times, in alternating order.
images/s counts the steps after the first two, from the dispatch of step 2 to
the end of the run (when every step has finished). The run needs at least 2
devices (collectives are what can hang): with ``SSLSTEAL_CPU_DEVICES=1`` or a
one-core host it refuses to run.

Writes ``{"runs": [{"depth", "rc", "steps_done", "images_per_second",
"hang", "seconds"}], "config": ..., "host": {cores, devices, jax, cpu, date}}``.
SIGTERM / Ctrl-C stop the spinners and the running child.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.busy import spinning  # noqa: E402

UNBOUNDED = 10 ** 9  # a depth no run reaches


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

    import jax

    if jax.device_count() < 2:
        print(json.dumps({"depth": depth, "rc": 2, "hang": False, "error":
                          f"{jax.device_count()} device: the hang test needs >= 2 (unset "
                          "SSLSTEAL_CPU_DEVICES=1 / the XLA_FLAGS device count)"}), flush=True)
        sys.exit(2)
    loop.MAX_STEPS_IN_FLIGHT = depth or UNBOUNDED
    # the stall clock starts at the first step (after compilation)
    seen = {"time": None, "steps": 0, "first": None}

    def progress(what=None):
        seen["time"] = time.monotonic()
        seen["steps"] += 1
        if seen["steps"] == 2:  # after the first (compiling) step
            seen["first"] = time.monotonic()

    watchdog.progress = progress
    loop.watchdog.progress = progress

    def guard():
        while True:
            time.sleep(2.0)
            if seen["time"] is not None and time.monotonic() - seen["time"] > stall:
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
    sec = time.monotonic() - seen["first"]
    print(json.dumps({"depth": depth, "rc": 0, "steps_done": seen["steps"], "hang": False,
                      "devices": jax.device_count(),
                      "images_per_second": batch * (steps - 2) / sec}), flush=True)


def _host() -> dict:
    """Cores, JAX devices of a CLI-like process, JAX version and CPU model of this host."""
    import platform

    from sslsteal_jax.host_devices import auto_device_count, usable_cores
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from importlib.metadata import version
        jax_version = version("jax")
    except Exception:
        jax_version = "unknown"
    raw = os.environ.get("SSLSTEAL_CPU_DEVICES", "").strip()
    return {"cores": usable_cores(), "devices": int(raw) if raw.isdigit() else
            auto_device_count(usable_cores()), "jax": jax_version, "cpu": cpu,
            "date": time.strftime("%Y-%m-%d")}


def _on_term(signum, frame):
    raise SystemExit(128 + signum)  # runs main()'s finally: spinners and child stopped


def _run_all(args, depths) -> tuple[list, bool]:
    """Each depth ``args.repeats`` times (alternating order), each a fresh child process.

    Returns ``(records, failed)``; a child still running when this returns early
    (SIGTERM, Ctrl-C) is killed."""
    runs, child, failed = [], None, False
    try:
        for r in range(args.repeats):
            for depth in (depths if r % 2 == 0 else depths[::-1]):
                cmd = [sys.executable, os.path.abspath(__file__), "--child", str(depth),
                       "--steps", str(args.steps), "--width", str(args.width),
                       "--batch", str(args.batch), "--stall", str(args.stall)]
                t0 = time.time()
                child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, cwd=_ROOT)
                try:
                    stdout, stderr = child.communicate(timeout=args.limit)
                    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
                    rec = json.loads(lines[-1]) if lines else {"depth": depth,
                                                               "rc": child.returncode,
                                                               "hang": False}
                    if child.returncode not in (0, 3):
                        sys.stderr.write(stderr[-3000:])
                        failed = True
                    if rec.get("hang"):
                        sys.stderr.write(f"depth {depth}: hang; thread stacks:\n{stderr[-6000:]}\n")
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.communicate()
                    rec = {"depth": depth, "rc": 124, "hang": True}
                child = None
                rec["seconds"] = round(time.time() - t0, 1)
                runs.append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
    return runs, failed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--depths", default="2,0",
                   help="comma list of dispatch depths >= 0 (0 = unbounded)")
    p.add_argument("--steps", type=int, default=3000, help="steal steps per run (>= 3)")
    p.add_argument("--width", type=int, default=16, help="ResNet-10 width (>= 1)")
    p.add_argument("--batch", type=int, default=256,
                   help="global batch (even, <= 4096: split over the devices)")
    p.add_argument("--busy", type=int, default=2, help="extra spinning processes (>= 0)")
    p.add_argument("--repeats", type=int, default=1, help="runs per depth (>= 1)")
    p.add_argument("--stall", type=float, default=120.0,
                   help="seconds without a dispatched step (after the first) = hang (> 0)")
    p.add_argument("--limit", type=float, default=3600.0,
                   help="hard cap per run, seconds (> 0; a run past it counts as a hang)")
    p.add_argument("--out", default=None, help="JSON file to write (its folder must exist)")
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
    for name, low in (("steps", 3), ("width", 1), ("repeats", 1), ("busy", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name} {getattr(args, name)}: allowed: an integer >= {low}")
    if not (2 <= args.batch <= 4096 and args.batch % 2 == 0):
        p.error(f"--batch {args.batch}: allowed: an even integer in [2, 4096] (split over the "
                "devices; the data has 4,096 images)")
    for name in ("stall", "limit"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} {getattr(args, name)}: allowed: a number of seconds > 0")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error(f"--out {args.out!r}: folder {os.path.dirname(os.path.abspath(args.out))!r} "
                "does not exist")
    host = _host()
    if host["devices"] < 2:
        p.error(f"{host['devices']} device(s) on this host: the hang test needs >= 2 "
                "(set SSLSTEAL_CPU_DEVICES=2)")
    signal.signal(signal.SIGTERM, _on_term)
    with spinning(args.busy):
        runs, failed = _run_all(args, depths)
    result = {"runs": runs, "config": {k: getattr(args, k) for k in
                                       ("depths", "steps", "width", "batch", "busy", "repeats",
                                        "stall")},
              "host": host}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)
    if failed:
        sys.exit("error: a run failed (its stderr is above)")


if __name__ == "__main__":
    main()
