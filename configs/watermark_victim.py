"""Watermarked SimCLR victim: warm start from the shipped victim, joint fine-tuning
with the secret rotation watermark task (Dziedzic et al., ICML 2022, Section 5).

Usage:
  python -m sslsteal_jax.main --config=configs/watermark_victim.py --workdir=runs/watermark_victim
Arguments (``configs/watermark_victim.py:epochs=3,lam=1.0``):
  epochs        joint fine-tuning epochs over ``train_size`` images
  train_size    SimCLR images of the fine-tuning (first N of the train split)
  lam           weight of the rotation cross-entropy
  classes       4 (rotation index, chance 25 %) | 2 (angle < 180 vs >= 180, chance 50 %)
  init_from     SimCLR checkpoint to start from ('' = train from scratch)
  lr, seed
Watermark images: the first ``watermark.train_images`` train images (training)
and the last ``watermark.verify_images`` (held out for verification).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import victim_simclr  # noqa: E402

SHIPPED_VICTIM = "victims/fashion_mnist_resnet10_w16/checkpoints"


def get_config(arg: str = ""):
    a = parse_arg(arg, ("epochs", "train_size", "lam", "classes", "init_from", "lr", "seed"))
    c = victim_simclr.get_config(f"epochs={a.get('epochs', 3)},lr={a.get('lr', 3e-4)},"
                                 f"seed={a.get('seed', 0)}")
    c.experiment = "watermark_victim"
    c.init_from = a.get("init_from", SHIPPED_VICTIM) or None
    c.victim_train_size = a.int("train_size", 10240)
    c.probe_train_size = 10000  # utility check of victim vs ancestor
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=True))
    c.warmup_epochs = 0.25
    c.checkpoint_every_steps = 50
    c.log_every_steps = 10
    c.model.watermark_hidden = 256
    c.model.watermark_classes = a.int("classes", 4)
    c.watermark = ml_collections.ConfigDict(dict(
        lam=a.float("lam", 1.0), batch_size=64, train_images=10000, verify_images=1000,
        alpha=0.01,
        augment=dict(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=0.5, jitter_p=0.8,
                     jitter_strength=0.5, gray_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0))))
    return c
