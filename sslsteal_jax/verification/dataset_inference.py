"""Owner-side dataset inference for encoders (Gaussian-mixture likelihood test).

Source: Dziedzic, Duan, Kaleem, Dhawan, Guan, Cattan, Boenisch, Papernot,
"Dataset Inference for Self-Supervised Models" (NeurIPS 2022), Section 3: an
encoder trained (or stolen from one trained) on the owner's private data maps
those images to regions of higher density than unseen images. The owner fits a
density model (a Gaussian mixture) on the suspect's L2-normalised
representations of half of the private training set, then compares the
log-likelihood of the other, held-out private half with that of public images
nobody trained on, with a one-sided two-sample t-test; a small p-value
(``< alpha``, 0.01 by default) means "the victim itself or stolen from it".

The suspect is only queried (frozen); nothing about it is trained except the
owner's density model on its outputs.
"""
from __future__ import annotations

import jax
import numpy as np
from scipy import stats
from sklearn.mixture import GaussianMixture

COVARIANCES = ("diag", "full", "spherical", "tied")


def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm.

    Args:
      x: float ``(N, D)``.
    Returns:
      float64 ``(N, D)`` numpy array (zero rows stay zero).
    Raises:
      ValueError: ``x`` is not 2-D or holds NaN/inf.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"representations must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("representations contain NaN or inf")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _seed(key) -> int:
    """Integer seed for scikit-learn derived from a JAX PRNG key."""
    return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def fit_gmm(reps, key, n_components: int = 10, covariance_type: str = "diag",
            reg_covar: float = 1e-6, max_iter: int = 200) -> GaussianMixture:
    """Fit a Gaussian mixture (k-means initialisation seeded from ``key``).

    Args:
      reps: float ``(N, D)`` representations (normalise them first with
        ``l2_normalize``; this function does not).
      key: JAX PRNG key; the same key gives the same mixture.
      n_components: mixture components (10 in the DI paper), in ``[1, N]``.
      covariance_type: one of ``COVARIANCES`` ("diag" is the paper's choice
        for high-dimensional representations).
      reg_covar: added to covariance diagonals.
      max_iter: EM iterations.
    Returns:
      the fitted ``sklearn.mixture.GaussianMixture``.
    Raises:
      ValueError: bad ``covariance_type``, ``n_components`` outside
        ``[1, N]``, or non-2-D / non-finite ``reps``.
    """
    if covariance_type not in COVARIANCES:
        raise ValueError(f"unknown covariance_type {covariance_type!r}; allowed: {list(COVARIANCES)}")
    reps = np.asarray(reps, np.float64)
    if reps.ndim != 2 or not np.isfinite(reps).all():
        raise ValueError(f"reps must be finite (N, D), got shape {reps.shape}")
    if not 1 <= int(n_components) <= len(reps):
        raise ValueError(f"n_components={n_components} must lie in [1, N={len(reps)}]")
    return GaussianMixture(int(n_components), covariance_type=covariance_type, reg_covar=reg_covar,
                           max_iter=int(max_iter), random_state=_seed(key)).fit(reps)


def dataset_inference(fit_reps, private_reps, public_reps, key, n_components: int = 10,
                      covariance_type: str = "diag", alpha: float = 0.01) -> dict:
    """Dataset-inference test of one suspect encoder.

    Args:
      fit_reps: float ``(N_fit, D)`` suspect representations of the private
        half used to fit the mixture.
      private_reps: float ``(N_priv, D)`` suspect representations of held-out
        private training images (disjoint from the fit half).
      public_reps: float ``(N_pub, D)`` suspect representations of public
        images that neither the victim nor the attacker trained on.
      key: JAX PRNG key of the mixture fit.
      n_components, covariance_type: see ``fit_gmm``.
      alpha: significance level of the decision.
    All three are L2-normalised here.
    Returns:
      dict with ``p_value`` (one-sided Welch t-test, H1: mean log-likelihood of
      private > public), ``t_statistic``, ``mean_ll_private``,
      ``mean_ll_public``, ``ll_gap`` (private minus public, nats per image),
      ``n_fit``, ``n_private``, ``n_public``, ``alpha``, ``stolen``
      (``p_value < alpha``).
    Raises:
      ValueError: fewer than 2 private or public rows, different dimensions,
        bad ``alpha`` (plus ``fit_gmm``'s errors).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    f, pr, pu = (l2_normalize(a) for a in (fit_reps, private_reps, public_reps))
    if len(pr) < 2 or len(pu) < 2:
        raise ValueError(f"need at least 2 private and 2 public rows, got {len(pr)} and {len(pu)}")
    if not f.shape[1] == pr.shape[1] == pu.shape[1]:
        raise ValueError(f"representation sizes differ: fit {f.shape[1]}, private {pr.shape[1]}, "
                         f"public {pu.shape[1]}")
    gmm = fit_gmm(f, key, n_components, covariance_type)
    ll_priv, ll_pub = gmm.score_samples(pr), gmm.score_samples(pu)
    res = stats.ttest_ind(ll_priv, ll_pub, equal_var=False, alternative="greater")
    p = float(res.pvalue)
    return {"p_value": p, "t_statistic": float(res.statistic),
            "mean_ll_private": float(ll_priv.mean()), "mean_ll_public": float(ll_pub.mean()),
            "ll_gap": float(ll_priv.mean() - ll_pub.mean()), "n_fit": int(len(f)),
            "n_private": int(len(pr)), "n_public": int(len(pu)), "alpha": alpha,
            "stolen": bool(p < alpha)}
