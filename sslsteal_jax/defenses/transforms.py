"""Per-user secret transforms of returned representations (B4B's last stage).

Each user gets its own secret transform drawn from a per-user PRNG key, so
answers of two accounts live in different coordinate systems and cannot be
pooled naively (sybil accounts). Kinds:

* ``affine``: ``y = x @ A + b`` with ``A = Q diag(s)`` (``Q`` a random
  orthogonal matrix, ``s ~ U(0.5, 2)``, so ``A`` is invertible with condition
  number <= 4) and ``b ~ N(0, I)``; inverse ``x = (y - b) @ A^-1``.
* ``pad_shuffle``: append ``pad`` extra coordinates drawn per query from
  ``N(mu_j, sd_j)`` (secret per-user ``mu_j ~ N(0, 1)``, ``sd_j ~ U(0.1, 1)``),
  then permute all ``D + pad`` coordinates with a secret permutation; inverse:
  un-permute and drop the padding.
* ``binary``: ``y = 1[x @ R > 0]`` in {0, 1}, ``R`` a secret Gaussian
  ``(D, n_out)`` matrix (sign random projections, Charikar 2002): not invertible,
  but the fraction of differing bits estimates ``angle(x, x') / pi``.
  This is *our reading* of the paper's binary transformation (a per-user,
  non-invertible map to bits that keeps angular similarity, so a downstream
  probe still works while two accounts' bits cannot be aligned by a linear
  map). The paper and its code (github.com/adam-dziedzic/B4B) were not
  available to check the exact construction (random projections vs.
  thresholding coordinates, bit count); results with ``transform=binary``
  are for this variant. Note the angles are taken about the origin: for
  post-ReLU answers (all coordinates >= 0) they are all below 90 degrees,
  so more bits (``binary_dim``) are needed than for centred data.

Source: Dubinski, Pawlak, Boenisch, Trzcinski, Dziedzic, "Bucks for Buckets
(B4B): Active Defenses Against Stealing Encoders" (NeurIPS 2023), Section 3
(per-user representation transformations: affine, pad + shuffle, binary).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("none", "affine", "pad_shuffle", "binary")


def output_dim(kind: str, dim: int, pad: int, binary_dim: int) -> int:
    """Width of the transformed answers for input width ``dim``.

    Raises:
      ValueError: unknown ``kind`` (lists the allowed ones).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown transform {kind!r}; allowed: {list(KINDS)}")
    if kind == "pad_shuffle":
        return dim + int(pad)
    if kind == "binary":
        return int(binary_dim) if int(binary_dim) > 0 else 2 * dim
    return dim


def init_transform(kind: str, user_key, dim: int, pad: int = 32, binary_dim: int = 0) -> dict:
    """Draw a user's secret transform.

    Args:
      kind: one of ``KINDS``; user_key: the user's PRNG key (same key -> same
      transform); dim: input width D; pad: extra coordinates of ``pad_shuffle``;
      binary_dim: output bits of ``binary`` (0 = 2 * D).
    Returns:
      dict of float32 / int32 arrays (empty for ``none``).
    Raises:
      ValueError: unknown ``kind``.
    """
    out = output_dim(kind, dim, pad, binary_dim)
    k1, k2, k3 = jax.random.split(user_key, 3)
    if kind == "affine":
        q, r = jnp.linalg.qr(jax.random.normal(k1, (dim, dim)))
        q = q * jnp.sign(jnp.diag(r))[None, :]
        s = jax.random.uniform(k2, (dim,), minval=0.5, maxval=2.0)
        return {"A": (q * s[None, :]).astype(jnp.float32),
                "b": jax.random.normal(k3, (dim,), jnp.float32)}
    if kind == "pad_shuffle":
        return {"perm": jax.random.permutation(k1, out).astype(jnp.int32),
                "pad_mean": jax.random.normal(k2, (int(pad),), jnp.float32),
                "pad_scale": jax.random.uniform(k3, (int(pad),), jnp.float32, 0.1, 1.0)}
    if kind == "binary":
        return {"R": jax.random.normal(k1, (dim, out), jnp.float32)}
    return {}


def apply_transform(kind: str, x, secret: dict, key):
    """Apply a user's secret transform to float32 ``x`` ``(B, D)``.

    ``key`` draws the per-query padding of ``pad_shuffle`` (unused otherwise).
    Returns float32 ``(B, output_dim(kind, D, ...))``.
    """
    if kind == "affine":
        return x @ secret["A"] + secret["b"]
    if kind == "pad_shuffle":
        p = secret["pad_mean"].shape[0]
        pad = secret["pad_mean"] + secret["pad_scale"] * jax.random.normal(
            key, (x.shape[0], p), jnp.float32)
        return jnp.concatenate([x, pad], axis=1)[:, secret["perm"]]
    if kind == "binary":
        return (x @ secret["R"] > 0).astype(jnp.float32)
    if kind == "none":
        return x
    raise ValueError(f"unknown transform {kind!r}; allowed: {list(KINDS)}")


def invert_transform(kind: str, y, secret: dict, dim: int):
    """Owner-side inverse of ``apply_transform`` (float32 ``(B, D)``).

    Raises:
      ValueError: ``binary`` (not invertible) or unknown ``kind``.
    """
    if kind == "affine":
        return (y - secret["b"]) @ jnp.linalg.inv(secret["A"])
    if kind == "pad_shuffle":
        return y[:, jnp.argsort(secret["perm"])][:, :dim]
    if kind == "none":
        return y
    raise ValueError(f"transform {kind!r} is not invertible; invertible: "
                     f"['none', 'affine', 'pad_shuffle']")
