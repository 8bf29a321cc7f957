"""Owner-side verification: watermark + dataset inference for a list of suspects.

Usage (default victim: the shipped watermarked victim; to verify one you trained
with configs/watermark_victim.py pass ``:victim=runs/watermark_victim/checkpoints``):
  python -m sslsteal_jax.main --config=configs/verify.py --workdir=runs/verify
Arguments (lists are '+'-separated because ',' separates arguments, e.g.
``configs/verify.py:budgets=500+2000+5000,losses=infonce+mse``):
  victim        watermarked victim checkpoint (default: the shipped
                victims/fashion_mnist_resnet10_w16_watermark; or runs/watermark_victim/checkpoints)
  budgets       query budgets of the surrogates stolen here, '+'-separated ('' = none)
  losses        stealing losses, '+'-separated (infonce | mse | softnn | wasserstein)
  samples       surrogate training samples (epochs = ceil(samples / budget))
  suspects      extra suspect checkpoints 'name=path' separated by '+'
  simclr_epochs epochs of the independent SimCLR encoder (0 = skip it)
  watermark, di 1/0: run the watermark test / dataset inference
  seed
Everything else: ``--config.<field>=...`` (e.g. ``--config.di.n_fit=20000``).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import quickstart  # noqa: E402
import victim_simclr  # noqa: E402

WATERMARKED_VICTIM = "victims/fashion_mnist_resnet10_w16_watermark/checkpoints"


def get_config(arg: str = ""):
    a = parse_arg(arg, ("victim", "budgets", "losses", "samples", "suspects", "simclr_epochs",
                        "watermark", "di", "seed"))
    c = ml_collections.ConfigDict()
    c.experiment = "verify"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.seed = int(a.get("seed", 0))
    c.overwrite = False
    c.victim_checkpoint = a.get("victim", WATERMARKED_VICTIM)
    c.suspects = a.get("suspects", "").replace("+", ",")
    c.watermark = ml_collections.ConfigDict(dict(
        enabled=bool(int(a.get("watermark", 1))), alpha=0.01,
        align_images=1000))  # public images for the linear map (only for other representation sizes)
    c.di = ml_collections.ConfigDict(dict(
        enabled=bool(int(a.get("di", 1))), n_fit=10000, n_private=5000, n_public=5000,
        components=10, covariance="diag", alpha=0.01,
        private_size=ml_collections.config_dict.placeholder(int)))  # None = whole train split
    qs = quickstart.get_config(f"seed={c.seed}")
    c.attack = ml_collections.ConfigDict(dict(
        budgets=a.get("budgets", "500+2000+5000").replace("+", ","),
        losses=a.get("losses", "infonce").replace("+", ","),
        samples=int(a.get("samples", 40000)),
        steal=qs.steal, loss_overrides=qs.loss_overrides))
    c.independent = ml_collections.ConfigDict(dict(
        simclr_epochs=int(a.get("simclr_epochs", 4)), seed=c.seed + 1, random_init=True,
        train=victim_simclr.get_config(f"seed={c.seed + 1}")))
    return c
