"""Paper scale, ImageNet: steal the public SimSiam ResNet-50 with 50k-250k queries (ICML 2022).

Needs imagenet2012 prepared under $SSLSTEAL_DATA_DIR (manual download; BUILD.md,
"Paper-scale data") and SimSiam's public ResNet-50 checkpoint (100 epochs, batch 256:
checkpoint_0099.pth.tar from the facebookresearch/simsiam README).

Usage (import the victim once, scan, then downstream probes on the small datasets):
  python -m sslsteal_jax.main --config=configs/import_checkpoint.py:source=checkpoint_0099.pth.tar,arch=resnet50 --workdir=victims/simsiam_r50
  python -m sslsteal_jax.main --config=configs/imagenet_simsiam.py --workdir=runs/imagenet_simsiam
  python -m sslsteal_jax.main --config=configs/evaluate.py --config.dataset=cifar10@224x224x3 --config.victim_checkpoint=victims/simsiam_r50/checkpoints --config.checkpoints=runs/imagenet_simsiam/cells/CELL/checkpoints --workdir=runs/imagenet_simsiam_cifar10
(the last for each downstream dataset: cifar10, cifar100, svhn_cropped, stl10, all
``@224x224x3``; CELL is a cell name of the scan's results.csv). Arguments:
``configs/imagenet_simsiam.py:optimizer=lars,budgets=50000+250000,losses=infonce``.

Experiment ``budget_scan`` (sslsteal_jax/experiments/budget_scan.py) with the
reference's ImageNet settings (``stealsimsiam.py`` / ``linsimsiam.py``): victim = the
imported SimSiam ResNet-50 (torchvision layout, ``fc`` dropped: the 2,048-d pooled
backbone output is the API's answer); queries = the first 250,000 ImageNet train
images at 224x224 (centre crop of the shorter side, resized: the API is queried once
per image and answers are cached, so no per-epoch RandomResizedCrop); surrogate =
ResNet-50 without head (2,048-d, no adapter); losses InfoNCE (tau 0.1, the low end
of the reference's 0.1-0.25), SoftNN (T 1000) and MSE; SGD momentum 0.9, weight
decay 0, learning rate 0.1 x batch / 256 = 0.2 at batch 512, cosine decay per step,
100 epochs per budget (protocol=epochs); ``optimizer=lars`` switches to LARS
(trust coefficient 0.001, ``training.optim``). Surrogates compute in bfloat16
(``dtype``). Probes: the project's linear probe (softmax regression on standardised
frozen features, Adam-W, 100 epochs, the setting chosen on a validation split),
not the reference's LARS lr 1.0 on raw features: standardised features make the
LARS trust-ratio machinery unnecessary and the probe is a small share of the run.
The probe trains on the first ``probe_train_size`` (100,000) ImageNet train images
and tests on the last 10,000 validation images (tfds's ``test`` split has no labels).

Memory: streamed (``stream.enabled=True``, the default; ``data.stream``): the query
pool and the probe sets are lazy views of the ArrayRecord files, decoded and resized a
batch at a time, and the 250,000 answers are bought into the chunked on-disk cache
``<workdir>/answers_<source>/`` (1,000 per committed chunk, ``stream.answer_chunk``;
an interrupted scan resumes from the first missing chunk, every budget reads a prefix
of it), read back memory-mapped a batch at a time. Disk: the cache holds the images
sent (uint8, 150,528 B each at 224x224x3: 37.6 GB for 250,000) and their float32
answers (8 KiB each: 2.0 GB). Host memory: a few batches of images (512 x 150 KB =
77 MB each; ``stream.prefetch`` batches read ahead per pipeline), the probe features
(float32 2,048-d: 0.8 GB for 100,000 train images, 82 MB for 10,000 test images) and
the page cache the OS gives the memory-mapped chunks; no split is ever whole in
memory. ``--config.stream.enabled=False`` reads everything into host memory instead
(250,000 query images 37.6 GB, 100,000 probe images 15 GB, 10,000 test images 1.5 GB,
plus one more copy of each in ``data.registry``'s in-process cache).

Expected time (an ESTIMATE from FLOP counts, not a measurement): XLA's cost analysis
(the benchmarks' FLOP count) gives 7.99 GFLOP for one 224x224 ResNet-50 forward
pass; training costs 3x forward. Per loss: 100 epochs x (50k + 100k + 150k + 200k +
250k = 750k) = 7.5e7 trained images; x 3 losses = 2.25e8 -> 5.39e18 FLOP, plus
1.7e16 FLOP of API answers (250,000) and probe features (15 cells + 2 reference rows
encode 110,000 images each) -> 5.41e18 FLOP. At an assumed 40 % MFU of the dense
bf16 peak (H100/H200 989 TFLOP/s -> 396 TFLOP/s; TPU v4-8 = 4 x 275 -> 440
TFLOP/s): ~3.8 h on one H100/H200, ~3.4 h on a TPU v4-8; one loss at 250,000
queries alone (``losses=infonce,budgets=250000``: 2.5e7 trained images, 6.0e17 FLOP)
~0.42 h / ~0.38 h. Real ResNet-50 input
pipelines (JPEG decoding, augmentation) usually keep MFU well below 40 %: the time
scales as 0.4 / MFU. ``estimate(cfg)`` recomputes these numbers for other settings.
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base, budget_scan
from sslsteal_jax.configs.args import Arg

EXPERIMENT = "budget_scan"

#: The reference's ImageNet-scale budgets (queries).
BUDGETS = (50000, 100000, 150000, 200000, 250000)
#: XLA cost-analysis FLOPs of one ResNet-50 forward pass at 224x224 (ImageNet stem).
FORWARD_FLOPS = 7.994e9
#: Per-loss temperatures at ImageNet scale (the reference: InfoNCE 0.1-0.25, SoftNN 1000).
LOSS_OVERRIDES = {"infonce": {"temperature": 0.1}, "softnn": {"temperature": 1000.0}}

ARGS = {
    "victim": Arg("victims/simsiam_r50/checkpoints", "the imported SimSiam ResNet-50 checkpoint "
                  "(configs/import_checkpoint.py:source=checkpoint_0099.pth.tar,arch=resnet50)"),
    "losses": Arg(("infonce", "softnn", "mse"), "stealing losses (the reference's three at "
                  "ImageNet scale)"),
    "budgets": Arg(BUDGETS, "query budgets scanned (at most the source's size)", minimum=1),
    "sources": Arg(("imagenet2012:train[:250000]",), "query sources, NAME:SPLIT, read at "
                   "image_size (cifar10:train and svhn_cropped:train are the reference's "
                   "out-of-distribution ones)"),
    "image_size": Arg(224, "side of the square images (pixels) every dataset is read at",
                      minimum=32),
    "epochs": Arg(100, "surrogate epochs over each budget", minimum=1),
    "batch_size": Arg(512, "surrogate batch size (queries per step)", minimum=1),
    "lr": Arg(None, "peak learning rate (none = 0.1 x batch_size / 256)", kind=float,
              minimum=0, optional=True),
    "optimizer": Arg("sgd", "sgd (momentum 0.9) | lars (trust 0.001)", choices=("sgd", "lars")),
    "dtype": Arg("bfloat16", "surrogate compute dtype", choices=("bfloat16", "float32")),
    "probe_train_size": Arg(100000, "labelled ImageNet train images for the probes",
                            minimum=1),
    "seed": base.SEED_ARG,
}


def sized(name: str, side: int) -> str:
    """``NAME[:SPLIT]`` read at ``side`` x ``side`` x 3 (``registry.parse_resize``): a
    ``@HxWxC`` suffix is added to a name without one (``imagenet2012:train`` ->
    ``imagenet2012@224x224x3:train``)."""
    base_name, colon, split = name.partition(":")
    if "@" not in base_name:
        base_name = f"{base_name}@{side}x{side}x3"
    return base_name + colon + split


def build(a) -> ml_collections.ConfigDict:
    """The ImageNet paper-scale scan from typed arguments ``a`` (:data:`ARGS`): the budget
    scan's config (:func:`budget_scan.build`, protocol ``epochs``) with ImageNet data read
    at ``image_size``, the reference's optimizer, batch and temperatures, one cell at
    a time (``stack=1``: each cell keeps its checkpoint for the downstream probes) and
    streaming input (``stream.enabled=True``)."""
    c = budget_scan.build(args.defaults(budget_scan.ARGS, losses=a.losses, protocol="epochs",
                                        epochs=a.epochs, seed=a.seed, stack=1,
                                        probe_train_size=a.probe_train_size))
    base.data_fields(c, sized("imagenet2012", a.image_size), probe_test_size=10000,
                     test_split="validation")
    c.budgets = a.budgets
    c.query_sources = base.join(sized(s, a.image_size) for s in a.sources)
    c.victim.checkpoint = a.victim
    c.steal.optimizer = a.optimizer
    c.steal.weight_decay = 0.0
    c.steal.batch_size = a.batch_size
    c.steal.learning_rate = a.lr if a.lr is not None else 0.1 * a.batch_size / 256
    c.steal.model.dtype = a.dtype
    c.loss_overrides = ml_collections.ConfigDict(LOSS_OVERRIDES)
    c.eval.probe_epochs = 100
    c.stream.enabled = True  # 37.6 GB of queries: streamed (module docstring, "Memory")
    return c


get_config = args.config_getter(build, ARGS, "The ImageNet paper-scale scan's config")
validate = budget_scan.validate


def estimate(cfg) -> dict:
    """Estimated compute of the scan ``cfg`` (:func:`base.scan_estimate`), the forward
    FLOPs scaled by ``(side / 224)^2`` for images read at another size.

    Returns:
      ``{"flops", "<machine>": hours}``.
    """
    from sslsteal_jax.data.registry import parse_resize

    side = (parse_resize(cfg.dataset)[1] or (224,))[0]
    return base.scan_estimate(cfg, FORWARD_FLOPS * (side / 224) ** 2, cfg.probe_train_size)
