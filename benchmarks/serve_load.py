"""Served victim vs in-process API: answers/s and latency at 1, 8 and 32 clients.

    python benchmarks/serve_load.py --out benchmarks/results/serve_load.json

Both sides answer the shipped victim (``sslsteal_jax.defaults.DEFAULT_VICTIM``)
with no defenses; every client sends ``--images`` images per call (uint8,
28x28x1, random pixels: inference time does not depend on the content) in a
closed loop for ``--seconds`` seconds per client count, after ``--warmup``
calls per client that are not timed (compilation).

* in-process: N threads call ``VictimAPI.query`` on one API object in this
  process (CPU devices as on the command line);
* served: ``python -m sslsteal_jax.serve`` in a subprocess on 127.0.0.1 (a
  fresh SQLite ledger, ``--max_batch`` / ``--max_wait_ms``), N threads of this
  process each with a ``RemoteVictimAPI`` (real HTTP, base64 wire format).
  Client and server share the machine's cores, as they would on one host.

Reports answers (images) per second over all clients and the p50 / p99
latency of one call, per client count; writes JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def closed_loop(call, clients: int, seconds: float, warmup: int) -> dict:
    """``clients`` threads each run ``call(i)`` ``warmup`` times untimed, then in a
    loop for ``seconds``; returns answers/s, calls, p50 / p99 / mean latency (ms)."""
    import numpy as np

    lat, lock = [], threading.Lock()
    ready, go = threading.Barrier(clients + 1), threading.Event()
    answered = [0]

    def worker(i):
        for _ in range(warmup):
            call(i)
        ready.wait()
        go.wait()
        mine, n, end = [], 0, time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            n += len(call(i))
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)
            answered[0] += n

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait(timeout=600)
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(timeout=seconds + 600)
    wall = time.monotonic() - t0
    ms = np.asarray(lat) * 1e3
    return {"clients": clients, "answers_per_s": answered[0] / wall, "calls": len(lat),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "wall_s": wall}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--images", type=int, default=8, help="images per call")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per client count")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per client first")
    p.add_argument("--max_batch", type=int, default=128)
    p.add_argument("--max_wait_ms", type=float, default=2.0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    from sslsteal_jax.host_devices import configure_cpu_devices
    configure_cpu_devices()
    import jax
    import numpy as np

    from sslsteal_jax.api import VictimAPI
    from sslsteal_jax.api.remote import RemoteVictimAPI
    from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT
    from sslsteal_jax.serve.ledger import Ledger
    from sslsteal_jax.serve.process import LocalServer

    victim = os.path.join(_ROOT, DEFAULT_VICTIM_CHECKPOINT)
    clients = [int(c) for c in args.clients.split(",")]
    x = np.random.default_rng(0).integers(0, 256, (max(clients), args.images, 28, 28, 1),
                                          dtype=np.uint8)
    out = {"benchmark": "serve_load", "victim": DEFAULT_VICTIM_CHECKPOINT,
           "settings": vars(args), "environment": {
               "jax": jax.__version__, "devices": jax.device_count(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "machine": platform.machine(),
               "loadavg_start": os.getloadavg()}}

    api = VictimAPI.from_checkpoint(victim)
    out["in_process"] = []
    for n in clients:
        r = closed_loop(lambda i: api.query(f"user{i}", x[i]), n, args.seconds, args.warmup)
        out["in_process"].append(r)
        print(f"in-process {n:>3} clients: {r['answers_per_s']:8.0f} answers/s, "
              f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms", flush=True)

    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "ledger.sqlite")
        secret = Ledger(db).create_key("bench", None)[1]
        with LocalServer(victim, db, [f"--max_batch={args.max_batch}",
                                      f"--max_wait_ms={args.max_wait_ms}"],
                         log=os.path.join(d, "server.log"), cwd=_ROOT) as srv:
            remotes = [RemoteVictimAPI(srv.url, secret) for _ in range(max(clients))]
            out["served"] = []
            for n in clients:
                r = closed_loop(lambda i: remotes[i].query("bench", x[i]), n, args.seconds,
                                args.warmup)
                out["served"].append(r)
                print(f"served     {n:>3} clients: {r['answers_per_s']:8.0f} answers/s, "
                      f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms", flush=True)
            out["ledger_charged"] = Ledger(db).totals()["charged"]
    out["served_over_in_process"] = [s["answers_per_s"] / i["answers_per_s"]
                                     for s, i in zip(out["served"], out["in_process"])]
    out["environment"]["loadavg_end"] = os.getloadavg()
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
    return out


if __name__ == "__main__":
    main()
