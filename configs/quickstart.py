"""The main job: steal the shipped Fashion-MNIST victim with 5,000 InfoNCE queries.

Usage:
  python -m sslsteal_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
Arguments (``configs/quickstart.py:losses=all,budget=2000``):
  losses       infonce | mse | softnn | wasserstein | cosine | barlow | symmetrized |
               supcon | softce | comma list (``+`` also separates) | all (the paper's
               four) | extra (the other five) | every (all nine)
  budget       queries (inputs sent to the API), <= query pool size
  query_dataset  None (in-distribution) | mnist_subset | digits
  victim       shipped | scratch (train the victim into <workdir>/victim first)
  epochs       surrogate training epochs
  strategies   direct (default) | stolenencoder | augmented_queries | head_recreation |
               labels | probabilities | ``+``-separated list | all
               (see sslsteal_jax/attacks/strategies.py; every strategy spends ``budget``)
  views        augmented views sent per image by augmented_queries / head_recreation (2)
  surrogate_views  StolenEncoder's free surrogate-side views per image (1)
  api_output   representation (default) | projection (the API returns the head output g(h))
Example: ``configs/quickstart.py:losses=infonce,strategies=direct+head_recreation``.
"""
import os
import sys

import ml_collections

from sslsteal_jax import losses
from sslsteal_jax.defaults import api_block, default_steal_block

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_arg  # noqa: E402
import victim_simclr  # noqa: E402

SHIPPED_VICTIM = "victims/fashion_mnist_resnet10_w16_ft6/checkpoints"


def get_config(arg: str = ""):
    """The main job's ConfigDict (arguments: module docstring). Per-loss batch size,
    learning rate and temperature: ``sslsteal_jax.losses.LOSSES`` (``steal`` fields
    left None) and its ``scale_overrides`` (``loss_overrides``).

    Raises:
      ValueError: unknown argument or bad value.
    """
    a = parse_arg(arg, ("losses", "budget", "query_dataset", "victim", "epochs", "seed",
                        "strategies", "views", "surrogate_views", "api_output"))
    c = ml_collections.ConfigDict()
    c.experiment = "steal"
    c.dataset = "fashion_mnist"
    c.query_dataset = a.get("query_dataset") or ""
    c.probe_test_size = 5000
    c.probe_train_size = ml_collections.config_dict.placeholder(int)  # None = the whole labelled train split
    c.victim_train_size = ml_collections.config_dict.placeholder(int)  # only used when the victim is trained here
    c.budget = a.int("budget", 5000, minimum=1)
    c.losses = a.get("losses", "infonce").replace("+", ",")
    c.api_output = a.get("api_output", "representation")
    if c.api_output not in ("representation", "projection"):
        raise ValueError(f"api_output={c.api_output!r}; allowed: 'representation' or 'projection'")
    c.api = api_block()  # serve: --config.api.url=http://HOST:PORT queries a served victim
    c.strategies = a.get("strategies", "direct").replace("+", ",")
    c.views = a.int("views", 2, minimum=1)
    c.surrogate_views = a.int("surrogate_views", 1, minimum=0)
    c.view_augment = ml_collections.config_dict.placeholder(dict)  # None = SimCLR AugmentConfig()
    # Head recreation: the attacker's head g' (SimCLR's 2-layer head) fitted with NT-Xent.
    c.head = ml_collections.ConfigDict(dict(hidden=512, out=128, epochs=100, batch_size=256,
                                            learning_rate=1e-3, temperature=0.1))
    c.seed = a.int("seed", 0)
    c.overwrite = False
    c.victim = ml_collections.ConfigDict()
    c.victim.checkpoint = SHIPPED_VICTIM
    victim = a.get("victim", "shipped")
    if victim not in ("shipped", "scratch"):
        raise ValueError(f"victim={victim!r}; allowed: 'shipped' (the shipped checkpoint) or "
                         "'scratch' (train it into <workdir>/victim first)")
    c.victim.train_from_scratch = victim == "scratch"
    c.victim.train_if_missing = True
    c.victim.train = victim_simclr.get_config("")
    # The surrogate-training block (one definition, shared with the Python API's
    # sslsteal_jax.surrogate_config): trainers.surrogate.default_steal_block.
    c.steal = default_steal_block(a.int("epochs", 30, minimum=1), c.seed)
    # Per-loss settings adapted to this scale (see README "Main job"): the registry's
    # LossSpec.scale_overrides; batch_size / learning_rate / temperature left None above
    # resolve to the loss's reference settings (sslsteal_jax.losses.LOSSES).
    c.loss_overrides = ml_collections.ConfigDict(losses.scale_overrides())
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=True))
    return c
