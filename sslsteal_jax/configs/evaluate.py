"""Evaluate saved encoder checkpoints (victim or surrogates) without retraining.

Usage:
  python -m sslsteal_jax.main --config=configs/evaluate.py --config.checkpoints=runs/quickstart/surrogate_infonce/checkpoints --workdir=runs/eval1

Experiment ``evaluate`` (sslsteal_jax/experiments/evaluate.py): linear probes,
kNN and fidelity of each checkpoint, plus an independent encoder. Takes no
``:arguments``; set fields with ``--config.FIELD=VALUE``:
  checkpoints         comma-separated checkpoint directories (required)
  victim_checkpoint   fidelity reference; default: the victim the main job steals from,
                      victims/fashion_mnist_resnet10_w16_ft6/checkpoints
                      (sslsteal_jax.defaults.DEFAULT_VICTIM); '' skips fidelity
  expect_model.arch   e.g. resnet18: a checkpoint of another architecture is refused
                      with a clear error (also .width, .stem)
  dataset, probe_test_size, api_output (representation | projection), seed, eval.*
"""
from __future__ import annotations

import ml_collections

from sslsteal_jax.configs import base
from sslsteal_jax.errors import ConfigError

EXPERIMENT = "evaluate"

ARGS: dict = {}  # fields only (--config.FIELD=VALUE)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The evaluate experiment's config; takes no ``:arguments`` (use ``--config.<field>``).

    Raises:
      ConfigError: an argument was given after ``configs/evaluate.py:``.
    """
    if arg:
        raise ConfigError(f"configs/evaluate.py takes no arguments, got {arg!r}; set fields with "
                          "--config.<field>=<value>, e.g. --config.checkpoints=DIR")
    c = ml_collections.ConfigDict()
    c.experiment = EXPERIMENT
    base.data_fields(c)
    c.probe_train_size = base.placeholder(int)  # None = the whole labelled train split
    c.checkpoints = ""
    c.victim_checkpoint = base.MAIN_VICTIM
    c.api_output = "representation"
    c.expect_model = ml_collections.ConfigDict(dict(arch="", width=0, stem=""))
    c.seed = 0
    c.overwrite = False
    c.eval = base.eval_block(select_probe=True)
    return c


def validate(cfg) -> None:
    """Check that checkpoints are given, the API output, the eval block and the dataset
    (whether the directories exist is checked by the experiment, which resolves them).

    Raises:
      ConfigError: the first bad field.
    """
    if not [p for p in cfg.checkpoints.split(",") if p.strip()]:
        raise ConfigError("config.checkpoints is empty; give one or more checkpoint directories "
                          "separated by commas, e.g. --config.checkpoints=runs/quickstart/"
                          "surrogate_infonce/checkpoints")
    base.check_api_output(cfg.api_output)
    base.check_eval(cfg.eval)
    base.check_int("probe_test_size", cfg.probe_test_size)
    base.check_int("probe_train_size", cfg.probe_train_size, optional=True)
    base.check_dataset("dataset", cfg.dataset)
