"""Query strategies: what the attacker sends to the API, and what one budget buys.

One budget B (charged queries) is spent in one of these ways:

==================  ========================================================  ==========
strategy            what is sent / trained                                     images
==================  ========================================================  ==========
direct              each pool image once; surrogate trains on (image, answer)  B
stolenencoder       as direct; the surrogate also sees k' augmented views of   B
                    each image against the same answer (StolenEncoder, Liu
                    et al. CCS 2022), no extra query
augmented_queries   k augmented views of each image, each view one query;      B / k
                    surrogate trains on the B (view, answer) pairs
                    (Dziedzic et al. ICML 2022, Section 3)
head_recreation     as augmented_queries (k >= 2); a head g' is fitted on the  B / k
                    answers of views 0 and 1 with NT-Xent, then the surrogate
                    trains through the frozen g' (ICML 2022, Section 3)
labels              each image once to the provider's classifier, top-1 label  B
                    back; a fresh network + linear head is trained with
                    cross-entropy (Knockoff Nets, Orekondy et al. CVPR 2019)
probabilities       as labels, with the probability vector (soft targets)      B
==================  ========================================================  ==========

Strategies that send the same inputs share one *query set* (direct and
stolenencoder: ``clean``; augmented_queries and head_recreation with the same
k: ``views<k>``), bought once and cached: a cache hit is never charged again.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from sslsteal_jax.data.registry import load_split
from sslsteal_jax.errors import ConfigError

STRATEGIES = ("direct", "stolenencoder", "augmented_queries", "head_recreation", "labels",
              "probabilities")
LABEL_STRATEGIES = ("labels", "probabilities")


@dataclasses.dataclass(frozen=True)
class QueryPlan:
    """How a strategy spends ``queries``: ``images`` pool images x ``views``
    inputs sent per image (``views`` = 1: the clean image), into the cached
    query set ``query_set``, answered by ``api`` ("representation" API or the
    downstream "classifier" API)."""

    strategy: str
    query_set: str
    images: int
    views: int
    queries: int
    api: str


def parse_strategies(spec: str) -> list[str]:
    """``"direct"`` / ``"direct,head_recreation"`` / ``"all"`` -> list of names (``all``
    inside a list adds every strategy; repeats dropped, first appearance kept).

    Raises:
      ConfigError (a ValueError): unknown or empty names (lists the allowed ones).
    """
    names = [n for s in (spec or "").split(",") if s.strip()
             for n in (list(STRATEGIES) if s.strip() == "all" else [s.strip()])]
    bad = [n for n in names if n not in STRATEGIES]
    if bad or not names:
        raise ConfigError(f"unknown query strategy(ies) {bad or spec!r}; allowed: "
                          f"{list(STRATEGIES)} or 'all'")
    return list(dict.fromkeys(names))


def plan_queries(strategy: str, budget: int, views: int, pool_size: int) -> QueryPlan:
    """The query plan of ``strategy`` for ``budget`` charged queries.

    Args:
      strategy: one of ``STRATEGIES``.
      budget: queries (inputs sent to the API), >= 1.
      views: k, augmented views sent per image (augmented_queries: k >= 1,
        head_recreation: k >= 2; ignored by the other strategies).
      pool_size: images in the attacker's query pool.
    Raises:
      ConfigError (a ValueError): unknown strategy, budget not a multiple of k, too few
        views for head recreation, or a budget the pool cannot fill (names the values).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown query strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    budget = int(budget)
    if strategy in ("augmented_queries", "head_recreation"):
        k = int(views)
        if k < (2 if strategy == "head_recreation" else 1):
            raise ConfigError(f"strategy {strategy!r} needs views >= "
                              f"{2 if strategy == 'head_recreation' else 1}, got views={views}")
        if budget < k or budget % k:
            raise ConfigError(f"query budget {budget} must be a positive multiple of views={k} "
                              f"for strategy {strategy!r} (each augmented view is one query)")
        plan = QueryPlan(strategy, f"views{k}", budget // k, k, budget, "representation")
    elif strategy in LABEL_STRATEGIES:
        plan = QueryPlan(strategy, strategy, budget, 1, budget, "classifier")
    else:
        plan = QueryPlan(strategy, "clean", budget, 1, budget, "representation")
    if not 1 <= plan.images <= pool_size:
        raise ConfigError(f"query budget {budget} ({strategy}: {plan.images} images x {plan.views} "
                          f"views) must fit the query pool size {pool_size}")
    return plan


_POOL_NAME = re.compile(r"^([^/]+)/([^\[]+?)(?:\[(-?\d*):(-?\d*)\])?$")


def query_pool_labels(pool_name: str) -> np.ndarray:
    """Ground-truth labels of a query pool named like ``ExperimentData.names``
    (``"fashion_mnist/test[:5000]"``, ``"mnist_subset/train"``).

    They are the labels a "supcon" attacker is assumed to own for its own
    query images (never returned by the API; for another dataset they are that
    dataset's classes). Returns int32 ``(N,)`` aligned with the pool.
    Raises:
      ValueError: a name that does not have the ``dataset/split[a:b]`` form.
    """
    m = _POOL_NAME.match(pool_name)
    if not m:
        raise ValueError(f"query pool name {pool_name!r} is not of the form 'dataset/split[a:b]'")
    name, split, lo, hi = m.groups()
    y = load_split(name, split)[1]
    return np.asarray(y[slice(int(lo) if lo else None, int(hi) if hi else None)], np.int32)


def partner_index(n_images: int, views: int) -> np.ndarray:
    """For image-major views (rows ``i*k .. i*k+k-1`` = image i), the row of the
    next view of the same image (``j -> (j + 1) mod k``): int64 ``(n_images*k,)``.
    With k = 1 every row is its own partner."""
    rows = np.arange(n_images * views)
    return (rows // views) * views + (rows % views + 1) % views
