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
    """
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


def plot_results(rows, path: str, title: str) -> None:
    """Bar chart of probe accuracies (full / 100 per class) and cosine fidelity; PNG, atomic."""
    import os
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    a1.bar(x - 0.2, [r["probe_full"] for r in rows], 0.4, label="linear probe, full labels")
    a1.bar(x + 0.2, [r["probe_100"] for r in rows], 0.4, label="linear probe, 100 labels/class")
    a1.set_xticks(x, names, rotation=20, ha="right")
    a1.set_ylabel("test accuracy (%)")
    lo = min(min(r["probe_full"], r["probe_100"]) for r in rows)
    a1.set_ylim(max(0, lo - 10), 104)
    a1.legend(loc="upper center", ncol=2, fontsize=8)
    a1.set_title(title)
    fr = [r for r in rows if r["cosine_fidelity"] is not None]
    a2.bar(range(len(fr)), [r["cosine_fidelity"] for r in fr], color="tab:green")
    a2.set_xticks(range(len(fr)), [r["name"] for r in fr], rotation=20, ha="right")
    a2.set_ylabel("mean cosine fidelity to victim")
    a2.set_ylim(0, 1)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
