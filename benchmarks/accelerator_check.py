"""Accelerator check: steal-step, stacked-step and inference throughput on a GPU / TPU host, JSON out.

    python benchmarks/accelerator_check.py --out benchmarks/results/accelerator.json
    python benchmarks/accelerator_check.py --tiny --out /tmp/accel.json   # CPU smoke test (CI)

One command that measures, in a few minutes on one accelerator, on the
("data",) mesh over all devices (the code path training uses):

* ``steal/<arch>/<loss>/<dtype>``: one surrogate training step of direct
  extraction (``attacks.direct.make_steal_step``) in float32 and bfloat16:
  ResNet-18 width 64 on 32x32x3 images (CIFAR stem, batch 256, MSE and
  InfoNCE) and ResNet-50 width 64 on 224x224x3 images (ImageNet stem, batch
  128, halved until it fits; InfoNCE). Next to each, the same step in PyTorch
  (``benchmarks/torch_ref.py``: channels_last, ``torch.autocast`` bf16,
  ``torch.cuda.synchronize()`` per timed block) when torch sees a CUDA device,
  timed in alternating blocks in this process; ``jax_over_torch_speed`` =
  torch seconds per step / JAX seconds per step (> 1: JAX is faster).
* ``vmapped_steal``: K=8 surrogates in one stacked step
  (``training.vmap.make_vmapped_steal_step``; ``benchmarks/run.py``'s
  ``bench_vmapped``: jax.vmap, the unrolled variant, and 8 sequential steps).
* ``inference/<arch>``: the victim's forward pass (``evaluation.features.make_apply``,
  BatchNorm in inference mode) at batch 1,024: ResNet-18 w64 32x32x3 and
  ResNet-50 w64 224x224x3, float32, with the torch twin.
* ``machine``: jax / jaxlib / plugin versions, devices and device kind, torch
  version and CUDA availability, peak FLOP/s per dtype.

FLOPs per step come from XLA's compiled cost analysis and the peak from
``benchmarks/run.py``'s ``PEAK_FLOPS`` table (``--peak-flops`` overrides);
MFU = FLOPs per step / seconds per step / (peak per device x devices). The
float32 peak is the chip's non-tensor-core FP32 figure; XLA and cuDNN use TF32
tensor cores for float32 convolutions by default (``jax_default_matmul_precision``
and torch's ``allow_tf32`` flags are recorded), so float32 MFU may exceed 100%.

Every section is guarded on its own: a failure (out of memory, an API
difference) is recorded as ``{"error": ...}`` and the next section runs. A
one-line summary is printed as each section finishes and the JSON is
rewritten atomically after each, so an interrupted run keeps what ran. The
exit status is 1 when any section failed. ``--tiny`` runs every kind of
section with small widths, resolutions and batches and one timed step (about
a minute on 2 CPU cores, nearly all of it XLA compilation), which is what
``tests/test_accelerator_check.py`` runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Environment for a command-line run (not when imported, e.g. by the tests). XLA
# reads these when its first backend starts, so they must precede any JAX use.
TINY_XLA_FLAGS = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false"}
if __name__ == "__main__":
    # --tiny is a smoke test, not a measurement: XLA:CPU compiles the tiny
    # programs ~2x faster at LLVM optimisation level 0, and faster again with
    # the older element-wise emitter instead of the fusion emitters (as
    # tests/conftest.py sets for the test suite). A flag already set is kept.
    if "--tiny" in sys.argv[1:]:
        _flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = " ".join(
            [_flags] + [f"{k}={v}" for k, v in TINY_XLA_FLAGS.items() if k not in _flags]).strip()
    # JAX preallocates 75% of GPU memory on first use; the torch reference runs
    # in the same process, so leave it room (an explicit setting wins).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

# The step, model, mesh and optimizer code come through benchmarks/run.py's
# namespace, so this check times exactly what run.py times wherever the package
# keeps them.
from benchmarks import run as bench  # noqa: E402
from benchmarks.run import (StepTimer, bench_vmapped, compiled_flops,  # noqa: E402
                            machine_info, peak_flops_per_device)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

make_steal_step, make_apply = bench.make_steal_step, bench.make_apply
SurrogateModel, build_encoder = bench.SurrogateModel, bench.build_encoder
mesh_lib, make_optimizer, TrainState = bench.mesh_lib, bench.make_optimizer, bench.TrainState

# Heavy data modules that must never be imported by this script (absent on a bare GPU
# image). ml_collections (pure Python, a core dependency: the surrogate trainer builds
# its ConfigDicts) is allowed; carry its wheel where the image lacks it.
FORBIDDEN_MODULES = ("tensorflow_datasets", "tensorflow", "mlxtend")
TEMPERATURE = 0.1  # InfoNCE temperature of the steal steps (as benchmarks/run.py)
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OutOfMemory")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An encoder at one input size: ``build_encoder(arch, width, stem)`` on ``image_shape`` (H, W, C)."""

    arch: str
    width: int
    stem: str
    image_shape: tuple

    @property
    def label(self) -> str:
        """Short name, e.g. ``resnet18_w64_32px``."""
        return f"{self.arch}_w{self.width}_{self.image_shape[0]}px"


@dataclasses.dataclass(frozen=True)
class StealSpec:
    """One steal-step configuration; ``batches`` are tried in order until one fits in memory."""

    model: ModelSpec
    loss: str
    dtype: str
    batches: tuple


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """One victim-inference configuration at ``batch`` images per call."""

    model: ModelSpec
    batch: int
    dtype: str = "float32"


def plan(tiny: bool) -> dict:
    """The configurations of a run: ``{"steal": [StealSpec], "inference": [InferenceSpec],
    "vmap": {"k", "vmap_batch"}}``.

    Default: ResNet-18 w64 32x32 (batch 256) x {mse, infonce} x {float32,
    bfloat16} and ResNet-50 w64 224x224 (batch 128, then 64, 32 if it does not
    fit) x infonce x {float32, bfloat16}; K=8 stacked surrogates (batch 64
    each); inference at batch 1,024. ``tiny``: widths 8, 8x8 / 32x32 images,
    batches 4-8, K=2, and a reduced steal matrix of two steps that still covers
    every architecture, stem, loss and dtype once (ResNet-18 / CIFAR stem / MSE
    / bfloat16 and ResNet-50 / ImageNet stem / InfoNCE / float32: the larger
    model in float32, whose program XLA:CPU compiles faster than bfloat16's;
    compilation dominates a CPU run: each steal program takes 5-20 s to compile
    on 2 cores).
    """
    if tiny:
        # Width 8, not 4: torch 2.13's CPU channels_last convolutions with 4
        # channels corrupted the heap (abort) with one intra-op thread.
        r18 = ModelSpec("resnet18", 8, "cifar", (8, 8, 3))
        r50 = ModelSpec("resnet50", 8, "imagenet", (32, 32, 3))
        steal = [StealSpec(r18, "mse", "bfloat16", (8,)), StealSpec(r50, "infonce", "float32", (4,))]
        inf_b, vmap = 8, {"k": 2, "vmap_batch": 4}
    else:
        r18 = ModelSpec("resnet18", 64, "cifar", (32, 32, 3))
        r50 = ModelSpec("resnet50", 64, "imagenet", (224, 224, 3))
        steal = [StealSpec(r18, loss, dt, (256,)) for loss in ("mse", "infonce")
                 for dt in ("float32", "bfloat16")]
        steal += [StealSpec(r50, "infonce", dt, (128, 64, 32)) for dt in ("float32", "bfloat16")]
        inf_b, vmap = 1024, {"k": 8, "vmap_batch": 64}
    inference = [InferenceSpec(r18, inf_b), InferenceSpec(r50, inf_b)]
    return {"steal": steal, "inference": inference, "vmap": vmap}


def section_names(cfg: dict, only=("steal", "vmap", "inference")) -> list:
    """Names of the sections a run of ``plan(...)`` output writes, in order."""
    names = []
    if "steal" in only:
        names += [f"steal/{s.model.arch}/{s.loss}/{s.dtype}" for s in cfg["steal"]]
    if "vmap" in only:
        names.append("vmapped_steal")
    if "inference" in only:
        names += [f"inference/{s.model.arch}" for s in cfg["inference"]]
    return names


# ----------------------------------------------------------------------------- helpers


def _finite(x):
    """``x`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _finite(x.item())
    return x


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".accel_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mfu(flops: float, sec: float, peak: float | None, n_dev: int) -> float:
    """Model FLOP utilisation as a fraction (NaN when the peak is unknown)."""
    if not peak or not sec:
        return float("nan")
    return flops / sec / (peak * n_dev)


def _record(batch: int, sec: float, flops: float, peak: float | None, n_dev: int, **extra) -> dict:
    mfu = _mfu(flops, sec, peak, n_dev)
    return dict(batch=batch, seconds_per_step=sec, images_per_second=batch / sec,
                flops_per_step=flops, achieved_flops_per_second=flops / sec,
                mfu=mfu, mfu_percent=100 * mfu, **extra)


def _is_oom(err: BaseException) -> bool:
    msg = f"{type(err).__name__}: {err}"
    return any(m in msg for m in OOM_MARKERS)


class TorchContext:
    """The PyTorch side: which device it runs on, or why it does not run.

    Attributes:
      device: "cuda", "cpu" or None (no torch run); ``reason`` says why when None.
    """

    def __init__(self, choice: str, tiny: bool, threads: int | None = None):
        self.device, self.reason, self.torch, self.info = None, None, None, {}
        try:
            import torch
        except Exception as e:  # not installed (CI, CPU hosts without the [bench] extra)
            self.reason = f"torch not importable: {type(e).__name__}: {e}"
            self.info = {"installed": False, "skipped": self.reason}
            return
        self.torch = torch
        try:
            cuda = bool(torch.cuda.is_available())
            self.info = {"installed": True, "version": torch.__version__,
                         "cuda_available": cuda, "cuda_version": torch.version.cuda,
                         "cudnn_version": torch.backends.cudnn.version() if cuda else None,
                         "device_name": torch.cuda.get_device_name(0) if cuda else None,
                         "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                         "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
        except Exception as e:  # a broken CUDA set-up must not stop the JAX sections
            self.reason = f"torch CUDA query failed: {type(e).__name__}: {e}"
            self.info = {"installed": True, "version": torch.__version__, "skipped": self.reason}
            return
        if choice == "none":
            self.reason = "--torch-device none"
        elif choice == "cuda" or (choice == "auto" and cuda):
            if not cuda:
                self.reason = "--torch-device cuda but torch.cuda.is_available() is False"
            else:
                self.device = "cuda"
                torch.backends.cudnn.benchmark = True  # autotuned in the warm-up steps
        elif choice == "cpu" or (choice == "auto" and tiny):
            self.device = "cpu"
            # Intra-op threads next to XLA's on a small, busy host made a tiny
            # step 100x slower (2.3 s vs 15 ms per step with one thread on 2 cores).
            torch.set_num_threads(int(threads or 1))
        else:
            self.reason = "torch has no CUDA device (CPU torch runs only with --tiny or --torch-device cpu)"
        self.info["device"] = self.device
        if self.device == "cpu":
            self.info["threads"] = torch.get_num_threads()
        if self.reason:
            self.info["skipped"] = self.reason

    def sync(self):
        """Wait for queued torch work (CUDA); no-op on CPU."""
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def release(self):
        """Free cached torch device memory between sections."""
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


def host_init(module, image_shape, seed: int = 0) -> dict:
    """Random variables ``{"params", "batch_stats"}`` of ``module`` as host numpy arrays, no compilation.

    Shapes come from ``jax.eval_shape(module.init, ...)`` (tracing only). Kernels
    are He-normal (std ``sqrt(2 / fan_in)``), biases 0, BatchNorm scales 1 and
    running variances 1. A timing benchmark does not need flax's initializers,
    and their jitted PRNG program (threefry) took 10-90 s to compile on a CPU
    per model; this takes well under a second.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((2, *image_shape), jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
        if name in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        return np.zeros(s.shape, s.dtype)

    v = jax.tree_util.tree_map_with_path(fill, {"params": shapes["params"],
                                                "batch_stats": shapes["batch_stats"]})
    return v


class Variables:
    """Initial encoder variables per (model, wrapper), on the host (:func:`host_init`).

    Parameters are float32 for every compute dtype, so the float32 and
    bfloat16 configurations of one model share them.
    """

    def __init__(self):
        self._cache = {}

    def get(self, spec: ModelSpec, wrap_surrogate: bool):
        """Host ``{"params", "batch_stats"}`` of ``SurrogateModel(encoder)``
        (``wrap_surrogate``) or of the bare encoder."""
        key = (spec, wrap_surrogate)
        if key not in self._cache:
            enc = build_encoder(spec.arch, spec.width, spec.stem, "float32")
            module = SurrogateModel(enc, None) if wrap_surrogate else enc
            self._cache[key] = host_init(module, spec.image_shape)
        return self._cache[key]


def _train_state(model, variables, mesh):
    """Replicated TrainState with ``benchmarks/run.py``'s optimizer (Adam, lr 1e-3, wd 1e-4)."""
    variables = jax.tree_util.tree_map(np.array, variables)  # own copies: the state is donated
    st = TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           tx=make_optimizer("adam", 1e-3, 1e-4, 10_000))
    return mesh_lib.replicate(st.replace(step=np.asarray(0, np.int32)), mesh)


def _alternate(jax_block, torch_block, repeats: int, torch_rec: dict) -> tuple[list, list]:
    """Run ``repeats`` alternating timed blocks; returns per-block seconds per step (JAX, torch).

    A torch block that raises is recorded in ``torch_rec["error"]`` and the
    remaining blocks time JAX alone (no torch timings are returned then).
    """
    jt, tt = [], []
    for _ in range(repeats):
        jt.append(jax_block())
        if torch_block is not None:
            try:
                tt.append(torch_block())
            except Exception as e:
                torch_rec["error"] = f"{type(e).__name__}: {e}"[:2000]
                torch_block, tt = None, []
    return jt, tt


def _torch_timer(tctx: TorchContext, fn, args, steps: int):
    def block():
        tctx.sync()
        t = time.perf_counter()
        for _ in range(steps):
            fn(*args)
        tctx.sync()
        return (time.perf_counter() - t) / steps
    return block


def _compare(rec: dict, batch: int, jt: list, tt: list, flops: float, peak, n_dev: int, torch_rec: dict):
    """Attach the torch timing and the speed ratio to a JAX record."""
    if not tt:
        return
    sec = float(np.median(tt))
    torch_rec.update(seconds_per_step=sec, images_per_second=batch / sec,
                     mfu=_mfu(flops, sec, peak, n_dev), seconds_per_block=tt)
    torch_rec["mfu_percent"] = 100 * torch_rec["mfu"]
    ratios = [t / j for t, j in zip(tt, jt)]
    rec["jax_over_torch_speed"] = float(np.median(ratios))
    rec["jax_over_torch_speed_per_block"] = ratios


# ----------------------------------------------------------------------------- sections


def bench_steal_config(spec: StealSpec, batch: int, opts, mesh, peaks: dict, rng,
                       variables: Variables, tctx: TorchContext) -> dict:
    """Time one steal step (JAX and, if available, torch) at ``batch``.

    Returns a record: ``images_per_second`` (images/s), ``seconds_per_step``
    (s), ``mfu`` (fraction) and ``mfu_percent`` (percent), ``flops_per_step``,
    ``compile_seconds`` (lowering + XLA compilation, s), and ``torch`` /
    ``jax_over_torch_speed`` when the torch step ran.
    """
    m = spec.model
    enc = build_encoder(m.arch, m.width, m.stem, spec.dtype)
    d = enc.representation_dim
    model = SurrogateModel(enc, None)
    jstep = mesh_lib.compile_step(make_steal_step(model, spec.loss, TEMPERATURE), mesh, 2)
    n_dev = mesh_lib.num_devices(mesh)
    imgs = rng.integers(0, 256, (batch, *m.image_shape), dtype=np.uint8)
    ans = rng.standard_normal((batch, d), dtype=np.float32)
    x, a = mesh_lib.shard_batch([imgs, ans], mesh)
    key = mesh_lib.replicate(jax.random.key(1), mesh)
    st = _train_state(model, variables.get(m, True), mesh)
    t0 = time.perf_counter()
    flops = compiled_flops(jstep, st, x, a, key)
    compile_s = time.perf_counter() - t0
    timer = StepTimer(jstep, st, (x, a, key))
    timer.run(opts.warmup)

    torch_rec, torch_block = dict(tctx.info), None
    if tctx.device:
        try:
            torch = tctx.torch
            torch.manual_seed(0)
            from benchmarks.torch_ref import build_torch_step
            tstep, n_params = build_torch_step(m.arch, m.width, m.image_shape[-1], spec.loss,
                                               TEMPERATURE, channels_last=True, stem=m.stem,
                                               device=tctx.device, dtype=spec.dtype, sync=False)
            ti = torch.from_numpy(imgs).to(tctx.device)
            ta = torch.from_numpy(ans).to(tctx.device)
            t0 = time.perf_counter()
            for _ in range(opts.warmup):
                tstep(ti, ta)
            tctx.sync()
            torch_rec.update(warmup_seconds=time.perf_counter() - t0, n_params=int(n_params),
                             layout="channels_last (NHWC)",
                             precision="torch.autocast bfloat16" if spec.dtype == "bfloat16" else "float32")
            torch_block = _torch_timer(tctx, tstep, (ti, ta), opts.steps)
        except Exception as e:  # the JAX numbers stand without the torch side
            torch_rec["error"] = f"{type(e).__name__}: {e}"[:2000]
            torch_block = None
    jt, tt = _alternate(lambda: timer.run(opts.steps), torch_block, opts.repeats, torch_rec)
    sec = float(np.median(jt))
    peak = peaks[spec.dtype]
    rec = _record(batch, sec, flops, peak, n_dev, model=m.label, arch=m.arch, width=m.width, stem=m.stem,
                  image_shape=list(m.image_shape), loss=spec.loss, dtype=spec.dtype,
                  compile_seconds=compile_s, seconds_per_block=jt,
                  n_params=int(sum(np.size(p) for p in jax.tree_util.tree_leaves(timer.state.params))))
    _compare(rec, batch, jt, tt, flops, peak, n_dev, torch_rec)
    rec["torch"] = torch_rec
    del timer, st
    tctx.release()
    return rec


def bench_steal(spec: StealSpec, opts, mesh, peaks, rng, variables, tctx) -> dict:
    """:func:`bench_steal_config` at the first of ``spec.batches`` that fits in device memory.

    An out-of-memory error moves on to the next (smaller) batch and is kept in
    ``batch_fallbacks``; any other error propagates.
    """
    fallbacks = []
    for i, b in enumerate(spec.batches):
        b = mesh_lib.padded_size(b, mesh)
        try:
            rec = bench_steal_config(spec, b, opts, mesh, peaks, rng, variables, tctx)
        except Exception as e:
            if not _is_oom(e) or i == len(spec.batches) - 1:
                raise
            fallbacks.append({"batch": b, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            gc.collect()
            tctx.release()
            continue
        if fallbacks:
            rec["batch_fallbacks"] = fallbacks
        return rec
    raise AssertionError("unreachable")


def bench_inference_config(spec: InferenceSpec, opts, mesh, peaks, rng, variables: Variables,
                           tctx: TorchContext) -> dict:
    """Victim inference (encoder forward, BatchNorm running statistics) at ``spec.batch`` images per call.

    Returns a record like :func:`bench_steal_config` (images/s, seconds per call,
    MFU fraction and percent, compile seconds, torch side).
    """
    m = spec.model
    enc = build_encoder(m.arch, m.width, m.stem, spec.dtype)
    apply = make_apply(enc, variables.get(m, False), output_index=None, mesh=mesh)
    b = mesh_lib.padded_size(spec.batch, mesh)
    n_dev = mesh_lib.num_devices(mesh)
    imgs = rng.integers(0, 256, (b, *m.image_shape), dtype=np.uint8)
    (x,) = mesh_lib.shard_batch([imgs], mesh)
    t0 = time.perf_counter()
    flops = compiled_flops(apply.jitted, apply.variables, x)
    compile_s = time.perf_counter() - t0
    timer = StepTimer(lambda s, x: (s, apply(x)), None, (x,))
    timer.run(opts.warmup)

    torch_rec, torch_block = dict(tctx.info), None
    if tctx.device:
        try:
            from benchmarks.torch_ref import build_torch_apply
            torch = tctx.torch
            torch.manual_seed(0)
            tapply, n_params = build_torch_apply(m.arch, m.width, m.image_shape[-1], m.stem,
                                                 tctx.device, channels_last=True, dtype=spec.dtype)
            ti = torch.from_numpy(imgs).to(tctx.device)
            for _ in range(opts.warmup):
                tapply(ti)
            tctx.sync()
            torch_rec.update(n_params=int(n_params), layout="channels_last (NHWC)")
            torch_block = _torch_timer(tctx, tapply, (ti,), opts.steps)
        except Exception as e:
            torch_rec["error"] = f"{type(e).__name__}: {e}"[:2000]
            torch_block = None
    jt, tt = _alternate(lambda: timer.run(opts.steps), torch_block, opts.repeats, torch_rec)
    sec = float(np.median(jt))
    peak = peaks[spec.dtype]
    rec = _record(b, sec, flops, peak, n_dev, model=m.label, arch=m.arch, width=m.width, stem=m.stem,
                  image_shape=list(m.image_shape), dtype=spec.dtype, compile_seconds=compile_s,
                  seconds_per_block=jt, note="encoder only (pooled representation), random init")
    _compare(rec, b, jt, tt, flops, peak, n_dev, torch_rec)
    rec["torch"] = torch_rec
    del timer, apply
    tctx.release()
    return rec


@contextlib.contextmanager
def _host_initialised_states():
    """Within the block, ``benchmarks/run.py``'s ``_state`` (used by ``bench_vmapped``
    for its K members) initialises on the host (:func:`host_init`) instead of
    running flax's initialisers eagerly (over a minute of small compilations
    on a loaded CPU). Same signature, optimizer and step counter; restored on exit."""
    original = getattr(bench, "_state", None)

    def state(model, image_shape, lr=1e-3, seed=0):
        v = host_init(model, image_shape, seed)
        st = TrainState.create(apply_fn=model.apply, params=v["params"], batch_stats=v["batch_stats"],
                               tx=make_optimizer("adam", lr, 1e-4, 10_000))
        return st.replace(step=np.asarray(0, np.int32))

    if original is None:  # run.py changed: use it as it is
        yield
        return
    bench._state = state
    try:
        yield
    finally:
        bench._state = original


def bench_vmap_section(vmap_cfg: dict, opts, mesh, peaks, rng) -> dict:
    """K surrogates in one stacked step vs K sequential steps: ``benchmarks/run.py``'s
    ``bench_vmapped`` (ResNet-10 w16, 28x28x1, MSE, float32), plus the headline numbers
    of the mode ``make_vmapped_steal_step(mode="auto")`` picks on this backend:
    ``images_per_second`` (images/s, all K members), ``mfu`` / ``mfu_percent`` and
    ``auto_speedup_over_sequential`` (x)."""
    args = SimpleNamespace(k=vmap_cfg["k"], vmap_batch=mesh_lib.padded_size(vmap_cfg["vmap_batch"], mesh),
                           dtype="float32", steps=opts.steps, repeats=opts.repeats)
    peak = peaks["float32"] if peaks["float32"] else float("nan")
    t0 = time.perf_counter()
    with _host_initialised_states():
        rec = bench_vmapped(args, mesh, peak, rng)
    auto = rec[rec["auto_mode"]]
    rec.update(images_per_second=auto["images_per_second"], mfu=auto["mfu"],
               mfu_percent=100 * auto["mfu"],
               auto_speedup_over_sequential=1.0 / rec["auto_over_sequential_time"],
               vmap_speedup_over_sequential=1.0 / rec["vmap_over_sequential_time"],
               section_note="compile + timing together", compile_and_run_seconds=time.perf_counter() - t0)
    return rec


# ----------------------------------------------------------------------------- machine / summary


def _versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "jax-cuda13-plugin", "jax-cuda12-plugin",
                 "jax-cuda13-pjrt", "jax-cuda12-pjrt", "libtpu", "torch"):
        try:
            out[name] = metadata.version(name)
        except Exception:
            pass
    return out


def machine(peaks: dict, peak_sources: dict, tctx: TorchContext) -> dict:
    """Machine and software description: versions, devices, device kind, peaks, torch / CUDA."""
    info = machine_info(SimpleNamespace(dtype="float32"), peaks["float32"], peak_sources["float32"])
    devs = jax.devices()
    versions = _versions()
    info.update(versions=versions, jaxlib=versions.get("jaxlib"),
                backend=jax.default_backend(), device_list=[str(d) for d in devs],
                local_devices=jax.local_device_count(),
                peak_flops_per_device_by_dtype=peaks, peak_source_by_dtype=peak_sources,
                xla_python_client_mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
                argv=sys.argv[1:], torch=tctx.info)
    info.pop("dtype", None)
    try:  # None = XLA's default (TF32 for float32 convolutions and dots on NVIDIA GPUs)
        info["jax_default_matmul_precision"] = getattr(jax.config, "jax_default_matmul_precision")
    except Exception as e:
        info["jax_default_matmul_precision"] = f"unreadable: {type(e).__name__}"
    try:
        stats = devs[0].memory_stats() or {}
        info["device_memory_bytes_limit"] = stats.get("bytes_limit")
    except Exception:
        pass
    return info


def summarize(name: str, rec: dict) -> str:
    """One line for a finished section: images/s, MFU percent, torch images/s and the speed ratio."""
    if "error" in rec:
        return f"[{name}] ERROR {rec['error'][:240]}"
    parts = [f"[{name}]"]
    if "batch" in rec:
        parts.append(f"batch {rec['batch']}")
    if "images_per_second" in rec:
        parts.append(f"jax {rec['images_per_second']:,.1f} img/s")
    mfu = rec.get("mfu_percent")
    if mfu is not None and math.isfinite(mfu):
        parts.append(f"MFU {mfu:.2f}%")
    if "compile_seconds" in rec:
        parts.append(f"compile {rec['compile_seconds']:.1f}s")
    t = rec.get("torch") or {}
    if "images_per_second" in t:
        parts.append(f"| torch[{t.get('device')}] {t['images_per_second']:,.1f} img/s")
        parts.append(f"jax/torch {rec['jax_over_torch_speed']:.2f}x")
    elif t.get("error"):
        parts.append(f"| torch error: {t['error'][:120]}")
    elif t.get("skipped"):
        parts.append("| torch skipped")
    if "auto_speedup_over_sequential" in rec:
        parts.append(f"| K={rec['k']} {rec['auto_mode']} {rec['auto_speedup_over_sequential']:.2f}x "
                     f"vs sequential (vmap {rec['vmap_speedup_over_sequential']:.2f}x)")
    if "section_seconds" in rec:
        parts.append(f"[{rec['section_seconds']:.1f}s]")
    return " ".join(parts)


def main(argv=None) -> int:
    """Run every section; returns the exit status (0: all sections ran, 1: some recorded an error)."""
    p = argparse.ArgumentParser(
        description="Accelerator check: steal-step (fp32/bf16, ResNet-18 and ResNet-50), K=8 stacked "
                    "step and victim-inference throughput (images/s) and MFU, next to PyTorch on CUDA; "
                    "one JSON (written atomically after every section).",
        epilog="The default run is sized to finish in under 5 minutes on one H200 (--budget-s guards "
               "it); --tiny takes about a minute on 2 CPU cores, mostly XLA compilation (CI smoke test).")
    p.add_argument("--out", default="benchmarks/results/accelerator.json", help="JSON output path")
    p.add_argument("--tiny", action="store_true",
                   help="small widths/resolutions/batches, 1 warm-up + 1 timed step (CPU smoke test)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after compilation (default 2; tiny 1)")
    p.add_argument("--steps", type=bench.positive_int, default=None, help="steps per timed block (default 5; tiny 1)")
    p.add_argument("--repeats", type=bench.positive_int, default=None,
                   help="timed blocks, JAX and torch alternating; the median is reported (default 2; tiny 1)")
    p.add_argument("--only", default="steal,vmap,inference",
                   help="comma list of sections to run: steal, vmap, inference (machine info always)")
    p.add_argument("--torch-device", default="auto", choices=["auto", "cuda", "cpu", "none"],
                   help="where the PyTorch reference runs; auto = cuda when available, cpu only with --tiny")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="intra-op threads of the PyTorch reference on CPU (default 1)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="override the peak FLOP/s per device (all dtypes) for MFU")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip (record as an error) sections that would start after this many seconds "
                        "(default 270; tiny: no limit)")
    p.add_argument("--compile-cache", default=None,
                   help="directory for JAX's persistent compilation cache (a rerun compiles nothing)")
    opts = p.parse_args(argv)
    t_start = time.perf_counter()  # the budget counts from here (JAX backend start-up included)
    only = {s.strip() for s in opts.only.split(",") if s.strip()}
    if not only or only - {"steal", "vmap", "inference"}:
        p.error(f"--only {opts.only!r}: allowed sections are steal, vmap, inference")
    out_dir = os.path.dirname(os.path.abspath(opts.out))
    try:  # before any work: a JSON path that cannot be written fails in one line, not at the end
        if os.path.isdir(opts.out):
            raise OSError("it is a directory")
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise OSError(f"{out_dir} is not writable")
    except OSError as e:
        blocker = out_dir
        while not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        why = (f"{blocker} is a file, not a folder" if not os.path.isdir(blocker)
               else getattr(e, "strerror", None) or str(e))
        p.error(f"--out {opts.out!r}: cannot write the JSON there ({why}); "
                "allowed: a file path whose folder exists or can be made")
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.tiny else 2)
    opts.steps = opts.steps if opts.steps is not None else (1 if opts.tiny else 5)
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.tiny else 2)
    budget = opts.budget_s if opts.budget_s is not None else (float("inf") if opts.tiny else 270.0)
    if opts.compile_cache:
        jax.config.update("jax_compilation_cache_dir", opts.compile_cache)

    mesh = mesh_lib.data_mesh()
    peaks, peak_sources = {}, {}
    for dt in ("float32", "bfloat16"):
        try:
            peaks[dt], peak_sources[dt] = peak_flops_per_device(dt, opts.peak_flops)
        except ValueError as e:
            peaks[dt], peak_sources[dt] = None, f"unknown ({e}); MFU left null"
    tctx = TorchContext(opts.torch_device, opts.tiny, opts.torch_threads)
    cfg = plan(opts.tiny)
    rng = np.random.default_rng(0)
    variables = Variables()
    res = {"machine": None, "settings": {"tiny": opts.tiny, "warmup": opts.warmup, "steps": opts.steps,
                                         "repeats": opts.repeats, "budget_s": budget,
                                         "temperature": TEMPERATURE, "only": sorted(only),
                                         "xla_flags": os.environ.get("XLA_FLAGS", ""),
                                         "planned_sections": section_names(cfg, only)},
           "sections": {}, "summary": []}

    def section(name: str, fn):
        t0 = time.perf_counter()
        if t0 - t_start > budget:
            rec = {"error": f"skipped: the time budget of {budget:.0f} s was spent"}
        else:
            try:
                rec = fn()
            except Exception as e:  # one bad section never loses the others
                rec = {"error": f"{type(e).__name__}: {e}"[:2000],
                       "traceback": traceback.format_exc()[-4000:]}
        rec["section_seconds"] = time.perf_counter() - t0
        res["sections"][name] = rec
        line = summarize(name, rec)
        res["summary"].append(line)
        res["total_seconds"] = time.perf_counter() - t_start
        write_json_atomic(opts.out, res)
        print(line, flush=True)
        gc.collect()

    try:
        res["machine"] = machine(peaks, peak_sources, tctx)
    except Exception as e:
        res["machine"] = {"error": f"{type(e).__name__}: {e}"}
    m = res["machine"]
    print(f"[machine] {m.get('platform')} x{m.get('devices')} ({m.get('device_kind')}), "
          f"jax {m.get('jax')}, jaxlib {m.get('jaxlib')}, torch "
          f"{tctx.info.get('version', 'absent')} (torch device: {tctx.device or tctx.reason})",
          flush=True)
    write_json_atomic(opts.out, res)

    if "steal" in only:
        for spec in cfg["steal"]:
            section(f"steal/{spec.model.arch}/{spec.loss}/{spec.dtype}",
                    lambda spec=spec: bench_steal(spec, opts, mesh, peaks, rng, variables, tctx))
    if "vmap" in only:
        section("vmapped_steal", lambda: bench_vmap_section(cfg["vmap"], opts, mesh, peaks, rng))
    if "inference" in only:
        for spec in cfg["inference"]:
            section(f"inference/{spec.model.arch}",
                    lambda spec=spec: bench_inference_config(spec, opts, mesh, peaks, rng, variables, tctx))

    res["forbidden_modules_loaded"] = sorted(
        mod for mod in sys.modules if mod.split(".")[0] in FORBIDDEN_MODULES)
    res["total_seconds"] = time.perf_counter() - t_start
    errors = [k for k, v in res["sections"].items() if "error" in v]
    res["failed_sections"] = errors
    write_json_atomic(opts.out, res)
    print(f"wrote {opts.out}: {len(res['sections']) - len(errors)}/{len(res['sections'])} sections ok "
          f"in {res['total_seconds']:.1f} s" + (f"; failed: {', '.join(errors)}" if errors else ""),
          flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
