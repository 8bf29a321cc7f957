"""Query-similarity detection with a bounded per-user history.

A query is flagged when the rescaled cosine similarity ``(cos + 1) / 2`` between
the victim's projection-head output ``g(f_v(x))`` for it and the head output of
any earlier query of the same user exceeds a threshold (0.8 by default); a
flagged query is answered with garbage instead of its representation.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 5 (detecting
augmented-view queries by the similarity of their head outputs; garbage
answers ``N(1000, sigma^2)``); docs/science.md section 3. The reference compares queries
only within one batch with a Python loop. Here every user keeps a ring buffer
of its last ``M`` L2-normalised head outputs, and a batch is scored in one
vectorised step: against the buffer, and against the earlier queries of the
same batch through a strictly lower-triangular mask. The result is exactly
what sending the queries one at a time would give: query ``i`` is compared
with the ``M`` queries that precede it, whatever the batch split.

Memory bound per user: ``M * Dz * 4`` bytes for the buffer (float32) plus two
int32 counters; for the defaults (``M = 2048``) and the shipped victim's
128-d head that is 1 MiB.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init_history(memory: int, head_dim: int) -> dict:
    """Empty per-user detector state.

    Returns ``{"history": float32 (memory, head_dim) zeros, "seen": int32 0,
    "flagged": int32 0}``: ``seen`` counts the user's queries so far (the ring
    buffer's write position is ``seen % memory``), ``flagged`` the flagged ones.
    """
    return {"history": jnp.zeros((int(memory), int(head_dim)), jnp.float32),
            "seen": jnp.zeros((), jnp.int32), "flagged": jnp.zeros((), jnp.int32)}


@jax.jit
def similarity_scores(head, state):
    """Score a batch against the user's history, in query order; update the history.

    Args:
      head: float32 ``(B, Dz)`` the victim's projection-head outputs of the
        batch, in the order the queries arrived.
      state: detector state from ``init_history`` (``history`` ``(M, Dz)``).
    Returns:
      ``(scores float32 (B,), new_state)``: ``scores[i]`` is the largest
      rescaled cosine ``(cos + 1) / 2`` in [0, 1] between query ``i`` and any
      of the ``M`` queries of this user immediately before it (earlier batches
      and earlier rows of this batch); 0.0 when it has no predecessor. The new
      state holds the batch's last ``min(B, M)`` normalised head outputs and
      ``seen + B``; ``flagged`` is left to the caller.
    """
    hist, seen = state["history"], state["seen"]
    m = hist.shape[0]
    b = head.shape[0]
    z = head / (jnp.linalg.norm(head, axis=1, keepdims=True) + 1e-12)
    i = jnp.arange(b)
    # Absolute query position stored in each ring slot (negative = slot never written).
    slots = jnp.arange(m)
    pos = seen - 1 - jnp.mod(seen - 1 - slots, m)
    in_window_h = (pos[None, :] >= 0) & (pos[None, :] >= seen + i[:, None] - m)
    cos_h = jnp.where(in_window_h, z @ hist.T, -jnp.inf)
    in_window_b = (i[None, :] < i[:, None]) & (i[None, :] >= i[:, None] - m)
    cos_b = jnp.where(in_window_b, z @ z.T, -jnp.inf)
    best = jnp.maximum(cos_h.max(axis=1, initial=-jnp.inf), cos_b.max(axis=1))
    scores = jnp.where(jnp.isfinite(best), (best + 1.0) / 2.0, 0.0)
    keep = min(b, m)
    new_slots = jnp.mod(seen + jnp.arange(b - keep, b), m)
    hist = hist.at[new_slots].set(z[b - keep:])
    return scores, dict(state, history=hist, seen=seen + b)


def similarity_defense(reps, state, key, params, head):
    """Flag queries too similar to an earlier query of the user; answer them with garbage.

    Args:
      reps: float32 ``(B, D)`` answers to return.
      state: detector state (``init_history``).
      key: PRNG key for the garbage (same key -> same garbage).
      params: ``{"threshold": float in [0, 1], "memory": int M >= 1,
        "garbage_mean": float, "garbage_scale": float >= 0}``.
      head: float32 ``(B, Dz)`` the victim's head outputs of the same queries.
    Returns:
      ``(out float32 (B, D), new_state)``: rows with score > threshold are
      replaced by ``garbage_mean + garbage_scale * N(0, 1)`` (default
      ``N(1000, 1)``, the reference's garbage); ``state["flagged"]`` grows by
      the number of flagged rows.
    """
    scores, state = similarity_scores(head, state)
    flags = scores > params["threshold"]
    garbage = params["garbage_mean"] + params["garbage_scale"] * jax.random.normal(
        key, reps.shape, jnp.float32)
    out = jnp.where(flags[:, None], garbage, reps)
    return out, dict(state, flagged=state["flagged"] + flags.sum().astype(jnp.int32))
