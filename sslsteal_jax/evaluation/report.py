"""Evaluate a set of encoders on the same splits; tables, JSON and plots.

Each encoder is reported with: linear-probe accuracy with full labels and with
100 labels per class, kNN accuracy (percent), and fidelity to the victim
(mean cosine similarity, mean normalised L2 distance) on the probe test set.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from sslsteal_jax.evaluation import fidelity as fid
from sslsteal_jax.evaluation.parallel import run_concurrently
from sslsteal_jax.evaluation.probe import (few_labels_subset, knn_accuracy, linear_probe,
                                           selected_linear_probe)
from sslsteal_jax.training import mesh as mesh_lib

COLUMNS = ("probe_full", "probe_100", "knn", "cosine_fidelity", "l2_fidelity")


def evaluate_features(name, train_feats, test_feats, data, key, victim_test_out=None,
                      test_out=None, per_class: int = 100, probe_epochs: int = 60,
                      select_probe: bool = True, reference_predictions=None) -> dict:
    """Metrics of one encoder given its features.

    Args:
      train_feats: float32 (N_train, D) features of ``data.probe_train_x``.
      test_feats: float32 (N_test, D) features of ``data.probe_test_x``.
      data: ExperimentData (labels).
      key: PRNG key (probe init/order, few-label subset).
      victim_test_out: float32 (N_test, D_v) victim API outputs on the probe
        test set, for fidelity; ``test_out`` the encoder's outputs in the same
        space (None: no fidelity).
      per_class: labels per class of the few-label probe (fixed settings:
        ``max(probe_epochs, 200)`` epochs, lr 2e-3, wd 1e-4).
      probe_epochs: epochs of the full-label probe when ``select_probe`` is False.
      select_probe: choose the full-label probe's settings on a 10% validation
        split of the probe train set (``selected_linear_probe``).
      reference_predictions: int ``(N_test,)`` predictions of a reference
        classifier (the victim provider's downstream classifier); when given,
        the row gets ``agreement``: percent of probe-test images on which the
        full-label probe predicts the same class.
    Returns:
      dict with ``name``, the keys of ``COLUMNS`` (fidelity None when N/A),
      ``probe_full_settings`` and, with ``reference_predictions``, ``agreement``.

    The full-label probe, the few-label probe and kNN run concurrently
    (``evaluation.parallel.run_concurrently``; ``$SSLSTEAL_EVAL_WORKERS=1``
    runs them in order, with the same numbers).

    Multi-host: the features are already on every process (replicated outputs of
    the collective extraction); only process 0 fits the probes and computes kNN,
    fidelity and agreement (single-device programs), and every other process
    receives that row (``training.mesh.writer_computes``: the same numbers, no
    program compiled or run there). Every process must call this in the same
    order.
    """
    return mesh_lib.writer_computes(functools.partial(
        _metrics, name, train_feats, test_feats, data, key, victim_test_out, test_out,
        per_class, probe_epochs, select_probe, reference_predictions))


def _metrics(name, train_feats, test_feats, data, key, victim_test_out, test_out, per_class,
             probe_epochs, select_probe, reference_predictions) -> dict:
    """The row of :func:`evaluate_features` (same arguments), computed in this process."""
    k1, k2, k3 = jax.random.split(key, 3)
    sub = few_labels_subset(data.probe_train_y, per_class, k2)
    want = reference_predictions is not None

    def full_probe():
        if select_probe:
            full, settings, *pred = selected_linear_probe(
                train_feats, data.probe_train_y, test_feats, data.probe_test_y, k1,
                return_predictions=want)
            return full, settings, pred
        out = linear_probe(train_feats, data.probe_train_y, test_feats, data.probe_test_y, k1,
                           epochs=probe_epochs, return_predictions=want)
        full, pred = (out[0], [out[1]]) if want else (out, [])
        return full, {"epochs": probe_epochs, "learning_rate": 2e-3, "weight_decay": 1e-4}, pred

    # Independent jobs, run side by side (evaluation.parallel; numbers do not depend on it).
    (full, settings, pred), probe_few, knn = run_concurrently([
        full_probe,
        functools.partial(linear_probe, train_feats[sub], data.probe_train_y[sub], test_feats,
                          data.probe_test_y, k3, epochs=max(probe_epochs, 200)),
        functools.partial(knn_accuracy, train_feats, data.probe_train_y, test_feats,
                          data.probe_test_y)])
    row = {"name": name, "probe_full": full, "probe_full_settings": settings,
           "probe_100": probe_few, "knn": knn, "cosine_fidelity": None, "l2_fidelity": None}
    if want:
        row["agreement"] = float(100.0 * np.mean(pred[0] == np.asarray(reference_predictions)))
    if victim_test_out is not None and test_out is not None:
        row["cosine_fidelity"] = fid.cosine_fidelity(test_out, victim_test_out)
        row["l2_fidelity"] = fid.l2_fidelity(test_out, victim_test_out)
    return row


def format_table(rows, title: str = "") -> str:
    """Fixed-width text table of result rows (accuracies in percent); the first
    column is as wide as the longest encoder name (at least 28 characters)."""
    w = max([28] + [len(r["name"]) + 2 for r in rows])
    head = f"{'encoder':<{w}}{'probe full %':>13}{'probe 100/cls %':>16}{'kNN %':>8}{'cos fid':>9}{'L2 fid':>8}"
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for r in rows:
        f = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"
        lines.append(f"{r['name']:<{w}}{f(r['probe_full'], 13, 2)}{f(r['probe_100'], 16, 2)}"
                     f"{f(r['knn'], 8, 2)}{f(r['cosine_fidelity'], 9, 3)}{f(r['l2_fidelity'], 8, 3)}")
    return "\n".join(lines)


#: (row key, legend label) of the accuracy bars drawn per encoder by ``plot_results``.
PLOT_ACCURACIES = (("probe_full", "linear probe, full labels"),
                   ("probe_100", "linear probe, 100 labels/class"),
                   ("knn", "kNN"))


def _bar_values(ax, xs, values, top: float, fmt: str, rotate: bool) -> None:
    """Write each bar's value at its end: above a positive bar (inside it, in white, when
    the bar reaches the last 12 % of the axis ``top``, so the label stays within the
    axes), below a negative one."""
    pad = 0.01 * top
    for x, v in zip(xs, values):
        inside = v > 0.88 * top
        y, va = (v - pad, "top") if inside or v < 0 else (v + pad, "bottom")
        ax.text(x, y, format(v, fmt), ha="center", va=va, fontsize=7,
                rotation=90 if rotate else 0, color="white" if inside else "black")


def save_figure(fig, path: str, rect=(0, 0, 1, 1)) -> None:
    """Write a matplotlib figure to ``path`` atomically (a temporary file, then
    ``os.replace``) and close it. The format follows the path's extension (``.png`` at 110
    dpi, ``.pdf``, ``.svg``, ...; a path without one gets PNG). A figure without a layout engine is first laid out
    with ``tight_layout`` within ``rect`` (figure fraction: left, bottom, right, top; e.g.
    room below the axes for a figure legend); one made with ``layout="constrained"`` keeps
    its own layout. Every plot of the package is written through here."""
    import os
    import matplotlib.pyplot as plt
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout(rect=rect)
        ext = os.path.splitext(path)[1].lower() or ".png"
        tmp = path + ".tmp" + ext
        fig.savefig(tmp, dpi=110, format=ext[1:])
    finally:  # closed even when the write fails (e.g. a missing directory)
        plt.close(fig)
    os.replace(tmp, path)


def plot_results(rows, path: str, title: str) -> None:
    """Write a PNG bar chart of result rows to ``path`` (atomically: a temporary file,
    then ``os.replace``).

    Left panel: per encoder, linear-probe accuracy with full labels, with 100
    labels per class, and kNN accuracy (percent, axis 0-100, each bar labelled
    with its value to one decimal). Right panel: mean cosine fidelity to the
    victim's API output for the rows that have one (labelled to two decimals;
    a note instead when no row has fidelity). ``title`` is the figure's suptitle.

    Args:
      rows: dicts with ``name`` and the keys of ``COLUMNS`` (accuracies in
        percent, fidelity in [-1, 1]; None = not measured, no bar drawn).
      path: output ``.png`` path (its directory must exist).
      title: figure title (wrapped at ~110 characters).

    On a multi-host run only process 0 writes (``training.mesh.is_writer``).
    """
    if not mesh_lib.is_writer():
        return
    import textwrap
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(rows)
    crowded = n > 5  # vertical value labels and slanted names when the bars get narrow
    # Tick labels wrapped on several lines (long names would push the panels apart).
    wrap = lambda name: "\n".join(textwrap.wrap(name, 16 if crowded else 20,
                                                break_long_words=True, break_on_hyphens=False))
    names = [wrap(r["name"]) for r in rows]
    tick = dict(rotation=30, ha="right") if crowded else dict(rotation=0, ha="center")
    x = np.arange(n)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(12.0, 5.0 + 1.5 * n), 5.2),
                                 gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    width = 0.8 / len(PLOT_ACCURACIES)
    for i, (key, label) in enumerate(PLOT_ACCURACIES):
        have = [(xi + (i - (len(PLOT_ACCURACIES) - 1) / 2) * width, r[key])
                for xi, r in zip(x, rows) if r.get(key) is not None]
        xs, vals = [h[0] for h in have], [float(h[1]) for h in have]
        a1.bar(xs, vals, width, label=label, color=f"C{i}")
        _bar_values(a1, xs, vals, 100.0, ".1f", crowded)
    a1.set_xticks(x, names, fontsize=8, **tick)
    a1.set_ylabel("test accuracy (%)")
    a1.set_ylim(0, 100)
    a1.set_yticks(np.arange(0, 101, 10))
    a1.grid(axis="y", alpha=0.3)
    a1.set_axisbelow(True)
    a1.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(PLOT_ACCURACIES),
              fontsize=8, frameon=False)
    fr = [r for r in rows if r.get("cosine_fidelity") is not None]
    if fr:
        vals = [float(r["cosine_fidelity"]) for r in fr]
        a2.bar(range(len(fr)), vals, 0.6, color="tab:purple")
        _bar_values(a2, range(len(fr)), vals, 1.0, ".2f", False)
        a2.set_xticks(range(len(fr)), [wrap(r["name"]) for r in fr], fontsize=8,
                      **(dict(rotation=30, ha="right") if len(fr) > 3 or crowded else tick))
        a2.set_ylim(min(0.0, min(vals) - 0.12), 1.0)
        a2.grid(axis="y", alpha=0.3)
        a2.set_axisbelow(True)
    else:
        a2.set_xticks([])
        a2.set_yticks([])
        a2.text(0.5, 0.5, "no fidelity reference", ha="center", va="center",
                transform=a2.transAxes)
    a2.set_ylabel("mean cosine fidelity to victim")
    a2.set_title("fidelity to the victim's API output", fontsize=9)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)) or " ", fontsize=11)
    save_figure(fig, path)
