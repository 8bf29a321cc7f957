"""Attacker-side querying: send the query pool to the API once and cache answers.

Fixes the reference quirk of re-querying the victim every epoch (docs/science.md section
4): the attacker pays for each distinct image once and every training epoch
reuses the cached answers. Budgets are never overshot: the number of images
sent is exactly the requested budget. ``collect_view_answers`` sends k
augmented views per image instead (each view is one charged query).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sslsteal_jax.data.augment import AugmentConfig, augment_image
from sslsteal_jax.training import mesh as mesh_lib


def collect_answers(api, user: str, images: np.ndarray, budget: int,
                    chunk: int = 1000, progress: bool = True,
                    query_kwargs: dict | None = None, start: int = 0,
                    request_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Query images ``[start, budget)`` of ``images`` once each (the first ``budget``
    with the default ``start=0``).

    Args:
      api: object with ``query(user, images) -> (B, D) float32`` (a ``VictimAPI``).
      user: attacker's account name.
      images: uint8 ``(N, H, W, C)`` query pool, in the attacker's fixed order: an
        array, or any array-like that slices lazily (``data.stream.StreamSource``:
        only ``chunk`` images are in memory at a time).
      budget: number of queries to spend (images sent), 1 <= budget <= N.
      chunk: images per API call.
      query_kwargs: extra keyword arguments of ``api.query`` (e.g.
        ``{"output": "probabilities"}`` for a ``ClassifierAPI``).
      start: first image to query (a resumed chunk of ``pipeline.queries``).
      request_id: None, or the id of this range (the same on every attempt); API call
        ``j`` then passes ``request_id=f"{request_id}.{j}"`` to ``api.query`` (the
        served API's ledger never charges one id twice).
    Returns:
      ``(queried_images uint8 (budget - start, H, W, C), answers (budget - start, ...))``:
      float32 ``(budget - start, D)`` representations for a ``VictimAPI``.
    Raises:
      ValueError: ``budget`` not an integer in [1, N] (names the pool size), ``chunk``
        not an integer >= 1, or ``start`` outside [0, budget).
      BudgetExceededError: the account's remaining budget (``api.remaining(user)``,
        where the API has it) is smaller than ``budget - start``: raised before any
        query, so nothing is charged and no answer is lost; otherwise from the API.
    """
    from sslsteal_jax.api import BudgetExceededError

    n = len(images)
    for name, v in (("budget", budget), ("chunk", chunk), ("start", start)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"query {name}={v!r}; allowed: an integer")
    if not 1 <= int(budget) <= n:
        raise ValueError(f"query budget {budget} must be between 1 and the query pool size {n}")
    budget, start, chunk = int(budget), int(start), int(chunk)
    if chunk < 1:
        raise ValueError(f"query chunk={chunk}; allowed: images per API call, an integer >= 1")
    if not 0 <= start < budget:
        raise ValueError(f"query range start {start} must be in [0, budget={budget})")
    remaining = getattr(api, "remaining", None)
    left = remaining(user) if callable(remaining) else None
    if left is not None and left < budget - start:
        raise BudgetExceededError(f"{user!r} would send {budget - start} queries but has "
                                  f"{left} left; nothing was sent (register a larger budget "
                                  "or buy fewer)")
    sent, out = [], []
    for j, i in enumerate(tqdm(range(start, budget, chunk), desc="querying victim API",
                               disable=not progress or not mesh_lib.is_writer(),  # one bar on a pod
                               leave=False)):
        kw = dict(query_kwargs or {})
        if request_id is not None:
            kw["request_id"] = f"{request_id}.{j}"
        batch = np.asarray(images[i:min(i + chunk, budget)])
        sent.append(batch)
        out.append(api.query(user, batch, **kw))
    if isinstance(images, np.ndarray):
        return images[start:budget], np.concatenate(out, axis=0)
    return np.concatenate(sent, axis=0), np.concatenate(out, axis=0)


def augmented_views(images: np.ndarray, views: int, key: jax.Array,
                    aug: AugmentConfig | None = None, chunk: int = 1000) -> np.ndarray:
    """``views`` SimCLR-augmented views of every image, quantised to uint8 (the
    exact images the attacker sends to the API and later trains on).

    View ``j`` of image ``i`` is drawn with ``fold_in(fold_in(key, i), j)``, so
    the views do not depend on ``chunk`` or on how many images are asked for.

    Args:
      images: uint8 ``(N, H, W, C)``.
      views: k >= 1 views per image.
      key: PRNG key.
      aug: augmentation strengths (default: the SimCLR ``AugmentConfig()``).
    Returns:
      uint8 ``(N * k, H, W, C)``, image-major: rows ``i*k .. i*k+k-1`` are the
      views of image ``i``.
    Raises:
      ValueError: ``views < 1``.
    """
    if int(views) < 1:
        raise ValueError(f"views per image must be >= 1, got {views}")
    aug = aug or AugmentConfig()
    fn = _views_fn(int(views), aug)
    out = [np.asarray(fn(key, jnp.arange(i, min(i + chunk, len(images))),
                         jnp.asarray(images[i:i + chunk])))
           for i in range(0, len(images), chunk)]
    return np.concatenate(out, axis=0).reshape(-1, *images.shape[1:])


@functools.lru_cache(maxsize=8)
def _views_fn(views: int, aug: AugmentConfig):
    @jax.jit
    def fn(key, idx, x):
        x = x.astype(jnp.float32) / 255.0

        def one(i, im):
            k = jax.random.fold_in(key, i)
            return jnp.stack([augment_image(jax.random.fold_in(k, j), im, aug)
                              for j in range(views)])

        v = jax.vmap(one)(idx, x)
        return jnp.clip(jnp.round(v * 255.0), 0, 255).astype(jnp.uint8)

    return fn


def collect_view_answers(api, user: str, images: np.ndarray, budget: int, views: int,
                         key: jax.Array, aug: AugmentConfig | None = None, chunk: int = 1000,
                         progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Spend ``budget`` queries on ``views`` augmented views of each of the first
    ``budget // views`` pool images (each view sent is one charged query;
    Dziedzic et al. ICML 2022, Section 3 "augmented queries").

    Args:
      api, user, images, chunk, progress: as in ``collect_answers``.
      budget: queries to spend; must be a multiple of ``views`` and at most
        ``views * len(images)``.
      views: k >= 1 views per image.
      key: PRNG key of the views (``augmented_views``).
    Returns:
      ``(view_images uint8 (budget, H, W, C), answers float32 (budget, D))``,
      image-major (rows ``i*k .. i*k+k-1`` belong to pool image ``i``).
    Raises:
      ValueError: ``budget`` not a positive multiple of ``views`` or too large
        for the pool.
      BudgetExceededError: from the API.
    """
    views, budget = int(views), int(budget)
    if views < 1 or budget < views or budget % views:
        raise ValueError(f"query budget {budget} must be a positive multiple of views={views} "
                         f"(each augmented view is one charged query)")
    n_img = budget // views
    if n_img > len(images):
        raise ValueError(f"query budget {budget} with views={views} needs {n_img} pool images, "
                         f"the query pool holds {len(images)}")
    sent = augmented_views(images[:n_img], views, key, aug, chunk)
    return collect_answers(api, user, sent, budget, chunk, progress)


def owner_answers(api, images) -> np.ndarray:
    """The API's answers to every image of ``images`` for the account ``"owner"``:
    float32 ``(N, D)``, through the API's defenses when it has any. The account opens
    with the API's default budget (unlimited unless ``default_budget`` is set; the
    experiments' APIs leave it unset).

    ``images``: uint8 ``(N, H, W, C)``, an array (one ``api.query`` call) or a lazy view
    (``data.stream.StreamSource``: queried ``collect_answers``' chunk at a time, so
    only one chunk of images is in memory).
    """
    if isinstance(images, np.ndarray):
        return api.query("owner", images)
    return collect_answers(api, "owner", images, len(images), progress=False)[1]
