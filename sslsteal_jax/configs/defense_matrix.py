"""Defense matrix: defenses x strengths x attacks on the shipped Fashion-MNIST victim.

Usage:
  python -m sslsteal_jax.main --config=configs/defense_matrix.py --workdir=runs/defense_matrix
  python -m sslsteal_jax.main --config=configs/defense_matrix.py:families=gaussian+b4b,budget=5000 --workdir=DIR

Experiment ``defense_matrix`` (sslsteal_jax/experiments/defense_matrix.py):
every cell (defense family x strength x attack, :data:`FAMILIES`) trains one
surrogate; legitimate users (a 10-class user and a single-task user) send as
many queries as the attacker; the query-similarity detector and B4B coverage are
measured on the side. A finished cell is never recomputed (the matrix resumes
from ``<workdir>/cells/``; a workdir made with other settings is refused).
Strength templates use ``{s}``.

Surrogates use batch 64 for every loss (2,000 queries -> 31 steps per epoch) and
the main job's per-loss learning rate and temperature (``loss_overrides``).

Time on this machine (2 CPU cores, measured): the 15 default cells ran in 620 s
(10.3 min) in session 3; direct-attack cells take 39-47 s, averaging cells 17 s,
sybil cells 30-32 s. :func:`expected_seconds` gives a conservative upper
estimate (``CELL_SECONDS`` per cell, built from component costs before the full
run was measured). Each finished cell's wall and CPU seconds are in
``cells.json`` / ``results.csv``.
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax import losses
from sslsteal_jax.configs import args, base
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.defaults import api_block
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "defense_matrix"

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
FAMILY_NAMES = tuple(f[0] for f in FAMILIES)

#: What ``scale`` sets: default and the few-minute smoke run.
SCALES = {
    "default": dict(budget=2000, epochs=10, probe_train_size=5000, legit_test_size=500,
                    detector_images=2000, b4b_queries=4000, families=FAMILIES),
    "tiny": dict(budget=500, epochs=3, probe_train_size=2000, legit_test_size=200,
                 detector_images=500, b4b_queries=1000, families=TINY_FAMILIES),
}

ARGS = {
    "budget": Arg(None, "attacker queries per cell; every legitimate user sends as many "
                  "(none = the scale's: 2000, tiny 500)", kind=int, minimum=1, optional=True),
    "epochs": Arg(None, "surrogate training epochs (none = the scale's: 10, tiny 3)",
                  kind=int, minimum=1, optional=True),
    "loss": Arg("infonce", "stealing loss of every attack (sslsteal_jax.losses.LOSSES)"),
    "families": Arg((), "defense families to run (none is always included; default: the "
                    "scale's): " + " | ".join(FAMILY_NAMES), kind=str),
    "scale": Arg("default", "default | tiny (a few-minute smoke run: 3 families, small "
                 "budget)", choices=tuple(SCALES)),
    "seed": Arg(0, "surrogate / probe seed"),
}


def n_cells(families) -> int:
    """Number of matrix cells (surrogates trained) of a families list."""
    return sum(len(f["strengths"]) * len(f["attacks"]) for f in families)


def expected_seconds(cfg) -> float:
    """Upper estimate of a fresh run's wall time on this CPU (2 cores, alone), seconds,
    for budget 2000 and 10 epochs (every cell counted as a full direct-attack cell)."""
    return ONCE_SECONDS + n_cells(cfg.families) * CELL_SECONDS


def build(a) -> ml_collections.ConfigDict:
    """The defense matrix's ConfigDict from typed arguments ``a`` (:data:`ARGS`): the
    main job's steal block (``base.steal_fields``) with one ``loss`` and batch 64."""
    s = SCALES[a.scale]
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    base.data_fields(c)
    c.probe_train_size = s["probe_train_size"]  # attacker's probe: first N labelled train images
    c.budget = s["budget"] if a.budget is None else a.budget
    c.seed = a.seed
    c.api_seed = 0
    c.api = api_block()  # --config.api.url=http://HOST:PORT queries a served victim (docs/serving.md)
    c.overwrite = False
    c.victim = ml_collections.ConfigDict(dict(checkpoint=base.STAGE1_VICTIM))
    base.steal_fields(c, s["epochs"] if a.epochs is None else a.epochs, a.seed)
    c.steal.loss = a.loss  # the loss of every attack of the matrix
    c.steal.batch_size = 64  # fixed for every loss (module docstring)
    c.eval = base.eval_block(select_probe=False)
    # Legitimate users send `budget` queries each, like the attacker: budget - test_size
    # labelled train images, then test_size probe-test images. One 10-class user and one
    # single-task user (sandal, sneaker, ankle boot: a footwear task).
    c.legit = ml_collections.ConfigDict(dict(test_size=s["legit_test_size"],
                                             single_task_classes=(5, 7, 9), probe_epochs=100))
    # B4B's LSH centre: mean victim answer on the last N train images (provider's data).
    c.b4b_reference = 2000
    bad = sorted(set(a.families) - set(FAMILY_NAMES))
    if bad:
        raise ConfigError(f"unknown defense families {bad}; allowed: {list(FAMILY_NAMES)} "
                          "(separate with '+')")
    fams = ([f for f in FAMILIES if f[0] in a.families or f[0] == "none"] if a.families
            else s["families"])
    c.families = [dict(name=n, template=t, strengths=list(st), attacks=list(at))
                  for n, t, st, at in fams]
    # Query-similarity detector quality (real data, owner side).
    c.detector = ml_collections.ConfigDict(dict(
        images=s["detector_images"], views=4, memory=2048,
        thresholds=(0.8, 0.9, 0.95, 0.98, 0.99)))
    # B4B: attacker vs 10-class vs single-task legitimate user, coverage and sigma after
    # every `step` queries, every user sending the same number. Centred (the matrix's
    # setting) vs uncentred hashing, default tables; beta as the matrix's strong setting.
    c.b4b_measure = ml_collections.ConfigDict(dict(
        specs=("b4b:beta=12", "b4b:beta=12,center=false"), queries=s["b4b_queries"], step=250))
    return c


get_config = args.config_getter(build, ARGS, "The defense matrix's config")


def validate(cfg) -> None:
    """Check the budget, loss, surrogate settings, legitimate users, every defense spec
    of the families and of ``b4b_measure`` (``defenses.parse_spec``), and the dataset.

    Raises:
      ConfigError: the first bad field.
    """
    from sslsteal_jax.defenses import parse_spec

    if isinstance(cfg.budget, bool) or not isinstance(cfg.budget, int) or cfg.budget < 1:
        raise ConfigError(f"budget {cfg.budget} must be >= 1 (and at most the query pool size)")
    # the matrix buys one answer per image: no labels, view pairs or class targets
    direct = [n for n in losses.ALL_LOSSES if not losses.LOSSES[n].needs]
    if cfg.steal.loss not in direct:
        base.fail("steal.loss", cfg.steal.loss, " | ".join(direct) + " (losses that need "
                  "only the answers)")
    base.check_steal("", cfg.steal)
    base.check_eval(cfg.eval)
    n_test = cfg.legit.test_size
    if isinstance(n_test, bool) or not isinstance(n_test, int) or not 1 <= n_test < cfg.budget:
        raise ConfigError(f"legit.test_size={n_test} must be in [1, budget={cfg.budget}): the "
                          f"legitimate users send budget queries, train + test")
    if isinstance(cfg.b4b_reference, bool) or not isinstance(cfg.b4b_reference, int) or \
            cfg.b4b_reference < 1:
        raise ConfigError(f"b4b_reference={cfg.b4b_reference} must be >= 1 (and at most half "
                          f"the {cfg.dataset} train split)")
    for fam in cfg.families:
        for s in fam["strengths"]:
            _check_spec(f"families.{fam['name']}", fam["template"].format(s=s), parse_spec)
    for spec in cfg.b4b_measure.specs:
        _check_spec("b4b_measure.specs", spec, parse_spec)
    base.check_int("probe_test_size", cfg.probe_test_size)
    base.check_int("probe_train_size", cfg.probe_train_size)
    base.check_dataset("dataset", cfg.dataset)


def _check_spec(field: str, spec: str, parse_spec) -> None:
    try:
        parse_spec(spec)
    except ValueError as e:
        raise ConfigError(f"{field}: defense spec {spec!r}: {e}") from None
