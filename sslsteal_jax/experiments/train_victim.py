"""Experiment: train a SimCLR victim and record its downstream metrics.

Writes ``<workdir>/checkpoints`` (orbax, resumable), ``train_log.jsonl``,
``config.json`` and ``results.json`` (victim vs raw pixels vs an independent
randomly initialised encoder of the same architecture).
"""
from __future__ import annotations

import jax

from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.report import COLUMNS, format_table
from sslsteal_jax.models import build_model
from sslsteal_jax.pipeline import evaluate, results, workdir as wd
from sslsteal_jax.pipeline.victim import train_victim


def run(cfg, workdir: str) -> dict:
    """Train (or resume) the victim in ``workdir``, then evaluate it; returns the results dict.

    Raises:
      WorkdirExistsError (a ConfigError): ``workdir`` holds results and overwrite is False.
    """
    wd.prepare_workdir(workdir, cfg.overwrite)
    data = experiment_data(cfg.dataset, victim_train_size=cfg.victim_train_size,
                           probe_train_size=cfg.probe_train_size,
                           probe_test_size=int(cfg.get("probe_test_size", 5000)))
    model, variables, summary = train_victim(cfg, workdir, data)
    key = jax.random.key(int(cfg.seed) + 1)
    ind = evaluate.independent_encoder(build_model("simclr", dict(cfg.model)), data, cfg.seed)
    rows = evaluate.evaluate_encoders(
        [Encoder("victim", model, variables, 0, 0, "victim"), ind], data, key, None,
        evaluate.eval_kwargs(cfg))
    out = {"experiment": "train_victim", "training": summary, "rows": rows,
           "splits": data.names, "environment": wd.run_environment(), "config": cfg.to_dict()}
    return results.finish(workdir, out, rows, fields=["name", *COLUMNS],
                          table=format_table(rows, f"victim SimCLR on {cfg.dataset}"))
