"""Experiment: evaluate saved encoder checkpoints without retraining.

Each checkpoint (victim or surrogate, any architecture of the family) is
rebuilt from its stored config and evaluated on the fixed probe splits:
linear probe (full labels, 100 per class), kNN, and, when a victim checkpoint
is given, fidelity to the victim's API output. Raw pixels and an independent
randomly initialised encoder of the first checkpoint's architecture are
reported alongside.
"""
from __future__ import annotations

import os

import jax

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.report import COLUMNS, format_table, plot_results
from sslsteal_jax.models import build_model
from sslsteal_jax.pipeline import evaluate, results, workdir as wd
from sslsteal_jax.training.checkpoint import load_model


def run(cfg, workdir: str) -> dict:
    """Evaluate ``cfg.checkpoints`` (comma-separated checkpoint dirs); returns results.

    Raises:
      ConfigError (a ValueError): ``checkpoints`` empty, or a directory of
        ``checkpoints`` or ``victim_checkpoint`` that does not exist (checked before
        the workdir is made or any data is loaded); a checkpoint that does not
        match ``expect_model`` or is corrupt (``training.checkpoint``).
    """
    paths = [wd.resolve_path(p.strip()) for p in cfg.checkpoints.split(",") if p.strip()]
    if not paths:
        raise ConfigError("config.checkpoints is empty; give one or more checkpoint directories "
                          "separated by commas")
    victim_path = wd.resolve_path(cfg.victim_checkpoint) if cfg.victim_checkpoint else None
    named = [("config.checkpoints", p) for p in paths]
    if victim_path:
        named.append(("config.victim_checkpoint (the fidelity reference; '' for none)",
                      victim_path))
    for field, p in named:
        if not os.path.isdir(p):
            raise ConfigError(f"{field}: checkpoint directory {p!r} does not exist")
    # Every checkpoint is read before the workdir is made or data loaded: a mismatch or a
    # corrupt file fails in seconds, in one line.
    override = {k: v for k, v in dict(cfg.expect_model).items() if v} or None
    models = [load_model(p, override) for p in paths]
    api = VictimAPI.from_checkpoint(victim_path, output=cfg.api_output) if victim_path else None
    wd.prepare_workdir(workdir, cfg.overwrite)
    data = experiment_data(cfg.dataset, None, cfg.probe_test_size, with_victim_train=False,
                           probe_train_size=cfg.probe_train_size,
                           test_split=cfg.get("test_split", "test"))
    key = jax.random.key(int(cfg.seed))
    owner = None if api is None else api.query("owner", data.probe_test_x)
    encoders = []
    for p, m in zip(paths, models):
        victim_space = 1 if (m.kind == "surrogate" or cfg.api_output == "projection") else 0
        name = f"{m.kind}: {os.path.basename(os.path.dirname(p.rstrip('/')))}"
        encoders.append(Encoder(name, m.module, m.variables, 0, victim_space, m.kind))
    first = models[0]
    ind = build_model(first.kind, {**first.meta["config"]["model"],
                                   "adapter_dim": first.meta.get("adapter_dim")})
    encoders.append(evaluate.independent_encoder(ind, data, cfg.seed, 0))
    rows = evaluate.evaluate_encoders(encoders, data, key, owner, evaluate.eval_kwargs(cfg))
    title = f"evaluation on {cfg.dataset}, fidelity to {cfg.victim_checkpoint or 'none'}"
    out = {"experiment": "evaluate", "rows": rows, "checkpoints": paths,
           "splits": data.names, "environment": wd.run_environment(), "config": cfg.to_dict()}
    return results.finish(workdir, out, rows, fields=["name", *COLUMNS],
                          table=format_table(rows, title),
                          plots=[("results.png", lambda p: plot_results(rows, p, title))])
