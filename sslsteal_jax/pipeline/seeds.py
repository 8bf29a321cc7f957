"""Seed aggregation: one mean +- standard deviation per experiment setting.

Every cell of a scan is one (setting, seed) pair; a claim is reported as the
mean over seeds with the spread between seeds, so that a gap of 1-3 points can
be read against seed-to-seed noise (about 0.5 point at Fashion-MNIST scale).
The standard deviation is the sample one (``ddof=1``, what error bars over a
handful of seeds estimate); one seed gives a spread of 0.0 and ``n = 1``.
"""
from __future__ import annotations

import math

import numpy as np


def seed_summary(rows: list[dict], by, metrics) -> list[dict]:
    """Mean and sample standard deviation of ``metrics`` over the rows of each setting.

    Args:
      rows: cell results, one dict per (setting, seed); each holds the ``by`` fields,
        ``seed`` (int) and the ``metrics`` (float, e.g. percent accuracy or cosine
        fidelity; ``None`` where a metric does not apply, skipped).
      by: the fields that name a setting, e.g. ``("source", "loss", "budget")``.
      metrics: the fields to aggregate, e.g. ``("probe_full", "cosine_fidelity")``.
    Returns:
      One dict per setting in first-appearance order: the ``by`` fields, ``n`` (rows),
      ``seeds`` (sorted list), and per metric ``<m>_mean`` and ``<m>_std`` (float64 as
      Python floats; ``None`` when no row has the metric). A setting whose rows repeat
      a seed is an error (two results for one cell).
    Raises:
      ValueError: a row lacks a ``by`` field, or two rows of one setting share a seed.
    """
    by, metrics = tuple(by), tuple(metrics)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        missing = [k for k in by if k not in r]
        if missing:
            raise ValueError(f"row {r.get('name', r)!r} lacks setting fields {missing}")
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, sel in groups.items():
        seeds = [r.get("seed") for r in sel]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"setting {dict(zip(by, key))} has repeated seeds {sorted(seeds)}")
        s = dict(zip(by, key), n=len(sel), seeds=sorted(seeds))
        for m in metrics:
            vals = np.asarray([r[m] for r in sel if r.get(m) is not None], np.float64)
            s[f"{m}_mean"] = float(vals.mean()) if vals.size else None
            s[f"{m}_std"] = (float(vals.std(ddof=1)) if vals.size > 1 else 0.0) if vals.size else None
        out.append(s)
    return out


def mean_std(summary: dict, metric: str, digits: int = 2) -> str:
    """``"85.64 +- 0.31"`` (``"85.64"`` for one seed, ``""`` when absent) from a
    :func:`seed_summary` entry; ``digits`` decimals for both numbers."""
    mean = summary.get(f"{metric}_mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if summary["n"] < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {summary[f'{metric}_std']:.{digits}f}"
