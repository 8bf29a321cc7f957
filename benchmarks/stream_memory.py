"""Bounded memory, measured: a streamed query + feature-extraction run over an ArrayRecord
pool about 10x larger than a memory cap (issue 12, item 3).

1. ``--step generate`` (a process of its own, so its writer buffers, which hold the
   whole pool, do not count below):
   a local tfds dataset ``stream_memory_pool`` of ``--images`` 224x224x3 uint8 images
   (Fashion-MNIST test images upsampled 8x, nearest, with a per-image colour tint
   and +-8 of pixel noise; 147 KiB each decoded) in ArrayRecord format, the layout of the offline builders
   (``data.builders``), under ``--data-dir``.
2. the measurement, in a fresh process: a small victim (ResNet-10 width 8, ImageNet
   stem, fixed init) behind ``VictimAPI``; the pool read lazily
   (``data.stream.StreamSource``); every pool image bought once into the chunked answer
   cache (``pipeline.queries.cached_answers(chunk=...)``, on disk); then every pool
   image's features extracted from ``data.stream.sequential_batches`` (grain worker
   threads, bounded prefetch) with ``evaluation.features.extract_features``. Reported:
   the RSS after imports and compilation (the baseline: JAX runtime, compiled
   programs), the peak RSS of the streamed phases (``psutil``, sampled every 20 ms by
   a thread), the process's high-water mark (``getrusage`` ``ru_maxrss``, which also
   covers the XLA compiler's peak before the phases) and images/s per phase.

Run: ``python benchmarks/stream_memory.py --out benchmarks/results/stream_memory.json``
(both steps; by default a 10,000-image pool, 1,505 MB decoded, against a 150 MB cap on
the memory the streamed phases use above the baseline, plus the same run on a
1,000-image pool to show that the peak does not grow with the pool).
The numbers in the README and benchmarks/README.md come from that command.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPE = (224, 224, 3)
NAME = "stream_memory_pool"


def _builder(data_dir: str, n_images: int):
    """The pool's tfds builder (``data.builders`` layout at 224x224x3), under
    ``data_dir/<n_images>`` so pools of other sizes never mix."""
    from sslsteal_jax.data import builders, raw

    class StreamMemoryPool(builders.ImageLabelBuilder, skip_registration=True):
        """``n_images`` Fashion-MNIST test images upsampled 8x (nearest) to 224x224x3
        with a per-image tint; labels are the Fashion-MNIST labels."""

        name = NAME
        IMAGE_SHAPE = SHAPE
        _DESCRIPTION = "Synthetic 224x224x3 pool for the streaming memory benchmark."

        def _split_names(self):
            return ("train",)

        def _split_generators(self, dl_manager):
            return {"train": self._examples()}

        def _examples(self):
            # one image at a time: the generator never holds the pool
            x, y = raw.fashion_mnist("test")
            rng = np.random.default_rng(0)
            tint = rng.uniform(0.5, 1.0, (n_images, 1, 1, 3))
            for i in range(n_images):
                im = np.repeat(np.repeat(x[i % len(x)], 8, 0), 8, 1)  # (224, 224, 1)
                # +-8 of pixel noise: the records do not compress to nothing on disk
                noise = rng.integers(0, 17, SHAPE, dtype=np.uint8)
                im = np.clip(np.round(im.astype(np.float32) * tint[i]) + noise, 0,
                             255).astype(np.uint8)
                yield i, {"image": im, "label": np.int64(y[i % len(y)])}

    return StreamMemoryPool(data_dir=os.path.join(data_dir, str(n_images)))


def generate(data_dir: str, n_images: int) -> dict:
    """Write the pool (no-op if prepared); returns ``{"seconds", "bytes"}``."""
    from sslsteal_jax.data import builders

    from tensorflow_datasets.core import shuffle

    # tfds's writer spills examples past 1 GB to temporary buckets through tf.io.gfile,
    # i.e. TensorFlow; this process only writes the pool, so let it keep them in memory
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 2 * n_images * 160_000)
    builder = _builder(data_dir, n_images)
    t = time.time()
    builders.prepare(builder)
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(builder.data_dir) for f in fs]
    return {"seconds": time.time() - t, "bytes": sum(os.path.getsize(f) for f in files)}


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


class _PeakRSS:
    """Samples this process's RSS every ``interval`` seconds on a thread; ``peak_mb``."""

    def __init__(self, interval: float = 0.02):
        import threading
        self.peak_mb, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())
        return self.peak_mb


def measure(data_dir: str, n_images: int, work: str, query_chunk: int, batch: int,
            threads: int) -> dict:
    """The streamed query + extraction run (module docstring); returns the numbers."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from sslsteal_jax.api import VictimAPI
    from sslsteal_jax.attacks.query import collect_answers
    from sslsteal_jax.data import stream
    from sslsteal_jax.evaluation.features import extract_features, make_apply
    from sslsteal_jax.models import build_simclr
    from sslsteal_jax.pipeline.queries import cached_answers

    pool = stream.StreamSource.from_builder(_builder(data_dir, n_images), "train")
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=8, stem="imagenet",
                                         head_hidden=64, head_out=32))
    model = build_simclr(cfg)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, *SHAPE), jnp.float32))
    api = VictimAPI(model, variables, SHAPE, batch_size=batch)
    apply = make_apply(model, variables, 0)
    api.query("warmup", pool[:batch])  # compile both programs before the clock starts
    extract_features(apply, pool[:batch], batch_size=batch)
    base = _rss_mb()
    sampler = _PeakRSS()
    t = time.time()
    api.register("attacker", len(pool))

    def buy(start, stop, request_id):
        x, y = collect_answers(api, "attacker", pool, stop, chunk=query_chunk, start=start,
                               request_id=request_id, progress=False)
        return x, y, len(x)

    bought = cached_answers(os.path.join(work, "query_cache"), {"pool": NAME}, len(pool), buy,
                            chunk=query_chunk)
    t_query = time.time() - t
    rss_query = sampler.stop()
    sampler = _PeakRSS()
    t = time.time()
    feats = extract_features(apply, stream.sequential_batches(pool, batch, threads=threads),
                             batch_size=batch)
    t_feat = time.time() - t
    rss_feat = sampler.stop()
    assert feats.shape[0] == len(pool) and bought.total_charged == len(pool)
    return {"rss_after_imports_and_compile_mb": round(base, 1),
            "peak_rss_query_mb": round(rss_query, 1), "peak_rss_extract_mb": round(rss_feat, 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "query_images_per_second": round(len(pool) / t_query, 1),
            "extract_images_per_second": round(len(pool) / t_feat, 1),
            "query_seconds": round(t_query, 1), "extract_seconds": round(t_feat, 1),
            "queries_charged": int(bought.total_charged), "devices": jax.device_count(),
            "victim": "resnet10 width 8, imagenet stem, 224x224x3"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--cap-mb", type=float, default=150.0,
                    help="the stated memory cap the pool is compared with (MB)")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "sslsteal_stream_bench"))
    ap.add_argument("--query-chunk", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small-images", type=int, default=1000,
                    help="also measure a pool of this many images (0: skip): the streamed "
                         "peak should not depend on the pool size")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "stream_memory.json"))
    ap.add_argument("--step", choices=["all", "generate", "measure"], default="all")
    args = ap.parse_args()
    if args.step == "generate":
        print(json.dumps(generate(args.data_dir, args.images)))
        return
    if args.step == "measure":
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(measure(args.data_dir, args.images, work, args.query_chunk,
                                     args.batch, args.threads)))
        return
    run = lambda step, n, extra=(): json.loads(subprocess.run(
        [sys.executable, __file__, "--step", step, "--images", str(n), "--data-dir",
         args.data_dir, *extra], check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1])
    knobs = ["--query-chunk", str(args.query_chunk), "--batch", str(args.batch),
             "--threads", str(args.threads)]
    small = None
    if args.small_images:
        run("generate", args.small_images)
        small = dict(run("measure", args.small_images, knobs), pool_images=args.small_images)
    gen = run("generate", args.images)
    res = run("measure", args.images, knobs)
    pool_mb = args.images * int(np.prod(SHAPE)) / 1e6
    out = {"pool_images": args.images, "image_shape": list(SHAPE),
           "pool_uint8_mb": round(pool_mb, 1), "pool_on_disk_mb": round(gen["bytes"] / 1e6, 1),
           "cap_mb": args.cap_mb, "pool_over_cap": round(pool_mb / args.cap_mb, 1),
           "generate_seconds": round(gen["seconds"], 1), **res,
           "streamed_peak_above_baseline_mb": round(
               max(res["peak_rss_query_mb"], res["peak_rss_extract_mb"])
               - res["rss_after_imports_and_compile_mb"], 1),
           "query_chunk": args.query_chunk, "batch": args.batch, "threads": args.threads,
           "smaller_pool": small, "load_average_at_end": [round(v, 1) for v in os.getloadavg()],
           "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
