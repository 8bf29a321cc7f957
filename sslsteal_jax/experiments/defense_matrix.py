"""Defense matrix: what every defense costs the attacker and the legitimate user.

For every defense family, strength and attack (``configs/defense_matrix.py``):
1. a fresh ``VictimAPI`` with that defense chain answers the attacker's queries
   (``direct``: the first ``budget`` pool images once; ``averaging:repeats=n``:
   ``budget // n`` images n times each; ``sybil:accounts=k,shared=s``: k accounts
   merged by a linear map, ``budget`` queries in total);
2. a surrogate is trained on the answers (``trainers.surrogate.train_surrogate``) and
   evaluated like every encoder of the toolkit (linear probe, kNN);
3. two legitimate users query their own labelled train and test images through
   the same defended API and train a linear probe on the answers
   (``evaluation.legit_user``): a 10-class user (all Fashion-MNIST classes)
   and a single-task user (``legit.single_task_classes``, a 3-class footwear
   task). Each sends exactly ``budget`` queries, the attacker's count
   (``budget - legit.test_size`` labelled train images, then
   ``legit.test_size`` test images), so coverage, noise and flags are
   compared at equal numbers of queries (B4B's claim is about equal query
   counts: Dubinski et al., NeurIPS 2023, Section 4).
Plus, once per run: victim and independent-encoder reference rows, the
query-similarity detector's precision / recall / F1 / ROC-AUC against an
augmented-views and a single-view attacker, and B4B coverage / noise sigma of
an attacker vs a 10-class and a single-task legitimate user, measured after
every ``b4b_measure.step`` queries, each user sending the same number.

B4B cells hash with the default tables (20 x 12 bits) centred on the mean of
the victim's answers on ``b4b_reference`` provider images (``defenses.b4b``):
the API is built with ``defense_reference`` = the last
``b4b_reference`` Fashion-MNIST train images (the provider's own data; the
legitimate users use the first train images, the attacker the test split).

Outputs in the workdir: ``results.json``, ``results.csv`` (one row per cell),
``tradeoff.png`` (legitimate-user accuracy vs attacker accuracy, one curve per
defense and attack), ``b4b_coverage.png``. Finished cells are kept in
``cells/`` (``pipeline.cells.CellStore``: one JSON file per cell, written
atomically) and skipped when an interrupted run is restarted (a workdir made
with other settings is refused); ``--config.overwrite=True`` recomputes
everything (old results and cells are kept with a time stamp).

Sources: Dziedzic et al., ICML 2022, Section 5 (defenses and their cost);
Dubinski et al., "Bucks for Buckets", NeurIPS 2023, Sections 3-5.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import factory as api_factory
from sslsteal_jax.attacks import adaptive
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.registry import load_split
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.detection import detector_report
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.legit_user import coverage_curve, legit_user_accuracy, task_subset
from sslsteal_jax.evaluation.report import save_figure
from sslsteal_jax.models import SurrogateModel, encoder_from_config
from sslsteal_jax.pipeline import evaluate, results, workdir as wd
from sslsteal_jax.pipeline.cells import CellStore
from sslsteal_jax.pipeline.victim import load_victim
from sslsteal_jax.trainers.simclr import augment_config
from sslsteal_jax.trainers.surrogate import steal_config, train_surrogate

ATTACKS = ("direct", "averaging", "sybil")
CSV_COLUMNS = ("cell", "family", "strength", "defense", "attack", "queries_charged",
               "distinct_images", "attacker_probe_full", "attacker_probe_100", "attacker_knn",
               "legit_accuracy", "legit_queries", "legit_single_accuracy", "legit_single_queries",
               "attacker_flagged", "legit_flagged", "legit_single_flagged",
               "attacker_coverage", "legit_coverage", "legit_single_coverage",
               "attacker_sigma", "legit_sigma", "legit_single_sigma", "seconds", "cpu_seconds")
USERS = ("attacker", "legit", "legit_single")  # row-field prefixes


def parse_attack(spec: str) -> tuple[str, dict]:
    """``"direct"`` / ``"averaging:repeats=4"`` / ``"sybil:accounts=2,shared=500"`` -> (name, params).

    Raises:
      ConfigError (a ValueError): unknown attack or parameter (lists the allowed ones), or a
        parameter value that is not an integer.
    """
    name, _, rest = spec.partition(":")
    allowed = {"direct": {}, "averaging": {"repeats": 4},
               "sybil": {"accounts": 2, "shared": 500}}
    if name not in allowed:
        raise ConfigError(f"unknown attack {name!r} in {spec!r}; allowed: {list(ATTACKS)}")
    params = dict(allowed[name])
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        if k not in params:
            raise ConfigError(f"unknown parameter {k!r} of attack {name!r} in {spec!r}; allowed: "
                              f"{sorted(params)}")
        try:
            params[k] = int(v)
        except ValueError:
            raise ConfigError(f"attack {spec!r}: {k}={v!r} is not an integer") from None
    return name, params


def attacker_answers(api, attack: str, pool: np.ndarray, budget: int):
    """Run one attack against ``api``; returns ``(images, answers, info)``.

    Raises:
      ConfigError (a ValueError): bad attack spec or a budget too small for it.
    """
    name, p = parse_attack(attack)
    if name == "direct":
        api.register("attacker", budget)
        x, y = collect_answers(api, "attacker", pool, budget, progress=False)
        return x, y, {"users": ["attacker"]}
    if name == "averaging":
        n = budget // p["repeats"]
        if n < 1:
            raise ConfigError(f"attack {attack!r}: budget {budget} < repeats {p['repeats']}")
        api.register("attacker", budget)
        return pool[:n], adaptive.averaged_answers(api, "attacker", pool[:n], p["repeats"]), {
            "users": ["attacker"]}
    users = [f"sybil{i}" for i in range(p["accounts"])]
    n = budget - (p["accounts"] - 1) * p["shared"]
    if n <= p["shared"]:
        raise ConfigError(f"attack {attack!r}: budget {budget} too small for {p['accounts']} accounts sharing "
                          f"{p['shared']} images")
    for u in users:
        api.register(u, budget)
    x, y, info = adaptive.sybil_answers(api, users, pool[:n], p["shared"])
    return x, y, dict(info, users=users)


def _summary_value(summaries: list[dict], field: str):
    """One report value over a user's accounts: ``flagged`` summed, ``coverage`` and
    ``sigma`` averaged (sybil accounts); None when no link reports ``field``."""
    vals = [v for s in summaries for k, v in s.items() if k.endswith("." + field)]
    if not vals:
        return None
    return float(np.sum(vals)) if field == "flagged" else float(np.mean(vals))


def legit_data(cfg, train_x, train_y, test_x, test_y) -> dict:
    """The legitimate users' data, each user sending exactly ``cfg.budget`` queries.

    Returns ``{"legit": (train_x, train_y, test_x, test_y), "legit_single": ...}``:
    the 10-class user takes the first ``budget - legit.test_size`` train images and
    the first ``legit.test_size`` probe-test images; the single-task user the first
    ones of ``legit.single_task_classes``.
    Raises:
      ConfigError (a ValueError): ``legit.test_size`` not in [1, budget) (names both).
      ValueError: too few images of the single task.
    """
    n_test = int(cfg.legit.test_size)
    if not 1 <= n_test < int(cfg.budget):
        raise ConfigError(f"legit.test_size={n_test} must be in [1, budget={cfg.budget}): the "
                         f"legitimate users send budget queries, train + test")
    n_train = int(cfg.budget) - n_test
    out = {}
    for user, classes in (("legit", None), ("legit_single", list(cfg.legit.single_task_classes))):
        out[user] = (*task_subset(train_x, train_y, classes, n_train),
                     *task_subset(test_x, test_y, classes, n_test))
    return out


def _fingerprint(cfg) -> dict:
    """The settings every cell depends on (all but ``families`` and ``overwrite``,
    so a finished matrix can be extended by new families and resumed)."""
    d = cfg.to_dict()
    return json.loads(json.dumps({k: v for k, v in d.items()
                                  if k not in ("families", "overwrite")}, default=str))


def _cells(cfg):
    for fam in cfg.families:
        for s in fam["strengths"]:
            spec = fam["template"].format(s=s)
            for attack in fam["attacks"]:
                yield f"{fam['name']}/{s}/{attack}", fam["name"], s, spec, attack


def check_config(cfg) -> None:
    """Validate the user settings that need no data, before anything is loaded or written:
    every attack spec of ``cfg.families`` (:func:`parse_attack`), ``budget >= 1``,
    ``legit.test_size`` in [1, budget) and ``b4b_reference >= 1`` (the upper bounds that
    depend on the data are checked in :func:`run`).

    Raises:
      ConfigError (a ValueError): the first bad value (named, with what is allowed).
    """
    for fam in cfg.families:
        for attack in fam["attacks"]:
            parse_attack(attack)
    if int(cfg.budget) < 1:
        raise ConfigError(f"budget {cfg.budget} must be >= 1 (and at most the query pool size)")
    n_test = int(cfg.legit.test_size)
    if not 1 <= n_test < int(cfg.budget):
        raise ConfigError(f"legit.test_size={n_test} must be in [1, budget={cfg.budget}): the "
                          f"legitimate users send budget queries, train + test")
    if int(cfg.b4b_reference) < 1:
        raise ConfigError(f"b4b_reference={cfg.b4b_reference} must be >= 1 (and at most half "
                          f"the {cfg.dataset} train split)")


def run(cfg, workdir: str) -> dict:
    """Run (or resume) the defense matrix; returns the results dict (also written to ``workdir``).

    Raises:
      ConfigError (a ValueError): a bad setting (:func:`check_config`, before the workdir
        is made or data loaded), or a workdir holding cells of another configuration.
    """
    t0, phases = time.time(), Phases()
    check_config(cfg)
    wd.prepare_workdir(workdir, cfg.overwrite)
    store = CellStore(os.path.join(workdir, "cells"), _fingerprint(cfg), fresh=cfg.overwrite)
    data = experiment_data(cfg.dataset, None, cfg.probe_test_size, with_victim_train=False,
                           probe_train_size=cfg.probe_train_size)
    if not 1 <= cfg.budget <= len(data.query_pool):
        raise ConfigError(f"budget {cfg.budget} must be in [1, {len(data.query_pool)}] (the "
                          f"query pool {data.names['query_pool']})")
    tx, ty = load_split(cfg.dataset, "train")  # legitimate users' and provider's own images
    if not int(cfg.b4b_reference) <= len(tx) // 2:
        raise ConfigError(f"b4b_reference={cfg.b4b_reference} must be in [1, {len(tx) // 2}] "
                          f"(half the {cfg.dataset} train split)")
    victim = load_victim(cfg.victim.checkpoint)
    key, ev = jax.random.key(int(cfg.seed)), evaluate.eval_kwargs(cfg)
    smodel_cfg = steal_config(cfg.steal, cfg.steal.loss, victim.module.encoder,
                              cfg.loss_overrides)
    enc = encoder_from_config(smodel_cfg.model)
    reference = {
        "victim": store.get_or_compute("reference/victim", lambda: evaluate.encoder_row(
            victim.encoder(), data, key, None, ev)),
        "independent": store.get_or_compute("reference/independent", lambda: evaluate.encoder_row(
            evaluate.independent_encoder(SurrogateModel(enc), data, cfg.seed), data, key, None,
            ev))}
    phases("setup and reference rows")
    detector = store.get_or_compute("detector", lambda: _detector(cfg, victim, data, key))
    phases("detector")
    defense_reference = tx[-int(cfg.b4b_reference):]

    def make_api(spec):
        return api_factory.make_api(cfg.api, victim.module, victim.variables,
                                    data.probe_test_x.shape[1:],
                                    defenses=spec, seed=cfg.api_seed,
                                    defense_reference=defense_reference)

    curves = store.get_or_compute("b4b_coverage", lambda: _coverage(cfg, make_api, data, tx, ty))
    phases("b4b coverage curves")
    users = legit_data(cfg, tx, ty, data.probe_test_x, data.probe_test_y)
    rows = [store.get_or_compute(cell, lambda: _matrix_cell(
        cfg, store, make_api, cell, fam, strength, spec, attack, data, users, smodel_cfg, key,
        ev)) for cell, fam, strength, spec, attack in _cells(cfg)]
    phases("matrix cells")
    out = {"experiment": "defense_matrix", "budget": int(cfg.budget), "cells": rows,
           "reference": reference, "detector": detector, "b4b_coverage": curves,
           "victim_checkpoint": victim.source, "splits": data.names,
           "total_seconds_this_invocation": time.time() - t0,
           "seconds_per_phase_this_invocation": phases.seconds,
           "environment": wd.run_environment(), "config": cfg.to_dict()}
    title = f"{cfg.dataset}: {cfg.budget} attacker queries per cell"
    return results.finish(
        workdir, out, rows, fields=CSV_COLUMNS, table=format_matrix(rows, reference),
        plots=[("tradeoff.png", lambda p: plot_tradeoff(rows, reference, p, title)),
               ("b4b_coverage.png", lambda p: plot_coverage(curves, p, budget=int(cfg.budget)))],
        seconds=time.time() - t0)


class Phases:
    """Wall and CPU seconds (all threads) of each part of one invocation: call it with
    a phase name when the phase ends; ``seconds`` maps names to ``{"wall", "cpu"}``."""

    def __init__(self):
        self.seconds: dict = {}
        self._t = [time.time(), time.process_time()]

    def __call__(self, name: str) -> None:
        self.seconds[name] = {"wall": round(time.time() - self._t[0], 1),
                              "cpu": round(time.process_time() - self._t[1], 1)}
        self._t = [time.time(), time.process_time()]


def _detector(cfg, victim, data, key) -> dict:
    """The query-similarity detector's quality against augmented-view and single-view
    attackers (``evaluation.detection.detector_report``) on the victim's head outputs."""
    head_apply = make_apply(victim.module, victim.variables, 1)
    d = cfg.detector
    return detector_report(lambda x: extract_features(head_apply, x), data.query_pool[:d.images],
                           int(d.views), list(d.thresholds), int(d.memory),
                           jax.random.fold_in(key, 7), augment_config(victim.meta["config"]["augment"]))


def _coverage(cfg, make_api, data, tx, ty) -> dict:
    """B4B coverage curves of an attacker and two legitimate users per B4B setting, every
    user sending the same number of images in calls of ``b4b_measure.step``."""
    bm, classes = cfg.b4b_measure, list(cfg.legit.single_task_classes)
    n = int(bm.queries)
    single_x, _ = task_subset(tx, ty, classes, n)
    curves = {}
    for spec in bm.specs:
        api = make_api(spec)
        curves[spec] = {
            "attacker (query pool, 10 classes)": coverage_curve(
                api, "attacker", data.query_pool[:n], int(bm.step)),
            "legit, 10-class task": coverage_curve(api, "legit10", tx[:n], int(bm.step)),
            f"legit, single task (classes {classes})": coverage_curve(
                api, "legit_single", single_x, int(bm.step))}
    return curves


def _matrix_cell(cfg, store, make_api, cell, fam, strength, spec, attack, data, users,
                 smodel_cfg, key, ev) -> dict:
    """One cell: the attack against a fresh API with defense ``spec``, a surrogate
    trained on its answers and evaluated, and both legitimate users' accuracy through
    the same API (cached per defense setting in ``store``); returns the row."""
    tc, cc = time.time(), time.process_time()
    print(f"[defense matrix] {cell}: defense {spec!r}, attack {attack!r}", flush=True)
    api = make_api(spec)
    x, y, info = attacker_answers(api, attack, data.query_pool, int(cfg.budget))
    smod, svars, summ = train_surrogate(x, y, smodel_cfg, None, progress=False)
    row = evaluate.encoder_row(Encoder.surrogate(f"surrogate [{cell}]", smod, svars), data, key,
                               None, ev)
    summaries = {"attacker": [api.defense_summary(u) for u in info["users"]]}
    legit = {}
    for user, (ltr_x, ltr_y, lte_x, lte_y) in users.items():
        # one legitimate user of each kind per defense setting
        legit[user] = store.get_or_compute(f"{user}/{spec}", lambda: legit_user_accuracy(
            api, user, ltr_x, ltr_y, lte_x, lte_y, jax.random.fold_in(key, 3),
            epochs=int(cfg.legit.probe_epochs)))
        summaries[user] = [legit[user]["defense"]]
    out = {"cell": cell, "family": fam, "strength": strength, "defense": api.defenses,
           "attack": attack,
           "queries_charged": int(sum(api.queries_used(u) for u in info["users"])),
           "distinct_images": int(len(x)), "attacker_probe_full": row["probe_full"],
           "attacker_probe_100": row["probe_100"], "attacker_knn": row["knn"]}
    for user in users:
        out[f"{user}_accuracy"] = legit[user]["accuracy"]
        out[f"{user}_queries"] = legit[user]["queries"]
    for user in USERS:
        for field in ("flagged", "coverage", "sigma"):
            out[f"{user}_{field}"] = _summary_value(summaries[user], field)
    out.update(sybil_fit_relative_error=info.get("fit_relative_error"),
               surrogate_steps=summ["steps"], seconds=time.time() - tc,
               cpu_seconds=time.process_time() - cc)
    print(f"  attacker probe {row['probe_full']:.2f}%  legit 10-class {out['legit_accuracy']:.2f}%"
          f"  legit single-task {out['legit_single_accuracy']:.2f}%  ({time.time() - tc:.0f} s)",
          flush=True)
    return out


def format_matrix(rows, reference) -> str:
    """Text table of the matrix: accuracies and B4B coverage in percent; flagged
    queries and coverage for attacker / 10-class legit / single-task legit users
    (all at the same number of queries)."""
    head = (f"{'cell':<40}{'attacker %':>11}{'legit10 %':>10}{'legit1 %':>9}{'queries':>8}"
            f"{'flagged a/10/1':>16}{'cover % a/10/1':>18}")
    lines = [head, "-" * len(head)]
    for name in ("victim", "independent"):
        lines.append(f"{'reference: ' + name:<40}{reference[name]['probe_full']:>11.2f}")
    f = lambda v, p: f"{v:.{p}f}" if v is not None else "-"
    for r in rows:
        flags = "/".join(f(r.get(f"{u}_flagged"), 0) for u in USERS)
        cover = "/".join(f(r.get(f"{u}_coverage"), 1) for u in USERS)
        lines.append(f"{r['cell']:<40}{r['attacker_probe_full']:>11.2f}{r['legit_accuracy']:>10.2f}"
                     f"{r['legit_single_accuracy']:>9.2f}{r['queries_charged']:>8d}"
                     f"{flags:>16}{cover:>18}")
    return "\n".join(lines)


def plot_tradeoff(rows, reference, path: str, title: str) -> None:
    """Legitimate-user accuracy (x) vs attacker surrogate accuracy (y), one curve per
    (defense family, attack), strengths in order; left: the 10-class user, right:
    the single-task user (both sent as many queries as the attacker); victim /
    independent encoder as reference lines. Rows that carry ``<field>_std`` (the
    means over seeds of :func:`plot_seeds`) get +- one standard deviation error bars
    on both axes. Accuracies in percent; written atomically to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["family"], r["attack"]), []).append(r)
    for ax, field, who in ((axes[0], "legit_accuracy", "10-class legitimate user"),
                           (axes[1], "legit_single_accuracy", "single-task legitimate user")):
        for (fam, attack), rs in groups.items():
            label = fam if attack == "direct" else f"{fam} vs {attack.split(':')[0]}"
            seeds = f"{field}_std" in rs[0]  # means over seeds: error bars on both axes
            ax.errorbar([r[field] for r in rs], [r["attacker_probe_full"] for r in rs],
                        xerr=[r[f"{field}_std"] for r in rs] if seeds else None,
                        yerr=[r["attacker_probe_full_std"] for r in rs] if seeds else None,
                        fmt="o-" if attack == "direct" else "s--", capsize=2, label=label)
            for r in rs:
                ax.annotate(str(r["strength"]), (r[field], r["attacker_probe_full"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(reference["victim"]["probe_full"], color="k", lw=0.8, ls=":",
                   label="victim encoder (probe)")
        ax.axhline(reference["independent"]["probe_full"], color="gray", lw=0.8, ls="-.",
                   label="independent encoder")
        ax.set_xlabel(f"{who}: accuracy through the defended API (%)")
        ax.set_title(f"{title}; {who}", fontsize=9)
    axes[0].set_ylabel("attacker's surrogate: linear-probe accuracy (%)")
    # one legend for both panels, below them: inside a panel it covered points and labels
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    save_figure(fig, path, rect=(0, 0.08, 1, 1))


def seed_rows(summary: dict) -> list[dict]:
    """The cells of a ``--seeds`` summary as :func:`plot_tradeoff` rows: per cell the
    mean over seeds of the attacker's and both legitimate users' accuracy (percent) and
    ``<field>_std`` (sample standard deviation; 0.0 for a column equal under every seed,
    which the summary keeps as a setting).

    Args:
      summary: the ``seeds.json`` dict of ``pipeline.repeat.run_seeds`` for a defense
        matrix (``summary`` rows with ``cell``, ``family``, ``strength``, ``attack``).
    Returns:
      one dict per cell, in the summary's order.
    Raises:
      KeyError: a row lacks those columns (not a defense-matrix summary).
    """
    rows = []
    for r in summary["summary"]:
        row = {k: r[k] for k in ("cell", "family", "strength", "attack")}
        for m in ("attacker_probe_full", "legit_accuracy", "legit_single_accuracy"):
            if f"{m}_mean" in r:  # a column that varied between seeds
                row[m], row[f"{m}_std"] = r[f"{m}_mean"], r[f"{m}_std"]
            else:  # equal under every seed (a setting column)
                row[m], row[f"{m}_std"] = float(r[m]), 0.0
        rows.append(row)
    return rows


def plot_seeds(summary: dict, workdir: str) -> list[str]:
    """The trade-off plot of a ``--seeds`` run: :func:`plot_tradeoff` of
    :func:`seed_rows` (means with +- one standard deviation error bars) to
    ``<workdir>/tradeoff_seeds.png``; the reference lines are the first seed's victim
    and independent rows.

    Args:
      summary: the ``seeds.json`` dict of ``pipeline.repeat.run_seeds``.
      workdir: the parent work directory of the seeds.
    Returns:
      the names of the files written (``["tradeoff_seeds.png"]``).
    Raises:
      KeyError: not a defense-matrix summary; OSError: the first seed's results.json
        cannot be read.
    """
    first = summary["per_seed_workdirs"][str(summary["seeds"][0])]
    with open(os.path.join(first, "results.json")) as f:
        reference = json.load(f)["reference"]
    seeds = ",".join(map(str, summary["seeds"]))
    plot_tradeoff(seed_rows(summary), reference, os.path.join(workdir, "tradeoff_seeds.png"),
                  f"mean +- std over seeds {seeds}")
    return ["tradeoff_seeds.png"]


def plot_coverage(curves: dict, path: str, budget: int | None = None) -> None:
    """B4B coverage (left) and noise sigma (right) vs queries, per user kind and B4B
    setting; every user sent the same queries count at each point; a dotted line
    marks the matrix's per-cell budget."""
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
    if budget:
        for a in (a1, a2):
            a.axvline(budget, color="gray", lw=0.8, ls=":")
    a1.set_xlabel("queries (same count for every user)")
    a1.set_ylabel("LSH bucket coverage (%)")
    a2.set_xlabel("queries")
    a2.set_ylabel("B4B noise sigma (last query)")
    a2.set_yscale("log")
    a1.legend(fontsize=6)
    a1.set_title("B4B: coverage of attacker vs legitimate users", fontsize=10)
    save_figure(fig, path)
