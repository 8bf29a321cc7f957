"""Defense matrix: defenses x strengths x attacks on the shipped Fashion-MNIST victim.

Usage:
  python -m sslsteal_jax.main --config=configs/defense_matrix.py --workdir=runs/defense_matrix
Arguments (``configs/defense_matrix.py:budget=5000,epochs=15``):
  budget     attacker queries per cell (default 2000)
  epochs     surrogate training epochs (default 10)
  loss       stealing loss of every attack (default infonce)
  families   comma list of defense families to run (default: all below)
  scale      default | tiny (a few-minute smoke run: 2 families, small budget)

Surrogates use batch 64 for every loss (2,000 queries -> 31 steps per epoch).
Every cell trains one surrogate; a finished cell is never recomputed (the
matrix resumes from ``<workdir>/cells.json``). Strength templates use ``{s}``.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402

SHIPPED_VICTIM = "victims/fashion_mnist_resnet10_w16/checkpoints"

# B4B scaled to this victim and budget: 8-bit tables (256 buckets) instead of 12
# bits, so a 2,000-query attacker can reach the coverage where noise starts.
B4B = "b4b:bits=8,beta={s}"
# Measured coverage with 8-bit tables: about 16% after 1,000 and 19% after 2,000
# attacker queries, so beta in [18, 30] spans "no noise" to "noise above the signal".

FAMILIES = [
    # name, spec template, strengths (weak -> strong), attacks
    ("none", "none", [0], ["direct"]),
    ("gaussian", "gaussian:scale={s}", [0.1, 0.3, 1.0], ["direct", "averaging:repeats=4"]),
    ("similarity", "similarity:threshold={s}", [0.99, 0.95, 0.9], ["direct"]),
    ("b4b", B4B, [22.0, 18.0], ["direct", "sybil:accounts=2,shared=500"]),
    ("quantize", "quantize:bits={s},low=0,high=2", [2, 1], ["direct"]),
    ("topk", "topk:k={s}", [8, 2], ["direct"]),
    ("round", "round:decimals={s}", [1, 0], ["direct"]),
]


def get_config(arg: str = ""):
    a = parse_arg(arg, ("budget", "epochs", "loss", "families", "scale", "seed"))
    tiny = a.get("scale", "default") == "tiny"
    c = ml_collections.ConfigDict()
    c.experiment = "defense_matrix"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.probe_train_size = 2000 if tiny else 5000  # attacker's probe: first N labelled train images
    c.budget = int(a.get("budget", 500 if tiny else 2000))
    c.seed = int(a.get("seed", 0))
    c.api_seed = 0
    c.overwrite = False
    c.victim = ml_collections.ConfigDict(dict(checkpoint=SHIPPED_VICTIM))
    c.steal = ml_collections.ConfigDict(dict(
        loss=a.get("loss", "infonce"), epochs=int(a.get("epochs", 3 if tiny else 10)),
        batch_size=64, learning_rate=None, temperature=None, weight_decay=1e-4,
        optimizer="adam", seed=c.seed, augment=None,
        model=ml_collections.ConfigDict(dict(arch="", width=0, stem=""))))
    c.loss_overrides = ml_collections.ConfigDict({
        "infonce": {"learning_rate": 1e-3, "temperature": 0.1},
        "softnn": {"temperature": 10.0},
    })
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=False))
    # Legitimate user: one task (classes None = all 10), the first train_size labelled train
    # images and the first test_size probe-test images, all sent through the defended API.
    c.legit = ml_collections.ConfigDict(dict(train_size=500 if tiny else 2000,
                                             test_size=1000 if tiny else 2000,
                                             classes=None, probe_epochs=100))
    wanted = a.get("families")
    fams = [f for f in FAMILIES if not wanted or f[0] in wanted.split(",") or f[0] == "none"]
    if tiny and not wanted:
        fams = [FAMILIES[0], ("gaussian", "gaussian:scale={s}", [0.3], ["direct", "averaging:repeats=2"]),
                ("b4b", B4B, [20.0], ["direct", "sybil:accounts=2,shared=100"])]
    bad = sorted(set((wanted or "").split(",")) - {f[0] for f in FAMILIES} - {""})
    if bad:
        raise ValueError(f"unknown defense families {bad}; allowed: {[f[0] for f in FAMILIES]}")
    c.families = [dict(name=n, template=t, strengths=list(s), attacks=list(at))
                  for n, t, s, at in fams]
    # Query-similarity detector quality (real data, owner side).
    c.detector = ml_collections.ConfigDict(dict(
        images=500 if tiny else 2000, views=4, memory=2048,
        thresholds=[0.8, 0.9, 0.95, 0.98, 0.99]))
    # B4B: attacker vs legitimate users' coverage and noise at equal query counts.
    c.b4b_measure = ml_collections.ConfigDict(dict(
        specs=["b4b", "b4b:bits=8,beta=40"], queries=1000 if tiny else 4000, step=250,
        single_task_classes=[5, 7, 9]))  # sandal, sneaker, ankle boot: a footwear task
    return c
