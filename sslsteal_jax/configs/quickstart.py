"""The main job: steal the shipped Fashion-MNIST victim with 5,000 InfoNCE queries.

Usage:
  python -m sslsteal_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m sslsteal_jax.main --config=configs/quickstart.py:losses=all,budget=2000 --workdir=DIR
  python -m sslsteal_jax.main --config=configs/quickstart.py:losses=infonce,strategies=direct+head_recreation --workdir=DIR

Experiment ``steal`` (sslsteal_jax/experiments/steal.py): load the victim (or
train it, ``victim=scratch``), buy ``budget`` answers from its API for every query
strategy, train one surrogate per (strategy, loss) and evaluate victim,
surrogates, an independent encoder and raw pixels with linear probes, kNN and
fidelity. Strategies: sslsteal_jax/attacks/strategies.py (each spends ``budget``).

Per-loss training settings: ``steal.batch_size`` / ``learning_rate`` /
``temperature`` are None = the loss's reference settings (``sslsteal_jax.losses.LOSSES``),
then ``loss_overrides.<loss>`` (the settings adapted to this CPU scale, README
"Main job") replace them; set ``--config.steal.batch_size=128`` for every loss or
``--config.loss_overrides.infonce.temperature=0.2`` for one.
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import args, base, victim_simclr
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.defaults import api_block
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "steal"

ARGS = {
    "losses": base.losses_arg("infonce"),
    "budget": Arg(5000, "queries (inputs sent to the API), at most the query pool size",
                  minimum=1),
    "query_dataset": Arg("", "'' (in-distribution: the test pool) | mnist_subset | digits | "
                         "NAME:SPLIT (e.g. fashion_mnist:train)"),
    "victim": Arg("shipped", "shipped (the shipped checkpoint) | scratch (train the victim "
                  "into <workdir>/victim first)", choices=("shipped", "scratch")),
    "epochs": Arg(30, "surrogate training epochs", minimum=1),
    "seed": base.SEED_ARG,
    "strategies": Arg(("direct",), "query strategies: direct | stolenencoder | "
                      "augmented_queries | head_recreation | labels | probabilities | all"),
    "views": Arg(2, "augmented views sent per image by augmented_queries / head_recreation",
                 minimum=1),
    "surrogate_views": Arg(1, "StolenEncoder's free surrogate-side views per image", minimum=0),
    "api_output": Arg("representation", "what the API returns: the representation h or the "
                      "projection-head output g(h)", choices=("representation", "projection")),
}


def build(a) -> ml_collections.ConfigDict:
    """The main job's ConfigDict from typed arguments ``a`` (:func:`args.parse` of
    :data:`ARGS`); the base of ``budget_scan``."""
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    base.data_fields(c)
    c.stream = base.stream_block()  # --config.stream.enabled=True: lazy input, chunked answers
    c.query_dataset = a.query_dataset
    c.probe_train_size = base.placeholder(int)  # None = the whole labelled train split
    c.victim_train_size = base.placeholder(int)  # only used when the victim is trained here
    c.budget = a.budget
    c.losses = base.join(a.losses)
    c.api_output = a.api_output
    c.api = api_block()  # --config.api.url=http://HOST:PORT queries a served victim (docs/serving.md)
    c.strategies = base.join(a.strategies)
    c.views = a.views
    c.surrogate_views = a.surrogate_views
    c.view_augment = base.placeholder(dict)  # None = SimCLR AugmentConfig()
    # Head recreation: the attacker's head g' (SimCLR's 2-layer head) fitted with NT-Xent.
    c.head = ml_collections.ConfigDict(dict(hidden=512, out=128, epochs=100, batch_size=256,
                                            learning_rate=1e-3, temperature=0.1))
    c.seed = a.seed
    c.overwrite = False
    c.victim = ml_collections.ConfigDict()
    c.victim.checkpoint = base.MAIN_VICTIM
    c.victim.train_from_scratch = a.victim == "scratch"
    c.victim.train_if_missing = True
    c.victim.train = victim_simclr.get_config("")
    base.steal_fields(c, a.epochs, a.seed)
    c.eval = base.eval_block(select_probe=True)
    return c


get_config = args.config_getter(build, ARGS, "The main job's config")


def validate(cfg) -> None:
    """Check what needs no data, in the order the experiment would fail: budget,
    losses, strategies, views, API output, surrogate settings, datasets.

    Raises:
      ConfigError: the first bad field.
    """
    from sslsteal_jax.attacks.strategies import parse_strategies

    if isinstance(cfg.budget, bool) or not isinstance(cfg.budget, int) or cfg.budget < 1:
        raise ConfigError(f"query budget {cfg.budget} must be >= 1 (and at most the query "
                          "pool size)")
    base.check_losses("losses", cfg.losses)
    strategies = parse_strategies(cfg.strategies)
    base.check_stream(cfg.stream, strategies)
    base.check_int("views", cfg.views)
    base.check_int("surrogate_views", cfg.surrogate_views, minimum=0)
    base.check_api_output(cfg.api_output)
    base.check_steal("", cfg.steal)
    base.check_eval(cfg.eval)
    base.check_int("probe_test_size", cfg.probe_test_size)
    base.check_int("probe_train_size", cfg.probe_train_size, optional=True)
    base.check_int("victim_train_size", cfg.victim_train_size, optional=True)
    base.check_dataset("dataset", cfg.dataset)
    if cfg.query_dataset:
        base.check_dataset("query_dataset", cfg.query_dataset)
    if cfg.victim.train_from_scratch or cfg.victim.train_if_missing:
        victim_simclr.validate(cfg.victim.train, prefix="victim.train.")
