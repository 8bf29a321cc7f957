"""Query-budget scan: budgets x losses x query sources x seeds, one command.

Protocol (Dziedzic et al., ICML 2022, Section 4 / Figure "accuracy vs number
of queries"; docs/science.md claims 1-4):
* per query source the attacker opens ONE API account with a budget equal to
  the largest scanned budget and queries that many pool images once; the
  answers are cached in ``<workdir>/answers_<source>.npz`` (with
  ``stream.enabled=True``: the pools and probe sets are lazy ``data.stream`` views
  read a batch at a time and the answers go to the chunked, resumable store
  ``<workdir>/answers_<source>/``, read back memory-mapped; budgets are its
  prefixes; results equal the in-memory scan's) (the API is never
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

import dataclasses
import hashlib
import json
import math
import os
import re
import time

import jax
import ml_collections
import numpy as np

from sslsteal_jax.api.factory import make_api
from sslsteal_jax.attacks.query import collect_answers, owner_answers
from sslsteal_jax.configs.base import stream_data_kwargs, stream_settings
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.report import save_figure
from sslsteal_jax.losses import parse_losses
from sslsteal_jax.models import SurrogateModel, encoder_from_config
from sslsteal_jax.pipeline import evaluate, queries, results, seeds, workdir as wd
from sslsteal_jax.pipeline.cells import CellStore
from sslsteal_jax.pipeline.victim import load_victim
from sslsteal_jax.trainers.stacked import (available_memory_bytes, estimate_member_bytes,
                                           fit_stack_size, shared_config,
                                           train_surrogates_stacked)
from sslsteal_jax.trainers.surrogate import (effective_batch_size, prepare_surrogate,
                                             resolve_hparams, steal_config,
                                             surrogate_schedule, train_surrogate)
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
    stack = cfg.stack
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise ConfigError(f"stack={stack!r}; allowed: an integer >= 1 (the most scan cells "
                          f"trained in one compiled program; 1 = one cell after another)")
    frac = cfg.stack_memory_fraction
    if (isinstance(frac, bool) or not isinstance(frac, (int, float, np.floating))
            or not 0 < frac <= 1):
        raise ConfigError(f"stack_memory_fraction={frac!r}; allowed: a number in (0, 1] (share "
                          f"of the available memory stacked surrogates may use)")
    mode = cfg.stack_mode
    if mode not in MODES:
        raise ConfigError(f"stack_mode={mode!r}; allowed: {list(MODES)}")
    return int(stack), float(frac), mode


def parse_sources(spec: str, dataset: str) -> list[str]:
    """Comma list of query sources (``""`` = the victim's own test pool)."""
    names = [s.strip() for s in (spec or dataset).split(",") if s.strip()]
    return names or [dataset]


def cell_name(source: str, loss: str, budget: int, seed: int) -> str:
    """File-system safe identifier of one scan cell: every character of ``source`` other
    than letters, digits, ``_ . @ -`` becomes ``-`` (``imagenet2012@224x224x3:train[:250000]``
    -> ``imagenet2012@224x224x3-train--250000-``; orbax / tensorstore cannot read a
    checkpoint below a folder whose name holds ``[``)."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "-", source)
    return f"{safe}__{loss}__b{budget}__s{seed}"


def cell_steps(budget: int, batch_size: int, examples: int) -> int:
    """Optimizer steps so a surrogate trained on ``budget`` answers sees
    ``examples`` training examples (rounded up to whole batches)."""
    return math.ceil(examples / effective_batch_size(batch_size, budget))


def check_config(cfg) -> dict:
    """Validate and parse the scan's settings before any data is loaded.

    Returns ``{"budgets", "seeds", "losses", "sources", "examples", "stack",
    "stack_fraction", "stack_mode"}`` (``examples`` None under the "epochs" protocol).
    Raises:
      ConfigError (a ValueError): bad budgets / seeds / losses / protocol / stack
        options, or a victim checkpoint that does not exist.
    """
    stack, fraction, mode = stack_options(cfg)
    if cfg.protocol not in ("examples", "epochs"):
        raise ConfigError(f"protocol={cfg.protocol!r}; allowed: 'examples' (equal training "
                          f"examples per cell) or 'epochs' (steal.epochs epochs over every budget)")
    examples = int(cfg.examples_per_cell) if cfg.protocol == "examples" else None
    if examples is not None and examples < 1:
        raise ConfigError(f"examples_per_cell={examples} must be >= 1")
    if not os.path.isdir(wd.resolve_path(cfg.victim.checkpoint) or ""):
        raise ConfigError(f"budget scan needs a trained victim checkpoint; "
                          f"{cfg.victim.checkpoint!r} does not exist (train or import it first: "
                          "the config's --show_config prints the commands)")
    return dict(budgets=parse_int_list(cfg.budgets, "budgets", 1),
                seeds=parse_int_list(cfg.seeds, "seeds", 0), losses=parse_losses(cfg.losses),
                sources=parse_sources(cfg.query_sources, cfg.dataset), examples=examples,
                stack=stack, stack_fraction=fraction, stack_mode=mode)


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
      ConfigError (a ValueError): bad settings (:func:`check_config`, before any data
        is loaded), a budget above a source's pool size (names the source and its
        size), or cells / answers in ``workdir`` computed with other settings.
    """
    t0 = time.time()
    o = check_config(cfg)
    datas = _load_data(cfg, o["sources"], o["budgets"][-1])
    wd.prepare_workdir(workdir, cfg.overwrite)
    store = CellStore(os.path.join(workdir, "cells"), _settings(cfg))
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    data0 = datas[o["sources"][0]]
    victim = load_victim(cfg.victim.checkpoint)
    api = make_api(cfg.api, victim.module, victim.variables, data0.probe_test_x.shape[1:],
                    output=cfg.api_output)
    owner = owner_answers(api, data0.probe_test_x)  # streamed: a batch at a time
    ev, key = evaluate.eval_kwargs(cfg), jax.random.key(int(cfg.seed))
    reference = store.get_or_compute("_reference", lambda: _reference_rows(
        cfg, victim, api.output_dim, data0, key, owner, ev))
    bought = {s: _answers(api, s, datas[s], o["budgets"][-1], workdir, stream_settings(cfg))
              for s in o["sources"]}
    cache = {s: (b.images, b.answers) for s, b in bought.items()}
    selection = None
    if cfg.get("lr_grid"):
        selection = select_learning_rates(cfg, o, store, victim.module, cache, data0,
                                          key, ev)
        cfg = with_learning_rates(cfg, selection["chosen"])
    rows, pending = {}, []
    for s in o["sources"]:
        for loss in o["losses"]:
            for budget in o["budgets"]:
                for seed in o["seeds"]:
                    cell = _cell_plan(cfg, store, victim.module, s, loss, budget, seed,
                                      o["examples"])
                    (pending.append(cell) if cell["row"] is None
                     else rows.__setitem__(cell["name"], cell["row"]))
    groups = []
    for group in _group_cells(pending, cache, o["stack"], o["stack_fraction"]):
        groups.append({"cells": [c["name"] for c in group["cells"]], **group["memory"]})
        rows.update(_train_group(group["cells"], cache, store, data0, owner, key, ev,
                                 o["stack_mode"]))
    rows = [rows[cell_name(s, l, b, sd)] for s in o["sources"] for l in o["losses"]
            for b in o["budgets"] for sd in o["seeds"]]
    out = {"experiment": "budget_scan", "budgets": o["budgets"], "losses": o["losses"],
           "sources": o["sources"], "seeds": o["seeds"], "protocol": cfg.protocol,
           "examples_per_cell": o["examples"],
           "stack": {"max_members": o["stack"], "memory_fraction": o["stack_fraction"],
                     "mode": o["stack_mode"], "groups_trained_this_run": groups},
           "reference": reference, "cells": rows, "lr_selection": selection,
           "queries_charged_this_run": {s: b.queries_charged for s, b in bought.items()},
           "victim_checkpoint": victim.source,
           "query_pools": {s: d.names["query_pool"] for s, d in datas.items()},
           "wall_seconds": time.time() - t0, "environment": wd.run_environment(),
           "config": cfg.to_dict()}
    plots = [(f"scan_{s.replace(':', '-')}.png", lambda p, s=s: plot_scan(
        [r for r in rows if r["source"] == s], reference, p,
        f"{cfg.dataset} victim, queries from {datas[s].names['query_pool']}"))
        for s in o["sources"]]
    return results.finish(workdir, out, rows, fields=CSV_FIELDS,
                          table=format_scan(rows, reference, selection), plots=plots,
                          seconds=time.time() - t0,  # TensorBoard: metrics against budget
                          series=("source", "loss", "seed"), step_key="budget")


def _load_data(cfg, sources, budget: int) -> dict:
    """``{source: ExperimentData}`` (probe splits shared, the source's query pool).

    Raises:
      ConfigError: ``budget`` exceeds a source's pool (names the source and its size).
    """
    datas = {s: experiment_data(cfg.dataset, s, cfg.probe_test_size, with_victim_train=False,
                                probe_train_size=cfg.probe_train_size,
                                test_split=cfg.get("test_split", "test"),
                                **stream_data_kwargs(cfg)) for s in sources}
    for s, d in datas.items():
        if budget > len(d.query_pool):
            raise ConfigError(f"budget {budget} exceeds the query pool of source {s!r} "
                              f"({d.names['query_pool']}: {len(d.query_pool)} images); lower the "
                              f"budgets" + ("" if s == f"{cfg.dataset}:train" else
                                           f" or use a larger source (e.g. '{cfg.dataset}:train')"))
    return datas


def _settings(cfg) -> dict:
    """What every cell's evaluation depends on (the cell store's fingerprint): the
    victim, the data and probe splits, the evaluation settings and the run seed.
    Budgets, losses, seeds and sources may change between runs of one workdir
    (``overwrite=True`` extends a scan); each cell checks its own surrogate config."""
    return {"victim": cfg.victim.checkpoint, "dataset": cfg.dataset,
            "probe_test_size": cfg.probe_test_size, "probe_train_size": cfg.probe_train_size,
            "eval": cfg.eval.to_dict(), "api_output": cfg.api_output, "seed": cfg.seed}


def _reference_rows(cfg, victim, api_dim: int, data, key, owner, ev) -> dict:
    """The victim's and an independent surrogate-architecture encoder's rows."""
    enc = victim.module.encoder
    m = steal_config(cfg.steal, parse_losses(cfg.losses)[0], enc).model
    senc = encoder_from_config(m)
    smod = SurrogateModel(senc, None if senc.representation_dim == api_dim else api_dim)
    ind = evaluate.independent_encoder(smod, data, cfg.seed,
                                       1 if smod.out_dim is None else None)
    return {"victim": evaluate.encoder_row(victim.encoder(cfg.api_output), data, key, owner, ev),
            "independent": evaluate.encoder_row(ind, data, key, owner, ev)}


def _answers(api, source: str, data, budget: int, workdir: str, stream=None) -> queries.Answers:
    """The first ``budget`` pool images of ``source`` and their answers, bought once
    by one account per source (a cache holding fewer is topped up): in memory, one
    ``answers_<source>.npz``; with the ``stream`` block (``configs.base.stream_settings``)
    the chunked store ``answers_<source>/`` (``queries.streamed_answers``), read back
    memory-mapped."""
    user = f"attacker[{source}]"
    fp = {"pool": data.names["query_pool"], "account": user}
    if stream is not None:
        return queries.streamed_answers(
            api, user, data.query_pool, budget,
            os.path.join(workdir, f"answers_{source.replace(':', '-')}"), fp,
            int(stream.answer_chunk))

    def buy(start, stop):
        api.register(user, stop - start)
        images, answers = collect_answers(api, user, data.query_pool[start:stop], stop - start)
        return images, answers, api.queries_used(user)

    return queries.cached_answers(
        os.path.join(workdir, f"answers_{source.replace(':', '-')}.npz"),
        fp, budget, buy, extend=True)


def _cell_plan(cfg, store, victim_module, source, loss, budget, seed, examples,
               tag: str = "") -> dict:
    """One cell: its name (:func:`cell_name` + ``tag``), surrogate config, batch size
    and step count, and its finished row (None if it still has to be trained).

    Raises:
      ConfigError: a finished row in the store was trained with another config.
    """
    name = cell_name(source, loss, budget, seed) + tag
    scfg = steal_config(cfg.steal, loss, victim_module.encoder, cfg.loss_overrides, seed)
    if examples is not None:
        scfg.steps = cell_steps(budget, int(resolve_hparams(scfg)["batch_size"]), examples)
    bsz, steps = surrogate_schedule(scfg, budget)
    return {"name": name, "source": source, "loss": loss, "budget": int(budget),
            "seed": int(seed), "cfg": scfg, "batch_size": bsz, "steps": steps,
            "row": store.get(name, scfg.to_dict())}


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
            per = estimate_member_bytes(prepare_surrogate(
                queries.prefix(images, b), queries.prefix(answers, b), cells[0]["cfg"],
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


def _train_group(cells, cache, store, data, owner, key, ev, mode) -> dict:
    """Train one group (alone when it has one cell), evaluate each cell and store
    its row (``store.put``, atomic); returns ``{cell name: row}``."""
    t = time.time()
    if len(cells) == 1:
        c = cells[0]
        images, answers = cache[c["source"]]
        trained = [train_surrogate(queries.prefix(images, c["budget"]),
                                   queries.prefix(answers, c["budget"]), c["cfg"],
                                   store.work_dir(c["name"], c["cfg"].to_dict()))]
    else:
        names = "|".join(c["name"] for c in cells)
        gdir = store.work_dir("stack_" + hashlib.sha1(names.encode()).hexdigest()[:12],
                              [c["cfg"].to_dict() for c in cells])
        write_json_atomic(os.path.join(gdir, "members.json"), [c["name"] for c in cells])
        trained = train_surrogates_stacked(
            [(queries.prefix(cache[c["source"]][0], c["budget"]),
              queries.prefix(cache[c["source"]][1], c["budget"]), c["cfg"])
             for c in cells], gdir, mode=mode)
    train_s = time.time() - t
    rows = {}
    for c, (smod, svars, summ) in zip(cells, trained):
        row = evaluate.encoder_row(Encoder.surrogate(f"{c['loss']} @ {c['budget']}", smod, svars),
                                   data, key, owner, ev)
        row.update(source=c["source"], loss=c["loss"], budget=c["budget"], seed=c["seed"],
                   steps=int(summ["steps"]),
                   epochs=int(summ["steps"]) * c["batch_size"] / c["budget"],
                   stacked=len(cells), train_seconds=train_s / len(cells),
                   group_train_seconds=train_s, surrogate_config=c["cfg"].to_dict())
        rows[c["name"]] = store.put(c["name"], row, c["cfg"].to_dict())
    return rows


def aggregate(rows: list[dict], metric: str, by: str = "loss") -> dict:
    """``{value of by: (budgets, mean, std)}`` of ``metric`` over seeds (sample std, see
    :func:`sslsteal_jax.pipeline.seeds.seed_summary`), budgets ascending, curves in the
    order their ``by`` value first appears in ``rows``. ``by="loss"``: one curve per loss
    of one query source's rows; ``by="source"``: one per query source of one loss.

    Raises:
      ValueError: ``by`` is neither, a row lacks the ``by`` field, or one curve's rows
        hold several values of the other field (their cells would be averaged together;
        select one first).
    """
    if by not in ("loss", "source"):
        raise ValueError(f"by={by!r}; allowed: 'loss', 'source'")
    other = "source" if by == "loss" else "loss"
    mixed = {}
    for r in rows:
        if by not in r:
            raise ValueError(f"aggregate(by={by!r}): row {r.get('name', r)!r} has no {by!r}")
        mixed.setdefault(r[by], dict.fromkeys([]))[r.get(other)] = None
    for key, values in mixed.items():
        if len(values) > 1:
            raise ValueError(f"aggregate(by={by!r}): the rows of {by} {key!r} hold several "
                             f"{other} values {list(values)}; select one {other} first")
    out = {}
    for s in sorted(seeds.seed_summary(rows, (by, "budget"), (metric,)),
                    key=lambda s: s["budget"]):
        bs, mean, std = out.setdefault(s[by], ([], [], []))
        bs.append(s["budget"])
        mean.append(s[f"{metric}_mean"])
        std.append(s[f"{metric}_std"])
    return {k: out[k] for k in dict.fromkeys(r[by] for r in rows)}


def plot_scan(rows: list[dict], reference: dict, path: str, title: str) -> None:
    """Two panels (linear-probe accuracy %, cosine fidelity) vs queries (log axis),
    one line per loss with seed std error bars; victim and independent encoder
    as dashed reference lines. Written atomically to ``path`` (PNG)."""
    plot_curves({m: aggregate(rows, m) for m in ("probe_full", "cosine_fidelity")},
                reference, path, title)


def plot_curves(curves: dict, reference: dict, path: str, title: str) -> None:
    """:func:`plot_scan` from aggregated curves: ``curves[metric][loss] = (budgets,
    means, stds)`` for ``metric`` in ``probe_full`` (percent) and ``cosine_fidelity``
    (e.g. a results page's mean +- std table); ``reference[row][metric]`` for the
    ``victim`` and ``independent`` rows. Written atomically to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "probe_full", "linear probe accuracy (%)"),
                              (axes[1], "cosine_fidelity", "cosine fidelity to victim")):
        for loss, (bs, mean, std) in curves[metric].items():
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
    save_figure(fig, path)


def format_scan(rows: list[dict], reference: dict, selection: dict | None = None) -> str:
    """Markdown table: one line per (source, loss, budget), mean +- sample std over
    the seeds (``n`` of them); with a learning-rate ``selection``
    (:func:`select_learning_rates`) a second table of its validation accuracies."""
    metrics = ("probe_full", "probe_100", "knn", "cosine_fidelity")
    lines = ["| source | loss | queries | n | probe acc (%) | 100/class (%) | kNN (%) | cos fidelity |",
             "|---|---|---|---|---|---|---|---|"]
    for m in seeds.seed_summary(rows, ("source", "loss", "budget"), metrics):
        cells = [seeds.mean_std(m, k, 3 if k == "cosine_fidelity" else 2) for k in metrics]
        lines.append(f"| {m['source']} | {m['loss']} | {m['budget']} | {m['n']} | "
                     + " | ".join(cells) + " |")
    for ref in ("victim", "independent"):
        r = reference[ref]
        fid = r.get("cosine_fidelity")
        lines.append(f"| {ref} | | | | {r['probe_full']:.2f} | {r['probe_100']:.2f} | "
                     f"{r['knn']:.2f} | {'' if fid is None else f'{fid:.3f}'} |")
    if selection:
        grid = selection["grid"]
        lines += ["", f"learning rate selection: {selection['budget']} queries, seed "
                      f"{selection['seed']}, linear probe accuracy (%) on {selection['validation']}",
                  "| loss | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
                  "|---|" + "---|" * (len(grid) + 1)]
        for loss, accs in selection["accuracy"].items():
            edge = " (grid edge)" if loss in selection.get("at_edge", ()) else ""
            lines.append(f"| {loss} | " + " | ".join(f"{a:.2f}" for a in accs)
                         + f" | {selection['chosen'][loss]:g}{edge} |")
    return "\n".join(lines)


def validation_split(data, size: int):
    """``data`` with its probe-train set cut in two: the probe is fitted on the first
    ``N - size`` labelled images and tested on the last ``size`` (the validation split
    used to select hyperparameters; ``data``'s probe test set is never looked at).

    Args:
      data: ``data.splits.ExperimentData`` (in-memory arrays or streamed views).
      size: validation images (int, 0 < size < N probe-train images).
    Returns:
      a new ``ExperimentData`` (the same query pool); ``names`` give the two slices.
    Raises:
      ConfigError: ``size`` outside (0, N).
    """
    n = len(data.probe_train_y)
    if not 0 < size < n:
        raise ConfigError(f"validation_size={size} must be in (0, {n}) (the probe-train set "
                          f"{data.names['probe_train']} holds {n} images)")
    cut = n - size

    def rows(x, a, b):
        return x.subset(a, b) if hasattr(x, "subset") else x[a:b]

    name = data.names["probe_train"]
    return dataclasses.replace(
        data, probe_train_x=rows(data.probe_train_x, 0, cut), probe_train_y=data.probe_train_y[:cut],
        probe_test_x=rows(data.probe_train_x, cut, n), probe_test_y=data.probe_train_y[cut:n],
        names={**data.names, "probe_train": f"{name} rows [0:{cut}]",
               "probe_test": f"{name} rows [{cut}:{n}] (validation)"})


def with_learning_rates(cfg, lrs: dict):
    """A copy of the scan config whose ``loss_overrides.<loss>.learning_rate`` is
    ``lrs[loss]`` (float) for every loss in ``lrs``."""
    c = cfg.copy_and_resolve_references()
    for loss, lr in lrs.items():
        if loss not in c.loss_overrides:
            c.loss_overrides[loss] = ml_collections.ConfigDict()
        c.loss_overrides[loss].learning_rate = float(lr)
    return c


def select_learning_rates(cfg, o, store, victim_module, cache, data, key, ev) -> dict:
    """Pick each loss's learning rate from ``cfg.lr_grid`` on a validation split.

    Every (loss, lr) trains one cell exactly like a scan cell (first query source, first
    seed, ``cfg.select_budget`` queries or the largest budget, the scan's protocol and
    batch size), named ``<cell>__lr<lr>__val<validation_size>`` in the cell store
    (resumable, stacked like scan cells), and is scored by the full-label linear probe
    on :func:`validation_split` (``cfg.validation_size`` labelled probe-train images,
    never the probe test set); the best accuracy wins (ties: the smaller rate).
    Protocol: the "equal batch, equal steps" comparison of the paper's losses
    (docs/results/claim2_protocols.md), each loss at its own tuned rate.

    Returns:
      ``{"grid": [lr, ...], "budget", "seed", "source", "validation": slice names,
      "accuracy": {loss: [percent per lr]}, "chosen": {loss: lr}, "at_edge": [losses
      whose chosen rate is the grid's smallest or largest: printed as a warning],
      "cells": {name: row}}``.
    """
    grid = sorted(float(v) for v in cfg.lr_grid)
    budget = int(cfg.get("select_budget") or o["budgets"][-1])
    seed, source = o["seeds"][0], o["sources"][0]
    val = validation_split(data, int(cfg.validation_size))
    plans = {(loss, lr): _cell_plan(with_learning_rates(cfg, {loss: lr}), store, victim_module,
                                    source, loss, budget, seed, o["examples"],
                                    f"__lr{lr:g}__val{int(cfg.validation_size)}")
             for loss in o["losses"] for lr in grid}
    rows = {c["name"]: c["row"] for c in plans.values() if c["row"] is not None}
    pending = [c for c in plans.values() if c["row"] is None]
    for group in _group_cells(pending, cache, o["stack"], o["stack_fraction"]):
        rows.update(_train_group(group["cells"], cache, store, val, None, key, ev,
                                 o["stack_mode"]))
    accuracy = {loss: [rows[plans[loss, lr]["name"]]["probe_full"] for lr in grid]
                for loss in o["losses"]}
    # a diverged cell (NaN features -> NaN accuracy) never wins
    chosen = {loss: grid[int(np.argmax(np.nan_to_num(np.asarray(acc, float), nan=-np.inf)))]
              for loss, acc in accuracy.items()}
    at_edge = sorted(loss for loss, lr in chosen.items()
                     if len(grid) > 1 and lr in (grid[0], grid[-1]))
    if at_edge:  # the optimum may lie outside the grid: the comparison is not tuned yet
        picks = ", ".join(f"{loss} chose {chosen[loss]:g}" for loss in at_edge)
        print(f"learning rate selection: {picks}, at the edge of the grid {grid}; extend "
              "lr_grid past it (the finished grid cells are reused)")
    return {"grid": grid, "budget": budget, "seed": seed, "source": source,
            "validation": val.names["probe_test"], "accuracy": accuracy, "chosen": chosen,
            "at_edge": at_edge, "cells": {c["name"]: rows[c["name"]] for c in plans.values()}}
