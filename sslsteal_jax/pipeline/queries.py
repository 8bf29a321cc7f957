"""Buy API answers once: one checked, atomic cache file per query set.

Every experiment that trains surrogates buys its answers through
:func:`cached_answers`: the first run queries the API and writes the images
sent, the answers and the queries charged to an ``.npz`` file atomically
(temporary file + rename); a resumed or repeated run in the same work
directory loads them and is not charged again. The file records a fingerprint
of what was bought (query pool, query set, account, ...); a file bought under
other settings raises instead of being reused (on a multi-host run every process
buys and holds the answers, process 0 writes the file). With ``extend=True`` (budget
scans: every budget is a prefix of the pool) a cache holding fewer answers is
topped up by buying only the missing ones.

Source: the paper's threat model counts every image sent to the API as one
query (Dziedzic et al., ICML 2022, Section 3); caching keeps that count exact
across restarts.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.training import mesh as mesh_lib


@dataclasses.dataclass
class Answers:
    """A bought query set.

    images: uint8 ``(N, H, W, C)``, what was sent; answers: the API's answers,
    float32 ``(N, D)`` (or int ``(N,)`` labels / float ``(N, K)`` probabilities for
    a classifier API); queries_charged: queries the API counted when the answers
    were bought (0 when every answer came from the cache this run); total_charged:
    queries charged for the whole file over all runs; from_cache: True when no
    query was sent this run; path: the cache file.
    """

    images: np.ndarray
    answers: np.ndarray
    queries_charged: int
    total_charged: int
    from_cache: bool
    path: str


def _stored_fingerprint(z) -> dict:
    if "fingerprint" in z:
        return json.loads(str(z["fingerprint"]))
    # files written before fingerprints were recorded: what they stored
    return {k: str(z[k]) for k in ("pool", "query_set") if k in z}


def cached_answers(path: str, fingerprint: dict, count: int,
                   buy: Callable[[int, int], tuple[np.ndarray, np.ndarray, int]],
                   extend: bool = False) -> Answers:
    """The ``count`` answers of a query set, from ``path`` or bought with ``buy``.

    Args:
      path: the cache file (``.npz``), written atomically.
      fingerprint: JSON-able dict of what the set is (e.g. ``{"pool": ..., "query_set":
        ..., "account": ...}``); must equal the stored one to reuse the file.
      count: number of answers wanted (entries of the set; images x views for
        view sets).
      buy: ``buy(start, stop) -> (images, answers, charged)``: queries entries
        ``[start, stop)`` of the set from the API and returns what was sent, the
        answers and the queries the API charged for them.
      extend: the set is a prefix-closed sequence (entry i never depends on
        ``count``): a cache with more entries is sliced, one with fewer is topped up
        by ``buy(stored, count)``. Without it the stored count must equal ``count``.
    Returns:
      :class:`Answers` with exactly ``count`` entries.
    Raises:
      ConfigError: the cache file was bought under another fingerprint, or holds
        another count (without ``extend``): use a new workdir.
    """
    fp = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    cached = os.path.exists(path)
    mesh_lib.sync(f"answer cache {path}")  # [multi-host] all looked before process 0 writes it
    if cached:
        with np.load(path) as z:
            images, answers = z["images"], z["answers"]
            total = int(z["queries_charged"]) if "queries_charged" in z else len(answers)
            stored = _stored_fingerprint(z)
        diff = sorted(k for k in set(stored) & set(fp) if stored[k] != fp[k])
        if diff or (not extend and len(answers) != count):
            what = (f"was bought with other settings ({', '.join(f'{k}={stored[k]!r}' for k in diff)}"
                    f" vs {', '.join(f'{k}={fp[k]!r}' for k in diff)})" if diff
                    else f"holds {len(answers)} answers, this run asks for {count}")
            raise ConfigError(f"answer cache {path} {what}; use a new --workdir (its answers "
                              "are kept, never charged twice)")
        if len(answers) >= count:
            print(f"reusing {count} cached API answers from {path} (not charged again)")
            return Answers(images[:count], answers[:count], 0, total, True, path)
        start = len(answers)
    else:
        images = answers = None
        start, total = 0, 0
    new_images, new_answers, charged = buy(start, count)
    if images is not None:
        new_images = np.concatenate([images, new_images])
        new_answers = np.concatenate([answers, new_answers])
    total += int(charged)
    if mesh_lib.is_writer():  # [multi-host] one writer (every process holds the answers)
        tmp = path + ".tmp.npz"
        np.savez(tmp, images=new_images, answers=new_answers, queries_charged=total,
                 fingerprint=json.dumps(fp, sort_keys=True),
                 **{k: str(v) for k, v in fp.items() if k in ("pool", "query_set")})
        os.replace(tmp, path)
    return Answers(new_images, new_answers, int(charged), total, False, path)
