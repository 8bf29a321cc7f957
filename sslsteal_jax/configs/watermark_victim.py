"""Watermarked SimCLR victim: warm start from the shipped victim, joint fine-tuning
with the secret rotation watermark task (Dziedzic et al., ICML 2022, Section 5).

Usage:
  python -m sslsteal_jax.main --config=configs/watermark_victim.py --workdir=runs/watermark_victim
  python -m sslsteal_jax.main --config=configs/watermark_victim.py:epochs=3,lam=1.0 --workdir=DIR

Experiment ``watermark_victim`` (sslsteal_jax/experiments/watermark_victim.py):
the victim-training config (configs/victim_simclr.py) plus the watermark head
and task. Watermark images: the first ``watermark.train_images`` train images
(training) and the last ``watermark.verify_images`` (held out for verification).
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base, victim_simclr
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.models.watermark import ALLOWED_CLASSES

EXPERIMENT = "watermark_victim"

ARGS = {
    "epochs": Arg(3, "joint fine-tuning epochs over train_size images", minimum=1),
    "train_size": Arg(10240, "SimCLR images of the fine-tuning (first N of the train split)",
                      minimum=2),
    "lam": Arg(1.0, "weight of the rotation cross-entropy", minimum=0),
    "classes": Arg(4, "4 (rotation index, chance 25 %) | 2 (angle < 180 vs >= 180, chance 50 %)",
                   choices=ALLOWED_CLASSES),
    "init_from": Arg(base.STAGE1_VICTIM, "SimCLR checkpoint to start from ('' = train from "
                     "scratch)"),
    "lr": Arg(3e-4, "Adam learning rate", minimum=0),
    "seed": base.SEED_ARG,
}


def build(a) -> ml_collections.ConfigDict:
    """The watermarked-victim ConfigDict from typed arguments ``a`` (:data:`ARGS`): the
    victim-training config (:func:`victim_simclr.build`) plus the watermark fields."""
    c = victim_simclr.build(args.defaults(victim_simclr.ARGS, epochs=a.epochs, lr=a.lr,
                                          seed=a.seed))
    c.experiment = EXPERIMENT
    c.init_from = a.init_from or None
    c.victim_train_size = a.train_size
    c.probe_train_size = 10000  # utility check of victim vs ancestor
    c.eval = base.eval_block(select_probe=True)
    c.warmup_epochs = 0.25
    c.checkpoint_every_steps = 50
    c.log_every_steps = 10
    c.model.watermark_hidden = 256
    c.model.watermark_classes = a.classes
    c.watermark = ml_collections.ConfigDict(dict(
        lam=a.lam, batch_size=64, train_images=10000, verify_images=1000, alpha=0.01,
        augment=dict(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, jitter_p=0.8,
                     jitter_strength=0.5, gray_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0))))
    return c


get_config = args.config_getter(build, ARGS, "The watermarked-victim config")


def validate(cfg) -> None:
    """Check the SimCLR settings (:func:`victim_simclr.validate`) and the watermark task.

    Raises:
      ConfigError: the first bad field.
    """
    victim_simclr.validate(cfg)
    base.check_choice("model.watermark_classes", cfg.model.watermark_classes,
                      tuple(ALLOWED_CLASSES))
    base.check_int("model.watermark_hidden", cfg.model.watermark_hidden)
    base.check_number("watermark.lam", cfg.watermark.lam, zero=True)
    base.check_int("watermark.batch_size", cfg.watermark.batch_size, minimum=2)
    base.check_int("watermark.train_images", cfg.watermark.train_images)
    base.check_int("watermark.verify_images", cfg.watermark.verify_images)
    base.check_int("probe_train_size", cfg.probe_train_size, optional=True)
