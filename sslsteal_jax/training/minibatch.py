"""Small in-memory training loops compiled whole: epochs of shuffled minibatches as
two nested ``jax.lax.scan`` (one program, no Python per step).

Used where the data fit in device memory and no checkpoint is needed: the linear
probe (``evaluation.probe``) and the attacker's projection-head recreation
(``attacks.head_recreation``). Long runs (victims, surrogates) use the resumable
``training.loop.run_training`` instead.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import optax


def scan_epochs(loss_fn: Callable, tx: optax.GradientTransformation, params, opt_state,
                key: jax.Array, arrays: Sequence[jax.Array], *, n: int, batch_size: int,
                steps_per_epoch: int, epochs: int):
    """``epochs`` passes of minibatch gradient descent, traceable inside ``jax.jit``.

    Epoch ``e`` draws ``jax.random.permutation(k_e, n)`` with ``k_e`` the ``e``-th key
    of ``jax.random.split(key, epochs)``, keeps its first ``steps_per_epoch *
    batch_size`` indices (the remainder of the epoch is dropped) and takes one
    ``tx`` step per batch on ``loss_fn(params, *(a[idx] for a in arrays))``.

    Args:
      loss_fn: ``(params, *batch) -> scalar`` float32 loss.
      tx: the optax optimizer; ``opt_state`` its state for ``params``.
      params, opt_state: pytrees (float32 arrays).
      key: PRNG key of the batch order.
      arrays: arrays with ``n`` rows each (e.g. features (n, d) float32 and labels (n,)
        int32), indexed together.
      n, batch_size, steps_per_epoch, epochs: Python ints (static; ``steps_per_epoch *
        batch_size <= n``).
    Returns:
      ``(params, opt_state)`` after ``epochs * steps_per_epoch`` steps.
    Source: the reference behaviour of shuffled minibatch epochs (``DataLoader(shuffle=
    True, drop_last=True)``), compiled as one program.
    """
    def epoch(carry, ek):
        perm = jax.random.permutation(ek, n)[: steps_per_epoch * batch_size]
        perm = perm.reshape(steps_per_epoch, batch_size)

        def step(carry, idx):
            p, o = carry
            g = jax.grad(loss_fn)(p, *(a[idx] for a in arrays))
            upd, o = tx.update(g, o, p)
            return (optax.apply_updates(p, upd), o), None

        return jax.lax.scan(step, carry, perm)[0], None

    return jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))[0]
