"""The toolkit's concurrent device paths, as one workload (not a test module).

Run by ``tests/test_collectives.py`` as a subprocess (with ``--record``):

    python tests/concurrency_workload.py --devices 2 --rounds 6 --timeout 20 \
        [--n-train 512 --n-test 256 --probe-epochs 3] [--record]

which sets ``XLA_FLAGS`` (device count, short collective timeouts) before JAX
starts, runs the workload ``--rounds`` times and exits 0 (any deadlock hangs
it or makes XLA abort it; the caller's wall-clock limit catches the hang).
``--record`` records every jitted program's dispatch in the first round
(:func:`record_programs`; each program is waited for in its thread, so the later
rounds, unrecorded, keep the toolkit's asynchronous dispatch) and prints, before
the final ``ok``, one line ``recorded {json}`` with the number of collective
programs, their threads and any cross-thread overlaps (:func:`overlaps`).

Paths covered (every place that runs device programs from several threads):
  * the main job's evaluation: 4 result rows (victim with fidelity, surrogate
    with fidelity, independent, raw pixels), two in flight
    (``pipeline.evaluate.evaluate_rows``), each row's probes and kNN
    concurrent (``evaluation.parallel.run_concurrently``);
  * representation-API queries (``api.VictimAPI.query``) from two threads
    while a third extracts features;
  * a training run (``training.loop.run_training``) in one thread while
    another thread extracts features.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_flags(devices: int, timeout_s: int) -> str:
    """XLA_FLAGS for ``devices`` host devices and collective timeouts of ``timeout_s`` s.

    LLVM optimisation level 0, as in the test suite (tests/conftest.py): the workload
    tests when programs run, not how fast their code is, and compiles about half as
    long."""
    return (f"--xla_force_host_platform_device_count={devices} "
            "--xla_backend_optimization_level=0 "
            f"--xla_cpu_collective_call_terminate_timeout_seconds={timeout_s} "
            f"--xla_cpu_collective_call_warn_stuck_timeout_seconds={max(1, timeout_s // 4)} "
            f"--xla_cpu_collective_timeout_seconds={timeout_s}")


_RECORDING = threading.Event()


class _Recorded:
    """A jitted function whose calls are recorded: (thread, dispatch time, completion
    time, whether the program spans several devices, i.e. may hold collectives)."""

    def __init__(self, jitted, log, lock):
        self._jitted, self._log, self._lock = jitted, log, lock

    def __getattr__(self, name):
        return getattr(self._jitted, name)

    def __call__(self, *args, **kwargs):
        import jax
        if not _RECORDING.is_set() or any(
                isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((args, kwargs))):
            return self._jitted(*args, **kwargs)  # recording stopped, or inside a traced program
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


def record_programs(setattr_fn=setattr) -> list:
    """Replace ``jax.jit`` by a recording one (``setattr_fn(jax, "jit", ...)``: pytest's
    ``monkeypatch.setattr`` undoes it); returns the log every later-jitted program's calls
    append to: ``(thread, dispatch time, completion time, spans several devices)``, until
    :func:`stop_recording`."""
    import jax
    log, lock = [], threading.Lock()
    real_jit = jax.jit

    def recording_jit(fun=None, *args, **kwargs):
        if fun is None:  # used as @jax.jit(...) with keyword arguments only
            return lambda f: recording_jit(f, *args, **kwargs)
        return _Recorded(real_jit(fun, *args, **kwargs), log, lock)

    setattr_fn(jax, "jit", recording_jit)
    _RECORDING.set()
    return log


def stop_recording() -> None:
    """Programs run as usual again (dispatched asynchronously, not recorded)."""
    _RECORDING.clear()


def overlaps(log) -> tuple[list, list]:
    """``(collective programs, pairs of them from different threads in flight at once)``."""
    coll = sorted((e for e in log if e[3]), key=lambda e: e[1])
    bad = []
    for i, (ti, si, ei, _) in enumerate(coll):
        for tj, sj, ej, _ in coll[i + 1:]:
            if sj >= ei:
                break
            if tj != ti:
                bad.append(((ti, si, ei), (tj, sj, ej)))
    return coll, bad


def small_data(n_train: int = 512, n_test: int = 256):
    """Real Fashion-MNIST: ``n_train`` probe-train and ``n_test`` probe-test images."""
    from sslsteal_jax.data.splits import experiment_data
    return experiment_data("fashion_mnist", probe_test_size=n_test, with_victim_train=False,
                           probe_train_size=n_train)


def tiny_models(width: int = 4):
    """A SimCLR victim and a surrogate (ResNet-10, ``width``) with their variables."""
    import jax
    from sslsteal_jax.models import SurrogateModel, build_encoder, build_model
    victim = build_model("simclr", dict(arch="resnet10", width=width, head_hidden=16, head_out=8))
    vvars = victim.init(jax.random.key(0), jax.numpy.zeros((2, 28, 28, 1)))
    surrogate = SurrogateModel(build_encoder("resnet10", width), 8)
    svars = surrogate.init(jax.random.key(1), jax.numpy.zeros((2, 28, 28, 1)))
    return (victim, vvars), (surrogate, svars)


def main_job_evaluation(data, victim, surrogate, key, probe_epochs: int = 3) -> list[dict]:
    """The main job's 4-row evaluation (``experiments.steal``'s shape), small probes."""
    from sslsteal_jax.evaluation.encoder import Encoder
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.models import SurrogateModel
    from sslsteal_jax.pipeline import evaluate
    (vmod, vvars), (smod, svars) = victim, surrogate
    ev = dict(per_class=10, probe_epochs=probe_epochs, select_probe=False)
    owner = extract_features(make_apply(vmod, vvars, 1), data.probe_test_x)
    return evaluate.evaluate_encoders([
        Encoder("victim", vmod, vvars, 0, 1), Encoder.surrogate("surrogate", smod, svars),
        evaluate.independent_encoder(SurrogateModel(smod.encoder, 8), data, 0, 1)],
        data, key, owner, ev)


def api_and_features(data, victim, surrogate) -> None:
    """Two threads query a ``VictimAPI`` (one account each) while a third extracts features."""
    from sslsteal_jax.api.victim_api import VictimAPI
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.evaluation.parallel import run_concurrently
    (vmod, vvars), (smod, svars) = victim, surrogate
    api = VictimAPI(vmod, vvars, (28, 28, 1), batch_size=32)
    for user in ("a", "b"):
        api.register(user, None)
    x = data.probe_train_x[:256]
    run_concurrently([functools.partial(api.query, "a", x), functools.partial(api.query, "b", x),
                      functools.partial(extract_features, make_apply(smod, svars, 0), x)],
                     max_workers=3)


def training_and_features(data, surrogate, victim) -> None:
    """A 6-step MSE training run in one thread, feature extraction in another."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.evaluation.parallel import run_concurrently
    from sslsteal_jax.training.loop import run_training
    from sslsteal_jax.training.state import TrainState
    (smod, svars), (vmod, vvars) = surrogate, victim
    x = data.probe_train_x[:256]
    y = extract_features(make_apply(vmod, vvars, 1), x)
    host = jax.tree_util.tree_map(np.asarray, svars)  # the run donates its state's buffers
    state = TrainState.create(apply_fn=smod.apply, params=host["params"], tx=optax.adam(1e-3),
                              batch_stats=host["batch_stats"])

    def step(state, xb, yb, key):
        def loss_fn(p):
            (_, o), upd = smod.apply({"params": p, "batch_stats": state.batch_stats},
                                     xb.astype(jnp.float32) / 255.0, train=True,
                                     mutable=["batch_stats"])
            return jnp.mean((o - yb) ** 2), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=g, batch_stats=upd["batch_stats"]), {"loss": loss}

    train = functools.partial(run_training, state, step, [x, y], batch_size=64, total_steps=6,
                              key=jax.random.key(0), seed=0, ckpt_dir=None, meta={},
                              desc="stress training", progress=False)
    run_concurrently([train, functools.partial(extract_features, make_apply(vmod, vvars, 0), x)],
                     max_workers=2)


def run_all(rounds: int = 1, data=None, log=print, probe_epochs: int = 3,
            after_round=None) -> None:
    """Every concurrent path, ``rounds`` times (new random keys each round);
    ``after_round(r)`` is called after round ``r`` (from 0) when given."""
    import jax
    data = small_data() if data is None else data
    victim, surrogate = tiny_models()
    t0 = time.time()
    for r in range(rounds):
        main_job_evaluation(data, victim, surrogate, jax.random.key(r), probe_epochs)
        api_and_features(data, victim, surrogate)
        training_and_features(data, surrogate, victim)
        log(f"round {r + 1}/{rounds} done at {time.time() - t0:.1f} s "
            f"({threading.active_count()} threads)")
        if after_round is not None:
            after_round(r)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=20, help="XLA collective timeouts (s)")
    ap.add_argument("--n-train", type=int, default=512, help="probe-train images")
    ap.add_argument("--n-test", type=int, default=256, help="probe-test images")
    ap.add_argument("--probe-epochs", type=int, default=3)
    ap.add_argument("--record", action="store_true",
                    help="record every program's dispatch; print the overlap check")
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = xla_flags(args.devices, args.timeout)
    os.environ.setdefault("SSLSTEAL_EVAL_WORKERS", "2")
    sys.path.insert(0, ROOT)
    recorded = record_programs() if args.record else None
    run_all(args.rounds, small_data(args.n_train, args.n_test),
            log=lambda m: print(m, flush=True), probe_epochs=args.probe_epochs,
            after_round=(lambda r: stop_recording()) if args.record else None)
    if recorded is not None:
        coll, bad = overlaps(recorded)
        print("recorded " + json.dumps({"collective_programs": len(coll),
                                        "threads": len({e[0] for e in coll}),
                                        "overlaps": len(bad), "examples": bad[:3]}), flush=True)
    print("ok", flush=True)
