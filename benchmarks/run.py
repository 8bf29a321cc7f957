"""Throughput benchmarks: images/s and model FLOP utilisation (MFU), JSON out.

    python benchmarks/run.py --out benchmarks/results/cpu.json

Measures, on the ("data",) mesh over all devices (the code path training uses):

* ``victim_inference``: the representation API's forward pass (BatchNorm in
  inference mode) of the shipped victim (ResNet-10 width 16, Fashion-MNIST),
  at each ``--inference-batches`` size (the library default per call and 1,000);
* ``simclr_step``: one victim SimCLR training step (2 augmented views, NT-Xent);
* ``steal_step/<arch>/<loss>``: one surrogate training step of direct
  extraction, side by side with the same step in PyTorch (``torch_ref.py``),
  timed in alternating blocks in this process so that the ratio holds even on a
  busy machine;
* ``vmapped_steal``: K surrogates trained by one stacked step
  (``training.vmap.make_vmapped_steal_step``, both ``jax.vmap`` and the
  unrolled variant that ``mode="auto"`` picks on CPU) against K sequential
  steps.

FLOPs per step come from XLA's compiled cost analysis
(``jitted.lower(...).compile().cost_analysis()["flops"]``), the peak from a
per-device-kind table (``PEAK_FLOPS``; CPUs: cores x GHz x FLOPs/cycle),
overridable with ``--peak-flops``. MFU = FLOPs per step / seconds per step /
(peak per device x devices). Numbers are medians over ``--repeats`` blocks of
``--steps`` steps after a compile + warm-up call. Benchmarks never run inside
the test suite (no timing assertions in tests).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sslsteal_jax.host_devices import configure_cpu_devices  # noqa: E402

configure_cpu_devices()  # what `python -m sslsteal_jax.main` does: one XLA CPU device per core
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sslsteal_jax.data.augment import AugmentConfig  # noqa: E402
from sslsteal_jax.evaluation.features import default_batch_size, make_apply  # noqa: E402
from sslsteal_jax.models import SimCLRModel, SurrogateModel, build_encoder  # noqa: E402
from sslsteal_jax.trainers.simclr import make_simclr_step  # noqa: E402
from sslsteal_jax.trainers.surrogate import make_steal_step  # noqa: E402
from sslsteal_jax.training import mesh as mesh_lib  # noqa: E402
from sslsteal_jax.training.optim import make_optimizer  # noqa: E402
from sslsteal_jax.training.state import TrainState  # noqa: E402
from sslsteal_jax.training.vmap import make_vmapped_steal_step, stack_trees  # noqa: E402

# Dense peak FLOP/s per chip, by substring of jax's device_kind (lower case) and compute dtype.
# Sources: vendor data sheets (NVIDIA A100/H100/H200, Google Cloud TPU system architecture pages).
PEAK_FLOPS = {
    "tpu v4": {"float32": 275e12, "bfloat16": 275e12},
    "tpu v5 lite": {"float32": 197e12, "bfloat16": 197e12},
    "tpu v5e": {"float32": 197e12, "bfloat16": 197e12},
    "tpu v5p": {"float32": 459e12, "bfloat16": 459e12},
    "tpu v5": {"float32": 459e12, "bfloat16": 459e12},
    "tpu v6 lite": {"float32": 918e12, "bfloat16": 918e12},
    "tpu v6e": {"float32": 918e12, "bfloat16": 918e12},
    "h200": {"float32": 67e12, "bfloat16": 989e12},
    "h100": {"float32": 67e12, "bfloat16": 989e12},
    "a100": {"float32": 19.5e12, "bfloat16": 312e12},
    "l4": {"float32": 30.3e12, "bfloat16": 121e12},
}
# CPU: FLOPs per cycle per core (fp32 FMA: 2 FLOPs x lanes x FMA pipes); 32 = two 256-bit FMA
# pipes (AVX2 / Zen 4's double-pumped AVX-512), 64 = two 512-bit pipes (server Intel AVX-512).
CPU_FLOPS_PER_CYCLE = 32


def cpu_peak_flops(flops_per_cycle: int = CPU_FLOPS_PER_CYCLE) -> tuple[float, str]:
    """Peak fp32 FLOP/s of this host's CPU: cores x clock (GHz from /proc/cpuinfo) x FLOPs/cycle."""
    ghz = None
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(ln.split(":")[1]) for ln in f if ln.lower().startswith("cpu mhz")]
        ghz = max(mhz) / 1000 if mhz else None
    except OSError:
        pass
    ghz = ghz or 2.5
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores * ghz * 1e9 * flops_per_cycle, f"{cores} cores x {ghz:.2f} GHz x {flops_per_cycle} FLOP/cycle"


def cpu_identity() -> dict:
    """This host's CPU as /proc/cpuinfo names it: ``{"cpu_model": str, "cpu_vector_isa":
    "avx512f" | "avx2" | "other"}`` (empty strings off Linux). CPU throughput is only
    comparable between records of the same model and vector ISA: a host without AVX-512
    runs XLA:CPU's convolutions several times slower at the same clock."""
    model, flags_line = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name") and not model:
                    model = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags") and not flags_line:
                    flags_line = ln.split(":", 1)[1]
    except OSError:
        pass
    cpu_flags = set(flags_line.split())
    isa = ("avx512f" if "avx512f" in cpu_flags else "avx2" if "avx2" in cpu_flags
           else "other" if cpu_flags else "")
    return {"cpu_model": model, "cpu_vector_isa": isa}


def peak_flops_per_device(dtype: str, override: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of one device of jax's default backend for ``dtype``, and where it came from.

    Raises:
      ValueError: an accelerator whose device_kind is not in ``PEAK_FLOPS`` and no override.
    """
    if override:
        return float(override), "--peak-flops"
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        peak, how = cpu_peak_flops()
        return peak / jax.local_device_count(), how + f" / {jax.local_device_count()} devices"
    kind = dev.device_kind.lower()
    for key, table in PEAK_FLOPS.items():
        if key in kind:
            return table[dtype], f"PEAK_FLOPS[{key!r}][{dtype!r}]"
    raise ValueError(f"no peak FLOP/s known for device kind {dev.device_kind!r}; pass --peak-flops "
                     f"(known kinds: {sorted(PEAK_FLOPS)})")


def compiled_flops(jitted, *args) -> float:
    """FLOPs of one call of ``jitted(*args)`` on all devices together, from XLA's cost analysis.

    For a program partitioned over N devices (SPMD) XLA reports the FLOPs of
    one device's partition, so the figure is multiplied by the number of
    devices the compiled program runs on (1 device: unchanged).
    """
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    leaves = jax.tree.leaves(compiled.input_shardings)
    n = len(leaves[0].device_set) if leaves else 1
    return float(cost.get("flops", float("nan"))) * n


def _block(tree):
    jax.block_until_ready(tree)
    return tree


class StepTimer:
    """Runs a donated step ``(state, *args) -> (state, out)`` and times blocks of steps."""

    def __init__(self, fn, state, args):
        self.fn, self.state, self.args = fn, state, args

    def run(self, steps: int) -> float:
        t = time.perf_counter()
        out = None
        for _ in range(steps):
            self.state, out = self.fn(self.state, *self.args)
        _block(out)
        return (time.perf_counter() - t) / steps


def _state(model, image_shape, lr=1e-3, seed=0):
    v = model.init(jax.random.key(seed), jnp.zeros((2, *image_shape), jnp.float32))
    st = TrainState.create(apply_fn=model.apply, params=v["params"], batch_stats=v["batch_stats"],
                           tx=make_optimizer("adam", lr, 1e-4, 10_000))
    return st.replace(step=jnp.asarray(0, jnp.int32))


def _record(name, batch, sec, flops, peak, n_dev, **extra):
    return dict(name=name, batch=batch, seconds_per_step=sec, images_per_second=batch / sec,
                flops_per_step=flops, achieved_flops_per_second=flops / sec,
                mfu=flops / sec / (peak * n_dev), **extra)


def _timed(timer, steps, repeats):
    timer.run(1)
    return float(np.median([timer.run(steps) for _ in range(repeats)]))


def bench_inference(args, mesh, peak, rng, batch: int):
    from sslsteal_jax.training.checkpoint import load_model
    ckpt = os.path.join(_ROOT, "victims/fashion_mnist_resnet10_w16/checkpoints")
    if os.path.isdir(ckpt):
        m = load_model(ckpt)
        module, variables, shape, src = m.module, m.variables, m.image_shape, "shipped victim"
    else:
        module = SimCLRModel(build_encoder("resnet10", 16), 512, 128)
        shape = (28, 28, 1)
        variables = module.init(jax.random.key(0), jnp.zeros((2, *shape)))
        src = "random init (checkpoint not found)"
    apply = make_apply(module, variables, output_index=0, mesh=mesh)
    b = mesh_lib.padded_size(batch, mesh)
    (x,) = mesh_lib.shard_batch([rng.integers(0, 256, (b, *shape), dtype=np.uint8)], mesh)
    flops = compiled_flops(apply.jitted, apply.variables, x)
    timer = StepTimer(lambda s, x: (s, apply(x)), None, (x,))
    sec = _timed(timer, args.steps, args.repeats)
    return _record("victim_inference", b, sec, flops, peak, mesh_lib.num_devices(mesh),
                   model=f"resnet10 w16 ({src})")


def bench_simclr(args, mesh, peak, rng):
    model = SimCLRModel(build_encoder("resnet10", 16, "cifar", args.dtype), 512, 128)
    step = make_simclr_step(model, AugmentConfig(), 0.2)
    jstep = mesh_lib.compile_step(step, mesh, 1)
    b = args.batch
    (x,) = mesh_lib.shard_batch([rng.integers(0, 256, (b, 28, 28, 1), dtype=np.uint8)], mesh)
    key = mesh_lib.replicate(jax.random.key(1), mesh)
    st = mesh_lib.replicate(_state(model, (28, 28, 1)), mesh)
    flops = compiled_flops(jstep, st, x, key)
    sec = _timed(StepTimer(jstep, st, (x, key)), args.steps, args.repeats)
    return _record("simclr_step", b, sec, flops, peak, mesh_lib.num_devices(mesh),
                   model=f"resnet10 w16 + head 512-128, {args.dtype}",
                   views_per_second=2 * b / sec)


def bench_steal(args, mesh, peak, rng, arch, loss, width=16):
    """JAX steal step and, if torch is importable, the torch step in alternating blocks."""
    d = width * 8
    model = SurrogateModel(build_encoder(arch, width, "cifar", args.dtype), None)
    step = make_steal_step(model, loss, 0.1)
    jstep = mesh_lib.compile_step(step, mesh, 2)
    b = args.batch
    imgs = rng.integers(0, 256, (b, 28, 28, 1), dtype=np.uint8)
    ans = rng.standard_normal((b, d), dtype=np.float32)
    x, a = mesh_lib.shard_batch([imgs, ans], mesh)
    key = mesh_lib.replicate(jax.random.key(1), mesh)
    st = mesh_lib.replicate(_state(model, (28, 28, 1)), mesh)
    flops = compiled_flops(jstep, st, x, a, key)
    timer = StepTimer(jstep, st, (x, a, key))
    timer.run(1)
    tstep = None
    if not args.no_torch:
        try:
            import torch
            from benchmarks.torch_ref import build_torch_step
            torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
            torch.manual_seed(0)
            tstep, _ = build_torch_step(arch, width, 1, loss, channels_last=True)
            ti, ta = torch.from_numpy(imgs), torch.from_numpy(ans)
            tstep(ti, ta)
        except ImportError:
            tstep = None
    jt, tt = [], []
    for _ in range(args.repeats):
        jt.append(timer.run(args.steps))
        if tstep is not None:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tstep(ti, ta)
            tt.append((time.perf_counter() - t0) / args.steps)
    sec = float(np.median(jt))
    rec = _record(f"steal_step/{arch}_w{width}/{loss}", b, sec, flops, peak,
                  mesh_lib.num_devices(mesh), dtype=args.dtype)
    if tt:
        ratios = [t / j for t, j in zip(tt, jt)]
        rec["torch"] = {"seconds_per_step": float(np.median(tt)),
                        "images_per_second": b / float(np.median(tt)),
                        "threads": torch.get_num_threads(), "version": torch.__version__,
                        "layout": "channels_last (NHWC)"}
        rec["jax_over_torch_speed"] = float(np.median(ratios))
        rec["jax_over_torch_speed_per_block"] = ratios
    return rec


def bench_vmapped(args, mesh, peak, rng):
    """K surrogates: one stacked step (jax.vmap, and "unroll" = the CPU choice of
    mode="auto") vs K sequential steps of the single-surrogate step (same images)."""
    k, b = args.k, args.vmap_batch
    model = SurrogateModel(build_encoder("resnet10", 16, "cifar", args.dtype), None)
    step = make_steal_step(model, "mse", None)
    states = [_state(model, (28, 28, 1), seed=i) for i in range(k)]
    imgs = rng.integers(0, 256, (k, b, 28, 28, 1), dtype=np.uint8)
    ans = rng.standard_normal((k, b, 128), dtype=np.float32)
    keys = jax.random.split(jax.random.key(2), k)
    n_dev = mesh_lib.num_devices(mesh)
    vx, va = mesh_lib.shard_batch([imgs, ans], mesh, leading_axes=1)
    vkeys = mesh_lib.replicate(keys, mesh)
    timers, flops = {}, {}
    for mode in ("vmap", "unroll"):
        vstep = mesh_lib.compile_step(make_vmapped_steal_step(step, mode), mesh, 2, leading_axes=1)
        vst = mesh_lib.replicate(stack_trees(states), mesh)
        flops[mode] = compiled_flops(vstep, vst, vx, va, vkeys)
        timers[mode] = StepTimer(vstep, vst, (vx, va, vkeys))

    sstep = mesh_lib.compile_step(step, mesh, 2)
    sst = [mesh_lib.replicate(s, mesh) for s in states]
    sbatch = [mesh_lib.shard_batch([imgs[i], ans[i]], mesh) for i in range(k)]
    skeys = [mesh_lib.replicate(keys[i], mesh) for i in range(k)]
    flops["sequential"] = k * compiled_flops(sstep, sst[0], *sbatch[0], skeys[0])

    def sequential(states_):
        out, m = [], None
        for i in range(k):
            s, m = sstep(states_[i], *sbatch[i], skeys[i])
            out.append(s)
        return out, m

    timers["sequential"] = StepTimer(sequential, sst, ())
    for t in timers.values():
        t.run(1)
    times = {name: [] for name in timers}
    for _ in range(args.repeats):  # alternate so that machine load hits all three alike
        for name, t in timers.items():
            times[name].append(t.run(args.steps))
    sec = {name: float(np.median(v)) for name, v in times.items()}
    auto = "unroll" if jax.default_backend() == "cpu" else "vmap"
    return {"name": f"vmapped_steal/K={k}", "k": k, "batch_per_member": b,
            "model": f"resnet10 w16 mse, {args.dtype}", "auto_mode": auto,
            **{name: _record(name, k * b, sec[name], flops[name], peak, n_dev) for name in timers},
            "vmap_over_sequential_time": sec["vmap"] / sec["sequential"],
            "unroll_over_sequential_time": sec["unroll"] / sec["sequential"],
            "auto_over_sequential_time": sec[auto] / sec["sequential"]}


def machine_info(args, peak, how):
    info = {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "processes": jax.process_count(),
            "jax": jax.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), **cpu_identity(),
            "host_cores": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_flops_per_device": peak, "peak_source": how, "dtype": args.dtype}
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    return info


#: The benchmarks ``--only`` selects from.
SECTIONS = ("inference", "simclr", "steal", "vmap")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (steps, repeats, batches: 0 or less measured
    nothing and reported negative or NaN images/s as a success)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}; allowed: an integer >= 1")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/bench.json", help="JSON output path")
    p.add_argument("--steps", type=positive_int, default=3, help="steps per timed block")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed blocks (median reported)")
    p.add_argument("--batch", type=positive_int, default=256,
                   help="batch of the SimCLR and steal steps")
    p.add_argument("--inference-batches", default="default,1000",
                   help="comma list of victim-inference batch sizes; 'default' = "
                        "evaluation.features.default_batch_size (128 on CPU)")
    p.add_argument("--k", type=positive_int, default=8, help="surrogates in the vmapped step")
    p.add_argument("--vmap-batch", type=positive_int, default=64,
                   help="batch per vmapped surrogate (mse reference: 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--peak-flops", type=float, default=None, help="override peak FLOP/s per device")
    p.add_argument("--steal", default="resnet18:mse,resnet10:infonce",
                   help="comma list of arch:loss steal steps to time against torch")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma list, a subset of {', '.join(SECTIONS)}")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--torch-threads", type=int, default=None)
    args = p.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set(SECTIONS):
        p.error(f"--only {args.only!r}: allowed sections are {', '.join(SECTIONS)}")

    mesh = mesh_lib.data_mesh()
    peak, how = peak_flops_per_device(args.dtype, args.peak_flops)
    rng = np.random.default_rng(0)
    res = {"machine": machine_info(args, peak, how), "results": []}

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def add(rec):  # the JSON is rewritten after every benchmark: a crash keeps what ran
        res["results"].append(rec)
        print(json.dumps(rec), flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)

    if "inference" in only:
        for spec in args.inference_batches.split(","):
            b = default_batch_size(mesh) if spec.strip() == "default" else int(spec)
            add(bench_inference(args, mesh, peak, rng, b))
    if "simclr" in only:
        add(bench_simclr(args, mesh, peak, rng))
    if "steal" in only:
        for spec in args.steal.split(","):
            arch, loss = spec.split(":")
            add(bench_steal(args, mesh, peak, rng, arch, loss))
    if "vmap" in only:
        add(bench_vmapped(args, mesh, peak, rng))
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
