"""Experiment configs as a package: one module per config, built from shared blocks.

Each module ``sslsteal_jax.configs.<name>`` defines ``EXPERIMENT`` (the
experiment it runs), ``ARGS`` (its typed ``CONFIG.py:NAME=VALUE`` arguments,
:mod:`sslsteal_jax.configs.args`), ``get_config(arg)`` (the ml_collections
ConfigDict) and ``validate(cfg)`` (the checks that need no data, run by the
command line before any work). Shared blocks and checks: :mod:`.base`.
``configs/<name>.py`` at the repository root re-exports ``get_config``, so the
command line takes ``--config=configs/<name>.py:ARGS``.

From Python (notebooks, tests)::

    from sslsteal_jax.configs import load_config, validate
    cfg = load_config("quickstart", "losses=all", **{"steal.epochs": 1})
    validate(cfg)
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any, Mapping

from sslsteal_jax.errors import ConfigError

#: Every config module (``configs/<name>.py``), in the order ``--help`` suggests them.
CONFIGS = ("quickstart", "budget_scan", "defense_matrix", "evaluate", "verify",
           "victim_simclr", "watermark_victim", "import_checkpoint", "cifar10",
           "imagenet_simsiam")

#: Paper-scale presets: configs of an experiment whose own config module is another one
#: (they are budget scans; ``validate`` goes through the experiment's module).
PRESET_CONFIGS = {"cifar10": "budget_scan", "imagenet_simsiam": "budget_scan"}

#: Experiment (``cfg.experiment``) -> the config module that defines and validates it.
#: Each experiment is the module ``sslsteal_jax.experiments.<experiment>`` (``run(cfg, workdir)``).
EXPERIMENT_CONFIGS = {"train_victim": "victim_simclr", "steal": "quickstart",
                      "evaluate": "evaluate", "budget_scan": "budget_scan",
                      "defense_matrix": "defense_matrix",
                      "watermark_victim": "watermark_victim", "verify": "verify",
                      "import_checkpoint": "import_checkpoint"}

#: Extra words for ``--config.FIELD`` names that are not fields but look like one.
FIELD_HINTS = {
    "steal.loss": "the stealing losses are the 'losses' field (configs/quickstart.py:"
                  "losses=mse, or --config.losses=mse,infonce)",
    "attack.steal.loss": "the stealing losses are the 'attack.losses' field "
                         "(configs/verify.py:losses=mse)",
}


def config_module(name: str) -> ModuleType:
    """The module ``sslsteal_jax.configs.<name>``.

    Raises:
      ConfigError: ``name`` is not in :data:`CONFIGS` (lists them).
    """
    if name not in CONFIGS:
        close = difflib.get_close_matches(name, CONFIGS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config {name!r}{hint}; allowed: {list(CONFIGS)}")
    return importlib.import_module(f"{__name__}.{name}")


def experiment_module(experiment: str) -> ModuleType:
    """The config module of ``experiment`` (:data:`EXPERIMENT_CONFIGS`; its ``validate``
    checks any config of that experiment, hand-written ones included).

    Raises:
      ConfigError: an unknown experiment (lists them).
    """
    if experiment not in EXPERIMENT_CONFIGS:
        raise ConfigError(f"unknown experiment {experiment!r}; allowed: "
                          f"{sorted(EXPERIMENT_CONFIGS)}")
    return config_module(EXPERIMENT_CONFIGS[experiment])


def set_field(cfg, field: str, value: Any) -> None:
    """``cfg.<field> = value`` for a dotted ``field`` (``"steal.epochs"``), type-checked as
    ``--config.FIELD=VALUE`` is (ml_collections: an int field takes no string).

    Raises:
      ConfigError: ``field`` names no field (with the closest one), or ``value`` has a
        type the field does not take.
    """
    *path, leaf = field.split(".")
    node = cfg
    for i, part in enumerate(path + [leaf]):
        if part not in node:
            known = list(node.keys()) if hasattr(node, "keys") else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = FIELD_HINTS.get(field) or (f"did you mean {close[0]!r}?" if close else "")
            raise ConfigError(f"config has no field {field!r}" + (f"; {hint}" if hint else ""))
        if i < len(path):
            node = node[part]
    try:
        setattr(node, leaf, value)
    except TypeError as e:
        raise ConfigError(f"config field {field}={value!r}: {e}") from None


def load_config(name: str, arg: str = "", overrides: Mapping[str, Any] | None = None,
                **more: Any):
    """The ConfigDict of config ``name`` with ``:arg`` arguments and field overrides,
    as ``--config=configs/<name>.py:<arg> --config.FIELD=VALUE ...`` gives it
    (not validated: call :func:`validate`).

    Args:
      name: one of :data:`CONFIGS`.
      arg: the text after ``configs/<name>.py:`` (``"losses=all,budget=2000"``).
      overrides, more: ``{"steal.epochs": 1}`` dotted field -> value, applied in order.
    Raises:
      ConfigError: unknown config, argument or field, or a bad value.
    """
    cfg = config_module(name).get_config(arg)
    for field, value in {**(overrides or {}), **more}.items():
        set_field(cfg, field, value)
    return cfg


def validate(cfg) -> None:
    """Check ``cfg`` with the ``validate`` of the config module of ``cfg.experiment``: names
    (losses, strategies, datasets, defenses), ranges (budgets, epochs, sizes) and
    settings that would be silently ignored; nothing is loaded or trained.

    Raises:
      ConfigError: the first bad field, one line naming it and what is allowed.
    """
    experiment_module(cfg.get("experiment")).validate(cfg)
