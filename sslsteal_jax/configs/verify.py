"""Owner-side verification: watermark + dataset inference for a list of suspects.

Usage (default victim: the shipped watermarked victim; to verify one you trained
with configs/watermark_victim.py pass ``:victim=runs/watermark_victim/checkpoints``):
  python -m sslsteal_jax.main --config=configs/verify.py --workdir=runs/verify
  python -m sslsteal_jax.main --config=configs/verify.py:budgets=500+2000+5000,losses=infonce+mse --workdir=DIR

Experiment ``verify`` (sslsteal_jax/experiments/verify.py): the suspects are
the victim itself, its never-watermarked ancestor, surrogates stolen here at
every (loss, budget) (trained as in the main job, ``attack.steal`` and
``attack.loss_overrides``), independent encoders (SimCLR on the public pool and
random init, plus any ``nulls`` checkpoints) and any ``suspects`` checkpoints. Decision rules: watermarked =
p-value against the independent null < 0.01; DI stolen = p < 0.01. Everything
else: ``--config.<field>=...`` (e.g. ``--config.di.n_fit=20000``).
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax import losses
from sslsteal_jax.configs import args, base, victim_simclr
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.verification.watermark import NULL_METHODS

EXPERIMENT = "verify"
#: Row names verify gives its own suspects (``experiments.verify``): a ``suspects`` /
#: ``nulls`` item may not take them (results are keyed by name).
RESERVED_NAMES = ("victim", "ancestor (never watermarked)")
RESERVED_PREFIXES = ("surrogate ", "independent ")
#: What one ``suspects`` / ``nulls`` item is (help, ``--show_config`` and errors).
NAMED_ITEMS = "name=path items"

ARGS = {
    "victim": Arg(base.WATERMARKED_VICTIM, "watermarked victim checkpoint (e.g. "
                  "runs/watermark_victim/checkpoints)"),
    "budgets": Arg((500, 2000, 5000), "query budgets of the surrogates stolen here ('' = none)",
                   minimum=1),
    "losses": Arg(("infonce",), "stealing losses of those surrogates: "
                  + " | ".join(losses.ALL_LOSSES)),
    "samples": Arg(40000, "surrogate training samples (epochs = ceil(samples / budget))",
                   minimum=1),
    "suspects": Arg((), "extra suspect checkpoints (name=path: the row name and its "
                        "checkpoint)", kind=str, item=NAMED_ITEMS),
    "nulls": Arg((), "extra independent encoders joining the watermark test's independent "
                 "null, checkpoints as name=path items (e.g. a SimCLR victim trained with "
                 "configs/victim_simclr.py:seed=1, the victim's first-stage recipe)", kind=str,
                 item=NAMED_ITEMS),
    "simclr_epochs": Arg(4, "epochs of each independent SimCLR encoder (0 = skip them)",
                         minimum=0),
    "seeds": Arg(3, "independent encoders per kind (SimCLR on the public pool, random init), "
                 "seeds seed+1, seed+2, ...: the watermark test's independent null", minimum=1),
    "ancestor": Arg("auto", "the victim's never-watermarked ancestor, the harder watermark "
                    "null: auto (the victim's init_from, if any) | '' (none) | a checkpoint"),
    "null_method": Arg("max", "max (Fisher exact test against the strongest null encoder) | "
                       "pooled (against the summed counts of all null encoders)",
                       choices=NULL_METHODS),
    "di_private": Arg("auto", "the victim's private set = first N train images: auto (the "
                      "victim checkpoint's victim_train_size; all if unset) | all | N; DI fits "
                      "the mixture on half of it (at most 10,000) and tests the other half "
                      "(at most 5,000)"),
    "watermark": Arg(True, "run the watermark test"),
    "di": Arg(True, "run dataset inference"),
    "seed": base.SEED_ARG,
}


def build(a) -> ml_collections.ConfigDict:
    """The verification ConfigDict from typed arguments ``a`` (:data:`ARGS`); the attack
    block is the main job's steal block (``base.steal_fields``)."""
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    base.data_fields(c)
    c.seed = a.seed
    c.overwrite = False
    c.victim_checkpoint = a.victim
    c.suspects = base.join(a.suspects)
    c.nulls = base.join(a.nulls)
    c.ancestor = a.ancestor
    c.watermark = ml_collections.ConfigDict(dict(
        enabled=a.watermark, alpha=0.01, null_method=a.null_method,
        align_images=1000))  # public images for the linear map (only for other representation sizes)
    c.di = ml_collections.ConfigDict(dict(
        enabled=a.di,
        n_fit=base.placeholder(int),  # None = min(10000, private // 2)
        n_private=base.placeholder(int),  # None = min(5000, the rest)
        n_public=5000, components=10, covariance="diag", alpha=0.01,
        private_size=a.di_private,
        control=True))  # also test non-member train images (must not flag: calibration)
    c.attack = ml_collections.ConfigDict(dict(
        budgets=base.join(a.budgets),  # comma string: experiments.verify.parse_budgets
        losses=base.join(a.losses), samples=a.samples))
    base.steal_fields(c.attack, 30, a.seed)
    c.independent = ml_collections.ConfigDict(dict(
        simclr_epochs=a.simclr_epochs, seed=a.seed + 1, random_init=True, seeds=a.seeds,
        train=victim_simclr.build(args.defaults(victim_simclr.ARGS, seed=a.seed + 1))))
    return c


get_config = args.config_getter(build, ARGS, "The verification config")


def parse_named_checkpoints(spec: str) -> list[tuple[str, str]]:
    """``"name=path,name=path"`` (the ``suspects`` and ``nulls`` fields) -> [(name, path)].

    Raises:
      ValueError: a part is not ``name=path``.
    """
    out = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        if "=" not in part:
            raise ValueError(f"checkpoint {part!r} is not name=path")
        name, path = (s.strip() for s in part.split("=", 1))
        out.append((name, path))
    return out


def validate(cfg) -> None:
    """Check the watermark and DI settings, the attack block (budgets, losses, surrogate
    settings), the independent encoders and the dataset.

    Raises:
      ConfigError: the first bad field.
    """
    base.check_choice("watermark.null_method", cfg.watermark.null_method, NULL_METHODS)
    spec = cfg.di.private_size
    if spec not in (None, "auto", "all") and not (str(spec).isdigit() and int(spec) > 0):
        base.fail("di.private_size", spec, "auto | all | a positive integer")
    budgets = [b.strip() for b in str(cfg.attack.budgets or "").split(",") if b.strip()]
    if not all(b.isdigit() and int(b) >= 1 for b in budgets):
        base.fail("attack.budgets", cfg.attack.budgets, "comma-separated integers >= 1 "
                  "(or '' for none)")
    names = [n.strip() for n in cfg.attack.losses.split(",") if n.strip()]
    bad = [n for n in names if n not in losses.ALL_LOSSES]
    if bad:
        raise ConfigError(f"unknown stealing loss(es) {bad} in attack.losses; allowed: "
                          f"{list(losses.ALL_LOSSES)}")
    base.check_int("attack.samples", cfg.attack.samples)
    base.check_steal("attack.", cfg.attack.steal)
    seen: dict = {}
    for field in ("suspects", "nulls"):
        try:
            named = parse_named_checkpoints(cfg.get(field) or "")
        except ValueError as e:
            raise ConfigError(f"{field}: {e}; allowed: {NAMED_ITEMS}") from None
        for name, path in named:
            if not name or not path:
                raise ConfigError(f"{field}: item {name}={path!r} needs a name and a path; "
                                  f"allowed: {NAMED_ITEMS}")
            if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
                raise ConfigError(f"{field}: name {name!r} is taken by a row verify makes "
                                  f"itself ({', '.join(RESERVED_NAMES)}, "
                                  f"'{RESERVED_PREFIXES[0]}...', '{RESERVED_PREFIXES[1]}...'); "
                                  "allowed: another name")
            if name in seen:
                raise ConfigError(f"{field}: name {name!r} is also used in {seen[name]}; "
                                  "allowed: a distinct name per suspect and null")
            seen[name] = field
    base.check_int("independent.seeds", cfg.independent.seeds)
    base.check_int("independent.simclr_epochs", cfg.independent.simclr_epochs, minimum=0)
    if cfg.independent.simclr_epochs:
        victim_simclr.validate(cfg.independent.train, prefix="independent.train.")
    base.check_int("probe_test_size", cfg.probe_test_size)
    base.check_dataset("dataset", cfg.dataset)
