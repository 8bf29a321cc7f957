"""Query-budget scan: budgets x losses x query sources x seeds, one command.

Protocol (Dziedzic et al., ICML 2022, Section 4 / Figure "accuracy vs number
of queries"; docs/science.md claims 1-4):
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
* cells that share a compiled step (same source and loss, the same
  surrogate config except the seed, equal batch size and step count: under
  ``"examples"`` all budgets >= the batch size and all seeds of a loss, under
  ``"epochs"`` the seeds of one budget) train as members of ONE compiled
  program (``trainers.stacked.train_surrogates_stacked``), up to ``stack``
  members at a time and fewer when the memory guard (estimated bytes per
  member x K > ``stack_memory_fraction`` x available memory) says they do not
  fit; ``stack=1`` (or a group of one) trains cells one after another with
  ``train_surrogate`` as before. Each member is freshly initialised from its
  own seed and trained on its own budget prefix with its own data order,
  exactly as alone (equal to float tolerance). A stacked group checkpoints
  its stacked state under ``<workdir>/cells/stack_<hash of its cell
  names>/``; an interrupted group resumes from there when the same cells are
  pending again with the same ``stack`` (another grouping trains them from
  scratch); finished cells are never retrained. Rows of stacked cells carry
  ``stacked`` = K and ``train_seconds`` = the group's training wall time / K
  (``group_train_seconds`` holds the whole);
* ``results.json``, ``results.csv`` and one PNG per query source (probe
  accuracy and cosine fidelity vs queries, one line per loss, victim and
  independent encoder as reference lines) are written at the end.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.experiments import common
from sslsteal_jax.experiments.steal import get_victim, parse_losses
from sslsteal_jax.models import SurrogateModel, arch_name, build_encoder
from sslsteal_jax.trainers.stacked import (available_memory_bytes, estimate_member_bytes,
                                           fit_stack_size, shared_config,
                                           train_surrogates_stacked)
from sslsteal_jax.trainers.surrogate import (effective_batch_size, prepare_surrogate,
                                             resolve_hparams, steal_config,
                                             surrogate_schedule, train_surrogate)
from sslsteal_jax.training import summaries
from sslsteal_jax.training.checkpoint import write_json_atomic
from sslsteal_jax.training.vmap import MODES

CSV_FIELDS = ("source", "loss", "budget", "seed", "steps", "epochs", "stacked", "train_seconds",
              "probe_full", "probe_100", "knn", "cosine_fidelity", "l2_fidelity")


def parse_int_list(spec, name: str, minimum: int = 0) -> list[int]:
    """``"250,1000"`` / ``[250, 1000]`` -> sorted unique ints.

    Raises:
      ConfigError (a ValueError): empty list, non-integer, or a value below ``minimum`` (names it).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        vals = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        raise ConfigError(f"{name}={spec!r} must be a comma-separated list of integers") from None
    if not vals or vals[0] < minimum:
        raise ConfigError(f"{name}={spec!r} must hold integers >= {minimum}")
    return vals


def stack_options(cfg) -> tuple[int, float, str]:
    """``(stack, stack_memory_fraction, stack_mode)`` of a scan config, validated.

    ``stack``: most cells per compiled program (int >= 1; 1 = sequential;
    missing = 1). ``stack_memory_fraction``: share of the available memory
    the stacked members may fill (float in (0, 1]; missing = 0.5).
    ``stack_mode``: "auto" | "vmap" | "unroll" (``training.vmap``; missing = "auto").

    Raises:
      ConfigError (a ValueError): a value of the wrong type or range (names it and what is allowed).
    """
    stack = cfg.get("stack", 1)
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise ConfigError(f"stack={stack!r}; allowed: an integer >= 1 (the most scan cells "
                          f"trained in one compiled program; 1 = one cell after another)")
    frac = cfg.get("stack_memory_fraction", 0.5)
    if (isinstance(frac, bool) or not isinstance(frac, (int, float, np.floating))
            or not 0 < frac <= 1):
        raise ConfigError(f"stack_memory_fraction={frac!r}; allowed: a number in (0, 1] (share "
                          f"of the available memory stacked surrogates may use)")
    mode = cfg.get("stack_mode", "auto")
    if mode not in MODES:
        raise ConfigError(f"stack_mode={mode!r}; allowed: {list(MODES)}")
    return int(stack), float(frac), mode


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
    ``eval``, ``probe_train_size``, ``stack``, ``stack_memory_fraction``,
    ``stack_mode`` (:func:`stack_options`).
    Raises:
      ConfigError (a ValueError): bad budgets/seeds/losses/stack options or a missing
        victim checkpoint (before any data is loaded), a budget above a source's
        pool size (names the source and its size), or a finished cell in
        ``workdir`` trained with another surrogate config.
    """
    t0 = time.time()
    stack, stack_fraction, stack_mode = stack_options(cfg)
    budgets = parse_int_list(cfg.budgets, "budgets", 1)
    seeds = parse_int_list(cfg.seeds, "seeds", 0)
    loss_names = parse_losses(cfg.losses)
    sources = parse_sources(cfg.query_sources, cfg.dataset)
    protocol = cfg.get("protocol", "examples")
    if protocol not in ("examples", "epochs"):
        raise ConfigError(f"protocol={protocol!r}; allowed: 'examples' (equal training examples "
                          f"per cell) or 'epochs' (steal.epochs epochs over every budget)")
    examples = int(cfg.examples_per_cell) if protocol == "examples" else None
    if protocol == "examples" and examples < 1:
        raise ConfigError(f"examples_per_cell={examples} must be >= 1")
    if not os.path.isdir(common.resolve_path(cfg.victim.checkpoint) or ""):
        raise ConfigError(f"budget scan needs a trained victim checkpoint; "
                          f"{cfg.victim.checkpoint!r} does not exist")
    datas = {s: experiment_data(cfg.dataset, s, cfg.probe_test_size, with_victim_train=False,
                                probe_train_size=cfg.get("probe_train_size")) for s in sources}
    for s, d in datas.items():
        if budgets[-1] > len(d.query_pool):
            raise ConfigError(f"budget {budgets[-1]} exceeds the query pool of source {s!r} "
                              f"({d.names['query_pool']}: {len(d.query_pool)} images); lower the "
                              f"budgets" + ("" if s == f"{cfg.dataset}:train" else
                                           f" or use a larger source (e.g. '{cfg.dataset}:train')"))
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
        arch = dict(arch=cfg.steal.model.arch or arch_name(enc),
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
    rows, pending, cache = {}, [], {}
    for source in sources:
        data = datas[source]
        images, answers, charged[source] = _answers(api, source, data.query_pool, budgets[-1],
                                                    workdir)
        cache[source] = (images, answers)
        for loss in loss_names:
            for budget in budgets:
                for seed in seeds:
                    cell = _cell_plan(cfg, workdir, model, source, loss, budget, seed, examples)
                    if cell["row"] is not None:
                        rows[cell["name"]] = cell["row"]
                    else:
                        pending.append(cell)
    order = [cell_name(s, l, b, sd) for s in sources for l in loss_names for b in budgets
             for sd in seeds]
    groups = []
    for group in _group_cells(pending, cache, stack, stack_fraction):
        groups.append({"cells": [c["name"] for c in group["cells"]], **group["memory"]})
        rows.update(_train_group(group["cells"], cache, workdir, data0, owner, key, ev,
                                 stack_mode))
    rows = [rows[n] for n in order]
    t_end = time.time()
    results = {"experiment": "budget_scan", "budgets": budgets, "losses": loss_names,
               "sources": sources, "seeds": seeds, "protocol": protocol,
               "examples_per_cell": examples,
               "stack": {"max_members": stack, "memory_fraction": stack_fraction,
                         "mode": stack_mode, "groups_trained_this_run": groups},
               "reference": reference, "cells": rows,
               "queries_charged_this_run": charged, "victim_checkpoint": victim_source,
               "query_pools": {s: d.names["query_pool"] for s, d in datas.items()},
               "wall_seconds": t_end - t0, "environment": common.run_environment(), "config": cfg.to_dict()}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    common.write_csv_atomic(os.path.join(workdir, "results.csv"), rows, CSV_FIELDS)
    # [TensorBoard] each cell's metrics against its budget, one curve per source/loss/seed
    summaries.write_results_summary(workdir, rows, results, series=("source", "loss", "seed"),
                                    step_key="budget")
    for source in sources:
        plot_scan([r for r in rows if r["source"] == source], reference,
                  os.path.join(workdir, f"scan_{source.replace(':', '-')}.png"),
                  f"{cfg.dataset} victim, queries from {datas[source].names['query_pool']}")
    print(format_scan(rows, reference))
    print(f"wrote {workdir}/results.json, results.csv and scan_*.png ({t_end - t0:.0f} s)")
    return results


def _cell_plan(cfg, workdir, model, source, loss, budget, seed, examples) -> dict:
    """One cell: its name, json path, surrogate config, batch size and step count,
    and its finished row (None if it still has to be trained).

    Raises:
      ValueError: a finished row in ``workdir`` was trained with another config.
    """
    name = cell_name(source, loss, budget, seed)
    path = os.path.join(workdir, "cells", name + ".json")
    scfg = steal_config(cfg.steal, loss, model.encoder, cfg.get("loss_overrides", {}), seed)
    if examples is not None:
        scfg.steps = cell_steps(budget, int(resolve_hparams(scfg)["batch_size"]), examples)
    row = None
    if os.path.exists(path):
        with open(path) as f:
            row = json.load(f)
        if row.get("surrogate_config") != scfg.to_dict():
            raise ConfigError(
                f"cell {name} in {workdir!r} was trained with another surrogate config "
                f"({row.get('surrogate_config')}) than this scan asks for ({scfg.to_dict()}); "
                f"use a fresh --workdir for a scan with other settings")
    bsz, steps = surrogate_schedule(scfg, budget)
    return {"name": name, "path": path, "source": source, "loss": loss, "budget": int(budget),
            "seed": int(seed), "cfg": scfg, "batch_size": bsz, "steps": steps, "row": row}


def _group_cells(pending: list[dict], cache: dict, stack: int, fraction: float) -> list[dict]:
    """Split pending cells into groups that train in one compiled program.

    Cells group when source, surrogate config except ``seed``, batch size and
    step count agree; each group is cut into chunks of at most K members,
    K = ``fit_stack_size(stack, estimated bytes per member, available memory,
    fraction)``. Returns ``[{"cells": [...], "memory": {...}}]`` in the order
    of the first cell of each chunk.
    """
    by_key = {}
    for c in pending:
        key = json.dumps([c["source"], shared_config(c["cfg"]), c["batch_size"], c["steps"]],
                         sort_keys=True, default=str)
        by_key.setdefault(key, []).append(c)
    out = []
    for cells in by_key.values():
        k, memory = 1, {"members": 1}
        if stack > 1 and len(cells) > 1:
            images, answers = cache[cells[0]["source"]]
            b = cells[0]["budget"]
            per = estimate_member_bytes(prepare_surrogate(images[:b], answers[:b], cells[0]["cfg"],
                                                          abstract=True))
            avail = available_memory_bytes()
            k = fit_stack_size(min(stack, len(cells)), per, avail, fraction)
            memory = {"members": k, "member_bytes": per, "available_bytes": avail}
            if k < min(stack, len(cells)):
                print(f"budget scan: {min(stack, len(cells))} stacked surrogates of ~"
                      f"{per / 2 ** 20:.0f} MiB would exceed {fraction:g} of the "
                      f"{(avail or 0) / 2 ** 20:.0f} MiB available; stacking {k} at a time")
        out += [{"cells": cells[i:i + k], "memory": memory} for i in range(0, len(cells), k)]
    return out


def _train_group(cells, cache, workdir, data, owner, key, ev, mode) -> dict:
    """Train one group (alone when it has one cell), evaluate each cell and write
    its row atomically; returns ``{cell name: row}``."""
    t = time.time()
    if len(cells) == 1:
        c = cells[0]
        images, answers = cache[c["source"]]
        trained = [train_surrogate(images[:c["budget"]], answers[:c["budget"]], c["cfg"],
                                   os.path.join(workdir, "cells", c["name"]))]
    else:
        names = "|".join(c["name"] for c in cells)
        gdir = os.path.join(workdir, "cells",
                            "stack_" + hashlib.sha1(names.encode()).hexdigest()[:12])
        os.makedirs(gdir, exist_ok=True)
        write_json_atomic(os.path.join(gdir, "members.json"), [c["name"] for c in cells])
        trained = train_surrogates_stacked(
            [(cache[c["source"]][0][:c["budget"]], cache[c["source"]][1][:c["budget"]], c["cfg"])
             for c in cells], gdir, mode=mode)
    train_s = time.time() - t
    rows = {}
    for c, (smod, svars, summ) in zip(cells, trained):
        row = common.encoder_row(f"{c['loss']} @ {c['budget']}", smod, svars, data, key, owner,
                                 0, 1, ev)
        row.update(source=c["source"], loss=c["loss"], budget=c["budget"], seed=c["seed"],
                   steps=int(summ["steps"]),
                   epochs=int(summ["steps"]) * c["batch_size"] / c["budget"],
                   stacked=len(cells), train_seconds=train_s / len(cells),
                   group_train_seconds=train_s, surrogate_config=c["cfg"].to_dict())
        write_json_atomic(c["path"], row)
        rows[c["name"]] = row
    return rows


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
