"""How well the query-similarity detector separates repeated-image queries.

Ground truth: a query is *positive* when it shows (a view of) an image the same
user has already sent, *negative* otherwise. The augmented-views attacker sends
``k`` augmented views of each image one after the other (views 2..k are
positives); the single-view attacker sends every image once (all negatives, so
every flag is a false positive). Scores are the detector's rescaled cosines
(``defenses.similarity.similarity_scores``), flags ``score > threshold``.

Source: Dziedzic et al., ICML 2022, Section 5 (query-similarity detection and
its precision / recall against augmented-query attackers); metrics from
scikit-learn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics

from sslsteal_jax.data.augment import augment_batch
from sslsteal_jax.defenses.similarity import init_history, similarity_scores


def augmented_view_stream(images: np.ndarray, views: int, key, aug) -> tuple[np.ndarray, np.ndarray]:
    """Queries of the augmented-views attacker and their ground truth.

    Args:
      images: uint8 ``(N, H, W, C)``; views: k >= 1 views per image; key: PRNG
      key of the augmentations; aug: ``data.augment.AugmentConfig``.
    Returns:
      ``(queries uint8 (N * k, H, W, C), truth bool (N * k,))`` in sending order
      (image-major: the k views of image 0, then of image 1, ...); ``truth`` is
      True for every view after the first of its image.
    Raises:
      ValueError: ``views < 1``.
    """
    if views < 1:
        raise ValueError(f"views={views} must be >= 1")
    x = jnp.asarray(images, jnp.float32) / 255.0
    out = [augment_batch(jax.random.fold_in(key, v), x, aug) for v in range(views)]
    q = np.asarray(jnp.stack(out, axis=1).reshape(-1, *images.shape[1:]))
    q = np.clip(np.round(q * 255.0), 0, 255).astype(np.uint8)
    truth = np.tile(np.arange(views) > 0, len(images))
    return q, truth


def stream_scores(head: np.ndarray, memory: int, chunk: int = 500) -> np.ndarray:
    """Detector scores of one user's query stream (head outputs ``(N, Dz)`` in order),
    sent in calls of ``chunk`` queries; float32 ``(N,)``."""
    state = init_history(memory, head.shape[1])
    out = []
    for i in range(0, len(head), chunk):
        s, state = similarity_scores(jnp.asarray(head[i:i + chunk], jnp.float32), state)
        out.append(np.asarray(s))
    return np.concatenate(out)


def detection_metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 of ``scores > threshold`` and ROC-AUC of ``scores``.

    Returns dict with ``precision, recall, f1`` (0 when undefined), ``roc_auc``
    (None when ``truth`` has one class), ``flagged_fraction``,
    ``false_positive_rate`` (None without negatives), ``n``, ``positives``.
    """
    truth = np.asarray(truth, bool)
    flags = np.asarray(scores) > threshold
    neg = ~truth
    return {
        "precision": float(metrics.precision_score(truth, flags, zero_division=0)),
        "recall": float(metrics.recall_score(truth, flags, zero_division=0)),
        "f1": float(metrics.f1_score(truth, flags, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None,
        "flagged_fraction": float(flags.mean()),
        "false_positive_rate": float(flags[neg].mean()) if neg.any() else None,
        "n": int(len(truth)), "positives": int(truth.sum()),
    }


def detector_report(head_fn, images: np.ndarray, views: int, thresholds, memory: int, key,
                    aug) -> dict:
    """Detector quality against an augmented-views and a single-view attacker.

    Args:
      head_fn: ``images uint8 (B,H,W,C) -> head outputs (B, Dz)`` of the victim
        (owner side, e.g. ``extract_features(make_apply(model, vars, 1), ...)``).
      images: uint8 ``(N, ...)``: the augmented attacker sends ``views`` views of
        the first ``N // views`` images (``N`` queries in all), the single-view
        attacker each of the ``N`` images once.
      thresholds: rescaled-cosine thresholds to report.
      memory: ring-buffer size M of the detector.
    Returns:
      ``{"augmented": {thr: metrics}, "single_view": {thr: metrics},
      "pooled": {thr: metrics}}`` (pooled: both streams together, each scored
      against its own user's history).
    """
    n_img = len(images) // views
    q, truth_aug = augmented_view_stream(images[:n_img], views, key, aug)
    s_aug = stream_scores(head_fn(q), memory)
    s_single = stream_scores(head_fn(images), memory)
    truth_single = np.zeros(len(images), bool)
    out = {"augmented": {}, "single_view": {}, "pooled": {},
           "queries": {"augmented": int(len(q)), "single_view": int(len(images)), "views": views}}
    for t in thresholds:
        out["augmented"][str(t)] = detection_metrics(s_aug, truth_aug, t)
        out["single_view"][str(t)] = detection_metrics(s_single, truth_single, t)
        out["pooled"][str(t)] = detection_metrics(np.concatenate([s_aug, s_single]),
                                                  np.concatenate([truth_aug, truth_single]), t)
    return out
