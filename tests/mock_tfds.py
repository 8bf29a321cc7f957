"""Tiny local stand-ins for the paper-scale tensorflow-datasets datasets.

``write_mock(name, data_dir)`` writes a few random images of ``cifar10``,
``svhn_cropped``, ``stl10`` or ``imagenet2012`` into ``data_dir`` exactly where
``tfds.builder(name, data_dir=data_dir)`` looks for the prepared dataset
(``<data_dir>/<name>/<version>/``, ArrayRecord files + ``dataset_info.json``):
same name, version, splits, feature names and dtypes, image shapes and image
encoding as the real catalogue builders, so ``data.registry.load_split`` reads
them through its unchanged online path (``tfds.builder`` -> ``as_data_source`` ->
tfds's own ``Image`` decoding), as in the flax examples' mock-data tests.

How: a subclass of the real catalogue builder (``tfds.builder_cls(name)``) keeps
its ``_info`` (so the feature spec *is* the real one) and replaces only the
example generator. No TensorFlow is needed: images are encoded here with PIL
(PNG for the 32x32 / 96x96 datasets, JPEG of varying sizes for imagenet2012, as
the real ones are stored) and handed to ``tfds.features.Image`` as bytes, which
it stores unchanged; reading decodes them with PIL (tfds's numpy path).
"""
from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from sslsteal_jax.data import builders

#: name -> {split: examples}; labels in [0, 10) (the real stl10 ``unlabelled`` split and
#: imagenet2012 ``test`` carry label -1, kept here).
SPLITS = {
    "cifar10": {"train": 64, "test": 48},
    "svhn_cropped": {"train": 48, "test": 16, "extra": 8},
    "stl10": {"train": 32, "test": 32, "unlabelled": 48},
    "imagenet2012": {"train": 64, "validation": 48, "test": 4},
}
#: Unlabelled splits (label -1, as tfds stores them).
UNLABELLED = {("stl10", "unlabelled"), ("imagenet2012", "test")}
#: imagenet2012's images vary in size: heights and widths drawn from this range (pixels).
IMAGENET_SIDES = (40, 96)


def _encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def _examples(name: str, split: str, count: int, seed: int):
    """``count`` examples of the real feature layout: a class-dependent colour plus noise,
    PNG- or JPEG-encoded like the real dataset; ``id`` / ``file_name`` text fields too."""
    rng = np.random.RandomState(seed)
    features = tfds.builder_cls(name)(data_dir="/nonexistent").info.features
    shape = features["image"].shape
    for i in range(count):
        label = -1 if (name, split) in UNLABELLED else i % 10
        if None in shape:
            h, w = rng.randint(*IMAGENET_SIDES, size=2)
        else:
            h, w = shape[:2]
        base = np.array([25 * (label % 10), 255 - 20 * (label % 10), 128], np.float32)
        img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        ex = {"image": _encode(img, "JPEG" if name == "imagenet2012" else "PNG"), "label": label}
        if "id" in features:
            ex["id"] = f"{split}_{i:05d}"
        if "file_name" in features:
            ex["file_name"] = f"n{label:08d}_{i}.JPEG"
        yield i, ex


def mock_builder_cls(name: str):
    """A builder class named ``name`` (the real one's name and version) whose splits hold
    :data:`SPLITS` ``[name]`` generated examples; not registered with tfds.

    Raises:
      KeyError: ``name`` is not one of :data:`SPLITS`.
    """
    real = tfds.builder_cls(name)
    counts = SPLITS[name]

    class Mock(real, skip_registration=True):
        MANUAL_DOWNLOAD_INSTRUCTIONS = None

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls) -> epath.Path:  # the real one needs importlib_resources
            return epath.Path(__file__)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: _examples(name, split, n, seed)
                    for seed, (split, n) in enumerate(counts.items())}

    Mock.name = name
    return Mock


def write_mock(name: str, data_dir: str) -> str:
    """Prepare the mock ``name`` under ``data_dir`` (ArrayRecord); returns the dataset
    folder (``<data_dir>/<name>/<version>``). A prepared folder is kept."""
    b = mock_builder_cls(name)(data_dir=data_dir, file_format="array_record")
    builders.prepare(b)
    return str(b.data_dir)
