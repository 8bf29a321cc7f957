"""The training data order: which examples each optimizer step reads.

One function, used by the in-memory training loop (``training.loop.run_training``) and
by the streaming loader (``data.stream.training_batches``), so both read the same
examples at every step and a resumed run reads what an uninterrupted one does.
"""
from __future__ import annotations

import numpy as np


def epoch_batches(n: int, batch_size: int, seed: int, step: int):
    """Indices of the batch used at optimizer ``step``: a fresh permutation of
    ``range(n)`` per epoch (numpy PCG64 seeded by ``(seed, epoch)``), the last
    incomplete batch dropped. Returns int64 ``(batch_size,)``.

    Raises:
      ZeroDivisionError: ``batch_size > n`` (no complete batch; callers check first).
    """
    steps_per_epoch = n // batch_size
    epoch, i = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]
