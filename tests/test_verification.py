"""Owner-side verification statistics (watermark, dataset inference) on constructed
encoders and data with known answers."""
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.pipeline.workdir import REPO_ROOT
from sslsteal_jax.experiments.verify import (Suspect, ancestor_path, di_private_size,
                                             parse_budgets, parse_named_checkpoints,
                                             watermark_null_pvalues,
                                             watermark_test)
from sslsteal_jax.models.watermark import rotate_images, rotation_task, watermark_input
from sslsteal_jax.verification import (binomial_pvalue, dataset_inference, fit_gmm, fit_linear_map,
                                       fisher_pvalue, l2_normalize, null_test, verify_watermark)


class CornerEncoder(nn.Module):
    """Parameter-free 'encoder' whose representation is the four corner pixels
    (top-left, bottom-left, bottom-right, top-right), optionally duplicated with a
    fixed permutation and scale (``wide``): it encodes the rotation of a marked
    image exactly."""

    wide: bool = False

    def __call__(self, x, train=False):
        c = jnp.stack([x[:, 0, 0, 0], x[:, -1, 0, 0], x[:, -1, -1, 0], x[:, 0, -1, 0]], axis=1)
        h = jnp.concatenate([3.0 * c[:, ::-1], c], axis=1) if self.wide else c
        return h, h


class ConstantEncoder(nn.Module):
    def __call__(self, x, train=False):
        h = jnp.ones((x.shape[0], 4)) + 0.0 * x[:, 0, 0, :1]
        return h, h


def marked_images(n=6, size=5):
    """uint8 (n, size, size, 1) zeros with a bright top-left pixel."""
    x = np.zeros((n, size, size, 1), np.uint8)
    x[:, 0, 0, 0] = 255
    return x


def corner_logits(r):
    """Owner's 'watermark MLP' for the corner encoder: the scale-free corner vector."""
    return watermark_input(r)


def test_rotate_images_matches_numpy_rot90():
    img = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    for k in range(4):
        out = np.asarray(rotate_images(img, np.array([k])))
        np.testing.assert_array_equal(out[0], np.rot90(img[0], k, axes=(0, 1)))
    # hand case: [[1, 2], [3, 4]] rotated 90 degrees counter-clockwise is [[2, 4], [1, 3]]
    x = np.array([[1, 2], [3, 4]], np.int32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(rotate_images(x, [1]))[0, ..., 0], [[2, 4], [1, 3]])
    with pytest.raises(ValueError, match="square"):
        rotate_images(np.zeros((1, 2, 3, 1)), [0])


@pytest.mark.slow
def test_rotation_task_labels_and_balance():
    x, y = rotation_task(marked_images(3), 4)
    assert x.shape == (12, 5, 5, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, np.repeat(np.arange(4), 3))
    # the marker pixel moves counter-clockwise: TL -> BL -> BR -> TR
    assert x[3, -1, 0, 0] == 255 and x[6, -1, -1, 0] == 255 and x[9, 0, -1, 0] == 255
    _, y2 = rotation_task(marked_images(3), 2)
    np.testing.assert_array_equal(y2, np.repeat([0, 0, 1, 1], 3))
    with pytest.raises(ValueError, match=r"num_classes=3 is not allowed; allowed: \(2, 4\)"):
        rotation_task(marked_images(1), 3)


def test_binomial_pvalue_hand_case_and_scipy():
    # P(X >= 7), X ~ Bin(10, 1/2) = (C(10,7)+C(10,8)+C(10,9)+C(10,10)) / 2^10 = 176 / 1024
    assert binomial_pvalue(7, 10, 0.5) == pytest.approx(176 / 1024, rel=1e-12)
    assert binomial_pvalue(40, 100, 0.25) == pytest.approx(
        stats.binomtest(40, 100, 0.25, alternative="greater").pvalue, rel=1e-12)
    assert binomial_pvalue(0, 10, 0.25) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="chance must lie in"):
        binomial_pvalue(1, 10, 1.0)
    with pytest.raises(ValueError, match="0 <= correct <= total"):
        binomial_pvalue(11, 10, 0.5)


def test_watermark_exact_encoder_is_flagged_constant_is_not():
    x, y = rotation_task(marked_images(6), 4)  # 24 trials
    exact = Suspect(Encoder("exact", CornerEncoder(), {}, 0, 1, "surrogate"))
    r = watermark_test(corner_logits, 4, exact, x, y, 4, 0.01)
    assert r["accuracy"] == 1.0 and r["correct"] == 24 and not r["linear_map"]
    assert r["p_value"] == pytest.approx(0.25 ** 24, rel=1e-9) and r["above_chance"]
    const = Suspect(Encoder("constant", ConstantEncoder(), {}, 0, 0, "independent"))
    r = watermark_test(corner_logits, 4, const, x, y, 4, 0.01)
    # constant logits -> always class 0 -> exactly one rotation in four is right
    assert r["accuracy"] == 0.25 and not r["above_chance"]
    assert r["p_value"] == pytest.approx(stats.binomtest(6, 24, 0.25, alternative="greater").pvalue)
    assert r["p_value"] > 0.5


@pytest.mark.slow
def test_watermark_linear_map_for_other_sizes():
    x, y = rotation_task(marked_images(4), 4)
    wide = Suspect(Encoder("wide", CornerEncoder(wide=True), {}, 0, 0, "independent"))
    with pytest.raises(ValueError, match="8-d representations, the victim 4-d"):
        watermark_test(corner_logits, 4, wide, x, y, 4, 0.01)
    victim_apply = jax.jit(lambda im: CornerEncoder().apply({}, im.astype(jnp.float32) / 255.0)[0])
    r = watermark_test(corner_logits, 4, wide, x, y, 4, 0.01, align_x=x, victim_apply=victim_apply)
    assert r["linear_map"] and r["accuracy"] == 1.0


@pytest.mark.slow
def test_fit_linear_map_recovers_affine_map():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    src = jax.random.normal(k1, (50, 3))
    w = jax.random.normal(k2, (3, 2))
    b = jax.random.normal(k3, (2,))
    w_hat, b_hat = fit_linear_map(src, src @ w + b, ridge=0.0)
    np.testing.assert_allclose(w_hat, w, atol=1e-4)
    np.testing.assert_allclose(b_hat, b, atol=1e-4)
    with pytest.raises(ValueError, match="same N"):
        fit_linear_map(src, src[:10])


def test_verify_watermark_input_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        verify_watermark(corner_logits, np.ones((2, 4)), np.array([0, 4]))
    with pytest.raises(ValueError, match="alpha"):
        verify_watermark(corner_logits, np.ones((2, 4)), np.array([0, 1]), alpha=0.0)


def _clusters(key, n, centers, scale):
    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (n,), 0, len(centers))
    return np.asarray(centers[idx] + scale * jax.random.normal(k2, (n, centers.shape[1])))


@pytest.mark.slow
def test_dataset_inference_direction():
    kc, kf, kp, kq, kg = jax.random.split(jax.random.key(1), 5)
    centers = jax.random.normal(kc, (3, 8))
    fit = _clusters(kf, 600, centers, 0.1)
    private = _clusters(kp, 200, centers, 0.1)        # drawn near the mixture
    public = _clusters(kq, 200, centers, 0.3)         # same centres, wider: lower likelihood
    r = dataset_inference(fit, private, public, kg, n_components=3)
    assert r["ll_gap"] > 0 and r["p_value"] < 1e-6 and r["stolen"]
    assert (r["n_fit"], r["n_private"], r["n_public"]) == (600, 200, 200)
    # the t-test is the one-sided Welch test on the mixture's log-likelihoods
    gmm = fit_gmm(l2_normalize(fit), kg, 3)
    ref = stats.ttest_ind(gmm.score_samples(l2_normalize(private)),
                          gmm.score_samples(l2_normalize(public)), equal_var=False,
                          alternative="greater")
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    # identical distributions: no evidence; swapped roles: p near 1
    same = _clusters(jax.random.key(7), 200, centers, 0.1)
    r_same = dataset_inference(fit, private, same, kg, n_components=3)
    assert r_same["p_value"] > 0.05 and not r_same["stolen"]
    assert dataset_inference(fit, public, private, kg, n_components=3)["p_value"] > 0.999


@pytest.mark.slow
def test_gmm_deterministic_given_key_and_errors():
    x = l2_normalize(_clusters(jax.random.key(2), 300, jax.random.normal(jax.random.key(3), (4, 6)), 0.2))
    a, b = fit_gmm(x, jax.random.key(5), 4), fit_gmm(x, jax.random.key(5), 4)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.score_samples(x), b.score_samples(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown covariance_type 'bogus'"):
        fit_gmm(x, jax.random.key(0), 2, "bogus")
    with pytest.raises(ValueError, match=r"n_components=301 must lie in \[1, N=300\]"):
        fit_gmm(x, jax.random.key(0), 301)
    with pytest.raises(ValueError, match="NaN or inf"):
        l2_normalize(np.array([[np.nan, 1.0]]))


def test_parse_helpers():
    assert parse_budgets("500, 2000") == [500, 2000] and parse_budgets("") == []
    with pytest.raises(ValueError, match="positive"):
        parse_budgets("0")
    assert parse_named_checkpoints("a=x/ckpt, b=y") == [("a", "x/ckpt"), ("b", "y")]
    with pytest.raises(ValueError, match="not name=path"):
        parse_named_checkpoints("oops")


def test_fisher_pvalue_hand_case_and_scipy():
    # table [[3, 0], [0, 3]]: P(X >= 3) for the hypergeometric X ~ HG(6, 3, 3) = 1 / C(6, 3)
    assert fisher_pvalue(3, 3, 0, 3) == pytest.approx(1 / 20, rel=1e-12)
    ref = stats.fisher_exact([[1100, 2900], [1040, 2960]], alternative="greater")[1]
    assert fisher_pvalue(1100, 4000, 1040, 4000) == pytest.approx(ref, rel=1e-12)
    # the suspect no better than the null: no evidence
    assert fisher_pvalue(1000, 4000, 1000, 4000) > 0.5
    assert fisher_pvalue(900, 4000, 1000, 4000) > 0.99
    with pytest.raises(ValueError, match="null: need total >= 1"):
        fisher_pvalue(1, 10, 5, 0)
    with pytest.raises(ValueError, match="suspect: need total >= 1 and 0 <= correct <= total"):
        fisher_pvalue(11, 10, 5, 10)


def test_null_test_max_is_conservative_and_pooled_sums():
    nulls = [(1000, 4000), (1040, 4000), (1001, 4000)]  # 25.0 %, 26.0 %, 25.0 %
    # the suspect at 27.5 %: clear against the pooled null, weaker against the strongest one
    mx = null_test(1100, 4000, nulls, "max")
    pooled = null_test(1100, 4000, nulls, "pooled")
    assert (mx["null_correct"], mx["null_total"], mx["n_null"]) == (1040, 4000, 3)
    assert (pooled["null_correct"], pooled["null_total"]) == (3041, 12000)
    assert mx["p_value"] == pytest.approx(fisher_pvalue(1100, 4000, 1040, 4000), rel=1e-12)
    assert pooled["p_value"] == pytest.approx(fisher_pvalue(1100, 4000, 3041, 12000), rel=1e-12)
    assert pooled["p_value"] < 0.01 < mx["p_value"]
    assert mx["null_accuracy"] == pytest.approx(0.26)
    # the "above chance" binomial test flags this suspect although the null encoders are higher still
    assert binomial_pvalue(1040, 4000, 0.25) < 0.1
    with pytest.raises(ValueError, match=r"unknown null method 'mean'; allowed: \['max', 'pooled'\]"):
        null_test(1, 2, nulls, "mean")
    with pytest.raises(ValueError, match="null_counts is empty"):
        null_test(1, 2, [])
    with pytest.raises(ValueError, match="null counts must satisfy"):
        null_test(1, 2, [(3, 2)])


def test_watermark_null_pvalues_leave_one_out():
    counts = {"victim": (3000, 4000), "sur": (1300, 4000), "ind1": (1000, 4000),
              "ind2": (1040, 4000), "anc": (1400, 4000)}
    groups = {"victim": None, "sur": None, "ind1": "independent", "ind2": "independent",
              "anc": "ancestor"}
    out = watermark_null_pvalues(counts, groups, "max")
    assert out["sur"]["independent"]["null_correct"] == 1040
    assert out["sur"]["independent"]["p_value"] < 1e-6       # stolen-like vs independents
    assert out["sur"]["ancestor"]["p_value"] > 0.9           # but not above the ancestor
    assert out["victim"]["ancestor"]["p_value"] < 1e-100
    # a reference is tested against the others only; alone in its group -> None
    assert out["ind2"]["independent"]["null_correct"] == 1000
    assert out["ind1"]["independent"]["null_correct"] == 1040
    assert out["anc"]["ancestor"] is None


def test_di_private_size_and_ancestor_path():
    meta = {"config": {"victim_train_size": 2048, "init_from": None}}
    assert di_private_size("auto", meta, 60000) == 2048
    assert di_private_size(None, {"config": {}}, 60000) == 60000
    # warm-started (e.g. the watermarked victim): the ancestor's data are unknown -> all
    assert di_private_size("auto", {"config": {"victim_train_size": 10240,
                                               "init_from": "/x/ckpt"}}, 60000) == 60000
    assert di_private_size("all", meta, 60000) == 60000
    assert di_private_size("300", meta, 60000) == 300
    with pytest.raises(ValueError, match=r"di.private_size=0 must be in \(0, 60000\]"):
        di_private_size(0, meta, 60000)
    with pytest.raises(ValueError, match="'auto', 'all' or a positive integer"):
        di_private_size("half", meta, 60000)
    assert ancestor_path("auto", meta) is None and ancestor_path("", meta) is None
    shipped = os.path.join(REPO_ROOT, "victims/fashion_mnist_resnet10_w16/checkpoints")
    moved = {"config": {"init_from": "/elsewhere/repo/victims/fashion_mnist_resnet10_w16/checkpoints"}}
    assert ancestor_path("auto", moved) == shipped
    assert ancestor_path("auto", {"config": {"init_from": shipped}}) == shipped
    with pytest.raises(FileNotFoundError, match="pass ancestor=<checkpoint path>"):
        ancestor_path("auto", {"config": {"init_from": "/nowhere/ckpt_zz"}})
    assert ancestor_path("/y/ckpt", meta) == "/y/ckpt"



def test_verify_and_victim_config_errors():
    from sslsteal_jax.configs import verify as verify_config
    from sslsteal_jax.configs import victim_simclr as victim_config
    c = verify_config.get_config("seeds=2,null_method=pooled,di_private=2048,ancestor=")
    assert (c.independent.seeds, c.watermark.null_method, c.di.private_size, c.ancestor) == (
        2, "pooled", "2048", "")
    assert c.di.n_fit is None and c.di.n_private is None
    with pytest.raises(ValueError, match="null_method='mean'"):
        verify_config.get_config("null_method=mean")
    with pytest.raises(ValueError, match="seeds='0' must be >= 1"):
        verify_config.get_config("seeds=0")
    assert victim_config.get_config("train_size=2048").victim_train_size == 2048
    assert victim_config.get_config("").victim_train_size is None
    with pytest.raises(ValueError, match="train_size=100 must be >= batch_size=256"):
        victim_config.get_config("train_size=100")


def test_verify_nulls_and_suspects_are_checked_before_any_work():
    """``nulls`` / ``suspects`` items must be name=path with distinct names: one line
    naming the field, before anything runs."""
    from sslsteal_jax.configs import verify as verify_config
    from sslsteal_jax.errors import ConfigError
    c = verify_config.get_config("nulls=simclr seed 1=runs/s1/checkpoints+r2=x")
    assert c.nulls == "simclr seed 1=runs/s1/checkpoints,r2=x"
    assert parse_named_checkpoints(c.nulls) == [("simclr seed 1", "runs/s1/checkpoints"),
                                               ("r2", "x")]
    verify_config.validate(c)
    with pytest.raises(ConfigError, match=r"^nulls: checkpoint 'runs/s1' is not name=path"):
        verify_config.validate(verify_config.get_config("nulls=runs/s1"))
    with pytest.raises(ConfigError, match=r"^suspects: name 'a' is also used in suspects"):
        verify_config.validate(verify_config.get_config("suspects=a=x+a=y"))
    # one name per row across both fields and verify's own rows (results are keyed by name)
    with pytest.raises(ConfigError, match=r"^nulls: name 'a' is also used in suspects"):
        verify_config.validate(verify_config.get_config("suspects=a=x,nulls=a=y"))
    for taken in ("victim", "ancestor (never watermarked)", "surrogate infonce 500 queries",
                  "independent (random init, seed 1001)"):
        taken = taken.replace(",", "")  # (a comma would split the item)
        c = verify_config.get_config("")
        c.nulls = f"{taken}=x"
        with pytest.raises(ConfigError, match=f"name '{re.escape(taken)}' is taken"):
            verify_config.validate(c)
    with pytest.raises(ConfigError, match=r"^nulls: item a='' needs a name and a path"):
        verify_config.validate(verify_config.get_config("nulls=a="))
