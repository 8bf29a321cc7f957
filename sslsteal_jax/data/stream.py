"""Streaming input: read query pools and probe sets lazily, a batch at a time.

The in-memory path (:func:`sslsteal_jax.data.registry.load_split`) reads a whole
split into one uint8 array. That cannot hold the paper's ImageNet setting
(Dziedzic et al., ICML 2022, Section 4: 50k-250k queries from the 1.28M-image train
split, probes on ImageNet), and on a pod every host would load everything. This
module reads the same tfds ArrayRecord files (``builder.as_data_source()``, random
access, no TensorFlow) one batch at a time:

* :class:`StreamSource` is a lazy, array-like view of a split (or a contiguous range
  of it): ``len``, ``shape``, ``dtype`` and ``source[idx]`` (an int, a slice or an
  index array) decode, normalise (``registry.normalize``) and resize
  (``registry.resize_images``, for ``name@HxWxC``) only the rows asked for. Code that
  slices its inputs (``attacks.query.collect_answers``,
  ``evaluation.features.extract_features``, ``training.loop.run_training``) takes it
  in place of an array.
* :func:`training_batches` and :func:`sequential_batches` are ``grain`` pipelines
  (``grain.MapDataset`` over batch numbers, ``.to_iter_dataset`` with a bounded
  prefetch): each batch is read, decoded and resized on grain's worker threads
  while the caller computes on the previous one. The training order is the
  in-memory path's, ``data.order.epoch_batches`` (a numpy permutation seeded by
  ``(seed, epoch)``, also ``training.loop``'s), and each host reads only its rows of
  every global batch (``training.mesh.process_rows``), so a resumed run reads exactly what an
  uninterrupted one does.

Streamed and in-memory batches are bit-identical for the same seed
(``tests/test_stream.py``): both decode the same records, the per-batch
normalisation is the whole-split one row by row, and the bilinear resize treats
every image on its own.
"""
from __future__ import annotations

import numpy as np

from sslsteal_jax.data import registry
from sslsteal_jax.errors import ConfigError

#: Batches grain reads ahead of the consumer (per pipeline): host memory holds at most
#: this many decoded batches plus the one in use.
DEFAULT_PREFETCH = 2
#: Worker threads decoding / resizing batches (per pipeline).
DEFAULT_THREADS = 2


def _resolve(name: str, split: str, data_dir: str | None, download: bool):
    """``(raw record source, features, image_key, label_key, resize shape or None,
    decode size (H, W) or None)``: the decode size is the resize shape's ``(H, W)`` for
    datasets whose images vary in size (imagenet2012: centre-cropped and resized as they
    are decoded, ``builders.decode_records(resize_to=)``, as ``registry.load_split``
    reads them), None otherwise.

    Raises:
      ConfigError: a bad name or split, or a varying-size dataset without an
        ``@HxWxC`` suffix (names the suffix to add).
    """
    from sslsteal_jax.data import builders

    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}. "
                          f"{registry.INSTALL_HINT}")
    base, shape = registry.parse_resize(name)
    builder, image_key, label_key, decode_size = registry.split_builder(base, split, data_dir,
                                                                        download, shape)
    return (builders.raw_source(builder, split), builder.info.features, image_key, label_key,
            shape, decode_size)


class StreamSource:
    """A lazy, array-like view of rows ``[start, stop)`` of one dataset split.

    Args:
      name: a dataset name as for ``registry.load_split`` (offline or tfds name, with
        an optional ``@HxWxC`` resize suffix).
      split: a split of that dataset (tfds slice syntax allowed).
      data_dir: as for ``load_split``.
      start, stop: the rows of the split this view covers (``stop=None``: to the end).
      download: online datasets: prepare one that is not prepared yet.
      match_shape: optional ``(H, W, C)`` every image is resized to after reading
        (``registry.resize_images``, as ``data.splits`` does for an out-of-distribution
        pool); None keeps the split's shape.
      threads, prefetch: grain worker threads and batches read ahead when the view is
        read in order (:meth:`batches`, used by ``extract_features``).

    ``source[idx]`` returns uint8 ``(B, H, W, C)`` images equal to
    ``load_split(name, split)[0][start:stop][idx]`` (resized like the in-memory path
    when asked); :meth:`get` also returns int32 ``(B,)`` labels. Thread-safe: reads
    go to the ArrayRecord reader, which allows concurrent random access.

    Datasets whose images vary in size (imagenet2012) need an ``@HxWxC`` suffix: each
    image is centre-cropped and resized to ``(H, W)`` as it is decoded, exactly as
    ``load_split`` reads them.

    Raises:
      ConfigError: unknown dataset or split, a bad resize suffix, a varying-size dataset
        without one, or rows outside the split.
      ValueError: records that are not uint8 images with integer labels.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, *, start: int = 0,
                 stop: int | None = None, download: bool = True, match_shape=None,
                 threads: int = DEFAULT_THREADS, prefetch: int = DEFAULT_PREFETCH, _parts=None):
        self.name, self.split = name, split
        self.threads, self.prefetch = int(threads), int(prefetch)
        if _parts is None:
            _parts = _resolve(name, split, data_dir, download)
        self._parts = _parts
        (self._records, self._features, self._image_key, self._label_key, shape,
         self._decode_size) = _parts
        # the name's @HxWxC resize, then match_shape's (as data.splits resizes a loaded pool)
        self._match = tuple(match_shape) if match_shape is not None else None
        self._resizes = [r for r in (shape, self._match) if r is not None]
        n = len(self._records)
        stop = n if stop is None else int(stop)
        if not 0 <= int(start) <= stop <= n:
            raise ConfigError(f"rows [{start}, {stop}) of {name!r} split {split!r} must lie in "
                              f"[0, {n}]")
        self.start, self.stop = int(start), stop
        first, _ = self._read(np.array([0]) if stop > start else None)
        self.shape = (stop - start, *first.shape[1:])
        self.dtype = np.dtype(np.uint8)

    @classmethod
    def from_builder(cls, builder, split: str, image_key: str = "image",
                     label_key: str = "label") -> "StreamSource":
        """A view of split ``split`` of a prepared tfds ``builder`` (ArrayRecord), for
        datasets outside the registry (e.g. ``benchmarks/stream_memory.py``'s pool).

        Raises:
          ConfigError: ``split`` is not one of the builder's splits.
        """
        from sslsteal_jax.data import builders

        registry.check_split(builder.name, split, builder.info.splits.keys())
        parts = (builders.raw_source(builder, split), builder.info.features, image_key,
                 label_key, None, None)
        return cls(builder.name, split, _parts=parts)

    def subset(self, start: int, stop: int | None = None, match_shape=None) -> "StreamSource":
        """Rows ``[start, stop)`` of this view (sharing the open reader), optionally
        resized to ``match_shape``; raises ConfigError for rows outside it."""
        stop = len(self) if stop is None else int(stop)
        if not 0 <= int(start) <= stop <= len(self):
            raise ConfigError(f"rows [{start}, {stop}) must lie in [0, {len(self)}] of {self!r}")
        return StreamSource(self.name, self.split, start=self.start + int(start),
                            stop=self.start + stop, _parts=self._parts,
                            match_shape=self._match if match_shape is None else match_shape,
                            threads=self.threads, prefetch=self.prefetch)

    def batches(self, batch_size: int):
        """The view in order, ``batch_size`` rows at a time, read ahead on grain worker
        threads (:func:`sequential_batches` with the view's threads and prefetch)."""
        return sequential_batches(self, batch_size, threads=self.threads,
                                  prefetch=self.prefetch)

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"StreamSource({self.name!r}, {self.split!r}, rows {self.start}:{self.stop})"

    @property
    def ndim(self) -> int:
        """4: images are ``(N, H, W, C)``."""
        return 4

    def _read(self, idx):
        """Decode rows ``idx`` (int64 array, relative to ``start``; None: the split's
        first row, to learn the shape) -> normalised, resized ``(images, labels)``."""
        from sslsteal_jax.data import builders

        rows = [0] if idx is None else (np.asarray(idx, np.int64) + self.start).tolist()
        if not rows:
            return np.zeros((0, *self.shape[1:]), np.uint8), np.zeros((0,), np.int32)
        images, labels = builders.decode_records(self._records.__getitems__(rows),
                                                 self._features, self._image_key,
                                                 self._label_key, self._decode_size)
        images, labels = registry.normalize(self.name, images, labels)
        for shape in self._resizes:
            images = registry.resize_images(images, shape)
        return images, labels

    def _indices(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows of {self!r}")
        return np.where(idx < 0, idx + n, idx)

    def get(self, key) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (B, H, W, C), labels int32 (B,))`` of rows ``key`` (an int, a
        slice or an int / bool index array, numpy semantics). Raises IndexError."""
        images, labels = self._read(self._indices(key))
        if np.ndim(key) == 0 and not isinstance(key, slice):
            return images[0], labels[0]
        return images, labels

    def __getitem__(self, key) -> np.ndarray:
        return self.get(key)[0]

    def labels(self) -> np.ndarray:
        """All labels of the view, int32 ``(N,)`` (reads every record once, 4,096 at a
        time, and keeps only the labels; images are not resized)."""
        from sslsteal_jax.data import builders

        out = [np.zeros((0,), np.int32)]
        for i in range(self.start, self.stop, 4096):
            rows = list(range(i, min(i + 4096, self.stop)))
            images, labels = builders.decode_records(self._records.__getitems__(rows),
                                                     self._features, self._image_key,
                                                     self._label_key, self._decode_size)
            out.append(registry.normalize(self.name, images, labels)[1])
        return np.concatenate(out)

    def __array__(self, dtype=None, copy=None):
        """The whole view as one array (what streaming avoids; for small views only)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _pipeline(source, batches: int, indices_of, threads: int, prefetch: int):
    """grain ``IterDataset`` of ``(images, labels)``: batch ``b`` is ``source.get(
    indices_of(b))``, read on ``threads`` worker threads at most ``prefetch`` ahead."""
    import grain

    if int(threads) < 0 or int(prefetch) < 1:
        raise ConfigError(f"stream threads={threads} must be >= 0 and prefetch={prefetch} >= 1")
    ds = grain.MapDataset.range(int(batches)).map(lambda b: source.get(indices_of(b)))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=int(threads),
                                                prefetch_buffer_size=int(prefetch)))


def training_batches(source, batch_size: int, seed: int, start_step: int, stop_step: int,
                     rows: slice, threads: int = DEFAULT_THREADS,
                     prefetch: int = DEFAULT_PREFETCH):
    """This host's rows of the training batches of steps ``[start_step, stop_step)``.

    The order is the in-memory path's: step ``s`` reads
    ``data.order.epoch_batches(len(source), batch_size, seed, s)[rows]`` (a fresh
    numpy permutation per ``(seed, epoch)``, the incomplete last batch dropped), so
    starting at a resumed step reads exactly what an uninterrupted run reads there.

    Args:
      source: a :class:`StreamSource` (or any object with ``len`` and ``get(indices)``).
      batch_size: global examples per step.
      seed: the data-order seed.
      start_step, stop_step: optimizer steps to read.
      rows: the rows of each global batch this host reads: ``slice(0, batch_size)``
        on one host, ``training.mesh.process_rows(batch_size, mesh)`` on a pod (each
        host reads only its disjoint block, as ``training.loop.process_batch_indices``).
      threads, prefetch: grain worker threads and batches read ahead.
    Returns:
      an iterator of ``(images uint8 (b, H, W, C), labels int32 (b,))``, one per step,
      ``b = rows`` length.
    Raises:
      ConfigError: ``batch_size`` outside [1, len(source)], bad step range, threads or
        prefetch.
    """
    from sslsteal_jax.data.order import epoch_batches

    n = len(source)
    if not 1 <= int(batch_size) <= n:
        raise ConfigError(f"batch_size={batch_size} must be in [1, number of examples={n}]")
    if not 0 <= int(start_step) <= int(stop_step):
        raise ConfigError(f"steps [{start_step}, {stop_step}) must satisfy 0 <= start <= stop")
    start = int(start_step)
    return _pipeline(source, int(stop_step) - start,
                     lambda b: epoch_batches(n, int(batch_size), int(seed), start + b)[rows],
                     threads, prefetch)


def sequential_batches(source, batch_size: int, start: int = 0, stop: int | None = None,
                       threads: int = DEFAULT_THREADS, prefetch: int = DEFAULT_PREFETCH):
    """Rows ``[start, stop)`` of ``source`` in order, ``batch_size`` at a time (the last
    batch may be smaller): the query and feature-extraction order.

    Returns an iterator of ``(images uint8 (b, H, W, C), labels int32 (b,))``.
    Raises:
      ConfigError: ``batch_size`` < 1 or rows outside ``[0, len(source)]``.
    """
    stop = len(source) if stop is None else int(stop)
    if int(batch_size) < 1 or not 0 <= int(start) <= stop <= len(source):
        raise ConfigError(f"batch_size={batch_size} must be >= 1 and rows [{start}, {stop}) "
                          f"lie in [0, {len(source)}]")
    bs, start = int(batch_size), int(start)
    return _pipeline(source, -(-(stop - start) // bs),
                     lambda b: np.arange(start + b * bs, min(start + (b + 1) * bs, stop)),
                     threads, prefetch)
