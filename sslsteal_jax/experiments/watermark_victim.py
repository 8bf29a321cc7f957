"""Experiment: train a watermarked SimCLR victim (rotation watermark, joint training).

Warm-starts from ``cfg.init_from`` (normally the shipped victim) and fine-tunes
encoder, projection head and the secret watermark MLP jointly on
``NT-Xent + lambda * CE(rotation)`` (Dziedzic et al., ICML 2022, Section 5; see
``trainers.watermark``). Writes ``<workdir>/checkpoints`` (a "simclr"
checkpoint: served by ``VictimAPI.from_checkpoint``, stolen by the steal
experiment, verified by the verify experiment), ``train_log.jsonl``,
``config.json`` and ``results.json``/``results.csv``: the watermark accuracy
and binomial p-value of the watermarked victim and of its unwatermarked
ancestor on the held-out watermark images, and linear-probe / kNN utility of
both (the price of the watermark for legitimate users).
"""
from __future__ import annotations

import os

import jax

from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.report import COLUMNS as EVAL_COLUMNS
from sslsteal_jax.evaluation.report import format_table
from sslsteal_jax.experiments.verify import Suspect, watermark_test
from sslsteal_jax.pipeline import evaluate, results, workdir as wd
from sslsteal_jax.models.watermark import rotation_task
from sslsteal_jax.trainers.watermark import train_watermark_victim, watermark_slices
from sslsteal_jax.training.checkpoint import load_model, write_json_atomic
from sslsteal_jax.verification.watermark import owner_logits_fn


def run(cfg, workdir: str) -> dict:
    """Train (or resume) the watermarked victim, then evaluate it; returns the results dict.

    Raises:
      ValueError: bad watermark slices / sizes (see ``trainers.watermark``).
      WorkdirExistsError: ``workdir`` already holds results and overwrite is False.
    """
    wd.prepare_workdir(workdir, cfg.overwrite)
    if cfg.init_from:
        cfg.init_from = wd.resolve_path(cfg.init_from)
    data = experiment_data(cfg.dataset, probe_train_size=cfg.probe_train_size)
    full_train = data.victim_train
    tr, ver = watermark_slices(len(full_train), cfg.watermark.train_images,
                               cfg.watermark.verify_images)
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    n = cfg.victim_train_size or len(full_train)
    model, variables, summary = train_watermark_victim(cfg, workdir, full_train[:n], full_train[tr])

    classes = int(cfg.model.watermark_classes)
    wm_x, wm_y = rotation_task(full_train[ver], classes)
    logits = owner_logits_fn(model, variables)
    dim = int(extract_features(make_apply(model, variables, 0), wm_x[:2]).shape[1])
    encoders = [Suspect(Encoder("watermarked victim", model, variables, 0, 0, "victim"))]
    if cfg.init_from:
        anc = load_model(cfg.init_from)
        encoders.append(Suspect(Encoder("ancestor (init_from, no watermark)", anc.module,
                                        anc.variables, 0, 0, "ancestor")))
    key = jax.random.key(int(cfg.seed) + 1)
    rows = []
    for s in encoders:
        w = watermark_test(logits, dim, s, wm_x, wm_y, classes, float(cfg.watermark.alpha))
        row = evaluate.encoder_row(s.encoder, data, key, None, evaluate.eval_kwargs(cfg))
        row.update(wm_accuracy=w["accuracy"], wm_p_value=w["p_value"],
                   wm_above_chance=w["above_chance"])
        rows.append(row)
    print(format_table(rows, f"watermarked victim on {cfg.dataset}"))
    for r in rows:
        print(f"{r['name']}: watermark accuracy {r['wm_accuracy']:.3f} on {len(wm_y)} rotated "
              f"held-out images (chance {1 / classes:.2f}), binomial p = {r['wm_p_value']:.3g}")
    out = {"experiment": "watermark_victim", "training": summary, "rows": rows,
               "watermark_train_images": f"{data.names['victim_train']}[{tr.start}:{tr.stop}]",
               "watermark_verify_images": f"{data.names['victim_train']}[{ver.start}:{ver.stop}]",
               "simclr_train_images": f"{data.names['victim_train']}[:{n}]",
               "splits": data.names, "environment": wd.run_environment(), "config": cfg.to_dict()}
    return results.finish(workdir, out, rows, fields=["name", *EVAL_COLUMNS, "wm_accuracy",
                                                      "wm_p_value", "wm_above_chance"])
