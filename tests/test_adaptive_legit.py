"""Adaptive attacks, the legitimate-user model and the defense-matrix plumbing, on
constructed APIs whose answers are known exactly."""
import jax
import numpy as np
import pytest

from sslsteal_jax.attacks import adaptive
from sslsteal_jax.defenses import transforms
from sslsteal_jax.evaluation.legit_user import coverage_curve, legit_user_accuracy, task_subset
from sslsteal_jax.experiments import defense_matrix as dm

D = 6


def true_reps(images):
    """A fixed 'victim': the first D pixels of each image, as floats."""
    return images.reshape(len(images), -1)[:, :D].astype(np.float32)


class FakeAPI:
    """Answers ``true_reps + sigma * N(0,1)``, then a per-user affine transform
    (``transforms`` with the user's key) when ``affine``; counts queries per user."""

    def __init__(self, sigma=0.0, affine=False):
        self.sigma, self.affine, self.used, self.calls, self._secrets = sigma, affine, {}, 0, {}

    def query(self, user, images):
        self.calls += 1
        self.used[user] = self.used.get(user, 0) + len(images)
        noise = np.random.default_rng(self.calls).normal(size=(len(images), D))
        y = true_reps(images) + self.sigma * noise.astype(np.float32)
        if self.affine:
            s = self.secret(user)
            y = y @ np.asarray(s["A"]) + np.asarray(s["b"])
        return y

    def secret(self, user):
        if user not in self._secrets:
            self._secrets[user] = transforms.init_transform(
                "affine", jax.random.key(sum(map(ord, user))), D)
        return self._secrets[user]

    def queries_used(self, user):
        return self.used.get(user, 0)

    def defense_summary(self, user):
        return {"0:b4b.coverage": float(self.used.get(user, 0)), "0:b4b.sigma": 0.5}


IMAGES = np.random.default_rng(0).integers(0, 256, (400, 3, 3, 1), dtype=np.uint8)


def test_averaging_shrinks_noise_by_sqrt_n_and_pays_every_repeat():
    api = FakeAPI(sigma=2.0)
    one = adaptive.averaged_answers(api, "a", IMAGES, 1, chunk=150)
    avg = adaptive.averaged_answers(api, "b", IMAGES, 16, chunk=150)
    assert (one - true_reps(IMAGES)).std() == pytest.approx(2.0, rel=0.06)
    assert (avg - true_reps(IMAGES)).std() == pytest.approx(2.0 / 4.0, rel=0.06)
    assert api.queries_used("b") == 16 * len(IMAGES)
    with pytest.raises(ValueError, match="repeats=0"):
        adaptive.averaged_answers(api, "c", IMAGES, 0)


def test_fit_linear_map_recovers_affine_map():
    src = np.random.default_rng(1).normal(size=(50, 3))
    w = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    dst = src @ w + np.array([4.0, -2.0])
    w_hat, c_hat = adaptive.fit_linear_map(src, dst)
    np.testing.assert_allclose(w_hat, w, atol=1e-4)
    np.testing.assert_allclose(c_hat, [4.0, -2.0], atol=1e-4)
    with pytest.raises(ValueError, match="50 rows.*49"):
        adaptive.fit_linear_map(src, dst[:49])


@pytest.mark.slow
def test_sybil_merges_accounts_into_first_accounts_space():
    api = FakeAPI(affine=True)
    x, y, info = adaptive.sybil_answers(api, ["s0", "s1", "s2"], IMAGES[:100], n_shared=20, chunk=50)
    assert len(x) == 100 and sorted(map(bytes, x)) == sorted(map(bytes, IMAGES[:100]))
    s0 = api.secret("s0")
    want = true_reps(x) @ np.asarray(s0["A"]) + np.asarray(s0["b"])
    np.testing.assert_allclose(y, want, atol=2e-3 * np.abs(want).max())
    assert info["queries"] == 3 * 20 + 80 == sum(api.used.values())
    assert max(info["fit_relative_error"]) < 1e-3
    with pytest.raises(ValueError, match=">= 2 accounts"):
        adaptive.sybil_answers(api, ["only"], IMAGES, 10)


@pytest.mark.slow
def test_task_subset_and_legit_user_accuracy():
    y = np.array([3, 1, 3, 2, 1, 3])
    x = np.arange(6)[:, None, None, None].astype(np.uint8)
    xs, ys = task_subset(x, y, [3, 1], n=4)
    np.testing.assert_array_equal(xs[:, 0, 0, 0], [0, 1, 2, 4])
    np.testing.assert_array_equal(ys, [1, 0, 1, 0])  # sorted classes: 1 -> 0, 3 -> 1
    with pytest.raises(ValueError, match=r"classes \[7\]"):
        task_subset(x, y, [7])
    # Images whose first pixel encodes the class: clean answers separate perfectly,
    # answers drowned in noise do not.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 600)
    imgs = rng.integers(0, 20, (600, 3, 3, 1)).astype(np.uint8)
    imgs[:, 0, 0, 0] = labels * 200 + 20
    clean = legit_user_accuracy(FakeAPI(0.0), "u", imgs[:400], labels[:400], imgs[400:],
                                labels[400:], jax.random.key(0), epochs=300, chunk=128)
    assert clean["accuracy"] == 100.0 and clean["queries"] == 600
    noisy = legit_user_accuracy(FakeAPI(1e4), "u", imgs[:400], labels[:400], imgs[400:],
                                labels[400:], jax.random.key(0), epochs=300)
    assert noisy["accuracy"] < 70.0


def test_coverage_curve_reads_after_each_call():
    pts = coverage_curve(FakeAPI(), "u", IMAGES[:250], 100)
    assert [p["queries"] for p in pts] == [100, 200, 250]
    assert [p["coverage"] for p in pts] == [100.0, 200.0, 250.0]


def test_parse_attack_and_cells():
    assert dm.parse_attack("direct") == ("direct", {})
    assert dm.parse_attack("sybil:shared=7") == ("sybil", {"accounts": 2, "shared": 7})
    with pytest.raises(ValueError, match="unknown attack 'replay'.*direct.*averaging.*sybil"):
        dm.parse_attack("replay")
    with pytest.raises(ValueError, match="unknown parameter 'n'.*repeats"):
        dm.parse_attack("averaging:n=3")
    from sslsteal_jax.configs import defense_matrix as mod
    cfg = mod.get_config("families=gaussian")
    cells = list(dm._cells(cfg))
    assert cells[0][:4] == ("none/0/direct", "none", 0, "none")
    assert [c[3] for c in cells[1:]] == ["gaussian:scale=0.1"] * 2 + ["gaussian:scale=1.0"] * 2
    both = mod.get_config("families=gaussian+b4b")
    assert [f["name"] for f in both.families] == ["none", "gaussian", "b4b"]
    with pytest.raises(ValueError, match="unknown defense families.*'nope'"):
        mod.get_config("families=nope")


def test_matrix_refuses_cells_of_other_settings_before_loading_anything(tmp_path):
    import json
    from sslsteal_jax.configs import defense_matrix as mod
    cfg = mod.get_config("scale=tiny")
    other = dict(dm._fingerprint(cfg), budget=123)
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "_settings.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['budget'\]\)"):
        dm.run(cfg, str(tmp_path))
    with pytest.raises(ValueError, match="legit.test_size=500 must be in \\[1, budget=500\\)"):
        cfg.legit.test_size = 500
        dm.legit_data(cfg, None, None, None, None)
