"""Fixed, disjoint experiment splits (docs/science.md section 4, "linear probe" protocol).

Default for Fashion-MNIST: the victim trains on the 60,000-image train split;
the attacker's query pool is the first 5,000 test images; the probe test set
is the last 5,000 test images (disjoint from the pool); the probe train set is
the labelled train split (the downstream user's labelled data). An
out-of-distribution query pool comes from another dataset's train split.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sslsteal_jax.data.registry import load_split, resize_images
from sslsteal_jax.errors import ConfigError


@dataclasses.dataclass
class ExperimentData:
    """All arrays one experiment needs.

    victim_train: uint8 (N_v, H, W, C); query_pool: uint8 (N_q, H, W, C);
    probe_train_x/_y, probe_test_x/_y: uint8 images and int32 labels; with
    ``experiment_data(stream=True)`` the image parts are lazy
    ``data.stream.StreamSource`` views of the same rows;
    names: where each part came from (dataset/split/slice).
    """

    victim_train: np.ndarray
    query_pool: np.ndarray
    probe_train_x: np.ndarray
    probe_train_y: np.ndarray
    probe_test_x: np.ndarray
    probe_test_y: np.ndarray
    names: dict


def _match_shape(images: np.ndarray, shape) -> np.ndarray:
    """Resize (bilinear) / convert channels of an OOD pool to the victim's image shape
    (``registry.resize_images``)."""
    return resize_images(images, shape)


def experiment_data(dataset: str = "fashion_mnist", query_dataset: str | None = None,
                    probe_test_size: int = 5000, with_victim_train: bool = True,
                    victim_train_size: int | None = None,
                    probe_train_size: int | None = None, test_split: str = "test",
                    stream: bool = False, stream_threads: int = 2,
                    stream_prefetch: int = 2) -> ExperimentData:
    """Build the fixed splits.

    Args:
      dataset: victim's dataset (registry name).
      query_dataset: None or the same name = in-distribution pool (test split
        minus the probe test hold-out); another name = that dataset's 'train'
        split, resized to the victim's image shape (out-of-distribution queries);
        ``"name:split"`` = that split explicitly (e.g. ``"fashion_mnist:train"``:
        the victim's own training images, for budgets above the test pool).
      probe_test_size: size of the probe test hold-out (last images of 'test').
      victim_train_size / probe_train_size: None = the whole train split, or
        the first N train images (small configs and tests; when both bound what is
        needed and the query pool is not ``dataset:train``, only ``train[:N]`` is
        read, so a 100,000-image probe set of ImageNet does not load the 1.28M-image
        split).
      test_split: the labelled held-out split the probe test set and the
        in-distribution pool come from ("test"; "validation" for imagenet2012,
        whose "test" split has no labels).
      stream: False: every image part is a uint8 array in memory. True: each is a lazy
        ``data.stream.StreamSource`` view of the same rows (read a batch at a time,
        bit-identical to the arrays; labels stay int32 arrays), so a pool or probe
        set larger than memory never loads whole (the ``stream`` config block).
      stream_threads, stream_prefetch: the views' grain worker threads and batches
        read ahead (``StreamSource``).
    Raises:
      ConfigError (a ValueError): unknown dataset or split, a size that is not an
        integer, a ``probe_train_size`` / ``victim_train_size`` outside (0, train size],
        or ``probe_test_size`` not smaller than the test split.
    """
    sizes = (("victim_train_size", victim_train_size), ("probe_train_size", probe_train_size))
    for name, v in (*sizes, ("probe_test_size", probe_test_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ConfigError(f"{name}={v!r}; allowed: an integer number of images"
                              + (" or None" if name != "probe_test_size" else ""))
    q_name, _, q_split = (query_dataset or "").partition(":")
    pool_is_train = q_name == dataset and q_split == "train"
    if stream:
        from sslsteal_jax.data.stream import StreamSource

        opts = dict(threads=stream_threads, prefetch=stream_prefetch)
        train = StreamSource(dataset, "train", **opts)
        test = StreamSource(dataset, test_split, **opts)
        train_x, test_x = train, test
    else:
        bounded = (probe_train_size is not None and not pool_is_train
                   and (victim_train_size is not None or not with_victim_train))
        needed = max(v for _, v in sizes if v is not None) if bounded else None
        train_x, train_y = load_split(dataset, "train" if needed is None or needed < 1
                                      else f"train[:{needed}]")
        test_x, test_y = load_split(dataset, test_split)
    for name, size in sizes:
        if size is not None and not 0 < size <= len(train_x):
            raise ConfigError(f"{name}={size} must be in (0, {len(train_x)}]")
    if not 0 < probe_test_size < len(test_x):
        raise ConfigError(f"probe_test_size={probe_test_size} must be in (0, {len(test_x)})")
    cut = len(test_x) - probe_test_size
    names = {"victim_train": f"{dataset}/train", "probe_train": f"{dataset}/train",
             "probe_test": f"{dataset}/{test_split}[{cut}:]"}
    if q_name in ("", dataset) and q_split in ("", test_split):
        pool = test_x.subset(0, cut) if stream else test_x[:cut]
        names["query_pool"] = f"{dataset}/{test_split}[:{cut}]"
    elif pool_is_train:
        pool = train_x
        names["query_pool"] = f"{dataset}/train"
    elif stream:
        pool = StreamSource(q_name, q_split or "train", match_shape=train_x.shape[1:], **opts)
        names["query_pool"] = f"{q_name}/{q_split or 'train'}"
    else:
        pool = _match_shape(load_split(q_name, q_split or "train")[0], train_x.shape[1:])
        names["query_pool"] = f"{q_name}/{q_split or 'train'}"
    if victim_train_size:
        names["victim_train"] += f"[:{victim_train_size}]"
    if probe_train_size:
        names["probe_train"] += f"[:{probe_train_size}]"
    if stream:
        vt = train.subset(0, victim_train_size if with_victim_train else 0)
        pt, te = train.subset(0, probe_train_size), test.subset(cut)
        return ExperimentData(vt, pool, pt, pt.labels(), te, te.labels(), names)
    vt = train_x[:victim_train_size] if with_victim_train else train_x[:0]
    pt = slice(0, probe_train_size)
    return ExperimentData(vt, pool, train_x[pt], train_y[pt], test_x[cut:], test_y[cut:], names)
