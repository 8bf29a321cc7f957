"""Query-budget scan: budgets x losses x query sources x seeds, one command.

Protocol (Dziedzic et al., ICML 2022, Section 4 / Figure "accuracy vs number
of queries"; SPEC claims 1-4):
* per query source the attacker opens ONE API account with a budget equal to
  the largest scanned budget and queries that many pool images once; the
  answers are cached in ``<workdir>/answers_<source>.npz`` (the API is never
  asked for more than the largest budget, and a resumed scan reuses the cache);
* every cell ``(source, loss, budget, seed)`` trains a FRESHLY initialised
  surrogate (never warm-started from a smaller budget) on the first ``budget``
  cached answers, under one of two protocols: ``"examples"`` (default: every
  cell sees the same number of training examples, ``examples_per_cell``, so
  budgets are compared at equal attacker compute) or ``"epochs"`` (the paper's:
  ``steal.epochs`` epochs over each budget, so larger budgets also train longer);
* each cell is evaluated like the main job (linear probe, 100 labels/class,
  kNN, fidelity to the victim on the probe test set) and its row is written
  atomically to ``<workdir>/cells/<cell>.json`` with the surrogate config it
  was trained with; a crashed or interrupted scan resumes, skipping finished
  cells (an unfinished cell resumes from its own orbax checkpoint under
  ``<workdir>/cells/<cell>/``), and a later scan with more losses, budgets or
  seeds in the same workdir (``--config.overwrite=True``) reuses the cells it
  shares — a cell trained with other settings raises instead of being reused;
* ``results.json``, ``results.csv`` and one PNG per query source (probe
  accuracy and cosine fidelity vs queries, one line per loss, victim and
  independent encoder as reference lines) are written at the end.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.direct import effective_batch_size, resolve_hparams, train_surrogate
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.experiments import common
from sslsteal_jax.experiments.steal import _arch_name, get_victim, parse_losses
from sslsteal_jax.models import SurrogateModel, build_encoder
from sslsteal_jax.training.checkpoint import write_json_atomic

CSV_FIELDS = ("source", "loss", "budget", "seed", "steps", "epochs", "train_seconds",
              "probe_full", "probe_100", "knn", "cosine_fidelity", "l2_fidelity")


def parse_int_list(spec, name: str, minimum: int = 0) -> list[int]:
    """``"250,1000"`` / ``[250, 1000]`` -> sorted unique ints.

    Raises:
      ValueError: empty list, non-integer, or a value below ``minimum`` (names it).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        vals = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        raise ValueError(f"{name}={spec!r} must be a comma-separated list of integers") from None
    if not vals or vals[0] < minimum:
        raise ValueError(f"{name}={spec!r} must hold integers >= {minimum}")
    return vals


def parse_sources(spec: str, dataset: str) -> list[str]:
    """Comma list of query sources (``""`` = the victim's own test pool)."""
    names = [s.strip() for s in (spec or dataset).split(",") if s.strip()]
    return names or [dataset]


def cell_name(source: str, loss: str, budget: int, seed: int) -> str:
    """File-system safe identifier of one scan cell."""
    return f"{source.replace(':', '-').replace('/', '-')}__{loss}__b{budget}__s{seed}"


def cell_steps(budget: int, batch_size: int, examples: int) -> int:
    """Optimizer steps so a surrogate trained on ``budget`` answers sees
    ``examples`` training examples (rounded up to whole batches)."""
    return math.ceil(examples / effective_batch_size(batch_size, budget))


def _answers(api, source, pool, budget, workdir):
    """Query ``pool[:budget]`` once (one account per source); cached atomically."""
    path = os.path.join(workdir, f"answers_{source.replace(':', '-')}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            if len(z["answers"]) >= budget:
                return z["images"], z["answers"], 0
    user = f"attacker[{source}]"
    api.register(user, budget)
    images, answers = collect_answers(api, user, pool, budget)
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=images, answers=answers)
    os.replace(tmp, path)
    return images, answers, api.queries_used(user)


def run(cfg, workdir: str) -> dict:
    """Run (or resume) the scan; returns the results dict written to ``workdir``.

    Config fields (``configs/budget_scan.py``): ``dataset``, ``query_sources``
    (comma list: ``""`` = in-distribution test pool, ``fashion_mnist:train``,
    ``mnist_subset``, ``digits``), ``budgets``, ``losses``, ``seeds``,
    ``protocol`` ("examples" | "epochs"), ``examples_per_cell`` (training
    examples each surrogate sees under "examples"), ``steal``
    (surrogate config as in the main job), ``loss_overrides``, ``victim``,
    ``eval``, ``probe_train_size``.
    Raises:
      ValueError: bad budgets/seeds/losses, or a budget above a source's pool
        size (names the source and its size).
    """
    t0 = time.time()
    budgets = parse_int_list(cfg.budgets, "budgets", 1)
    seeds = parse_int_list(cfg.seeds, "seeds", 0)
    loss_names = parse_losses(cfg.losses)
    sources = parse_sources(cfg.query_sources, cfg.dataset)
    protocol = cfg.get("protocol", "examples")
    if protocol not in ("examples", "epochs"):
        raise ValueError(f"protocol={protocol!r}; allowed: 'examples' (equal training examples "
                         f"per cell) or 'epochs' (steal.epochs epochs over every budget)")
    examples = int(cfg.examples_per_cell) if protocol == "examples" else None
    if protocol == "examples" and examples < 1:
        raise ValueError(f"examples_per_cell={examples} must be >= 1")
    datas = {s: experiment_data(cfg.dataset, s, cfg.probe_test_size, with_victim_train=False,
                                probe_train_size=cfg.get("probe_train_size")) for s in sources}
    for s, d in datas.items():
        if budgets[-1] > len(d.query_pool):
            raise ValueError(f"budget {budgets[-1]} exceeds the query pool of source {s!r} "
                             f"({d.names['query_pool']}: {len(d.query_pool)} images); lower the "
                             f"budgets" + ("" if s == f"{cfg.dataset}:train" else
                                           f" or use a larger source (e.g. '{cfg.dataset}:train')"))
    if not os.path.isdir(common.resolve_path(cfg.victim.checkpoint) or ""):
        raise FileNotFoundError(f"budget scan needs a trained victim checkpoint; "
                                f"{cfg.victim.checkpoint!r} does not exist")
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    os.makedirs(os.path.join(workdir, "cells"), exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    data0 = datas[sources[0]]
    model, variables, victim_source = get_victim(cfg, workdir, data0)
    api = VictimAPI(model, variables, data0.probe_test_x.shape[1:], output=cfg.api_output)
    owner = api.query("owner", data0.probe_test_x)
    ev = common.eval_kwargs(cfg)
    key = jax.random.key(int(cfg.seed))
    out_index = 0 if cfg.api_output == "representation" else 1

    # Reference rows (victim, independent encoder) are computed once and cached.
    ref_path = os.path.join(workdir, "cells", "_reference.json")
    if os.path.exists(ref_path):
        with open(ref_path) as f:
            reference = json.load(f)
    else:
        enc = model.encoder
        arch = dict(arch=cfg.steal.model.arch or _arch_name(enc),
                    width=cfg.steal.model.width or enc.width, stem=cfg.steal.model.stem or enc.stem)
        senc = build_encoder(arch["arch"], arch["width"], arch["stem"])
        smod = SurrogateModel(senc, None if senc.representation_dim == api.output_dim
                              else api.output_dim)
        reference = {
            "victim": common.encoder_row("victim", model, variables, data0, key, owner, 0,
                                         out_index, ev),
            "independent": common.independent_row(smod, data0, key, cfg.seed, owner,
                                                   1 if smod.out_dim is None else None, ev)}
        write_json_atomic(ref_path, reference)

    charged = {}
    rows = []
    for source in sources:
        data = datas[source]
        images, answers, n_charged = _answers(api, source, data.query_pool, budgets[-1], workdir)
        charged[source] = n_charged
        for loss in loss_names:
            for budget in budgets:
                for seed in seeds:
                    rows.append(_cell(cfg, workdir, source, loss, budget, seed, images, answers,
                                      model, data0, owner, key, ev, examples))
    t_end = time.time()
    results = {"experiment": "budget_scan", "budgets": budgets, "losses": loss_names,
               "sources": sources, "seeds": seeds, "protocol": protocol,
               "examples_per_cell": examples,
               "reference": reference, "cells": rows,
               "queries_charged_this_run": charged, "victim_checkpoint": victim_source,
               "query_pools": {s: d.names["query_pool"] for s, d in datas.items()},
               "wall_seconds": t_end - t0, "config": cfg.to_dict()}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    _write_csv(os.path.join(workdir, "results.csv"), rows)
    for source in sources:
        plot_scan([r for r in rows if r["source"] == source], reference,
                  os.path.join(workdir, f"scan_{source.replace(':', '-')}.png"),
                  f"{cfg.dataset} victim, queries from {datas[source].names['query_pool']}")
    print(format_scan(rows, reference))
    print(f"wrote {workdir}/results.json, results.csv and scan_*.png ({t_end - t0:.0f} s)")
    return results


def _cell(cfg, workdir, source, loss, budget, seed, images, answers, model, data, owner, key, ev,
          examples):
    name = cell_name(source, loss, budget, seed)
    path = os.path.join(workdir, "cells", name + ".json")
    scfg = cfg.steal.copy_and_resolve_references()
    scfg.loss, scfg.seed = loss, int(seed)
    enc = model.encoder
    scfg.model.arch = scfg.model.arch or _arch_name(enc)
    scfg.model.width = scfg.model.width or enc.width
    scfg.model.stem = scfg.model.stem or enc.stem
    if loss in cfg.get("loss_overrides", {}):
        scfg.update(dict(cfg.loss_overrides[loss]))
    if examples is not None:
        scfg.steps = cell_steps(budget, int(resolve_hparams(scfg)["batch_size"]), examples)
    if os.path.exists(path):
        with open(path) as f:
            row = json.load(f)
        if row.get("surrogate_config") != scfg.to_dict():
            raise ValueError(
                f"cell {name} in {workdir!r} was trained with another surrogate config "
                f"({row.get('surrogate_config')}) than this scan asks for ({scfg.to_dict()}); "
                f"use a fresh --workdir for a scan with other settings")
        return row
    t = time.time()
    smod, svars, summ = train_surrogate(images[:budget], answers[:budget], scfg,
                                        os.path.join(workdir, "cells", name))
    train_s = time.time() - t
    row = common.encoder_row(f"{loss} @ {budget}", smod, svars, data, key, owner, 0, 1, ev)
    row.update(source=source, loss=loss, budget=int(budget), seed=int(seed),
               steps=int(summ["steps"]),
               epochs=int(summ["steps"]) * effective_batch_size(
                   resolve_hparams(scfg)["batch_size"], budget) / int(budget),
               train_seconds=train_s, surrogate_config=scfg.to_dict())
    write_json_atomic(path, row)
    return row


def _write_csv(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})
    os.replace(tmp, path)


def aggregate(rows: list[dict], metric: str) -> dict:
    """``{loss: (budgets, mean, std)}`` of ``metric`` over seeds, budgets ascending."""
    out = {}
    for loss in dict.fromkeys(r["loss"] for r in rows):
        bs = sorted({r["budget"] for r in rows if r["loss"] == loss})
        vals = [[r[metric] for r in rows if r["loss"] == loss and r["budget"] == b] for b in bs]
        out[loss] = (bs, [float(np.mean(v)) for v in vals], [float(np.std(v)) for v in vals])
    return out


def plot_scan(rows: list[dict], reference: dict, path: str, title: str) -> None:
    """Two panels (linear-probe accuracy %, cosine fidelity) vs queries (log axis),
    one line per loss with seed std error bars; victim and independent encoder
    as dashed reference lines. Written atomically to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "probe_full", "linear probe accuracy (%)"),
                              (axes[1], "cosine_fidelity", "cosine fidelity to victim")):
        for loss, (bs, mean, std) in aggregate(rows, metric).items():
            ax.errorbar(bs, mean, yerr=std, marker="o", capsize=3, label=loss)
        for ref, style in (("victim", "k--"), ("independent", "r:")):
            v = reference[ref].get(metric)
            if v is not None:
                ax.axhline(v, color=style[0], linestyle=style[1:],
                           label=f"{ref} ({v:.3g})")
        ax.set_xscale("log")
        ax.set_xlabel("queries (images sent to the API)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def format_scan(rows: list[dict], reference: dict) -> str:
    """Markdown table: one line per (source, loss, budget), means over seeds."""
    lines = ["| source | loss | queries | probe acc (%) | 100/class (%) | kNN (%) | cos fidelity |",
             "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["source"], r["loss"], r["budget"]) for r in rows))
    for s, l, b in keys:
        sel = [r for r in rows if (r["source"], r["loss"], r["budget"]) == (s, l, b)]
        m = {k: np.mean([r[k] for r in sel]) for k in ("probe_full", "probe_100", "knn",
                                                         "cosine_fidelity")}
        lines.append(f"| {s} | {l} | {b} | {m['probe_full']:.2f} | {m['probe_100']:.2f} | "
                     f"{m['knn']:.2f} | {m['cosine_fidelity']:.3f} |")
    for ref in ("victim", "independent"):
        r = reference[ref]
        fid = r.get("cosine_fidelity")
        lines.append(f"| {ref} | | | {r['probe_full']:.2f} | {r['probe_100']:.2f} | "
                     f"{r['knn']:.2f} | {'' if fid is None else f'{fid:.3f}'} |")
    return "\n".join(lines)
