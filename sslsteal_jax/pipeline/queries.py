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

Large query sets (``data.stream``; the paper's 50k-250k ImageNet queries) use the
chunked store instead (``chunk=k``): ``path`` is a directory holding a manifest
(``manifest.json``: fingerprint and chunk size, written once, atomically) and one
commit per chunk of ``k`` entries (``chunk_<start>_<stop>.images.npy`` and
``.answers.npy``, then the marker ``chunk_<start>_<stop>.json`` with the queries
charged: each written to a temporary name, fsynced and renamed, marker last). A
chunk exists only once its marker does, so a crash (``kill -9``) loses at most the
chunk being bought, a restart buys from the first missing chunk, and every chunk is
bought with the same request id (``<fingerprint digest>:<start>-<stop>``) on every
attempt: an API with idempotent requests (the served API's ledger,
``api.remote.RemoteVictimAPI``) answers a chunk charged before the crash but never
committed without charging it again. The stored arrays are read back memory-mapped
(:class:`ChunkedArray`), a batch at a time, never as one array in memory. On a
multi-host run process 0 writes the chunks and every process reads them back, so the
directory must be on a filesystem all hosts share (the ``.npz`` file needs none: every
process holds its answers).

Source: the paper's threat model counts every image sent to the API as one
query (Dziedzic et al., ICML 2022, Section 3); caching keeps that count exact
across restarts.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
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

    images: np.ndarray  # or a ChunkedArray (chunked store)
    answers: np.ndarray  # or a ChunkedArray (chunked store)
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
                   buy: Callable[..., tuple[np.ndarray, np.ndarray, int]],
                   extend: bool = False, chunk: int | None = None) -> Answers:
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
      chunk: None (one ``.npz`` file, above) or k >= 1: the chunked store in the
        directory ``path`` (module docstring), bought ``k`` entries at a time with
        ``buy(start, stop, request_id)`` (``request_id``: a str, the same for the same
        chunk on every attempt; pass it to the API so a retried chunk is not charged
        twice). A chunked store is resumable and always prefix-extendable.
    Returns:
      :class:`Answers` with exactly ``count`` entries.
    Raises:
      ConfigError: the cache was bought under another fingerprint, holds another
        count (without ``extend``) or another chunk size: use a new workdir; ``chunk``
        not a positive int.
    """
    fp = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if chunk is not None:
        return _chunked_answers(path, fp, int(count), buy, chunk)
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


# ----- chunked store ------------------------------------------------------------------
_CHUNK_RE = re.compile(r"^chunk_(\d+)_(\d+)\.json$")
MANIFEST = "manifest.json"


class ChunkedArray:
    """Read-only, memory-mapped rows of a chunked answer cache, array-like.

    ``len``, ``shape``, ``dtype``, ``ndim`` and ``a[idx]`` (int, slice, int array:
    numpy semantics; reads only the rows asked for, from the chunks' ``.npy`` files
    opened with ``mmap_mode="r"``) so ``training.loop.run_training`` and
    ``evaluation.features.extract_features`` take it in place of an array;
    ``np.asarray(a)`` / ``a.astype(dtype)`` materialise every row.

    Args:
      files: the chunks' ``.npy`` paths in row order (each ``(n_i, ...)``, one dtype
        and trailing shape).
      count: rows exposed (a prefix of the chunks' rows).
    """

    def __init__(self, files: list[str], count: int):
        self._parts = [np.load(f, mmap_mode="r") for f in files]
        sizes = [len(p) for p in self._parts]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if count > self._starts[-1]:
            raise ValueError(f"{count} rows asked of chunks holding {self._starts[-1]}")
        first = self._parts[0]
        self.shape = (int(count), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def head(self, count: int) -> "ChunkedArray":
        """The first ``count`` rows as another memory-mapped view (nothing is read).

        Raises:
          ValueError: ``count`` outside ``[0, len(self)]``.
        """
        if not 0 <= int(count) <= len(self):
            raise ValueError(f"{count} rows asked of a view of {len(self)}")
        out = object.__new__(ChunkedArray)
        out._parts, out._starts = self._parts, self._starts
        out.shape = (int(count), *self.shape[1:])
        out.dtype, out.ndim = self.dtype, self.ndim
        return out

    def __getitem__(self, key) -> np.ndarray:
        n = len(self)
        scalar = np.ndim(key) == 0 and not isinstance(key, slice)
        idx = (np.arange(*key.indices(n)) if isinstance(key, slice)
               else np.asarray(key, np.int64).reshape(-1))
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self._starts, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            out[sel] = self._parts[p][idx[sel] - self._starts[p]]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        """Every row as one in-memory array of ``dtype``."""
        return self[:].astype(dtype)


def _atomic_write(path: str, write) -> None:
    """``write(file object)`` to a temporary file, fsync it, rename it to ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _committed(path: str) -> list[tuple[int, int, int]]:
    """``[(start, stop, charged)]`` of the committed chunks (markers present), sorted;
    only the contiguous run from row 0 counts (a later chunk after a gap is ignored)."""
    found = []
    for marker in glob.glob(os.path.join(path, "chunk_*.json")):
        m = _CHUNK_RE.match(os.path.basename(marker))
        if m:
            with open(marker) as f:
                found.append((int(m.group(1)), int(m.group(2)), int(json.load(f)["charged"])))
    out, end = [], 0
    for start, stop, charged in sorted(found):
        if start == end:
            out.append((start, stop, charged))
            end = stop
    return out


def _chunked_answers(path: str, fp: dict, count: int, buy, chunk) -> Answers:
    """:func:`cached_answers` with ``chunk`` set (module docstring)."""
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ConfigError(f"answer cache chunk={chunk!r} must be a positive number of queries")
    chunk = int(chunk)
    if count < 1:
        raise ConfigError(f"answer cache {path}: {count} answers asked; at least 1 is needed")
    manifest = os.path.join(path, MANIFEST)
    mesh_lib.sync(f"answer cache {path}")  # [multi-host] all looked before process 0 writes
    if os.path.exists(manifest):
        with open(manifest) as f:
            stored = json.load(f)
        sfp = stored["fingerprint"]
        diff = sorted(k for k in set(sfp) & set(fp) if sfp[k] != fp[k])
        if diff or int(stored["chunk"]) != chunk:
            what = (f"was bought with other settings ({', '.join(f'{k}={sfp[k]!r}' for k in diff)}"
                    f" vs {', '.join(f'{k}={fp[k]!r}' for k in diff)})" if diff
                    else f"was bought in chunks of {stored['chunk']}, this run asks for {chunk}")
            raise ConfigError(f"answer cache {path} {what}; use a new --workdir (its answers "
                              "are kept, never charged twice)")
    elif mesh_lib.is_writer():
        os.makedirs(path, exist_ok=True)
        body = json.dumps({"fingerprint": fp, "chunk": chunk}, sort_keys=True).encode()
        _atomic_write(manifest, lambda f: f.write(body))
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    done = _committed(path) if os.path.exists(path) else []
    stored_rows = done[-1][1] if done else 0
    charged_now = 0
    start = stored_rows
    if start < count:
        print(f"buying answers {start}..{count} in chunks of {chunk} into {path}"
              + (f" ({start} already stored)" if start else ""))
    while start < count:
        stop = min(start - start % chunk + chunk, count)  # chunk boundaries: multiples of k
        images, answers, charged = buy(start, stop, f"{digest}:{start}-{stop}")
        if len(images) != stop - start or len(answers) != stop - start:
            raise ValueError(f"buy({start}, {stop}) returned {len(images)} images and "
                             f"{len(answers)} answers")
        name = os.path.join(path, f"chunk_{start:09d}_{stop:09d}")
        if mesh_lib.is_writer():  # [multi-host] one writer (every process bought the chunk)
            _atomic_write(name + ".images.npy", lambda f: np.save(f, np.asarray(images)))
            _atomic_write(name + ".answers.npy", lambda f: np.save(f, np.asarray(answers)))
            body = json.dumps({"charged": int(charged)}).encode()
            _atomic_write(name + ".json", lambda f: f.write(body))  # the commit
        done.append((start, stop, int(charged)))
        charged_now += int(charged)
        start = stop
    mesh_lib.sync(f"answer cache {path} written")  # [multi-host] readers wait for the writer
    names = [os.path.join(path, f"chunk_{a:09d}_{b:09d}") for a, b, _ in done]
    if stored_rows >= count:
        print(f"reusing {count} cached API answers from {path} (not charged again)")
    return Answers(ChunkedArray([n + ".images.npy" for n in names], count),
                   ChunkedArray([n + ".answers.npy" for n in names], count),
                   charged_now, sum(c for _, _, c in done), stored_rows >= count, path)


def prefix(rows, count: int):
    """The first ``count`` rows of ``rows``: a :class:`ChunkedArray` view
    (:meth:`ChunkedArray.head`, still memory-mapped) or ``rows[:count]`` for an array."""
    return rows.head(count) if isinstance(rows, ChunkedArray) else rows[:count]


def streamed_answers(api, user: str, pool, count: int, path: str, fingerprint: dict,
                     chunk: int) -> Answers:
    """The first ``count`` images of ``pool`` and the API's answers, bought by account
    ``user`` into the chunked store ``path`` (:func:`cached_answers` with ``chunk``):
    the account is registered once per process with a budget of what is left to buy
    (``count`` - the rows already stored), each chunk is queried with its request id.

    Args:
      api: a ``VictimAPI`` (``register``, ``query``, ``queries_used``).
      pool: uint8 ``(N, H, W, C)`` query pool (array or ``data.stream.StreamSource``),
        N >= count.
      count, path, fingerprint, chunk: as for :func:`cached_answers`.
    Returns:
      :class:`Answers` of memory-mapped :class:`ChunkedArray` rows: uint8 images
      ``(count, H, W, C)``, float32 answers ``(count, D)``.
    Raises:
      everything :func:`cached_answers` and ``attacks.query.collect_answers`` raise.
    """
    from sslsteal_jax.attacks.query import collect_answers

    used = {}

    def buy_chunk(start, stop, request_id):
        if not used:  # the account's budget: what is left to buy in this process
            api.register(user, count - start)
            used["n"] = 0
        x, y = collect_answers(api, user, pool, stop, start=start, request_id=request_id)
        now = api.queries_used(user)
        charged, used["n"] = now - used["n"], now
        return x, y, charged

    return cached_answers(path, fingerprint, count, buy_chunk, chunk=int(chunk))
