"""Evaluation statistics against their definitions on constructed cases."""
import math
import os

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


@pytest.mark.slow
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



def test_equal_modules_share_one_compiled_apply_with_their_own_variables():
    """make_apply keeps one compiled program per (module, output, mesh): a second, equal
    module object (another cell of the same architecture) reuses it, and each apply
    still computes with its own variables (checked against ``module.apply``). A module
    that cannot be hashed (a list field) is compiled on its own."""
    import flax.linen as nn
    import jax.numpy as jnp

    from sslsteal_jax.evaluation.features import make_apply

    class Net(nn.Module):
        width: int
        sizes: object = None

        @nn.compact
        def __call__(self, x, train=False):
            h = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
            return h, 2.0 * h

    imgs = np.random.default_rng(0).integers(0, 256, size=(16, 4, 4, 1), dtype=np.uint8)
    x = jnp.asarray(imgs, jnp.float32) / 255.0
    a, b = Net(3), Net(3)
    assert a is not b and a == b
    va, vb = (a.init(jax.random.key(i), x) for i in (0, 1))
    fa, fb, fc = make_apply(a, va, 1), make_apply(b, vb, 1), make_apply(Net(5), va, 1)
    assert fa.jitted is fb.jitted and fc.jitted is not fa.jitted
    assert make_apply(a, va, (0, 1)).jitted is not fa.jitted  # another output: another program
    for f, v in ((fa, va), (fb, vb)):
        np.testing.assert_allclose(extract_features(f, imgs), np.asarray(a.apply(v, x)[1]),
                                   rtol=1e-6)
    assert not np.allclose(extract_features(fa, imgs), extract_features(fb, imgs))
    u = Net(3, sizes=[1, 2])  # unhashable field: its own program, still correct
    fu = make_apply(u, va, 0)
    np.testing.assert_allclose(extract_features(fu, imgs), np.asarray(a.apply(va, x)[0]),
                               rtol=1e-6)

@pytest.mark.slow
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


def _png_size(path):
    """(width, height) from a PNG's IHDR chunk; asserts the PNG signature."""
    import struct
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


def test_plot_results_png(tmp_path, monkeypatch):
    """results.png: a valid PNG of sensible size written atomically; accuracy axis 0-100
    with a value on every bar (one decimal), a kNN bar per encoder, fidelity values,
    and the title as the figure's suptitle."""
    import matplotlib.figure
    from sslsteal_jax.evaluation.report import plot_results
    figs = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figs.append(self), real_savefig(self, *a, **k))[1])
    rows = [dict(name="victim", probe_full=86.42, probe_100=79.06, knn=84.31,
                 cosine_fidelity=1.0, l2_fidelity=0.0),
            dict(name="surrogate infonce", probe_full=83.94, probe_100=75.26, knn=80.12,
                 cosine_fidelity=0.912, l2_fidelity=0.3),
            dict(name="raw pixels", probe_full=84.1, probe_100=68.3, knn=85.5,
                 cosine_fidelity=None, l2_fidelity=None)]
    path = str(tmp_path / "results.png")
    title = "fashion_mnist: victim fashion_mnist_resnet10_w16_ft6, 5000 queries"
    plot_results(rows, path, title)
    w, h = _png_size(path)
    assert 1000 <= w <= 4000 and 400 <= h <= 1500, (w, h)
    assert 10_000 < os.path.getsize(path) < 2_000_000
    assert os.listdir(tmp_path) == ["results.png"]  # no temporary file left
    (fig,) = figs
    acc, fid = fig.axes[:2]
    assert acc.get_ylim() == (0.0, 100.0)
    assert [t.get_text() for t in acc.get_legend().get_texts()] == [
        "linear probe, full labels", "linear probe, 100 labels/class", "kNN"]
    labels = sorted(t.get_text() for t in acc.texts)
    assert labels == sorted(f"{r[k]:.1f}" for r in rows for k in ("probe_full", "probe_100", "knn"))
    assert sorted(t.get_text() for t in fid.texts) == ["0.91", "1.00"]
    assert fig._suptitle is not None and fig._suptitle.get_text() == title
    assert acc.get_title() == ""  # the title is not squeezed into the left panel


def test_plot_results_without_fidelity(tmp_path):
    from sslsteal_jax.evaluation.report import plot_results
    path = str(tmp_path / "r.png")
    plot_results([dict(name="raw pixels", probe_full=84.1, probe_100=68.3, knn=85.5,
                       cosine_fidelity=None, l2_fidelity=None)], path, "victim SimCLR")
    assert _png_size(path)[0] >= 1000


@pytest.mark.parametrize("name,magic", [("plot.png", b"\x89PNG"), ("plot.pdf", b"%PDF"),
                                        ("plot.svg", b"<?xml")])
def test_save_figure_writes_the_format_of_the_extension_and_closes(tmp_path, name, magic):
    """``save_figure`` writes what the path's extension names (a ``.pdf`` path once got a
    PNG), leaves no temporary file, and closes the figure even when the write fails."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sslsteal_jax.evaluation.report import save_figure
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, str(tmp_path / name))
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic
    assert os.listdir(tmp_path) == [name]
    assert not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    with pytest.raises(FileNotFoundError):
        save_figure(fig, str(tmp_path / "missing" / name))
    assert not plt.fignum_exists(fig.number)
