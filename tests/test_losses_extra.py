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


def test_supcon_hand_computed():
    z = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0, 1])
    t = 0.5
    # anchor 0: others are z1 (sim 1) and z2 (sim 0): positive z1
    p = math.exp(1 / t) / (math.exp(1 / t) + math.exp(0))
    expected = -math.log(p)  # anchors 0 and 1 identical; anchor 2 has no positive (excluded)
    assert float(losses.supcon_loss(jnp.array(z), jnp.array(y), t)) == pytest.approx(expected, rel=1e-5)
