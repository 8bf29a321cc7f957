"""Defense matrix: what every defense costs the attacker and the legitimate user.

For every defense family, strength and attack (``configs/defense_matrix.py``):
1. a fresh ``VictimAPI`` with that defense chain answers the attacker's queries
   (``direct``: the first ``budget`` pool images once; ``averaging:repeats=n``:
   ``budget // n`` images n times each; ``sybil:accounts=k,shared=s``: k accounts
   merged by a linear map, ``budget`` queries in total);
2. a surrogate is trained on the answers (``attacks.direct.train_surrogate``) and
   evaluated like every encoder of the toolkit (linear probe, kNN);
3. a legitimate user with one task queries its labelled train and test images
   through the same defended API and trains a linear probe on the answers
   (``evaluation.legit_user``).
Plus, once per run: victim and independent-encoder reference rows, the
query-similarity detector's precision / recall / F1 / ROC-AUC against an
augmented-views and a single-view attacker, and B4B coverage / noise of an
attacker vs legitimate users at equal numbers of queries.

Outputs in the workdir: ``results.json``, ``results.csv`` (one row per cell),
``tradeoff.png`` (legitimate-user accuracy vs attacker accuracy, one curve per
defense and attack), ``b4b_coverage.png``. Finished cells are kept in
``cells.json`` (written atomically) and skipped when an interrupted run is
restarted; ``--config.overwrite=True`` on a finished workdir recomputes
everything (old results and cells are kept with a time stamp).

Sources: Dziedzic et al., ICML 2022, Section 5 (defenses and their cost);
Dubinski et al., "Bucks for Buckets", NeurIPS 2023, Sections 3-5.
"""
from __future__ import annotations

import csv
import json
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks import adaptive
from sslsteal_jax.attacks.direct import train_surrogate
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.registry import load_split
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.detection import detector_report
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.legit_user import coverage_curve, legit_user_accuracy, task_subset
from sslsteal_jax.experiments import common
from sslsteal_jax.experiments.steal import _arch_name
from sslsteal_jax.models import SurrogateModel
from sslsteal_jax.training.checkpoint import write_json_atomic
from sslsteal_jax.training.encoders import load_model
from sslsteal_jax.training.simclr import augment_config

ATTACKS = ("direct", "averaging", "sybil")
CSV_COLUMNS = ("cell", "family", "strength", "defense", "attack", "queries_charged",
               "distinct_images", "attacker_probe_full", "attacker_probe_100", "attacker_knn",
               "legit_accuracy", "legit_queries", "attacker_flagged", "attacker_coverage",
               "legit_flagged", "legit_coverage", "seconds")


def parse_attack(spec: str) -> tuple[str, dict]:
    """``"direct"`` / ``"averaging:repeats=4"`` / ``"sybil:accounts=2,shared=500"`` -> (name, params).

    Raises:
      ValueError: unknown attack or parameter (lists the allowed ones).
    """
    name, _, rest = spec.partition(":")
    allowed = {"direct": {}, "averaging": {"repeats": 4},
               "sybil": {"accounts": 2, "shared": 500}}
    if name not in allowed:
        raise ValueError(f"unknown attack {name!r}; allowed: {list(ATTACKS)}")
    params = dict(allowed[name])
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        if k not in params:
            raise ValueError(f"unknown parameter {k!r} of attack {name!r}; allowed: {sorted(params)}")
        params[k] = int(v)
    return name, params


def attacker_answers(api, attack: str, pool: np.ndarray, budget: int):
    """Run one attack against ``api``; returns ``(images, answers, info)``.

    Raises:
      ValueError: bad attack spec or a budget too small for it.
    """
    name, p = parse_attack(attack)
    if name == "direct":
        api.register("attacker", budget)
        x, y = collect_answers(api, "attacker", pool, budget, progress=False)
        return x, y, {"users": ["attacker"]}
    if name == "averaging":
        n = budget // p["repeats"]
        if n < 1:
            raise ValueError(f"budget {budget} < repeats {p['repeats']}")
        api.register("attacker", budget)
        return pool[:n], adaptive.averaged_answers(api, "attacker", pool[:n], p["repeats"]), {
            "users": ["attacker"]}
    users = [f"sybil{i}" for i in range(p["accounts"])]
    n = budget - (p["accounts"] - 1) * p["shared"]
    if n <= p["shared"]:
        raise ValueError(f"budget {budget} too small for {p['accounts']} accounts sharing "
                         f"{p['shared']} images")
    for u in users:
        api.register(u, budget)
    x, y, info = adaptive.sybil_answers(api, users, pool[:n], p["shared"])
    return x, y, dict(info, users=users)


def _summary_value(summaries: list[dict], field: str):
    vals = [v for s in summaries for k, v in s.items() if k.endswith(field)]
    if not vals:
        return None
    return float(np.mean(vals)) if field.endswith("coverage") else float(np.sum(vals))


def _cells(cfg):
    for fam in cfg.families:
        for s in fam["strengths"]:
            spec = fam["template"].format(s=s)
            for attack in fam["attacks"]:
                yield f"{fam['name']}/{s}/{attack}", fam["name"], s, spec, attack


def run(cfg, workdir: str) -> dict:
    """Run (or resume) the defense matrix; returns the results dict (also written to ``workdir``)."""
    t0 = time.time()
    cells_path = os.path.join(workdir, "cells.json")
    finished = os.path.exists(os.path.join(workdir, "results.json"))
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    if finished and os.path.exists(cells_path):  # overwrite: recompute, keep the old cells
        os.replace(cells_path, os.path.join(workdir, f"cells.{int(time.time())}.json"))
    data = experiment_data(cfg.dataset, None, cfg.probe_test_size, with_victim_train=False,
                           probe_train_size=cfg.get("probe_train_size"))
    if not 1 <= cfg.budget <= len(data.query_pool):
        raise ValueError(f"budget {cfg.budget} must be in [1, {len(data.query_pool)}]")
    vpath = common.resolve_path(cfg.victim.checkpoint)
    loaded = load_model(vpath)
    model, variables = loaded.module, loaded.variables
    shape = data.probe_test_x.shape[1:]
    key = jax.random.key(int(cfg.seed))
    ev = common.eval_kwargs(cfg)
    done = json.load(open(cells_path)) if os.path.exists(cells_path) else {}

    def save(name, value):
        done[name] = value
        write_json_atomic(cells_path, done)

    # ---- reference rows --------------------------------------------------------------
    vcfg = model.encoder
    smodel_cfg = cfg.steal.copy_and_resolve_references()
    smodel_cfg.model.arch = smodel_cfg.model.arch or _arch_name(vcfg)
    smodel_cfg.model.width = smodel_cfg.model.width or vcfg.width
    smodel_cfg.model.stem = smodel_cfg.model.stem or vcfg.stem
    if smodel_cfg.loss in cfg.get("loss_overrides", {}):
        smodel_cfg.update(dict(cfg.loss_overrides[smodel_cfg.loss]))
    if "reference/victim" not in done:
        save("reference/victim", common.encoder_row("victim", model, variables, data, key,
                                                    cfg_eval=ev))
    if "reference/independent" not in done:
        from sslsteal_jax.models import build_encoder
        enc = build_encoder(smodel_cfg.model.arch, smodel_cfg.model.width, smodel_cfg.model.stem)
        save("reference/independent", common.independent_row(SurrogateModel(enc), data, key,
                                                              cfg.seed, cfg_eval=ev))

    # ---- detector quality -------------------------------------------------------------
    if "detector" not in done:
        head_apply = make_apply(model, variables, 1)
        aug = augment_config(loaded.meta["config"]["augment"])
        d = cfg.detector
        save("detector", detector_report(lambda x: extract_features(head_apply, x),
                                         data.query_pool[:d.images], int(d.views), list(d.thresholds),
                                         int(d.memory), jax.random.fold_in(key, 7), aug))

    # ---- B4B coverage: attacker vs legitimate users -------------------------------------
    bm = cfg.b4b_measure
    if "b4b_coverage" not in done:
        n = int(bm.queries)
        tx, ty = load_split(cfg.dataset, "train")  # the legitimate users' own labelled images
        single_x, _ = task_subset(tx, ty, list(bm.single_task_classes), n)
        curves = {}
        for spec in bm.specs:
            api = VictimAPI(model, variables, shape, defenses=spec, seed=cfg.api_seed)
            curves[spec] = {
                "attacker (query pool, 10 classes)": coverage_curve(
                    api, "attacker", data.query_pool[:n], int(bm.step)),
                "legit, 10-class task": coverage_curve(api, "legit10", tx[:n], int(bm.step)),
                f"legit, single task (classes {list(bm.single_task_classes)})": coverage_curve(
                    api, "legit_single", single_x, int(bm.step))}
        save("b4b_coverage", curves)

    # ---- the matrix ----------------------------------------------------------------------
    legit_x, legit_y = task_subset(data.probe_train_x, data.probe_train_y, cfg.legit.classes,
                                   int(cfg.legit.train_size))
    test_x, test_y = task_subset(data.probe_test_x, data.probe_test_y, cfg.legit.classes,
                                 int(cfg.legit.test_size))
    for cell, fam, strength, spec, attack in _cells(cfg):
        if cell in done:
            continue
        tc = time.time()
        print(f"[defense matrix] {cell}: defense {spec!r}, attack {attack!r}")
        api = VictimAPI(model, variables, shape, defenses=spec, seed=cfg.api_seed)
        x, y, info = attacker_answers(api, attack, data.query_pool, int(cfg.budget))
        smod, svars, summ = train_surrogate(x, y, smodel_cfg, None, progress=False)
        row = common.encoder_row(f"surrogate [{cell}]", smod, svars, data, key, cfg_eval=ev)
        att_summ = [api.defense_summary(u) for u in info["users"]]
        if f"legit/{spec}" not in done:  # one legitimate user per defense setting
            save(f"legit/{spec}", legit_user_accuracy(
                api, "legit", legit_x, legit_y, test_x, test_y, jax.random.fold_in(key, 3),
                epochs=int(cfg.legit.probe_epochs)))
        legit = done[f"legit/{spec}"]
        save(cell, {
            "cell": cell, "family": fam, "strength": strength, "defense": api.defenses,
            "attack": attack, "queries_charged": int(sum(api.queries_used(u) for u in info["users"])),
            "distinct_images": int(len(x)), "attacker_probe_full": row["probe_full"],
            "attacker_probe_100": row["probe_100"], "attacker_knn": row["knn"],
            "legit_accuracy": legit["accuracy"], "legit_queries": legit["queries"],
            "attacker_flagged": _summary_value(att_summ, "flagged"),
            "attacker_coverage": _summary_value(att_summ, "coverage"),
            "legit_flagged": _summary_value([legit["defense"]], "flagged"),
            "legit_coverage": _summary_value([legit["defense"]], "coverage"),
            "sybil_fit_relative_error": info.get("fit_relative_error"),
            "surrogate_steps": summ["steps"], "seconds": time.time() - tc})
        print(f"  attacker probe {row['probe_full']:.2f}%  legit user {legit['accuracy']:.2f}%  "
              f"({time.time() - tc:.0f} s)")

    rows = [done[c[0]] for c in _cells(cfg)]
    results = {"experiment": "defense_matrix", "budget": int(cfg.budget), "cells": rows,
               "reference": {"victim": done["reference/victim"],
                             "independent": done["reference/independent"]},
               "detector": done["detector"], "b4b_coverage": done["b4b_coverage"],
               "victim_checkpoint": vpath, "splits": data.names,
               "total_seconds_this_invocation": time.time() - t0, "config": cfg.to_dict()}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    tmp = os.path.join(workdir, "results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in CSV_COLUMNS})
    os.replace(tmp, os.path.join(workdir, "results.csv"))
    plot_tradeoff(rows, results["reference"], os.path.join(workdir, "tradeoff.png"),
                  f"{cfg.dataset}: {cfg.budget} attacker queries per cell")
    plot_coverage(done["b4b_coverage"], os.path.join(workdir, "b4b_coverage.png"))
    print(format_matrix(rows, results["reference"]))
    print(f"wrote {workdir}/results.json, results.csv, tradeoff.png, b4b_coverage.png "
          f"({time.time() - t0:.0f} s this invocation)")
    return results


def format_matrix(rows, reference) -> str:
    """Text table of the matrix (accuracies in percent)."""
    head = f"{'cell':<44}{'attacker %':>11}{'legit %':>9}{'queries':>9}{'flagged':>9}{'cover %':>9}"
    lines = [head, "-" * len(head)]
    for name in ("victim", "independent"):
        lines.append(f"{'reference: ' + name:<44}{reference[name]['probe_full']:>11.2f}")
    f = lambda v, p: f"{v:>9.{p}f}" if v is not None else f"{'-':>9}"
    for r in rows:
        lines.append(f"{r['cell']:<44}{r['attacker_probe_full']:>11.2f}{r['legit_accuracy']:>9.2f}"
                     f"{r['queries_charged']:>9d}{f(r['attacker_flagged'], 0)}"
                     f"{f(r['attacker_coverage'], 1)}")
    return "\n".join(lines)


def _save_fig(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_tradeoff(rows, reference, path: str, title: str) -> None:
    """Legitimate-user accuracy (x) vs attacker surrogate accuracy (y), one curve per
    (defense family, attack), strengths in order; victim / independent as reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["family"], r["attack"]), []).append(r)
    for (fam, attack), rs in groups.items():
        label = fam if attack == "direct" else f"{fam} vs {attack.split(':')[0]}"
        ax.plot([r["legit_accuracy"] for r in rs], [r["attacker_probe_full"] for r in rs],
                "o-" if attack == "direct" else "s--", label=label)
        for r in rs:
            ax.annotate(str(r["strength"]), (r["legit_accuracy"], r["attacker_probe_full"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(reference["victim"]["probe_full"], color="k", lw=0.8, ls=":",
               label="victim encoder (probe)")
    ax.axhline(reference["independent"]["probe_full"], color="gray", lw=0.8, ls="-.",
               label="independent encoder")
    ax.set_xlabel("legitimate user's accuracy through the defended API (%)")
    ax.set_ylabel("attacker's surrogate: linear-probe accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    _save_fig(fig, path)


def plot_coverage(curves: dict, path: str) -> None:
    """B4B coverage (left) and noise sigma (right) vs queries, per user kind and B4B setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for spec, users in curves.items():
        for user, pts in users.items():
            q = [p["queries"] for p in pts]
            lbl = f"{user} [{spec}]"
            a1.plot(q, [p["coverage"] for p in pts], label=lbl)
            a2.plot(q, [max(p["sigma"], 1e-8) for p in pts], label=lbl)
    a1.set_xlabel("queries")
    a1.set_ylabel("LSH bucket coverage (%)")
    a2.set_xlabel("queries")
    a2.set_ylabel("B4B noise sigma (last query)")
    a2.set_yscale("log")
    a1.legend(fontsize=6)
    a1.set_title("B4B: coverage of attacker vs legitimate users", fontsize=10)
    _save_fig(fig, path)
