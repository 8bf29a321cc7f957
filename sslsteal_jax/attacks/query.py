"""Attacker-side querying: send the query pool to the API once and cache answers.

Fixes the reference quirk of re-querying the victim every epoch (SPEC section
4): the attacker pays for each distinct image once and every training epoch
reuses the cached answers. Budgets are never overshot: the number of images
sent is exactly the requested budget.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


def collect_answers(api, user: str, images: np.ndarray, budget: int,
                    chunk: int = 1000, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Query the first ``budget`` images of ``images`` once each.

    Args:
      api: object with ``query(user, images) -> (B, D) float32`` (a ``VictimAPI``).
      user: attacker's account name.
      images: uint8 ``(N, H, W, C)`` query pool, in the attacker's fixed order.
      budget: number of queries to spend (images sent), 1 <= budget <= N.
      chunk: images per API call.
    Returns:
      ``(queried_images uint8 (budget, H, W, C), answers float32 (budget, D))``.
    Raises:
      ValueError: ``budget`` outside [1, N] (names the pool size).
      BudgetExceededError: from the API when the account's budget is smaller.
    """
    n = len(images)
    if not 1 <= int(budget) <= n:
        raise ValueError(f"query budget {budget} must be between 1 and the query pool size {n}")
    budget = int(budget)
    out = []
    for i in tqdm(range(0, budget, chunk), desc="querying victim API", disable=not progress,
                  leave=False):
        out.append(api.query(user, images[i:min(i + chunk, budget)]))
    return images[:budget], np.concatenate(out, axis=0)
