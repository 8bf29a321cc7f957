"""Linear probe and kNN accuracy on frozen features.

Linear probe (Dziedzic et al. ICML 2022, Section 4 "linear evaluation"): a
softmax-regression layer on standardised frozen representations, trained with
Adam on mini-batches (fixed epochs, cosine LR, weight decay), fully in JAX.
Reported as top-1 accuracy in percent on a disjoint labelled test split.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslsteal_jax.evaluation.parallel import run_concurrently
from sslsteal_jax.training.minibatch import scan_epochs


def few_labels_subset(labels: np.ndarray, per_class: int, key: jax.Array) -> np.ndarray:
    """Indices of ``per_class`` examples of each class, drawn without replacement.

    Args:
      labels: int ``(N,)``; per_class: examples per class (> 0); key: PRNG key.
    Returns:
      sorted int64 indices ``(num_classes * per_class,)``.
    Raises:
      ValueError: a class has fewer than ``per_class`` examples.
    """
    idx = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise ValueError(f"class {c} has {len(where)} examples < per_class={per_class}")
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), len(where)))
        idx.append(where[perm[:per_class]])
    return np.sort(np.concatenate(idx))


def _probe_optimizer(total: int, learning_rate: float, weight_decay: float):
    """AdamW with cosine decay to 0 over ``total`` steps (the probe's optimizer)."""
    return optax.adamw(optax.cosine_decay_schedule(learning_rate, total),
                       weight_decay=weight_decay)


@functools.lru_cache(maxsize=None)
def _probe_program(n: int, d: int, k: int, bs: int, steps_per_epoch: int, epochs: int,
                   learning_rate: float, weight_decay: float):
    """The jitted probe training ``(params, opt, key, xtr, ytr) -> params`` of one size
    and setting, built once per process.

    The features are arguments, not constants closed over, and the function object is
    cached here: every encoder's probe of one size (the victim's, each surrogate's, the
    independent encoder's) reuses one traced, lowered and compiled program in-process
    (and across processes through the persistent compilation cache), instead of tracing
    and lowering a fresh function per call. The program, hence every number, is the same.
    """
    tx = _probe_optimizer(epochs * steps_per_epoch, learning_rate, weight_decay)

    def loss_fn(p, x, y):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def run(params, opt, key, xtr, ytr):
        return scan_epochs(loss_fn, tx, params, opt, key, (xtr, ytr), n=n, batch_size=bs,
                           steps_per_epoch=steps_per_epoch, epochs=epochs)[0]

    return jax.jit(run)


def fit_linear_probe(train_x, train_y, key: jax.Array, epochs: int = 60, batch_size: int = 512,
                     learning_rate: float = 2e-3, weight_decay: float = 1e-4,
                     num_classes: int | None = None) -> dict:
    """Train a softmax-regression classifier on standardised frozen features.

    Args:
      train_x: float32 ``(N, D)``; train_y: int ``(N,)`` labels in [0, K).
      key: PRNG key (mini-batch order).
      epochs: passes over the training features; batch_size: mini-batch size
        (clipped to N); learning_rate: peak Adam LR (cosine decay to 0);
      weight_decay: decoupled weight decay on the weights.
      num_classes: K (default ``max(train_y) + 1``).
    Returns:
      dict of float32 arrays ``mean (D,)``, ``std (D,)`` (feature
      standardisation), ``w (D, K)``, ``b (K,)``; logits of features ``x`` are
      ``((x - mean) / std) @ w + b`` (``probe_logits``).
    Raises:
      ValueError: bad shapes or non-finite features.
    """
    train_x = np.asarray(train_x, np.float32)
    if train_x.ndim != 2 or len(train_x) != len(train_y):
        raise ValueError(f"features must be (N,D) with N labels, got {train_x.shape} and "
                         f"{np.shape(train_y)} labels")
    if not np.isfinite(train_x).all():
        raise ValueError("features contain NaN or inf")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = jnp.asarray((train_x - mean) / std)
    ytr = jnp.asarray(train_y, jnp.int32)
    k = int(num_classes or int(np.max(train_y)) + 1)
    n, d = xtr.shape
    bs = min(batch_size, n)
    steps_per_epoch = max(n // bs, 1)
    run = _probe_program(n, d, k, bs, steps_per_epoch, int(epochs), float(learning_rate),
                         float(weight_decay))
    params = {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}
    opt = _probe_optimizer(int(epochs) * steps_per_epoch, float(learning_rate),
                           float(weight_decay)).init(params)
    params = run(params, opt, key, xtr, ytr)
    return {"mean": mean, "std": std, "w": np.asarray(params["w"]), "b": np.asarray(params["b"])}


def probe_logits(probe: dict, x) -> np.ndarray:
    """Logits float32 ``(M, K)`` of a ``fit_linear_probe`` classifier on features ``(M, D)``."""
    x = (np.asarray(x, np.float32) - probe["mean"]) / probe["std"]
    return np.asarray(jnp.asarray(x) @ probe["w"] + probe["b"])


def linear_probe(train_x, train_y, test_x, test_y, key: jax.Array, epochs: int = 60,
                 batch_size: int = 512, learning_rate: float = 2e-3,
                 weight_decay: float = 1e-4, return_predictions: bool = False):
    """Train a linear classifier on frozen features; return test accuracy (percent).

    Args:
      train_x: float32 ``(N, D)``; train_y: int ``(N,)`` labels in [0, K).
      test_x: float32 ``(M, D)``; test_y: int ``(M,)``.
      key: PRNG key (initialisation and mini-batch order).
      epochs, batch_size, learning_rate, weight_decay: see ``fit_linear_probe``.
      return_predictions: also return the predicted test labels.
    Returns:
      top-1 accuracy in percent (float in [0, 100]); with ``return_predictions``
      ``(accuracy, int64 predictions (M,))``.
    Raises:
      ValueError: mismatched shapes or non-finite features.
    """
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N,D) and (M,D), got {train_x.shape} and {test_x.shape}")
    if not (np.isfinite(train_x).all() and np.isfinite(test_x).all()):
        raise ValueError("features contain NaN or inf")
    k = int(max(np.max(train_y), np.max(test_y)) + 1)
    probe = fit_linear_probe(train_x, train_y, key, epochs, batch_size, learning_rate,
                             weight_decay, num_classes=k)
    pred = np.argmax(probe_logits(probe, test_x), axis=1)
    acc = float(100.0 * np.mean(pred == np.asarray(test_y)))
    return (acc, pred) if return_predictions else acc


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, chunk: int = 1000) -> float:
    """Cosine-similarity k-nearest-neighbour accuracy (majority vote), percent.

    Args:
      train_x: float32 ``(N, D)``; train_y: int ``(N,)``; test_x: ``(M, D)``;
      test_y: ``(M,)``; k: neighbours (1 <= k <= N); chunk: test rows per block.
    Raises:
      ValueError: k out of range.
    """
    n = len(train_x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}]")
    def norm(x):
        x = jnp.asarray(x, jnp.float32)
        return x / (jnp.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    tr, ytr = norm(train_x), jnp.asarray(train_y, jnp.int32)
    num_classes = int(max(np.max(train_y), np.max(test_y)) + 1)

    predict = _knn_program(int(k), num_classes)

    te = norm(test_x)
    preds = []
    for i in range(0, len(te), chunk):
        q = te[i:i + chunk]
        pad = chunk - len(q)
        qp = jnp.concatenate([q, jnp.zeros((pad, q.shape[1]))]) if pad and len(te) > chunk else q
        preds.append(np.asarray(predict(qp, tr, ytr))[:len(q)])
    return float(100.0 * np.mean(np.concatenate(preds) == np.asarray(test_y)))


@functools.lru_cache(maxsize=None)
def _knn_program(k: int, num_classes: int):
    """Jitted ``(queries, train features, train labels) -> predicted labels`` of the kNN
    vote, built once per process: train features are arguments and the function is
    cached, so every encoder's kNN of one size shares one compiled program (see
    :func:`_probe_program`)."""
    def predict(q, tr, ytr):
        sims = q @ tr.T
        _, nn_idx = jax.lax.top_k(sims, k)
        votes = jax.nn.one_hot(ytr[nn_idx], num_classes).sum(axis=1)
        return jnp.argmax(votes, axis=1)

    return jax.jit(predict)


# Probe settings searched on a validation split: (epochs, learning rate, weight decay).
DEFAULT_PROBE_GRID = ((60, 2e-3, 1e-4), (100, 5e-3, 1e-3))


def selected_linear_probe(train_x, train_y, test_x, test_y, key: jax.Array,
                          grid=DEFAULT_PROBE_GRID, val_fraction: float = 0.1,
                          return_predictions: bool = False, max_workers: int | None = None) -> tuple:
    """Linear probe whose optimisation settings are chosen on a validation split.

    Each ``(epochs, learning_rate, weight_decay)`` in ``grid`` is trained on the
    first ``1 - val_fraction`` of the training features and scored on the rest;
    the best setting (ties: the earlier one) is retrained on all training
    features and scored on the test split, so the test set never influences the
    choice (standard linear-evaluation practice, e.g. SimCLR, Chen et al. 2020,
    Appendix B.5). Every encoder gets its own best setting. The grid's fits
    run concurrently (``evaluation.parallel.run_concurrently`` with
    ``max_workers``; the result does not depend on it).

    Returns:
      ``(test accuracy in percent, {"epochs", "learning_rate", "weight_decay",
      "val_accuracy"})``; with ``return_predictions`` a third element, the
      predicted test labels int64 ``(M,)``.
    Raises:
      ValueError: empty grid or ``val_fraction`` outside (0, 0.5].
    """
    if not grid:
        raise ValueError("probe grid is empty")
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 0.5]")
    train_x = np.asarray(train_x)
    cut = int(round(len(train_x) * (1.0 - val_fraction)))
    vals = run_concurrently([
        functools.partial(linear_probe, train_x[:cut], train_y[:cut], train_x[cut:],
                          train_y[cut:], jax.random.fold_in(key, i), epochs=int(epochs),
                          learning_rate=lr, weight_decay=wd)
        for i, (epochs, lr, wd) in enumerate(grid)], max_workers=max_workers)
    best, best_val = None, -1.0
    for (epochs, lr, wd), val in zip(grid, vals):
        if val > best_val:
            best, best_val = (int(epochs), lr, wd), val
    out = linear_probe(train_x, train_y, test_x, test_y, key, epochs=best[0],
                       learning_rate=best[1], weight_decay=best[2],
                       return_predictions=return_predictions)
    settings = {"epochs": best[0], "learning_rate": best[1], "weight_decay": best[2],
                "val_accuracy": best_val}
    return (out[0], settings, out[1]) if return_predictions else (out, settings)
