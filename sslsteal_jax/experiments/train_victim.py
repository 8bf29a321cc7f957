"""Experiment: train a SimCLR victim and record its downstream metrics.

Writes ``<workdir>/checkpoints`` (orbax, resumable), ``train_log.jsonl``,
``config.json`` and ``results.json`` (victim vs raw pixels vs an independent
randomly initialised encoder of the same architecture).
"""
from __future__ import annotations

import functools
import os

import jax

from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.report import format_table
from sslsteal_jax.experiments import common
from sslsteal_jax.models import build_model
from sslsteal_jax.trainers.simclr import train_simclr
from sslsteal_jax.training.checkpoint import write_json_atomic


def train(cfg, workdir: str, data=None):
    """Train (or resume) the victim in ``workdir``; returns (model, variables, summary)."""
    data = data or experiment_data(cfg.dataset)
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    return train_simclr(cfg, workdir, data.victim_train)


def run(cfg, workdir: str) -> dict:
    """Train the victim then evaluate it; returns the results dict."""
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    data = experiment_data(cfg.dataset, victim_train_size=cfg.get("victim_train_size"),
                           probe_train_size=cfg.get("probe_train_size"))
    model, variables, summary = train(cfg, workdir, data)
    key = jax.random.key(int(cfg.seed) + 1)
    rows = common.evaluate_rows([
        functools.partial(common.encoder_row, "victim", model, variables, data, key),
        functools.partial(common.independent_row, build_model("simclr", dict(cfg.model)), data, key,
                          cfg.seed),
        functools.partial(common.raw_pixels_row, data, key)])
    print(format_table(rows, f"victim SimCLR on {cfg.dataset}"))
    results = {"experiment": "train_victim", "training": summary, "rows": rows,
               "splits": data.names, "environment": common.run_environment(), "config": cfg.to_dict()}
    common.write_results(workdir, results, rows)
    return results
