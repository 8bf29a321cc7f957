"""Hand-computed checks of the additional objectives (cosine, Barlow Twins, soft CE, SupCon)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax import losses


def test_cosine_loss_hand_computed():
    s = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    v = jnp.array([[0.0, 3.0], [2.0, 2.0]])
    # rows: 1 - 0 = 1 and 1 - 1 = 0 -> mean 0.5
    assert float(losses.cosine_loss(s, v)) == pytest.approx(0.5, abs=1e-6)
    g = jax.grad(lambda v_: losses.cosine_loss(s, v_))(v)
    assert float(jnp.abs(g).sum()) == 0.0


@pytest.mark.slow
def test_barlow_loss_hand_computed():
    s = np.array([[1.0, 2.0], [3.0, 1.0], [2.0, 0.0]])
    v = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    def std(x):
        return (x - x.mean(0)) / (x.std(0) + 1e-5)
    sn, vn = std(s), std(v)
    expected = 0.0
    for i in range(2):
        for j in range(2):
            c = sum(sn[b, i] * vn[b, j] for b in range(3)) / 3
            expected += (1 - c) ** 2 if i == j else 0.0051 * c ** 2
    assert float(losses.barlow_loss(jnp.array(s), jnp.array(v))) == pytest.approx(expected, rel=1e-4)
    # identical standardised batches with uncorrelated dims: loss ~ 0 on the diagonal
    x = jnp.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert float(losses.barlow_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_soft_cross_entropy_hand_computed():
    s = np.array([[0.0, math.log(3.0)]])  # softmax -> [0.25, 0.75]
    v = np.array([[math.log(2.0), 0.0]])  # softmax -> [2/3, 1/3]
    expected = -(2 / 3 * math.log(0.25) + 1 / 3 * math.log(0.75))
    assert float(losses.soft_cross_entropy_loss(jnp.array(s), jnp.array(v))) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_supcon_hand_computed():
    z = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0, 1])
    t = 0.5
    # anchor 0: others are z1 (sim 1) and z2 (sim 0): positive z1
    p = math.exp(1 / t) / (math.exp(1 / t) + math.exp(0))
    expected = -math.log(p)  # anchors 0 and 1 identical; anchor 2 has no positive (excluded)
    assert float(losses.supcon_loss(jnp.array(z), jnp.array(y), t)) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------
# symmetrized (SimSiam), supcon stealing, probability cross-entropy, dispatch
# ----------------------------------------------------------------------------

@pytest.mark.slow
def test_symmetrized_hand_computed():
    p1, p2 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    v1, v2 = jnp.array([[1.0, 1.0]]), jnp.array([[3.0, 0.0]])
    # view 1's prediction vs view 2's answer: cos = 1; view 2's vs view 1's: 1/sqrt(2)
    expected = -0.5 * (1.0 + 1.0 / math.sqrt(2.0))
    assert float(losses.symmetrized_loss(p1, p2, v1, v2)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.stealing_loss("symmetrized", p1, v1, pair=(p2, v2))) == pytest.approx(
        expected, rel=1e-6)
    # stop-gradient on the victim answers, gradient on the predictions
    gv = jax.grad(lambda v: losses.symmetrized_loss(p1, p2, v, v2))(v1)
    assert float(jnp.abs(gv).sum()) == 0.0
    gp = jax.grad(lambda p: losses.symmetrized_loss(p, p2, v1, v2))(jnp.array([[1.0, 1.0]]))
    assert float(jnp.abs(gp).sum()) > 0.0


def test_supcon_stealing_hand_computed():
    s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    v = jnp.array([[2.0, 0.0], [0.0, 5.0]])
    t = 0.5
    # u = [s; v], labels [0, 1, 0, 1]: each anchor's only positive is its partner
    # (cos 1), its two negatives have cos 0 -> -log(e^{1/t} / (e^{1/t} + 2)) per anchor.
    expected = math.log(math.exp(1 / t) + 2) - 1 / t
    got = losses.stealing_loss("supcon", s, v, temperature=t, labels=jnp.array([0, 1]))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # same class for both queries: every other row is a positive
    same = losses.supcon_stealing_loss(s, v, jnp.array([0, 0]), t)
    anchor = -(math.log(math.exp(1 / t) / (math.exp(1 / t) + 2)) + 2 * math.log(1 / (math.exp(1 / t) + 2))) / 3
    assert float(same) == pytest.approx(anchor, rel=1e-5)


def test_probability_cross_entropy_and_softce_default():
    logits = jnp.array([[0.0, math.log(3.0)]])  # softmax -> [0.25, 0.75]
    assert float(losses.probability_cross_entropy(logits, jnp.array([[0.0, 1.0]]))) == pytest.approx(
        -math.log(0.75), rel=1e-6)
    assert float(losses.probability_cross_entropy(logits, jnp.array([[0.5, 0.5]]))) == pytest.approx(
        -0.5 * (math.log(0.25) + math.log(0.75)), rel=1e-6)
    s = jnp.array([[0.0, math.log(3.0)]])
    v = jnp.array([[math.log(2.0), 0.0]])
    assert float(losses.stealing_loss("softce", s, v)) == pytest.approx(
        -(2 / 3 * math.log(0.25) + 1 / 3 * math.log(0.75)), rel=1e-5)  # T = 1 by default
    # T = 0.5 doubles the logits: softmax(2 s) = [1/10, 9/10], softmax(2 v) = [4/5, 1/5]
    assert float(losses.stealing_loss("softce", s, v, temperature=0.5)) == pytest.approx(
        -(0.8 * math.log(0.1) + 0.2 * math.log(0.9)), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", losses.ALL_LOSSES)
def test_every_loss_no_gradient_wrt_answers(name):
    rng = np.random.default_rng(3)
    s = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 3)), jnp.float32)
    v = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 3)), jnp.float32)
    kw = {"labels": jnp.array([0, 0, 1, 1])} if name == "supcon" else {}
    if name == "symmetrized":
        kw["pair"] = (s[::-1], v[::-1])
    gv = jax.grad(lambda vv: losses.stealing_loss(name, s, vv, **kw))(v)
    np.testing.assert_array_equal(np.asarray(gv), 0.0)
    gs = jax.grad(lambda ss: losses.stealing_loss(name, ss, v, **kw))(s)
    assert np.isfinite(np.asarray(gs)).all() and float(jnp.abs(gs).sum()) > 0


def test_missing_labels_or_pair_raise():
    s = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="supcon.*labels"):
        losses.stealing_loss("supcon", s, s)
    with pytest.raises(ValueError, match="symmetrized.*pair"):
        losses.stealing_loss("symmetrized", s, s)
    with pytest.raises(ValueError, match="'bogus'.*'softce'"):
        losses.stealing_loss("bogus", s, s)
