"""Adaptive attacks against active defenses.

* Averaging (Dziedzic et al., ICML 2022, Section 5; docs/science.md section 2 "adaptive
  attacks"): query every image ``n`` times and average the answers; against
  zero-mean noise of standard deviation ``sigma`` the average has standard
  deviation ``sigma / sqrt(n)``. Every repeat is a charged query, so a budget
  of ``Q`` queries buys ``Q // n`` distinct images.
* Sybil merging against per-user transforms (Dubinski et al., "Bucks for
  Buckets", NeurIPS 2023, Section 5 "sybil attacks"): several accounts each
  query a shared set of images plus their own share of the pool; a linear map
  (least squares with bias, in JAX) from every account's answers on the shared
  set to the first account's answers moves all answers into one coordinate
  system; each account's LSH coverage, and so its B4B noise, stays lower than
  one account sending everything.

The attacker only uses what ``api.query`` returns.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _query_chunked(api, user: str, images: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([api.query(user, images[i:i + chunk])
                           for i in range(0, len(images), chunk)], axis=0)


def averaged_answers(api, user: str, images: np.ndarray, repeats: int,
                     chunk: int = 1000) -> np.ndarray:
    """Average of ``repeats`` answers per image (each repeat charged).

    Args:
      api: ``VictimAPI``; user: account; images: uint8 ``(N, H, W, C)``;
      repeats: n >= 1 queries per image; chunk: images per API call.
    Returns:
      float32 ``(N, D)``; the API charges ``N * repeats`` queries.
    Raises:
      ValueError: ``repeats < 1``; BudgetExceededError from the API.
    """
    if int(repeats) < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    total = None
    for _ in range(int(repeats)):
        a = _query_chunked(api, user, images, chunk).astype(np.float64)
        total = a if total is None else total + a
    return (total / int(repeats)).astype(np.float32)


def fit_linear_map(src, dst):
    """Least-squares affine map ``dst ~ src @ W + c``.

    Args:
      src: float ``(N, D_s)``; dst: float ``(N, D_d)`` (same rows, same images).
    Returns:
      ``(W float32 (D_s, D_d), c float32 (D_d,))``.
    Raises:
      ValueError: different row counts.
    """
    src, dst = jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32)
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"src has {src.shape[0]} rows but dst has {dst.shape[0]}")
    x = jnp.concatenate([src, jnp.ones((src.shape[0], 1), jnp.float32)], axis=1)
    sol = jnp.linalg.lstsq(x, dst)[0]
    return sol[:-1], sol[-1]


def sybil_answers(api, users, images: np.ndarray, n_shared: int,
                  chunk: int = 1000) -> tuple[np.ndarray, np.ndarray, dict]:
    """Query with several accounts and merge their answers into ``users[0]``'s space.

    Every account queries ``images[:n_shared]``; the remaining images are split
    into ``len(users)`` contiguous parts, part ``i`` queried by ``users[i]``.
    Answers of account ``i > 0`` are mapped with ``fit_linear_map`` fitted on
    the shared images.

    Returns:
      ``(images uint8 (N, ...), answers float32 (N, D_0), info)``: all images
      once (shared first), answers in account 0's coordinates; ``info`` has
      ``queries`` (total charged = ``len(users) * n_shared + N - n_shared``),
      ``fit_relative_error`` (per account i > 0: ``||X_i W + c - Y_0|| / ||Y_0 - mean||``
      on the shared set).
    Raises:
      ValueError: fewer than 2 users, or ``n_shared`` outside [1, N).
    """
    users = list(users)
    n = len(images)
    if len(users) < 2:
        raise ValueError(f"a sybil attack needs >= 2 accounts, got {users}")
    if not 1 <= n_shared < n:
        raise ValueError(f"n_shared={n_shared} must be in [1, {n})")
    shared, rest = images[:n_shared], images[n_shared:]
    parts = np.array_split(np.arange(len(rest)), len(users))
    y0_shared = _query_chunked(api, users[0], shared, chunk)
    out = [y0_shared, _query_chunked(api, users[0], rest[parts[0]], chunk)]
    errors = []
    for u, idx in zip(users[1:], parts[1:]):
        ys = _query_chunked(api, u, shared, chunk)
        w, c = fit_linear_map(ys, y0_shared)
        fit = np.asarray(jnp.asarray(ys) @ w + c)
        errors.append(float(np.linalg.norm(fit - y0_shared)
                            / np.linalg.norm(y0_shared - y0_shared.mean(0))))
        if len(idx):
            out.append(np.asarray(jnp.asarray(_query_chunked(api, u, rest[idx], chunk)) @ w + c))
    order = np.concatenate([np.arange(n_shared), n_shared + np.concatenate(parts)])
    info = {"queries": len(users) * n_shared + len(rest), "accounts": users,
            "fit_relative_error": errors}
    return images[order], np.concatenate(out, axis=0).astype(np.float32), info
