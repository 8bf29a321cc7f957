"""Paper scale, CIFAR-10: budget scan against a ResNet-18/34 SimCLR victim (ICML 2022, Sec. 4).

Needs the tensorflow-datasets data cifar10, svhn_cropped and stl10 prepared under
$SSLSTEAL_DATA_DIR (BUILD.md, "Paper-scale data"; this machine cannot download).

Usage (two commands: the victim, then the scan):
  python -m sslsteal_jax.main --config=configs/victim_simclr.py:dataset=cifar10,arch=resnet18,width=64,epochs=200,batch_size=256,lr=3e-4,temperature=0.07 --config.probe_test_size=1000 --workdir=victims/cifar10_resnet18
  python -m sslsteal_jax.main --config=configs/cifar10.py --workdir=runs/cifar10
or import a public CIFAR-stem checkpoint as the victim instead of training it:
  python -m sslsteal_jax.main --config=configs/import_checkpoint.py:source=FILE.pth,arch=resnet18,stem=cifar --workdir=victims/cifar10_resnet18
ResNet-34: arch=resnet34 in the victim command and
``configs/cifar10.py:victim=victims/cifar10_resnet34/checkpoints``.

Experiment ``budget_scan`` (sslsteal_jax/experiments/budget_scan.py) with the
reference's settings: victim SimCLR ResNet-18, CIFAR stem (3x3 conv, no max-pool),
head 512-512-128, NT-Xent tau 0.07, Adam 3e-4, weight decay 1e-4, batch 256, 200
epochs (:data:`VICTIM_ARG`); stealing with the paper's four losses at their reference
settings (``sslsteal_jax.losses.LOSSES``: mse / wasserstein batch 64 lr 1e-3, infonce
batch 256 lr 3e-4 tau 0.07, softnn batch 256 lr 1e-3 T 100; Adam, weight decay 1e-4;
no CPU-scale overrides), 100 epochs over each budget (protocol=epochs), budgets
500-50,000, query sources CIFAR-10 train (the victim's own training images), SVHN
train (73,257) and STL-10 unlabelled (100,000, 96x96 resized to 32x32); linear
probes on the 50,000 CIFAR-10 train images, tested on the last 1,000 test images
(the reference's hold-out). Surrogates are the victim's architecture.

Expected time (an ESTIMATE from FLOP counts, not a measurement): XLA's cost
analysis (the benchmarks' FLOP count) gives 0.97 GFLOP per 32x32 image for one
ResNet-18 forward pass (2.01 for ResNet-34); training costs 3x forward.
Victim: 50,000 images x 2 views x 200 epochs = 2.0e7 trained images -> 5.8e16 FLOP.
Scan: per source and loss, 100 epochs x (500 + 1k + 5k + 10k + 20k + 30k + 40k +
50k = 156,500) = 1.565e7 trained images; x 4 losses x 3 sources = 1.88e8 -> 5.5e17 FLOP,
plus 5.0e15 FLOP of API answers and probe features (96 cells + 2 reference rows
encode 51,000 images each; 3 x 50,000 answers) -> 5.5e17 FLOP.
At an assumed 40 % MFU of the dense bf16 peak (``--config.steal.model.dtype=bfloat16``;
H100/H200 989 TFLOP/s -> 396 TFLOP/s; TPU v4-8 = 4 x 275 -> 440 TFLOP/s):
victim ~0.04 h on one H100/H200 (~0.04 h on a v4-8), scan ~0.39 h on one
H100/H200 (~0.35 h on a v4-8); ResNet-34 ~2.1x. Small 32x32 batches (64 for mse)
rarely reach 40 % MFU, and float32 (the default) peaks at 67 TFLOP/s on an H100:
expect several times longer in practice. ``estimate(cfg)`` recomputes these numbers
for any budgets, losses, sources and epochs.
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base, budget_scan
from sslsteal_jax.configs.args import Arg

EXPERIMENT = "budget_scan"

#: The victim's ``configs/victim_simclr.py`` arguments (the reference's SimCLR settings).
VICTIM_ARG = ("dataset=cifar10,arch=resnet18,width=64,epochs=200,batch_size=256,lr=3e-4,"
              "temperature=0.07")
#: The budgets the reference scans at CIFAR scale, 500 and up (queries).
BUDGETS = (500, 1000, 5000, 10000, 20000, 30000, 40000, 50000)
#: Query sources: the victim's training images, and two out-of-distribution datasets.
SOURCES = ("cifar10:train", "svhn_cropped:train", "stl10:unlabelled")
#: XLA cost-analysis FLOPs of one 32x32 forward pass (width 64, CIFAR stem).
FORWARD_FLOPS = {"resnet18": 0.967e9, "resnet34": 2.007e9}

ARGS = {
    "victim": Arg("victims/cifar10_resnet18/checkpoints", "the victim checkpoint (trained with "
                  "configs/victim_simclr.py:" + VICTIM_ARG + ", or imported)"),
    "losses": base.losses_arg("all"),
    "budgets": Arg(BUDGETS, "query budgets scanned (each at most every source's size)",
                   minimum=1),
    "sources": Arg(SOURCES, "query sources, NAME:SPLIT (resized to 32x32x3)"),
    "epochs": Arg(100, "surrogate epochs over each budget (the reference's 100)", minimum=1),
    "probe_train_size": Arg(None, "labelled CIFAR-10 train images for the probes (none = all "
                            "50,000)", kind=int, minimum=1, optional=True),
    "seed": base.SEED_ARG,
}


def build(a) -> ml_collections.ConfigDict:
    """The CIFAR-10 paper-scale scan from typed arguments ``a`` (:data:`ARGS`): the budget
    scan's config (:func:`budget_scan.build`, protocol ``epochs``) with CIFAR-10 data, the
    reference's per-loss settings and the victim checkpoint ``a.victim``."""
    c = budget_scan.build(args.defaults(budget_scan.ARGS, losses=a.losses, protocol="epochs",
                                        epochs=a.epochs, seed=a.seed,
                                        probe_train_size=a.probe_train_size))
    base.data_fields(c, "cifar10", probe_test_size=1000)
    c.budgets = a.budgets
    c.query_sources = base.join(a.sources)
    c.victim.checkpoint = a.victim
    c.loss_overrides = ml_collections.ConfigDict({})  # the reference's settings, unscaled
    c.eval.probe_epochs = 100
    return c


get_config = args.config_getter(build, ARGS, "The CIFAR-10 paper-scale scan's config")
validate = budget_scan.validate


def estimate(cfg, arch: str = "resnet18", victim_epochs: int = 200) -> dict:
    """Estimated compute of the victim (50,000 images x 2 views x ``victim_epochs``) and
    of the scan ``cfg`` (:func:`base.scan_estimate`) for victim architecture ``arch``.

    Returns:
      ``{"victim": {...}, "scan": {...}}``, each ``{"flops", "<machine>": hours}``.
    Raises:
      KeyError: ``arch`` not in :data:`FORWARD_FLOPS`.
    """
    fwd = FORWARD_FLOPS[arch]
    return {"victim": base.time_estimate(fwd, 50000 * 2 * victim_epochs, 0),
            "scan": base.scan_estimate(cfg, fwd, cfg.probe_train_size or 50000)}
