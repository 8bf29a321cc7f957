"""SimCLR victim training config (docs/science.md section 4, scaled to CPU).

Usage:
  python -m sslsteal_jax.main --config=configs/victim_simclr.py:dataset=fashion_mnist,arch=resnet10,width=16,epochs=22 --workdir=victims/my_victim

Experiment ``train_victim`` (sslsteal_jax/experiments/train_victim.py): SimCLR
(NT-Xent, Chen et al., ICML 2020) on the dataset's train split, then linear
probes of the victim and an independent encoder. Any subset of the arguments
may be given; further fields with ``--config.FIELD=VALUE`` (e.g.
``--config.learning_rate=...``). ``train_size=N`` trains on the first N train
images only (a small private set for dataset inference, e.g.
``width=8,epochs=160,train_size=1024``; configs/verify.py then takes exactly
these N images as the private set). ``init_from``: warm restart from a SimCLR
checkpoint (fresh optimizer and schedule).
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "train_victim"

ARGS = {
    "dataset": Arg("fashion_mnist", "training dataset: fashion_mnist | mnist_subset | digits | "
                   "any tensorflow-datasets image dataset"),
    "arch": Arg("resnet10", "encoder architecture: resnet10 | resnet18 | resnet34 | resnet50"),
    "width": Arg(16, "first-stage channels (64 = the standard ResNet)", minimum=1),
    "stem": Arg("cifar", "cifar (3x3 conv, no max-pool) | imagenet",
                choices=("cifar", "imagenet")),
    "epochs": Arg(22, "SimCLR epochs", minimum=1),
    "batch_size": Arg(256, "SimCLR batch size (images; 2 views each)", minimum=2),
    "lr": Arg(1e-3, "Adam learning rate", minimum=0),
    "temperature": Arg(0.2, "NT-Xent temperature", minimum=0),
    "seed": base.SEED_ARG,
    "head_hidden": Arg(512, "projection head hidden units", minimum=1),
    "head_out": Arg(128, "projection head output dimension", minimum=1),
    "train_size": Arg(None, "train on the first N train images (none = the whole split)",
                      kind=int, minimum=2, optional=True),
}


def build(a) -> ml_collections.ConfigDict:
    """The victim-training ConfigDict from typed arguments ``a`` (:data:`ARGS`); the
    base of ``watermark_victim`` and of the victim blocks of ``quickstart`` and ``verify``.

    Raises:
      ConfigError: ``train_size`` smaller than ``batch_size``.
    """
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    c.dataset = a.dataset
    c.model = ml_collections.ConfigDict(dict(
        arch=a.arch, width=a.width, stem=a.stem, head_hidden=a.head_hidden,
        head_out=a.head_out, dtype="float32"))
    c.augment = ml_collections.ConfigDict(dict(
        crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, jitter_p=0.8,
        jitter_strength=0.5, gray_p=0.2, blur_p=0.0, blur_sigma=(0.1, 2.0)))
    c.temperature = a.temperature
    c.batch_size = a.batch_size
    c.epochs = a.epochs
    c.optimizer = "adam"
    c.learning_rate = a.lr
    c.weight_decay = 1e-4
    c.warmup_epochs = 1.0
    c.seed = a.seed
    c.checkpoint_every_steps = 500
    c.log_every_steps = 50
    c.overwrite = False
    c.victim_train_size = base.placeholder(int)  # None = whole train split
    c.victim_train_size = a.train_size
    _check_train_size(c)
    c.probe_train_size = base.placeholder(int)
    c.probe_test_size = 5000  # the last N test images: the report's probe test set
    # the victim's report rows (probe / kNN settings; the experiments' defaults)
    c.eval = base.eval_block(select_probe=True)
    # Warm restart from a SimCLR checkpoint (fresh optimizer and schedule).
    c.init_from = base.placeholder(str)
    return c


get_config = args.config_getter(build, ARGS, "The victim-training config")


def _check_train_size(c, prefix: str = "") -> None:
    if c.victim_train_size is not None and c.victim_train_size < c.batch_size:
        raise ConfigError(f"{prefix}train_size={c.victim_train_size} must be >= "
                          f"{prefix}batch_size={c.batch_size}")


def validate(cfg, prefix: str = "") -> None:
    """Check the SimCLR training settings (also the ``victim.train`` block of the main
    job, ``prefix="victim.train."``).

    Raises:
      ConfigError: the first bad field.
    """
    from sslsteal_jax.models import ARCHITECTURES

    base.check_choice(f"{prefix}model.arch", cfg.model.arch, tuple(ARCHITECTURES))
    base.check_choice(f"{prefix}model.stem", cfg.model.stem, ("cifar", "imagenet"))
    for k in ("width", "head_hidden", "head_out"):
        base.check_int(f"{prefix}model.{k}", cfg.model[k])
    base.check_int(f"{prefix}epochs", cfg.epochs)
    base.check_int(f"{prefix}batch_size", cfg.batch_size, minimum=2)
    base.check_number(f"{prefix}learning_rate", cfg.learning_rate)
    base.check_number(f"{prefix}temperature", cfg.temperature)
    base.check_int(f"{prefix}victim_train_size", cfg.victim_train_size, minimum=2, optional=True)
    base.check_int(f"{prefix}probe_test_size", cfg.get("probe_test_size", 5000))
    _check_train_size(cfg, prefix)
    base.check_dataset(f"{prefix}dataset", cfg.dataset)
