"""Output-perturbing defenses: noise, rounding, top-k sparsification, quantisation.

Every defense here is a pure JAX function with the common defense signature
``(reps float32 (B, D), state, key, params) -> (reps float32 (B, D), state)``;
these are stateless, so ``state`` is returned unchanged. ``params`` is a dict of
Python numbers (validated by ``defenses.chain``).

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 5 ("Defenses":
perturbing the returned representations with additive noise, and truncating
their precision / sparsifying them); docs/science.md section 3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_noise(reps, state, key, params):
    """Additive Gaussian noise: ``reps + mean + scale * N(0, 1)`` element-wise.

    Args:
      reps: float32 ``(B, D)`` answers (representation units).
      state: passed through unchanged.
      key: JAX PRNG key (same key -> same noise).
      params: ``{"mean": float, "scale": float >= 0}`` (the noise's mean and
        standard deviation, in representation units).
    Returns:
      ``(float32 (B, D), state)``; element-wise mean ``mean`` and variance ``scale**2``
      of the added noise.
    """
    noise = jax.random.normal(key, reps.shape, jnp.float32)
    return reps + params["mean"] + params["scale"] * noise, state


def laplace_noise(reps, state, key, params):
    """Additive Laplace noise: ``reps + mean + scale * Laplace(0, 1)`` element-wise.

    Args / returns as ``gaussian_noise``; ``scale`` is the Laplace scale ``b``
    (noise standard deviation ``sqrt(2) * b``, mean absolute deviation ``b``).
    """
    noise = jax.random.laplace(key, reps.shape, jnp.float32)
    return reps + params["mean"] + params["scale"] * noise, state


def round_decimals(reps, state, key, params):
    """Round every value to ``params["decimals"]`` decimal places (int; negative
    values round to tens, hundreds, ...). Deterministic; ``key`` is unused.

    Returns ``(float32 (B, D), state)`` with ``|out - reps| <= 0.5 * 10**-decimals``.
    """
    del key
    return jnp.round(reps, int(params["decimals"])), state


def top_k(reps, state, key, params):
    """Top-k sparsification: keep the ``params["k"]`` entries of largest absolute
    value in each row, set the others to 0 (ties: the lower index wins, as in
    ``jax.lax.top_k``). Deterministic; ``key`` is unused.

    Returns ``(float32 (B, D), state)`` with exactly ``k`` kept entries per row
    (``1 <= k <= D``, checked by the chain).
    """
    del key
    k = int(params["k"])
    _, idx = jax.lax.top_k(jnp.abs(reps), k)
    rows = jnp.arange(reps.shape[0])[:, None]
    keep = jnp.zeros(reps.shape, bool).at[rows, idx].set(True)
    return jnp.where(keep, reps, 0.0), state


def quantize_levels(params) -> int:
    """Number of quantisation levels: ``2 ** bits`` when ``bits > 0``, else ``levels``."""
    return 2 ** int(params["bits"]) if int(params["bits"]) > 0 else int(params["levels"])


def quantize(reps, state, key, params):
    """Uniform quantisation over the stated range ``[low, high]``.

    Values are clipped to ``[low, high]`` and mapped to the nearest of ``n``
    equally spaced levels ``low + i * (high - low) / (n - 1)``, ``i = 0..n-1``,
    with ``n = quantize_levels(params)`` (``bits`` > 0 gives ``2**bits`` levels,
    otherwise ``levels``). Deterministic; ``key`` is unused.

    Args:
      params: ``{"low": float, "high": float > low, "levels": int >= 2, "bits": int >= 0}``.
    Returns:
      ``(float32 (B, D), state)``; every value is one of the ``n`` levels.
    """
    del key
    n = quantize_levels(params)
    lo, hi = float(params["low"]), float(params["high"])
    step = (hi - lo) / (n - 1)
    q = jnp.round((jnp.clip(reps, lo, hi) - lo) / step)
    return (lo + q * step).astype(jnp.float32), state
