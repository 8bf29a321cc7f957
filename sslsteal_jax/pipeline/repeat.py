"""One experiment repeated over seeds, its result tables summarised as mean +- std.

``python -m sslsteal_jax.main --config=CONFIG --workdir=DIR --seeds=0,1,2`` runs the
experiment once per seed into ``DIR/seed_<s>`` (each an ordinary, resumable work
directory) and writes ``DIR/seeds.json``, ``DIR/seeds.csv`` and ``DIR/seeds.png``:
every row of the experiment's ``results.csv`` with each numeric column as the mean
and sample standard deviation over the seeds (``pipeline.seeds.seed_summary``).
A claim resting on a gap of 1-3 points is read against this spread.

What a seed changes: every integer field named ``seed`` in the config is shifted by
the same offset (``seed``, ``steal.seed``, ``attack.steal.seed``, the independent
encoders' ``independent.seed``, ...), so the surrogates' initialisation and data
order, the probes' keys and the independent baselines change together while the
relations between them stay (``independent.seed = seed + 1`` stays one above). The
``victim`` block is left alone: the victim is fixed, as in the paper's protocol
(Dziedzic et al., ICML 2022, Section 4: the victim is given, attacks vary).
``budget_scan`` stacks its seeds in one compiled program instead
(``--config.seeds=0,1,2``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import time

import ml_collections
import numpy as np

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.report import save_figure
from sslsteal_jax.pipeline import seeds as seeds_lib
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training.checkpoint import write_json_atomic

#: Config blocks whose ``seed`` fields a repeat leaves alone (the victim is fixed).
FIXED_BLOCKS = ("victim",)
#: The CSV column that names a row (always a setting, never aggregated).
NAME = "name"


#: Experiments ``--seeds`` refuses, and why (the one-line reason of the error).
NOT_REPEATED = {
    "budget_scan": "it trains its seeds as one stacked program; use --config.seeds={seeds}",
    "import_checkpoint": "converting a checkpoint draws nothing at random; run it once",
}


_ALLOWED = "allowed: comma-separated distinct integers >= 0, e.g. --seeds=0,1,2"


def parse_seeds(text: str) -> list[int]:
    """The seeds of a ``--seeds`` flag value: ``"0,1,2" -> [0, 1, 2]``.

    Args:
      text: comma-separated integers (spaces allowed).
    Returns:
      the seeds in the given order.
    Raises:
      ConfigError: an item that is not an integer, a negative or repeated seed, or no
        seed at all (one line naming the value and what is allowed).
    """
    items = [t.strip() for t in str(text).split(",")]
    if not all(t.lstrip("-").isdigit() for t in items):
        raise ConfigError(f"--seeds={text}; {_ALLOWED}")
    return check_seeds([int(t) for t in items], text)


def check_seeds(seeds, text: str | None = None) -> list[int]:
    """``seeds`` as ints after checking them (:func:`parse_seeds`' rules); ``text`` is
    how the user wrote them (default: joined with commas).

    Raises:
      ConfigError: no seed, a negative or a repeated seed (one line, names the value).
    """
    seeds = [int(s) for s in seeds]
    text = ",".join(map(str, seeds)) if text is None else text
    if not seeds:
        raise ConfigError(f"--seeds={text}; {_ALLOWED}")
    if min(seeds) < 0:
        raise ConfigError(f"--seeds={text}: seed {min(seeds)} is negative; {_ALLOWED}")
    if len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"--seeds={text}: seed {twice[0]} is given twice; {_ALLOWED}")
    return seeds


def check_repeatable(cfg, seeds) -> None:
    """Refuse ``--seeds`` for an experiment that cannot be repeated per seed, before any
    work or directory is made (:data:`NOT_REPEATED`).

    Raises:
      ConfigError: ``cfg.experiment`` is in :data:`NOT_REPEATED` (names it and why).
    """
    why = NOT_REPEATED.get(cfg.get("experiment"))
    if why is not None:
        raise ConfigError(f"--seeds does not apply to {cfg.get('experiment')}: "
                          + why.format(seeds=",".join(map(str, seeds))))


def seed_workdir(workdir: str, seed: int) -> str:
    """``<workdir>/seed_<seed>``: the work directory of one seed's run."""
    return os.path.join(workdir, f"seed_{int(seed)}")


def shift_seeds(cfg: ml_collections.ConfigDict, seed: int,
                fixed=FIXED_BLOCKS) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` for seed ``seed``: every int field named ``seed`` (at any depth,
    outside the ``fixed`` top-level blocks) moved by ``seed - cfg.seed``.

    Args:
      cfg: a resolved experiment config with an int ``seed`` field (not modified).
      seed: the new top-level seed (int >= 0).
      fixed: top-level block names whose ``seed`` fields stay (default: the victim's).
    Returns:
      The shifted copy (``cfg.seed == seed``); ``cfg`` itself when the offset is 0.
    Raises:
      ConfigError: ``cfg`` has no int ``seed`` field, or a shifted seed would be negative.
    """
    base = cfg.get("seed") if isinstance(cfg, ml_collections.ConfigDict) else None
    if isinstance(base, bool) or not isinstance(base, int):
        raise ConfigError(f"--seeds needs a config with an integer 'seed' field; this one "
                          f"({cfg.get('experiment', '?')!r}) has seed={base!r}")
    offset = int(seed) - base
    if offset == 0:
        return cfg
    out = ml_collections.ConfigDict(cfg.to_dict())
    for field, value in seed_fields(out, fixed).items():
        if value + offset < 0:
            raise ConfigError(f"--seeds: seed {seed} would set {field}={value + offset}; "
                              "seeds must stay >= 0")
        *blocks, key = field.split(".")
        node = out
        for b in blocks:
            node = node[b]
        node[key] = value + offset
    return out


def seed_fields(cfg: ml_collections.ConfigDict, fixed=FIXED_BLOCKS) -> dict[str, int]:
    """``{dotted field: value}`` of every int field named ``seed`` that :func:`shift_seeds`
    moves (outside the ``fixed`` top-level blocks), in config order; e.g.
    ``{"seed": 1, "steal.seed": 1}`` for ``configs/quickstart.py`` at seed 1."""
    out = {}

    def walk(node, path):
        for key in node.keys():
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                if not (path == "" and key in fixed):
                    walk(value, f"{path}{key}.")
            elif key == "seed" and isinstance(value, int) and not isinstance(value, bool):
                out[path + key] = value

    walk(cfg, "")
    return out


def read_rows(path: str) -> list[dict]:
    """The rows of a ``results.csv`` (``pipeline.results.write_csv_atomic``) as dicts of
    strings (empty cells ``""``).

    Raises:
      FileNotFoundError: no such file.
    """
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str):
    """``float(text)``; None for an empty cell; raises ValueError for other text."""
    return None if text in ("", None) else float(text)


#: a decision column's cells (e.g. verify's ``watermarked``) as numbers: over seeds their
#: mean is the fraction of seeds where the decision was True
_FLAG = {"True": 1.0, "False": 0.0, "": None}


def _is_flag(column: str, tables) -> bool:
    cells = {r.get(column, "") for rows in tables for r in rows}
    return cells <= set(_FLAG) and cells != {""}


def merge_names(names: list[str]) -> str | None:
    """One label for a row whose name differs between seeds only in its numbers (an
    encoder named by a seed that moves with the run's seed: verify's "independent
    SimCLR (2 ep, seed 1)" under seed 0 is "... seed 2)" under seed 1): the numbers
    that differ joined by "/" ("independent SimCLR (2 ep, seed 1/2/3)"). None when the
    names differ in anything else (rows of different settings)."""
    parts = [re.split(r"(\d+)", n) for n in names]
    if any(len(p) != len(parts[0]) for p in parts):
        return None
    out = []
    for k, pieces in enumerate(zip(*parts)):
        if k % 2 == 0 and len(set(pieces)) > 1:  # text between the numbers must agree
            return None
        out.append(pieces[0] if len(set(pieces)) == 1 else "/".join(dict.fromkeys(pieces)))
    return "".join(out)


def _is_numeric(column: str, tables) -> bool:
    try:
        for rows in tables:
            for r in rows:
                _number(r.get(column, ""))
    except ValueError:
        return False
    return True


def summarise(tables: dict[int, list[dict]]) -> tuple[list[str], list[str], list[dict]]:
    """Mean and sample standard deviation, over seeds, of every numeric column of one
    experiment's result table.

    Args:
      tables: ``{seed: rows}``, rows as read by :func:`read_rows` (strings), one table
        per seed of the same experiment: same rows in the same order.
    Returns:
      ``(settings, metrics, summary)``: ``settings`` the columns that name a row (text
      columns, and numeric ones equal across seeds in every row, e.g. a budget);
      ``metrics`` the numeric columns that vary; ``summary`` one dict per row with the
      settings (numbers as float), ``n``, ``seeds`` and ``<metric>_mean`` /
      ``<metric>_std`` (``ddof=1``; None where no seed has a value). A True / False
      column (a decision, e.g. verify's ``watermarked``) that differs between seeds
      is a metric with True = 1: its mean is the fraction of seeds where it held.
    Raises:
      ValueError: no tables, or the tables disagree (row count, or a setting of one row;
        a name may differ in its numbers only: :func:`merge_names`).
    """
    if not tables:
        raise ValueError("no seed tables to summarise")
    order = sorted(tables)
    first = tables[order[0]]
    columns = list(first[0].keys()) if first else []
    for s in order:
        if len(tables[s]) != len(first):
            raise ValueError(f"seed {s} has {len(tables[s])} result rows, seed {order[0]} "
                             f"has {len(first)}: the runs are of different settings")
    numeric = [c for c in columns if c != NAME and _is_numeric(c, tables.values())]
    flags = [c for c in columns if c != NAME and c not in numeric
             and _is_flag(c, tables.values())]

    def value(c, text):
        return _FLAG[text] if c in flags else _number(text)

    varying = [c for c in columns if c in numeric or c in flags
               if any(len({value(c, tables[s][i].get(c, "")) for s in order}) > 1
                      for i in range(len(first)))]
    settings = [c for c in columns if c not in varying]
    rows = []
    for i in range(len(first)):
        names = [tables[s][i].get(NAME, "") for s in order]
        merged = merge_names(names) if NAME in settings else None
        for s in order:
            for c in settings:
                if c == NAME and merged is not None:
                    continue
                if tables[s][i].get(c, "") != first[i].get(c, ""):
                    raise ValueError(f"row {i} ({first[i].get(NAME, '')!r}): {c}="
                                     f"{tables[s][i].get(c, '')!r} under seed {s} but "
                                     f"{first[i].get(c, '')!r} under seed {order[0]}")
            rows.append(dict({c: (_number(tables[s][i][c]) if c in numeric
                                  else merged if c == NAME and merged is not None
                                  else tables[s][i][c]) for c in settings}, row=i, seed=s,
                             **{m: value(m, tables[s][i].get(m, "")) for m in varying}))
    summary = seeds_lib.seed_summary(rows, ["row", *settings], varying)
    for r in summary:
        del r["row"]
    return settings, varying, summary


def _fmt(summary: dict, metric: str) -> str:
    """``"85.64 +- 0.31"``; 3 decimals for values within [-1, 1] (fidelities), 2 for
    percentages, 2 significant digits below 0.01 (p-values)."""
    mean = summary.get(f"{metric}_mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if mean != 0 and abs(mean) < 0.01:
        std = summary[f"{metric}_std"]
        return f"{mean:.2g}" + (f" +- {std:.2g}" if summary["n"] > 1 else "")
    return seeds_lib.mean_std(summary, metric, 3 if abs(mean) <= 1 else 2)


def _setting(value) -> str:
    """A setting's cell: numbers as ``%g`` (5000, not 5000.0), None as ''."""
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def format_summary(settings, metrics, summary) -> str:
    """A markdown table of :func:`summarise`'s output: the settings, ``n`` and each
    metric as ``mean +- std``."""
    head = [*settings, "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        cells = [_setting(r[c]) for c in settings]
        lines.append("| " + " | ".join(cells + [str(r["n"])] + [_fmt(r, m) for m in metrics])
                     + " |")
    return "\n".join(lines)


def row_labels(settings, rows) -> list[str]:
    """One short label per summary row, distinct for distinct rows: the first setting
    column whose values tell every row apart (e.g. ``name`` of the main job's rows,
    ``cell`` of the defense matrix); without one, the columns whose values vary
    between rows, joined by " / " (a number named by its column, e.g.
    ``"mse / budget 250"``; a value that is None or missing reads ``"no <column>"``);
    rows whose settings are all equal get ``#<position>``.

    Args:
      settings: the setting columns of :func:`summarise`, in table order.
      rows: the summary rows to label.
    Returns:
      the labels, in the order of ``rows``.
    """
    for c in settings:
        values = [_setting(r.get(c)) for r in rows]
        if all(values) and len(set(values)) == len(values):
            return values
    varying = [c for c in settings if len({_setting(r.get(c)) for r in rows}) > 1]

    def part(r, c):
        v = r.get(c)
        if v is None or v == "":  # unset or missing in this row: say so, never a bare " / "
            return f"no {c}"
        return f"{c} {_setting(v)}" if isinstance(v, (int, float)) else _setting(v)

    labels = [" / ".join(part(r, c) for c in varying) for r in rows]
    if len(set(labels)) < len(labels):
        labels = [(f"{lab} " if lab else "") + f"#{i}" for i, lab in enumerate(labels)]
    return labels


def plot_summary(settings, metrics, summary, path: str, metric: str | None = None) -> None:
    """Horizontal bars of one metric (default ``probe_full`` when present, else the
    first) per row with +- one standard deviation error bars, written atomically.
    Each bar is labelled by :func:`row_labels`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or ("probe_full" if "probe_full" in metrics else metrics[0])
    shown = [r for r in summary if r.get(f"{metric}_mean") is not None]
    labels = row_labels(settings, shown)
    mean = np.array([r[f"{metric}_mean"] for r in shown])
    std = np.array([r[f"{metric}_std"] for r in shown])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.5))
    y = np.arange(len(shown))[::-1]
    ax.barh(y, mean, xerr=std, capsize=3, color="#4c72b0")
    for yi, m, s in zip(y, mean, std):
        ax.text(m + s, yi, f" {m:.2f} +- {s:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, max(100.0 if mean.max() > 1 else 1.0, float((mean + std).max()) * 1.15))
    n = sorted({r["n"] for r in shown})
    ax.set_xlabel(f"{metric} (mean +- sample std over {'/'.join(map(str, n))} seeds)")
    save_figure(fig, path)


def _comparable(d: dict) -> dict:
    """A config dict as results.json stores it (tuples as lists, JSON types), without
    ``overwrite`` (how a run treats old results is not part of its setting)."""
    return {k: v for k, v in json.loads(json.dumps(d, default=float)).items()
            if k != "overwrite"}


def _first_difference(a, b, path="") -> str:
    """The first dotted field where config dicts ``a`` and ``b`` differ."""
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            return path + k
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            d = _first_difference(a[k], b[k], f"{path}{k}.")
            if d:
                return d
        elif a[k] != b[k]:
            return path + k
    return ""


def _finished(sub: str, cfg) -> bool:
    """True when ``sub`` holds the results of ``cfg`` (skip: the seed is done); False when
    it holds none. Raises ConfigError when it holds another config's results and
    ``cfg.overwrite`` is False."""
    path = os.path.join(sub, "results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        stored = json.load(f).get("config")
    if stored is not None and _comparable(stored) == _comparable(cfg.to_dict()):
        return True
    if cfg.get("overwrite", False):
        return False
    field = _first_difference(_comparable(stored or {}), _comparable(cfg.to_dict()))
    raise ConfigError(f"{sub!r} holds results of a different config (field {field or '?'} "
                      "differs); choose a new --workdir or pass --config.overwrite=True")


def run_seeds(cfg, workdir: str, seeds, run_one, plot_seeds=None) -> dict:
    """Run ``cfg``'s experiment once per seed and summarise the result tables.

    Seed ``s`` runs :func:`shift_seeds` ``(cfg, s)`` in :func:`seed_workdir`. A seed whose
    work directory already holds the results of exactly that config is not run again
    (rerunning the command resumes: finished seeds are skipped, an interrupted one
    resumes from its checkpoints).

    Args:
      cfg: the resolved experiment config (its ``seed`` is replaced, never used as is).
      workdir: the parent work directory.
      seeds: the seeds, distinct ints >= 0, in run order.
      run_one: ``run_one(cfg, workdir) -> results dict``: ``sslsteal_jax.main.run``.
      plot_seeds: the experiment's own seed plots, if it has any:
        ``plot_seeds(summary dict, workdir) -> file names written`` (e.g.
        ``experiments.defense_matrix.plot_seeds``: the trade-off with error bars).
    Returns:
      The summary dict written to ``<workdir>/seeds.json``: ``seeds``, ``settings``,
      ``metrics``, ``summary`` (see :func:`summarise`), ``per_seed_workdirs``,
      ``seconds`` and ``config`` (the first seed's).
    Raises:
      ConfigError: repeated or negative seeds (:func:`check_seeds`), a config without
        ``seed``, an experiment of :data:`NOT_REPEATED` (``budget_scan`` stacks its
        seeds: ``--config.seeds``), a seed directory holding another config's results.
    """
    seeds = check_seeds(seeds)
    check_repeatable(cfg, seeds)
    configs = {s: shift_seeds(cfg, s) for s in seeds}  # a config without seed fails here
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    for s in seeds:
        sub = seed_workdir(workdir, s)
        if _finished(sub, configs[s]):
            print(f"seed {s}: finished results in {sub}, not run again")
            continue
        print(f"seed {s} of {','.join(map(str, seeds))}: {sub}")
        run_one(configs[s], sub)
    tables = {s: read_rows(os.path.join(seed_workdir(workdir, s), "results.csv")) for s in seeds}
    settings, metrics, summary = summarise(tables)
    table = format_summary(settings, metrics, summary)
    print(f"\nmean +- sample std over seeds {','.join(map(str, seeds))}:\n{table}")
    out = {"seeds": seeds, "settings": settings, "metrics": metrics, "summary": summary,
           "per_seed_workdirs": {str(s): seed_workdir(workdir, s) for s in seeds},
           "seconds": time.time() - t0, "config": configs[seeds[0]].to_dict()}
    write_json_atomic(os.path.join(workdir, "seeds.json"), out)
    if mesh_lib.is_writer():  # [multi-host] one writer per file
        from sslsteal_jax.pipeline.results import write_csv_atomic

        fields = [*settings, "n", "seeds", *(f"{m}_{x}" for m in metrics for x in ("mean", "std"))]
        write_csv_atomic(os.path.join(workdir, "seeds.csv"),
                         [dict(r, seeds=" ".join(map(str, r["seeds"]))) for r in summary], fields)
        with open(os.path.join(workdir, "seeds.md.tmp"), "w") as f:
            f.write(table + "\n")
        os.replace(os.path.join(workdir, "seeds.md.tmp"), os.path.join(workdir, "seeds.md"))
        written = ["seeds.json", "seeds.csv", "seeds.md"]
        if metrics:
            plot_summary(settings, metrics, summary, os.path.join(workdir, "seeds.png"))
            written.append("seeds.png")
        if plot_seeds is not None:
            written += plot_seeds(out, workdir)
        print(f"wrote {', '.join(written)} in {workdir}")
    return out
