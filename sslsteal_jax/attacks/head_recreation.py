"""Recreate the victim's projection head from the API's answers.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 3 ("recreating the
projection head"): the API returns the representation ``h = f_v(x)`` and
hides SimCLR's head ``g``; the attacker queries two augmented views of each
image, fits its own head ``g'`` so that ``g'(h(x1))`` and ``g'(h(x2))`` agree
under the contrastive NT-Xent loss (the objective the victim's ``g`` was
trained with), then trains the surrogate *through* ``g'``: the stealing loss
compares ``g'(f_s(x))`` with ``g'(h(x))`` (``g'`` frozen). The paper finds
direct extraction on ``h`` as good or better (docs/science.md claim 5).

Query accounting: every view sent to the API is one charged query; a budget
of B queries buys ``B / k`` images with k >= 2 views each. The head is fitted
on views 0 and 1 of each image; the surrogate then trains on all B views.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslsteal_jax import losses
from sslsteal_jax.models import ProjectionHead, init_variables
from sslsteal_jax.training.minibatch import scan_epochs

_EVAL_ROWS = 2000  # pairs used for the summary metrics (an M x M similarity matrix)


def fit_projection_head(v1: np.ndarray, v2: np.ndarray, key: jax.Array, hidden_dim: int = 512,
                        out_dim: int = 128, epochs: int = 100, batch_size: int = 256,
                        learning_rate: float = 1e-3, weight_decay: float = 1e-4,
                        temperature: float = 0.1):
    """Fit a head ``g'`` (Dense(hidden) -> ReLU -> Dense(out)) on answer pairs with NT-Xent.

    Args:
      v1, v2: float32 ``(N, D)`` API answers for two augmented views of the same
        N images (row i of both belongs to image i).
      key: PRNG key (initialisation and batch order).
      hidden_dim, out_dim: head sizes (SimCLR's 2-layer head; 512 -> 128 in the
        paper's victims).
      epochs, batch_size, learning_rate, weight_decay: Adam with L2 weight decay
        (as the victim's optimizer) and a cosine schedule over all steps.
      temperature: NT-Xent tau.
    Returns:
      ``(head_fn, summary)``: ``head_fn`` a jittable ``(B, D) -> (B, out_dim)``
      with the fitted parameters closed over (frozen); summary dict with
      ``final_loss`` (NT-Xent over the first M = min(N, 2000) pairs as one
      batch), ``pair_top1`` (percent of those M rows of ``g'(v1)`` whose
      nearest row of ``g'(v2)`` by cosine is their own pair),
      ``initial_pair_top1`` (the same for the untrained head), ``steps``,
      ``wall_seconds``.
    Raises:
      ValueError: mismatched shapes, fewer than 2 pairs, bad sizes.
    """
    v1, v2 = np.asarray(v1, np.float32), np.asarray(v2, np.float32)
    if v1.shape != v2.shape or v1.ndim != 2:
        raise ValueError(f"v1 and v2 must be equal (N, D) arrays, got {v1.shape} and {v2.shape}")
    n = len(v1)
    bs = min(int(batch_size), n)
    if bs < 2:
        raise ValueError(f"head recreation needs at least 2 answer pairs, got {n}")
    if int(hidden_dim) < 1 or int(out_dim) < 1 or int(epochs) < 1:
        raise ValueError(f"hidden_dim={hidden_dim}, out_dim={out_dim}, epochs={epochs} must be >= 1")
    t0 = time.time()
    head = ProjectionHead(int(hidden_dim), int(out_dim))
    init_key, run_key = jax.random.split(key)
    # one compiled program, the same values as head.init (models.init_variables)
    params = init_variables(head, init_key, jnp.zeros((2, v1.shape[1])))["params"]
    steps_per_epoch = n // bs
    total = int(epochs) * steps_per_epoch
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
                     optax.scale_by_learning_rate(optax.cosine_decay_schedule(learning_rate, total)))
    a, b = jnp.asarray(v1), jnp.asarray(v2)

    def loss_fn(p, x1, x2):
        return losses.nt_xent(head.apply({"params": p}, x1), head.apply({"params": p}, x2),
                              temperature)

    @jax.jit
    def run(params, key):
        return scan_epochs(loss_fn, tx, params, tx.init(params), key, (a, b), n=n,
                           batch_size=bs, steps_per_epoch=steps_per_epoch, epochs=int(epochs))[0]

    m = min(n, _EVAL_ROWS)

    def top1(p):
        z1 = head.apply({"params": p}, a[:m])
        z2 = head.apply({"params": p}, b[:m])
        z1 = z1 / (jnp.linalg.norm(z1, axis=1, keepdims=True) + 1e-12)
        z2 = z2 / (jnp.linalg.norm(z2, axis=1, keepdims=True) + 1e-12)
        return float(100.0 * jnp.mean(jnp.argmax(z1 @ z2.T, axis=1) == jnp.arange(m)))

    before = top1(params)
    params = run(params, run_key)
    final = float(jax.jit(loss_fn)(params, a[:m], b[:m]))

    def head_fn(h):
        return head.apply({"params": params}, h)

    return head_fn, {"final_loss": final, "pair_top1": top1(params), "initial_pair_top1": before,
                     "steps": total, "wall_seconds": time.time() - t0,
                     "hidden_dim": int(hidden_dim), "out_dim": int(out_dim),
                     "temperature": float(temperature), "epochs": int(epochs)}
