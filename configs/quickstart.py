"""The main job: steal the shipped Fashion-MNIST victim with 5,000 InfoNCE queries.

Usage:
  python -m sslsteal_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
Arguments (``configs/quickstart.py:losses=all,budget=2000``):
  losses       infonce | mse | softnn | wasserstein | comma list | all
  budget       queries (images sent to the API), <= query pool size
  query_dataset  None (in-distribution) | mnist_subset | digits
  victim       shipped | scratch (train the victim into <workdir>/victim first)
  epochs       surrogate training epochs
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import victim_simclr  # noqa: E402

SHIPPED_VICTIM = "victims/fashion_mnist_resnet10_w16_ft6/checkpoints"


def get_config(arg: str = ""):
    a = parse_arg(arg, ("losses", "budget", "query_dataset", "victim", "epochs", "seed"))
    c = ml_collections.ConfigDict()
    c.experiment = "steal"
    c.dataset = "fashion_mnist"
    c.query_dataset = a.get("query_dataset") or ""
    c.probe_test_size = 5000
    c.probe_train_size = ml_collections.config_dict.placeholder(int)  # None = the whole labelled train split
    c.victim_train_size = ml_collections.config_dict.placeholder(int)  # only used when the victim is trained here
    c.budget = int(a.get("budget", 5000))
    c.losses = a.get("losses", "infonce")
    c.api_output = "representation"
    c.seed = int(a.get("seed", 0))
    c.overwrite = False
    c.victim = ml_collections.ConfigDict()
    c.victim.checkpoint = SHIPPED_VICTIM
    c.victim.train_from_scratch = a.get("victim", "shipped") == "scratch"
    c.victim.train_if_missing = True
    c.victim.train = victim_simclr.get_config("")
    c.steal = ml_collections.ConfigDict(dict(
        loss="infonce", epochs=int(a.get("epochs", 30)), batch_size=None, learning_rate=None,
        temperature=None, weight_decay=1e-4, optimizer="adam", seed=c.seed, augment=None,
        model=ml_collections.ConfigDict(dict(arch="", width=0, stem=""))))
    # Per-loss settings adapted to this scale (see README "Main job").
    c.loss_overrides = ml_collections.ConfigDict({
        "infonce": {"learning_rate": 1e-3, "temperature": 0.1},
        "softnn": {"temperature": 10.0},
    })
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=True))
    return c
