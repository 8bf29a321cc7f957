"""Owner-side watermark verification: rotation prediction through the owner's secret MLP.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 5 (watermarking: the
victim is trained jointly with a secret rotation-prediction task on its
representation; a suspect is judged by its accuracy on that task), in the style
of the entangled watermarks of Jia et al. (USENIX Security 2021) and the
rotation watermark of Cao et al. Unlike the reference code, the watermark MLP
is trained (jointly with the encoder, see ``trainers.watermark``).

Task (defined with the watermarked model in ``models.watermark``: ``rotation_task``,
``watermark_input``). Each watermark image is shown in the four rotations 0,
90, 180, 270 degrees; the label is the rotation index (``num_classes=4``) or
"angle in [0, 180) vs [180, 360)" (``num_classes=2``). Every image contributes
all its rotations, so the classes are exactly balanced and chance is exactly
``1 / num_classes`` for a suspect that carries no watermark.

Verification never trains anything on the suspect: the suspect is frozen, its
representations of the rotated held-out watermark images go through the
owner's MLP unchanged (``watermark_input`` removes the scale, so surrogates
trained with cosine-type losses such as InfoNCE are judged fairly). Only when
the suspect's representation size differs from the victim's is a linear map
fitted (least squares, ``fit_linear_map``) from suspect to victim
representations of a few public images, a step that can only help the suspect
look watermarked (a conservative choice for independent encoders).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from sslsteal_jax.models.watermark import ALLOWED_CLASSES

def fit_linear_map(src, dst, ridge: float = 1e-3):
    """Least-squares affine map ``src @ W + b ~= dst`` (ridge-regularised, bias not penalised).

    Used only when a suspect's representation size differs from the victim's:
    ``src`` are the suspect's and ``dst`` the victim's representations of the
    same public images.
    Args:
      src: float ``(N, D_s)``; dst: float ``(N, D_v)``; ridge: >= 0.
    Returns:
      ``(W float32 (D_s, D_v), b float32 (D_v,))``.
    Raises:
      ValueError: different row counts, fewer than 2 rows, or negative ``ridge``.
    """
    src, dst = jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32)
    if src.ndim != 2 or dst.ndim != 2 or src.shape[0] != dst.shape[0] or src.shape[0] < 2:
        raise ValueError(f"src and dst must be (N, D) with the same N >= 2, got {src.shape}, {dst.shape}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    gram = xs.T @ xs + ridge * src.shape[0] * jnp.eye(src.shape[1])
    w = jnp.linalg.solve(gram, xs.T @ xd)
    return w, mu_d - mu_s @ w


def binomial_pvalue(correct: int, total: int, chance: float) -> float:
    """One-sided exact binomial test ``P(X >= correct)``, ``X ~ Binomial(total, chance)``.

    The null hypothesis is "the suspect carries no watermark" (accuracy =
    chance); a small p-value is evidence of ownership.
    Raises:
      ValueError: ``total < 1``, ``correct`` outside ``[0, total]``, or
        ``chance`` outside (0, 1).
    """
    if int(total) < 1 or not 0 <= int(correct) <= int(total):
        raise ValueError(f"need total >= 1 and 0 <= correct <= total, got correct={correct}, "
                         f"total={total}")
    if not 0.0 < float(chance) < 1.0:
        raise ValueError(f"chance must lie in (0, 1), got {chance}")
    return float(stats.binomtest(int(correct), int(total), float(chance),
                                 alternative="greater").pvalue)


NULL_METHODS = ("max", "pooled")


def fisher_pvalue(correct: int, total: int, null_correct: int, null_total: int) -> float:
    """One-sided Fisher exact test that the suspect's accuracy exceeds a null encoder's.

    The 2x2 table is ``[[correct, total - correct], [null_correct, null_total -
    null_correct]]``; the p-value is ``P(X >= correct)`` under the
    hypergeometric law of the suspect's correct count given both margins
    (``scipy.stats.fisher_exact(..., alternative="greater")``; Fisher,
    "Statistical Methods for Research Workers", 1925, Section 21.02). H0: both
    encoders have the same watermark accuracy; H1: the suspect's is higher.
    Exact for any counts, so it replaces the normal two-proportion z-test.

    Args:
      correct, total: the suspect's correct watermark predictions and trials.
      null_correct, null_total: the same for the null encoder(s).
    Returns:
      float p-value in (0, 1].
    Raises:
      ValueError: a total < 1 or a correct count outside ``[0, total]``.
    """
    for c, t, who in ((correct, total, "suspect"), (null_correct, null_total, "null")):
        if int(t) < 1 or not 0 <= int(c) <= int(t):
            raise ValueError(f"{who}: need total >= 1 and 0 <= correct <= total, got "
                             f"correct={c}, total={t}")
    table = [[int(correct), int(total) - int(correct)],
             [int(null_correct), int(null_total) - int(null_correct)]]
    return float(stats.fisher_exact(table, alternative="greater")[1])


def null_test(correct: int, total: int, null_counts, method: str = "max") -> dict:
    """Watermark test of a suspect against an empirical null of encoders NOT derived
    from the watermarked victim.

    Why not chance: a SimCLR encoder trained without rotation augmentation
    keeps orientation information, so the owner's MLP reads rotations above
    chance from any encoder whose representation resembles the victim's (the
    never-watermarked ancestor of our victim scores 35.6 % on a 25 %-chance
    task). The null accuracy must therefore be measured on reference encoders
    (independently trained ones; or the victim before watermarking, a harder
    null), not assumed (docs/science.md section 3: "decide ownership with a statistical
    test, not a raw threshold").

    Args:
      correct, total: the suspect's watermark counts (``verify_watermark``).
      null_counts: sequence of ``(correct, total)`` of the reference encoders
        (at least one).
      method: ``"max"`` (default): Fisher exact test against the reference
        encoder with the highest accuracy -- conservative, because the
        references' accuracies differ by more than their binomial noise
        (between-encoder variation that a pooled test would ignore);
        ``"pooled"``: Fisher exact test against the summed counts of all
        references (more power, valid only if all references share one
        accuracy).
    Returns:
      dict with ``p_value``, ``method``, ``null_correct``, ``null_total``,
      ``null_accuracy`` (of the pooled counts or of the strongest reference),
      ``n_null`` (reference encoders).
    Raises:
      ValueError: unknown ``method``, empty ``null_counts``, or bad counts.
    """
    if method not in NULL_METHODS:
        raise ValueError(f"unknown null method {method!r}; allowed: {list(NULL_METHODS)}")
    counts = [(int(c), int(t)) for c, t in null_counts]
    if not counts:
        raise ValueError("null_counts is empty: at least one reference encoder is needed")
    if any(t < 1 or not 0 <= c <= t for c, t in counts):
        raise ValueError(f"null counts must satisfy 0 <= correct <= total, total >= 1: {counts}")
    if method == "pooled":
        nc, nt = sum(c for c, _ in counts), sum(t for _, t in counts)
    else:
        nc, nt = max(counts, key=lambda ct: ct[0] / ct[1])
    return {"p_value": fisher_pvalue(correct, total, nc, nt), "method": method,
            "null_correct": nc, "null_total": nt, "null_accuracy": nc / nt,
            "n_null": len(counts)}


def verify_watermark(logits_fn, reps, labels, num_classes: int = 4, alpha: float = 0.01,
                     batch_size: int = 4096) -> dict:
    """Watermark accuracy of a suspect and the binomial test against chance
    (the ownership decision is ``null_test``'s, see there).

    Args:
      logits_fn: the owner's watermark MLP, ``float32 (B, D) representations
        -> float32 (B, num_classes) logits`` (applies ``watermark_input``
        itself; see ``models.watermark.WatermarkedSimCLR.watermark_logits``).
      reps: float ``(N, D)`` the frozen suspect's representations of the
        rotated held-out watermark images (already in the victim's
        representation space, see ``fit_linear_map``).
      labels: int ``(N,)`` watermark labels in ``[0, num_classes)``.
      num_classes: 4 or 2; chance is ``1 / num_classes`` (balanced task).
      alpha: significance level of the ownership decision.
      batch_size: rows per call of ``logits_fn``.
    Returns:
      dict with ``accuracy`` (fraction), ``correct``, ``total``, ``chance``,
      ``p_value`` (one-sided binomial against chance), ``alpha``,
      ``above_chance`` (``p_value < alpha``). "Above chance" is NOT an
      ownership decision: see ``null_test`` for the test against reference
      encoders that decides it.
    Raises:
      ValueError: shapes disagree, labels out of range, bad ``num_classes``
        or ``alpha``, or non-finite representations.
    """
    if num_classes not in ALLOWED_CLASSES:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: {ALLOWED_CLASSES}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    reps, labels = np.asarray(reps, np.float32), np.asarray(labels)
    if reps.ndim != 2 or labels.shape != reps.shape[:1]:
        raise ValueError(f"reps must be (N, D) and labels (N,), got {reps.shape}, {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    if not np.isfinite(reps).all():
        raise ValueError("suspect representations contain NaN or inf")
    preds = np.concatenate([np.asarray(jnp.argmax(logits_fn(jnp.asarray(reps[i:i + batch_size])), -1))
                            for i in range(0, len(reps), batch_size)])
    correct, total = int((preds == labels).sum()), int(len(labels))
    chance = 1.0 / num_classes
    p = binomial_pvalue(correct, total, chance)
    return {"accuracy": correct / total, "correct": correct, "total": total, "chance": chance,
            "p_value": p, "alpha": alpha, "above_chance": bool(p < alpha)}


def owner_logits_fn(module, variables):
    """Jitted ``reps float32 (B, D) -> logits (B, C)`` of the owner's watermark MLP.

    Args:
      module: a ``models.watermark.WatermarkedSimCLR``; variables: its variables.
    Raises:
      ValueError: ``module`` has no watermark head.
    """
    if not hasattr(module, "watermark_logits"):
        raise ValueError(f"{type(module).__name__} has no watermark head; load the watermarked "
                         "victim checkpoint (configs/watermark_victim.py)")
    return jax.jit(lambda r: module.apply(variables, r, method="watermark_logits"))
