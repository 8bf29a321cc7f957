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
  simclr_epochs epochs of each independent SimCLR encoder (0 = skip them)
  seeds         independent encoders per kind (SimCLR on the public pool, random init), seeds
                seed+1, seed+2, ...: the watermark test's independent null (default 3)
  ancestor      the victim's never-watermarked ancestor, the harder watermark null: auto (the
                victim's init_from, if any) | '' (none) | a checkpoint path
  null_method   max (default: Fisher exact test against the strongest null encoder) | pooled
                (against the summed counts of all null encoders); see
                sslsteal_jax/verification/watermark.py:null_test
  di_private    the victim's private set = first N train images: auto (the victim checkpoint's
                victim_train_size; all if unset) | all | N. DI fits the mixture on half of it
                (at most 10,000) and tests the other half (at most 5,000)
  watermark, di 1/0: run the watermark test / dataset inference
  seed
Decision rules: watermarked = p-value against the independent null < 0.01; DI stolen =
p < 0.01.
Everything else: ``--config.<field>=...`` (e.g. ``--config.di.n_fit=20000``).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import quickstart  # noqa: E402
import victim_simclr  # noqa: E402
from sslsteal_jax.verification.watermark import NULL_METHODS  # noqa: E402

WATERMARKED_VICTIM = "victims/fashion_mnist_resnet10_w16_watermark/checkpoints"


def get_config(arg: str = ""):
    a = parse_arg(arg, ("victim", "budgets", "losses", "samples", "suspects", "simclr_epochs",
                        "seeds", "ancestor", "null_method", "di_private", "watermark", "di",
                        "seed"))
    c = ml_collections.ConfigDict()
    c.experiment = "verify"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.seed = a.int("seed", 0)
    c.overwrite = False
    c.victim_checkpoint = a.get("victim", WATERMARKED_VICTIM)
    c.suspects = a.get("suspects", "").replace("+", ",")
    c.ancestor = a.get("ancestor", "auto")
    c.watermark = ml_collections.ConfigDict(dict(
        enabled=bool(a.int("watermark", 1)), alpha=0.01,
        null_method=a.get("null_method", "max"),
        align_images=1000))  # public images for the linear map (only for other representation sizes)
    c.di = ml_collections.ConfigDict(dict(
        enabled=bool(a.int("di", 1)),
        n_fit=ml_collections.config_dict.placeholder(int),  # None = min(10000, private // 2)
        n_private=ml_collections.config_dict.placeholder(int),  # None = min(5000, the rest)
        n_public=5000, components=10, covariance="diag", alpha=0.01,
        private_size=a.get("di_private", "auto"),
        control=True))  # also test non-member train images (must not flag: calibration)
    qs = quickstart.get_config(f"seed={c.seed}")
    c.attack = ml_collections.ConfigDict(dict(
        budgets=a.get("budgets", "500+2000+5000").replace("+", ","),
        losses=a.get("losses", "infonce").replace("+", ","),
        samples=a.int("samples", 40000),
        steal=qs.steal, loss_overrides=qs.loss_overrides))
    c.independent = ml_collections.ConfigDict(dict(
        simclr_epochs=a.int("simclr_epochs", 4), seed=c.seed + 1, random_init=True,
        seeds=a.int("seeds", 3),
        train=victim_simclr.get_config(f"seed={c.seed + 1}")))
    if c.watermark.null_method not in NULL_METHODS:
        raise ValueError(f"null_method={c.watermark.null_method!r}; allowed: {list(NULL_METHODS)}")
    if c.independent.seeds < 1:
        raise ValueError(f"seeds={c.independent.seeds} must be >= 1")
    return c
