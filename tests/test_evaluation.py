"""Evaluation statistics against their definitions on constructed cases."""
import math

import jax
import numpy as np
import pytest

from sslsteal_jax.evaluation import fidelity
from sslsteal_jax.evaluation.features import extract_features, raw_pixels
from sslsteal_jax.evaluation.probe import few_labels_subset, knn_accuracy, linear_probe


def test_cosine_fidelity_hand_computed():
    s = np.array([[1.0, 0.0], [1.0, 1.0]])
    v = np.array([[0.0, 2.0], [2.0, 2.0]])
    # cos = 0 for row 0, 1 for row 1 -> mean 0.5
    assert fidelity.cosine_fidelity(s, v) == pytest.approx(0.5)
    # normalised L2: row 0 -> sqrt(2), row 1 -> 0
    assert fidelity.l2_fidelity(s, v) == pytest.approx(math.sqrt(2) / 2)


def test_fidelity_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        fidelity.cosine_fidelity(np.ones((3, 2)), np.ones((3, 4)))


def test_linear_probe_separable_and_chance():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 5
    y = rng.integers(0, 4, size=800)
    x = centers[y] + rng.normal(size=(800, 16))
    acc = linear_probe(x[:600], y[:600], x[600:], y[600:], jax.random.key(0), epochs=30)
    assert acc == 100.0
    # labels independent of the features: accuracy near chance (25%)
    y_rand = rng.integers(0, 4, size=800)
    acc_rand = linear_probe(x[:600], y_rand[:600], x[600:], y_rand[600:], jax.random.key(0), epochs=30)
    assert acc_rand < 45.0


def test_linear_probe_rejects_nan():
    x = np.ones((10, 3), np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(x, np.zeros(10, int), x, np.zeros(10, int), jax.random.key(0))


def test_knn_constructed_case():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    ytr = np.array([0, 0, 1, 1])
    test = np.array([[1, 0.05], [0.05, 1]], np.float32)
    assert knn_accuracy(train, ytr, test, np.array([0, 1]), k=1) == 100.0
    assert knn_accuracy(train, ytr, test, np.array([1, 0]), k=1) == 0.0
    with pytest.raises(ValueError, match="k=5"):
        knn_accuracy(train, ytr, test, np.array([0, 1]), k=5)


def test_few_labels_subset_balanced_and_seeded():
    y = np.repeat(np.arange(5), 30)
    a = few_labels_subset(y, 7, jax.random.key(1))
    b = few_labels_subset(y, 7, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert np.bincount(y[a]).tolist() == [7] * 5
    with pytest.raises(ValueError, match="per_class=31"):
        few_labels_subset(y, 31, jax.random.key(1))


def test_extract_features_batches_match_single_call():
    imgs = np.random.default_rng(0).integers(0, 256, size=(25, 4, 4, 1), dtype=np.uint8)
    fn = jax.jit(lambda x: x.reshape(x.shape[0], -1).astype(np.float32) * 2.0)
    out = extract_features(fn, imgs, batch_size=10)
    np.testing.assert_allclose(out, imgs.reshape(25, -1) * 2.0)
    np.testing.assert_allclose(raw_pixels(imgs), imgs.reshape(25, -1) / 255.0, rtol=1e-6)


def test_selected_probe_picks_setting_on_validation():
    from sslsteal_jax.evaluation.probe import selected_linear_probe
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 8)) * 4
    y = rng.integers(0, 3, size=600)
    x = centers[y] + rng.normal(size=(600, 8))
    grid = ((1, 1e-7, 0.0), (20, 1e-2, 1e-4))  # the first barely moves from zero weights
    acc, chosen = selected_linear_probe(x[:500], y[:500], x[500:], y[500:], jax.random.key(0), grid)
    assert chosen["epochs"] == 20 and chosen["learning_rate"] == 1e-2
    assert acc >= 99.0
    with pytest.raises(ValueError, match="val_fraction=0.9"):
        selected_linear_probe(x, y, x, y, jax.random.key(0), grid, val_fraction=0.9)
