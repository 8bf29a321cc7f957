"""Tests for sslsteal_jax/losses.py against hand-computed reference values.

Every reference is computed independently with plain Python loops and
``math`` (no call into the vectorised formulas under test).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax import losses as losses_mod
from sslsteal_jax.losses import (STEALING_LOSSES, infonce_loss, mse_loss, nt_xent,
                                 soft_nearest_neighbor, softnn_loss, stealing_loss,
                                 wasserstein_loss)


# ----------------------------------------------------------------------------
# Plain-python references
# ----------------------------------------------------------------------------

def _norm(row):
    n = math.sqrt(sum(x * x for x in row))
    return [x / n for x in row]


def _ref_nt_xent(a, b, tau):
    """Loop reference: 2B x 2B cosine matrix, cross-entropy per row vs partner."""
    a = [list(map(float, r)) for r in a]
    b = [list(map(float, r)) for r in b]
    n = len(a)
    u = [_norm(r) for r in a + b]
    m = len(u)
    cos = [[sum(u[i][k] * u[j][k] for k in range(len(u[i]))) for j in range(m)] for i in range(m)]
    total = 0.0
    for i in range(m):
        partner = i + n if i < n else i - n
        den = sum(math.exp(cos[i][k] / tau) for k in range(m) if k != i)
        total += -math.log(math.exp(cos[i][partner] / tau) / den)
    return total / m


def _ref_snn(x, labels, T):
    x = [list(map(float, r)) for r in x]
    n = len(x)
    total = 0.0
    for i in range(n):
        num = den = 0.0
        for j in range(n):
            if j == i:
                continue
            d2 = sum((x[i][k] - x[j][k]) ** 2 for k in range(len(x[i])))
            e = math.exp(-d2 / T)
            den += e
            if labels[j] == labels[i]:
                num += e
        total += -math.log(num / den)
    return total / n


def _ref_w1_row(p, q):
    p = [max(float(t), 0.0) for t in p]
    q = [max(float(t), 0.0) for t in q]
    sp, sq = sum(p), sum(q)
    p = [t / sp for t in p]
    q = [t / sq for t in q]
    cp = cq = 0.0
    w = 0.0
    for k in range(len(p)):
        cp += p[k]
        cq += q[k]
        w += abs(cp - cq)
    return w


# ----------------------------------------------------------------------------
# nt_xent / infonce
# ----------------------------------------------------------------------------

def test_nt_xent_hand_computed_b2_d2_explicit():
    # a = [[1,0],[0,1]], b = [[1,1],[1,-1]] -> normalised u rows:
    # u0=(1,0) u1=(0,1) u2=(1,1)/r2 u3=(1,-1)/r2 ; cosine matrix
    r = 1 / math.sqrt(2)
    cos = [[1, 0, r, r],
           [0, 1, r, -r],
           [r, r, 1, 0],
           [r, -r, 0, 1]]
    tau = 0.5
    partners = [2, 3, 0, 1]
    rows = []
    for i in range(4):
        den = sum(math.exp(cos[i][k] / tau) for k in range(4) if k != i)
        rows.append(-math.log(math.exp(cos[i][partners[i]] / tau) / den))
    # row 0: pos r/tau; others 0, r  -> -log(e^{2r} / (1 + 2 e^{2r}))
    assert rows[0] == pytest.approx(-math.log(math.exp(2 * r) / (1 + 2 * math.exp(2 * r))))
    # row 1: pos -r; others 0, r -> -log(e^{-2r} / (1 + e^{2r} + e^{-2r}))
    assert rows[1] == pytest.approx(
        -math.log(math.exp(-2 * r) / (1 + math.exp(2 * r) + math.exp(-2 * r))))
    expected = sum(rows) / 4
    a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    b = jnp.array([[1.0, 1.0], [1.0, -1.0]])
    got = nt_xent(a, b, tau)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    np.testing.assert_allclose(expected, _ref_nt_xent(a.tolist(), b.tolist(), tau), rtol=1e-12)


@pytest.mark.parametrize("tau", [0.07, 0.3, 1.0])
def test_nt_xent_matches_loop_reference_random(tau):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=(3, 5)).astype(np.float32)
    got = float(nt_xent(jnp.asarray(a), jnp.asarray(b), tau))
    np.testing.assert_allclose(got, _ref_nt_xent(a, b, tau), rtol=2e-5, atol=1e-5)


def test_nt_xent_invariant_to_positive_row_rescaling():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 6)).astype(np.float32)
    b = rng.normal(size=(4, 6)).astype(np.float32)
    ca = rng.uniform(0.1, 10.0, size=(4, 1)).astype(np.float32)
    cb = rng.uniform(0.1, 10.0, size=(4, 1)).astype(np.float32)
    l0 = float(nt_xent(jnp.asarray(a), jnp.asarray(b), 0.2))
    l1 = float(nt_xent(jnp.asarray(a * ca), jnp.asarray(b * cb), 0.2))
    np.testing.assert_allclose(l0, l1, rtol=1e-5)


def test_nt_xent_symmetric_in_arguments():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    np.testing.assert_allclose(float(nt_xent(a, b, 0.5)), float(nt_xent(b, a, 0.5)), rtol=1e-6)


def test_infonce_closed_form_at_optimum_and_beats_random():
    B, D, tau = 3, 4, 0.5
    s = jnp.eye(B, D)  # rows orthonormal
    got = float(infonce_loss(s, s, tau))
    # each row: positive cos 1, the 2B-2 negatives have cos 0
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * B - 2)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        s_rand = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
        assert float(infonce_loss(s_rand, s, tau)) > got


def test_infonce_default_temperature_is_007():
    rng = np.random.default_rng(4)
    s = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    np.testing.assert_allclose(float(infonce_loss(s, v)), _ref_nt_xent(s.tolist(), v.tolist(), 0.07),
                               rtol=2e-5)
    np.testing.assert_allclose(float(infonce_loss(s, v)), float(stealing_loss("infonce", s, v)),
                               rtol=1e-6)


def test_temperature_effect_aligned_pairs():
    # s == v with orthogonal rows: a sharper temperature gives a lower loss.
    s = jnp.eye(3, 4)
    vals = [float(infonce_loss(s, s, t)) for t in (1.0, 0.5, 0.1, 0.05)]
    assert all(x > y for x, y in zip(vals, vals[1:])), vals
    # and a different temperature changes the value on random data
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    assert abs(float(infonce_loss(a, b, 0.1)) - float(infonce_loss(a, b, 1.0))) > 1e-3
    # stealing_loss forwards the temperature
    np.testing.assert_allclose(float(stealing_loss("infonce", a, b, temperature=0.3)),
                               _ref_nt_xent(a.tolist(), b.tolist(), 0.3), rtol=2e-5)


@pytest.mark.slow
def test_nt_xent_gradient_finite():
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    ga, gb = jax.grad(nt_xent, argnums=(0, 1))(a, b, 0.1)
    assert np.all(np.isfinite(np.asarray(ga))) and np.all(np.isfinite(np.asarray(gb)))
    assert float(jnp.abs(ga).sum()) > 0 and float(jnp.abs(gb).sum()) > 0


# ----------------------------------------------------------------------------
# mse
# ----------------------------------------------------------------------------

def test_mse_hand_computed():
    s = [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]
    v = [[0.0, 2.0, 1.0], [1.0, 1.0, 0.5]]
    total = 0.0
    for i in range(2):
        for k in range(3):
            total += (s[i][k] - v[i][k]) ** 2
    expected = total / 6  # (1 + 0 + 4 + 1 + 4 + 0) / 6 = 10/6
    assert expected == pytest.approx(10 / 6)
    got = mse_loss(jnp.array(s), jnp.array(v))
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    np.testing.assert_allclose(float(stealing_loss("mse", jnp.array(s), jnp.array(v))), expected,
                               rtol=1e-6)


def test_mse_gradient_moves_s_toward_v():
    rng = np.random.default_rng(7)
    s = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    g = jax.grad(mse_loss)(s, v)
    np.testing.assert_allclose(np.asarray(g), np.asarray(2 * (s - v) / s.size), rtol=1e-5, atol=1e-7)
    # a gradient-descent step with lr = N/4 lands exactly halfway between s and v
    s2 = s - (s.size / 4) * g
    np.testing.assert_allclose(np.asarray(s2), np.asarray((s + v) / 2), rtol=1e-5, atol=1e-6)
    assert float(mse_loss(s2, v)) < float(mse_loss(s, v))
    # the negative gradient points from s toward v in every coordinate
    assert np.all(np.sign(np.asarray(-g)) == np.sign(np.asarray(v - s)))


# ----------------------------------------------------------------------------
# soft nearest neighbour
# ----------------------------------------------------------------------------

def test_soft_nearest_neighbor_hand_computed_1d():
    # points on a line: x = 0, 1, 3, 5 with labels 0, 0, 1, 1; T = 1
    # d2: (0,1)=1, (0,3)=9, (1,3)=4
    e = math.exp
    x = [[0.0], [1.0], [3.0], [5.0]]
    labels = [0, 0, 1, 1]
    # with x3=5: d2 (0,5)=25, (1,5)=16, (3,5)=4
    row0 = -math.log(e(-1) / (e(-1) + e(-9) + e(-25)))
    row1 = -math.log(e(-1) / (e(-1) + e(-4) + e(-16)))
    row2 = -math.log(e(-4) / (e(-9) + e(-4) + e(-4)))
    row3 = -math.log(e(-4) / (e(-25) + e(-16) + e(-4)))
    expected = (row0 + row1 + row2 + row3) / 4
    np.testing.assert_allclose(expected, _ref_snn(x, labels, 1.0), rtol=1e-12)
    got = soft_nearest_neighbor(jnp.array(x), jnp.array(labels), 1.0)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("T", [0.5, 2.0, 100.0])
def test_softnn_loss_matches_loop_reference(T):
    rng = np.random.default_rng(8)
    s = rng.normal(size=(3, 4)).astype(np.float32)
    v = rng.normal(size=(3, 4)).astype(np.float32)
    u = np.concatenate([s, v]).tolist()
    labels = [0, 1, 2, 0, 1, 2]
    expected = _ref_snn(u, labels, T)
    got = float(softnn_loss(jnp.asarray(s), jnp.asarray(v), T))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_softnn_default_temperature_is_100():
    rng = np.random.default_rng(9)
    s = rng.normal(size=(2, 3)).astype(np.float32) * 5
    v = rng.normal(size=(2, 3)).astype(np.float32) * 5
    expected = _ref_snn(np.concatenate([s, v]).tolist(), [0, 1, 0, 1], 100.0)
    np.testing.assert_allclose(float(softnn_loss(jnp.asarray(s), jnp.asarray(v))), expected,
                               rtol=1e-4)
    np.testing.assert_allclose(float(stealing_loss("softnn", jnp.asarray(s), jnp.asarray(v))),
                               expected, rtol=1e-4)
    np.testing.assert_allclose(
        float(stealing_loss("softnn", jnp.asarray(s), jnp.asarray(v), temperature=3.0)),
        _ref_snn(np.concatenate([s, v]).tolist(), [0, 1, 0, 1], 3.0), rtol=1e-4)


@pytest.mark.slow
def test_softnn_lower_when_s_equals_v():
    rng = np.random.default_rng(10)
    v = jnp.asarray(rng.normal(size=(4, 3)) * 3, jnp.float32)
    s = jnp.asarray(rng.normal(size=(4, 3)) * 3, jnp.float32)
    assert float(softnn_loss(v, v, 1.0)) < float(softnn_loss(s, v, 1.0))


# ----------------------------------------------------------------------------
# wasserstein
# ----------------------------------------------------------------------------

def test_wasserstein_known_1d_histograms():
    s = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 2.0]])
    v = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 4.0, 0.0]])
    # row 0: mass moves 2 bins -> 2.0 ; row 1: identical -> 0 ;
    # row 2: [.5,0,.5] vs [0,1,0]: CDFs [.5,.5,1] vs [0,1,1] -> .5 + .5 = 1.0
    per_row = [2.0, 0.0, 1.0]
    for i in range(3):
        assert _ref_w1_row(s[i].tolist(), v[i].tolist()) == pytest.approx(per_row[i])
    got = wasserstein_loss(s, v)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), sum(per_row) / 3, atol=1e-5)
    np.testing.assert_allclose(float(stealing_loss("wasserstein", s, v)), 1.0, atol=1e-5)


def test_wasserstein_scale_invariant_and_clips_negatives():
    rng = np.random.default_rng(11)
    s = rng.uniform(0, 1, size=(3, 6)).astype(np.float32)
    v = rng.uniform(0, 1, size=(3, 6)).astype(np.float32)
    expected = sum(_ref_w1_row(s[i], v[i]) for i in range(3)) / 3
    np.testing.assert_allclose(float(wasserstein_loss(jnp.asarray(s), jnp.asarray(v))), expected,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(wasserstein_loss(jnp.asarray(3 * s), jnp.asarray(v))), expected,
                               rtol=1e-4, atol=1e-6)
    # negative entries are clipped to 0
    s_neg = s.copy()
    s_neg[:, 0] = -5.0
    s_zero = s.copy()
    s_zero[:, 0] = 0.0
    np.testing.assert_allclose(float(wasserstein_loss(jnp.asarray(s_neg), jnp.asarray(v))),
                               float(wasserstein_loss(jnp.asarray(s_zero), jnp.asarray(v))),
                               rtol=1e-6)


# ----------------------------------------------------------------------------
# stop-gradient and dispatch
# ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mse", "infonce", "softnn", "wasserstein"])
def test_stealing_losses_no_gradient_wrt_v(name):
    rng = np.random.default_rng(12)
    s = jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 4)), jnp.float32)
    v = jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 4)), jnp.float32)
    gv = jax.grad(lambda vv: stealing_loss(name, s, vv, temperature=0.5 if name != "mse" else None))(v)
    np.testing.assert_array_equal(np.asarray(gv), 0.0)
    gs = jax.grad(lambda ss: stealing_loss(name, ss, v, temperature=0.5 if name != "mse" else None))(s)
    assert np.all(np.isfinite(np.asarray(gs)))
    assert float(jnp.abs(gs).sum()) > 0


@pytest.mark.parametrize("name", ["mse", "infonce", "softnn", "wasserstein"])
def test_stealing_losses_scalar_float32_and_jittable(name):
    rng = np.random.default_rng(13)
    s = jnp.asarray(rng.uniform(0, 1, size=(2, 3)), jnp.float32)
    v = jnp.asarray(rng.uniform(0, 1, size=(2, 3)), jnp.float32)
    out = jax.jit(lambda a, b: stealing_loss(name, a, b))(s, v)
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(float(out), float(stealing_loss(name, s, v)), rtol=1e-5, atol=1e-6)


_CORE = ("mse", "infonce", "softnn", "wasserstein")


def test_stealing_loss_names():
    assert set(_CORE) <= set(STEALING_LOSSES)


def test_unknown_stealing_loss_raises_with_allowed_names():
    s = jnp.ones((2, 3))
    with pytest.raises(ValueError) as exc:
        stealing_loss("cosine_typo", s, s)
    msg = str(exc.value)
    assert "cosine_typo" in msg
    for name in STEALING_LOSSES:
        assert name in msg


# ----------------------------------------------------------------------------
# The loss registry (losses.LOSSES)
# ----------------------------------------------------------------------------

# The per-loss settings before the registry existed (attacks/direct.py LOSS_DEFAULTS and
# the loss_overrides copied into configs/quickstart.py and configs/defense_matrix.py),
# pinned here so the registry keeps every old number.
_OLD_DEFAULTS = {
    "mse": (64, 1e-3, None), "wasserstein": (64, 1e-3, None), "infonce": (256, 3e-4, 0.07),
    "softnn": (256, 1e-3, 100.0), "cosine": (64, 1e-3, None), "barlow": (256, 1e-3, None),
    "symmetrized": (256, 1e-3, None), "supcon": (256, 3e-4, 0.07), "softce": (64, 1e-3, 1.0),
    "xent": (64, 1e-3, None),
}
_OLD_OVERRIDES = {"infonce": {"learning_rate": 1e-3, "temperature": 0.1},
                  "softnn": {"temperature": 10.0}}

# One dedicated, hand-computed test per registered loss, as "file::function" from the
# repository root (adding a loss = function + LOSSES entry + test + an entry here; see
# docs/extending.md). test_every_registered_loss_has_its_own_test checks this map.
_PER_LOSS_TEST = {
    "mse": "tests/test_losses.py::test_mse_hand_computed",
    "infonce": "tests/test_losses.py::test_infonce_closed_form_at_optimum_and_beats_random",
    "softnn": "tests/test_losses.py::test_softnn_loss_matches_loop_reference",
    "wasserstein": "tests/test_losses.py::test_wasserstein_known_1d_histograms",
    "cosine": "tests/test_losses_extra.py::test_cosine_loss_hand_computed",
    "barlow": "tests/test_losses_extra.py::test_barlow_loss_hand_computed",
    "symmetrized": "tests/test_losses_extra.py::test_symmetrized_hand_computed",
    "supcon": "tests/test_losses_extra.py::test_supcon_stealing_hand_computed",
    "softce": "tests/test_losses_extra.py::test_soft_cross_entropy_hand_computed",
    "xent": "tests/test_losses_extra.py::test_probability_cross_entropy_and_softce_default",
}


def _registry_kwargs(spec, s, v):
    """The keyword arguments ``stealing_loss`` passes to ``spec.fn`` for a batch (s, v)."""
    kw = {}
    if spec.temperature is not None:
        kw["temperature"] = spec.temperature
    if "labels" in spec.needs:
        kw["labels"] = jnp.array([0, 1, 0, 1])
    if "pair" in spec.needs:
        kw["pair"] = (s[::-1], v[::-1])
    return kw


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(losses_mod.LOSSES))
def test_registry_fn_runs_on_tiny_batch(name):
    spec = losses_mod.LOSSES[name]
    rng = np.random.default_rng(5)
    s = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 3)), jnp.float32)
    v = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 3)), jnp.float32)
    if "class_targets" in spec.needs:
        v = v / jnp.sum(v, axis=1, keepdims=True)  # class distributions
    kw = _registry_kwargs(spec, s, v)
    out = spec.fn(s, v, **kw)
    assert out.shape == () and out.dtype == jnp.float32 and np.isfinite(float(out))
    # the dispatcher passes exactly these arguments
    got = stealing_loss(name, s, v, labels=kw.get("labels"), pair=kw.get("pair"))
    assert float(got) == float(out)
    jitted = jax.jit(lambda a, b: stealing_loss(name, a, b, labels=kw.get("labels"),
                                                pair=kw.get("pair")))(s, v)
    np.testing.assert_allclose(float(jitted), float(out), rtol=1e-5, atol=1e-6)


def test_registry_defaults_are_the_old_numbers():
    # The losses that existed before the registry keep their numbers; a new loss brings its
    # own (checked for completeness in test_every_registered_loss_has_complete_defaults).
    missing = sorted(set(_OLD_DEFAULTS) - set(losses_mod.LOSSES))
    assert not missing, f"losses removed from the registry: {missing}"
    for name, (bsz, lr, tau) in _OLD_DEFAULTS.items():
        spec = losses_mod.LOSSES[name]
        assert spec.defaults() == {"batch_size": bsz, "learning_rate": lr, "temperature": tau}, name
    old = {n: o for n, o in losses_mod.scale_overrides().items() if n in _OLD_DEFAULTS}
    assert old == _OLD_OVERRIDES
    assert list(old) == list(_OLD_OVERRIDES)  # config key order


def test_every_registered_loss_has_complete_defaults():
    """Every loss, old or new, has the reference settings a steal config falls back to."""
    for name, spec in losses_mod.LOSSES.items():
        d = spec.defaults()
        assert set(d) == {"batch_size", "learning_rate", "temperature"}, name
        assert type(d["batch_size"]) is int and d["batch_size"] >= 1, (name, d)
        assert type(d["learning_rate"]) is float and d["learning_rate"] > 0, (name, d)
        assert d["temperature"] is None or (
            type(d["temperature"]) is float and d["temperature"] > 0), (name, d)
        assert spec.source and spec.fn.__doc__, (
            f"loss {name!r}: give its LossSpec a source= and its function a docstring")


# The losses and needs before any contributor's addition: pinned, in registry order.
_KNOWN_EXTRA = ("cosine", "barlow", "symmetrized", "supcon", "softce")
_KNOWN_NEEDS = {"supcon": {"labels"}, "symmetrized": {"pair", "predictor"},
                "xent": {"class_targets"}}


def test_registry_derived_names_and_needs():
    # "all" is exactly the paper's four (ICML 2022 main results), in this order.
    assert STEALING_LOSSES == ("mse", "infonce", "softnn", "wasserstein")
    # the derived lists follow the registry's groups, in registry order
    groups = {n: s.group for n, s in losses_mod.LOSSES.items()}
    assert losses_mod.EXTRA_LOSSES == tuple(n for n, g in groups.items() if g == "extra")
    assert losses_mod.ALL_LOSSES == STEALING_LOSSES + losses_mod.EXTRA_LOSSES
    assert set(losses_mod.ALL_LOSSES) == {n for n, g in groups.items() if g != "baseline"}
    # the known extra losses are still there, in their order (new ones may follow)
    assert tuple(n for n in losses_mod.EXTRA_LOSSES if n in _KNOWN_EXTRA) == _KNOWN_EXTRA
    assert "xent" not in losses_mod.ALL_LOSSES  # a baseline, not a selectable stealing loss
    assert groups["xent"] == "baseline"
    needs = {n: set(s.needs) for n, s in losses_mod.LOSSES.items()
             if s.needs and n in _OLD_DEFAULTS}
    assert needs == _KNOWN_NEEDS


def test_every_registered_loss_has_its_own_test():
    from registry_guard import missing_tests
    problems = missing_tests(
        "loss", list(losses_mod.LOSSES), _PER_LOSS_TEST, "_PER_LOSS_TEST", "tests/test_losses.py",
        "add a hand-computed test to tests/test_losses_extra.py (tests/test_losses.py for a "
        "'paper' loss)", "tests/test_losses_extra.py")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_lossspec_validation():
    with pytest.raises(ValueError, match="needs"):
        losses_mod.LossSpec(mse_loss, 64, 1e-3, None, needs=frozenset({"bogus"}))
    with pytest.raises(ValueError, match="group"):
        losses_mod.LossSpec(mse_loss, 64, 1e-3, None, group="bogus")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        losses_mod.LossSpec(mse_loss, 0, 1e-3, None)
    spec = losses_mod.LossSpec(mse_loss, 8, 1e-3, None, scale_overrides={"batch_size": 4})
    with pytest.raises(TypeError):
        spec.scale_overrides["batch_size"] = 2  # read-only
    with pytest.raises(Exception):
        spec.batch_size = 2  # frozen


def _config(name, arg=""):
    from sslsteal_jax.configs import load_config
    return load_config(name, arg)


@pytest.mark.parametrize("config, fixed_batch", [("quickstart", None), ("budget_scan", None),
                                                 ("defense_matrix", 64), ("verify", None)])
def test_configs_resolve_to_the_old_numbers(config, fixed_batch):
    """What each experiment trains a surrogate with: ``cfg.steal`` (``cfg.attack.steal``
    for verify) + ``loss_overrides[loss]``, None fields from the registry."""
    from sslsteal_jax.trainers.surrogate import resolve_hparams
    cfg = _config(config)
    base = cfg.attack if config == "verify" else cfg
    for name, (bsz, lr, tau) in _OLD_DEFAULTS.items():
        scfg = base.steal.copy_and_resolve_references()
        scfg.loss = name
        if name in base.get("loss_overrides", {}):
            scfg.update(dict(base.loss_overrides[name]))
        want = dict({"batch_size": fixed_batch or bsz, "learning_rate": lr, "temperature": tau},
                    **_OLD_OVERRIDES.get(name, {}))
        assert resolve_hparams(scfg) == want, (config, name)
