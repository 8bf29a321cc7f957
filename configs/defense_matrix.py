"""Defense matrix: defenses x strengths x attacks on the shipped Fashion-MNIST victim.

Usage:
  python -m sslsteal_jax.main --config=configs/defense_matrix.py --workdir=runs/defense_matrix
Arguments (``configs/defense_matrix.py:budget=5000,epochs=15``):
  budget     attacker queries per cell; every legitimate user sends as many (default 2000)
  epochs     surrogate training epochs (default 10)
  loss       stealing loss of every attack (default infonce)
  families   ``+``-separated defense families to run, e.g. ``families=gaussian+b4b``
             (``none`` is always included; default: all below)
  scale      default | tiny (a few-minute smoke run: 3 families, small budget)
  seed       surrogate / probe seed (default 0)

Surrogates use batch 64 for every loss (2,000 queries -> 31 steps per epoch).
Every cell trains one surrogate; a finished cell is never recomputed (the
matrix resumes from ``<workdir>/cells.json``; a workdir made with other
settings is refused). Strength templates use ``{s}``.

Time on this machine (2 CPU cores, measured): the 15 default cells ran in 620 s
(10.3 min) in session 3; direct-attack cells take 39-47 s, averaging cells 17 s,
sybil cells 30-32 s. ``expected_seconds`` gives a conservative upper estimate
(``CELL_SECONDS`` per cell, built from component costs before the full run was
measured). Each finished cell's wall and CPU seconds are in ``cells.json`` /
``results.csv``.
"""
import os
import sys

import ml_collections

from sslsteal_jax import losses
from sslsteal_jax.defaults import api_block

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402

SHIPPED_VICTIM = "victims/fashion_mnist_resnet10_w16/checkpoints"

# B4B with the paper's tables (20 x 12 bits), hashing answers centred on the
# provider's reference mean (defenses/b4b.py). Measured coverage after 2,000
# queries: attacker 15.5 %, 10-class user 15.7 %, single-task (3-class) user
# 7.0 %. The noise reaches alpha = 0.8 at coverage beta, so beta in [10, 16]
# noises a 2,000-query attacker heavily (sigma(15.5) = 0.5 at beta 16, ~10^3
# at beta 10, capped at max_scale) and leaves a single-task user nearly clean
# (sigma(7) = 0.003 at beta 12). The paper's beta = 80 is sized for ~10^5
# queries; at 2,000 it would never add noise.
B4B = "b4b:beta={s}"

# Conservative upper estimate of wall seconds per cell on this CPU (2 cores, alone) with
# the default settings (budget 2000, 10 epochs); measured: 39-47 s (module docstring).
CELL_SECONDS = 125.0
ONCE_SECONDS = 120.0

FAMILIES = [
    # name, spec template, strengths (weak -> strong), attacks
    ("none", "none", [0], ["direct"]),
    ("gaussian", "gaussian:scale={s}", [0.1, 1.0], ["direct", "averaging:repeats=4"]),
    ("laplace", "laplace:scale={s}", [0.5], ["direct"]),
    ("similarity", "similarity:threshold={s}", [0.95, 0.9], ["direct"]),
    ("b4b", B4B, [16.0, 12.0], ["direct", "sybil:accounts=2,shared=500"]),
    ("quantize", "quantize:bits={s},low=0,high=2", [1], ["direct"]),
    ("topk", "topk:k={s}", [4], ["direct"]),
    ("round", "round:decimals={s}", [0], ["direct"]),
]
TINY_FAMILIES = [
    FAMILIES[0],
    ("gaussian", "gaussian:scale={s}", [0.3], ["direct", "averaging:repeats=2"]),
    ("b4b", B4B, [12.0], ["direct", "sybil:accounts=2,shared=100"]),
]


def n_cells(families) -> int:
    """Number of matrix cells (surrogates trained) of a families list."""
    return sum(len(f["strengths"]) * len(f["attacks"]) for f in families)


def expected_seconds(cfg) -> float:
    """Upper estimate of a fresh run's wall time on this CPU (2 cores, alone), seconds,
    for budget 2000 and 10 epochs (every cell counted as a full direct-attack cell)."""
    return ONCE_SECONDS + n_cells(cfg.families) * CELL_SECONDS


def get_config(arg: str = ""):
    """The defense matrix's ConfigDict (arguments: module docstring); per-loss learning
    rate and temperature as in the main job (``sslsteal_jax.losses``), batch 64.

    Raises:
      ValueError: unknown argument, scale or defense family.
    """
    a = parse_arg(arg, ("budget", "epochs", "loss", "families", "scale", "seed"))
    scale = a.get("scale", "default")
    if scale not in ("default", "tiny"):
        raise ValueError(f"scale={scale!r}; allowed: ['default', 'tiny']")
    tiny = scale == "tiny"
    c = ml_collections.ConfigDict()
    c.experiment = "defense_matrix"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.probe_train_size = 2000 if tiny else 5000  # attacker's probe: first N labelled train images
    c.budget = a.int("budget", 500 if tiny else 2000, minimum=1)
    c.seed = a.int("seed", 0)
    c.api_seed = 0
    c.api = api_block()  # serve: --config.api.url=http://HOST:PORT queries a served victim
    c.overwrite = False
    c.victim = ml_collections.ConfigDict(dict(checkpoint=SHIPPED_VICTIM))
    c.steal = ml_collections.ConfigDict(dict(
        loss=a.get("loss", "infonce"), epochs=a.int("epochs", 3 if tiny else 10, minimum=1),
        batch_size=64, learning_rate=None, temperature=None, weight_decay=1e-4,
        optimizer="adam", seed=c.seed, augment=None,
        model=ml_collections.ConfigDict(dict(arch="", width=0, stem="", dtype="float32"))))
    # Per-loss settings at this scale, as in the main job (LossSpec.scale_overrides);
    # the batch size is fixed at 64 for every loss above (module docstring).
    c.loss_overrides = ml_collections.ConfigDict(losses.scale_overrides())
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=False))
    # Legitimate users send `budget` queries each, like the attacker: budget - test_size
    # labelled train images, then test_size probe-test images. One 10-class user and one
    # single-task user (sandal, sneaker, ankle boot: a footwear task).
    c.legit = ml_collections.ConfigDict(dict(test_size=200 if tiny else 500,
                                             single_task_classes=[5, 7, 9], probe_epochs=100))
    # B4B's LSH centre: mean victim answer on the last N train images (provider's data).
    c.b4b_reference = 2000
    wanted = a.get("families")
    names = [f[0] for f in FAMILIES]
    bad = sorted(set((wanted or "").split("+")) - set(names) - {""})
    if bad:
        raise ValueError(f"unknown defense families {bad}; allowed: {names} (separate with '+')")
    if wanted:
        fams = [f for f in FAMILIES if f[0] in wanted.split("+") or f[0] == "none"]
    else:
        fams = TINY_FAMILIES if tiny else FAMILIES
    c.families = [dict(name=n, template=t, strengths=list(s), attacks=list(at))
                  for n, t, s, at in fams]
    # Query-similarity detector quality (real data, owner side).
    c.detector = ml_collections.ConfigDict(dict(
        images=500 if tiny else 2000, views=4, memory=2048,
        thresholds=[0.8, 0.9, 0.95, 0.98, 0.99]))
    # B4B: attacker vs 10-class vs single-task legitimate user, coverage and sigma after
    # every `step` queries, every user sending the same number. Centred (the matrix's
    # setting) vs uncentred hashing, default tables; beta as the matrix's strong setting.
    c.b4b_measure = ml_collections.ConfigDict(dict(
        specs=["b4b:beta=12", "b4b:beta=12,center=false"],
        queries=1000 if tiny else 4000, step=250))
    return c
