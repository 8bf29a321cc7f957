"""Tests for sslsteal_jax/training/optim.py::make_optimizer.

The learning rate actually applied at each step is observed through "adam"
with no weight decay and a constant unit gradient: Adam's bias-corrected
m_hat / sqrt(v_hat) is then exactly 1 (up to eps), so the update at optimizer
step t equals -lr(t).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.training.optim import make_optimizer


def _updates(opt, n_steps, param=1.0, grad=1.0):
    """Apply ``n_steps`` updates to a scalar param with a constant gradient;
    return the list of update values (param is not moved, so weight decay
    terms stay comparable across steps)."""
    p = jnp.asarray(param, jnp.float32)
    g = jnp.asarray(grad, jnp.float32)
    state = opt.init(p)
    step = jax.jit(opt.update)
    out = []
    for _ in range(n_steps):
        u, state = step(g, state, p)
        out.append(float(u))
    return out


def _cosine_lr(t, peak, warmup, total):
    if t < warmup:
        return peak * t / warmup
    frac = min(t - warmup, total - warmup) / (total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_schedule_warmup_peak_and_decay_to_zero(warmup):
    peak, total = 0.1, 10
    opt = make_optimizer("adam", peak, 0.0, total_steps=total, warmup_steps=warmup)
    ups = _updates(opt, total + 2)
    lrs = [-u for u in ups]
    expected = [_cosine_lr(t, peak, warmup, total) for t in range(total + 2)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-4, atol=1e-7)
    # warm-up starts at 0 (if any), peaks exactly after warm-up, ends at ~0
    if warmup:
        assert lrs[0] == pytest.approx(0.0, abs=1e-9)
        assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))
    assert lrs[warmup] == pytest.approx(peak, rel=1e-5)
    assert max(lrs) == pytest.approx(peak, rel=1e-5)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert lrs[total] == pytest.approx(0.0, abs=1e-8)
    assert lrs[total - 1] < 0.05 * peak


def test_constant_schedule():
    opt = make_optimizer("adam", 0.01, 0.0, total_steps=5, warmup_steps=2, schedule="constant")
    np.testing.assert_allclose([-u for u in _updates(opt, 6)], [0.01] * 6, rtol=1e-4)


def test_adam_weight_decay_is_coupled_l2():
    # Coupled L2: decay is added to the gradient *before* Adam's normalisation, so with a
    # constant gradient the first update is still exactly -lr.
    opt = make_optimizer("adam", 0.01, 0.5, total_steps=5, schedule="constant")
    u = _updates(opt, 1, param=2.0, grad=1.0)[0]
    np.testing.assert_allclose(u, -0.01, rtol=1e-5)
    # sign follows grad + wd * param
    u = _updates(opt, 1, param=2.0, grad=-0.5)[0]  # -0.5 + 0.5*2 = +0.5 > 0
    np.testing.assert_allclose(u, -0.01, rtol=1e-5)


def test_adamw_weight_decay_is_decoupled():
    lr, wd, p = 0.01, 0.5, 2.0
    opt = make_optimizer("adamw", lr, wd, total_steps=5, schedule="constant")
    u = _updates(opt, 1, param=p, grad=1.0)[0]
    np.testing.assert_allclose(u, -lr * (1.0 + wd * p), rtol=1e-5)


def test_sgd_momentum_09_and_coupled_decay():
    lr = 0.1
    opt = make_optimizer("sgd", lr, 0.0, total_steps=5, schedule="constant")
    # momentum trace: 1, 1.9, 2.71
    np.testing.assert_allclose(_updates(opt, 3), [-lr * 1.0, -lr * 1.9, -lr * 2.71], rtol=1e-5)
    opt = make_optimizer("sgd", lr, 0.5, total_steps=5, schedule="constant")
    np.testing.assert_allclose(_updates(opt, 1, param=2.0)[0], -lr * (1.0 + 0.5 * 2.0), rtol=1e-5)


def test_sgd_follows_cosine_schedule():
    # zero momentum history at step 0, so the first update is -lr(0) * g
    opt = make_optimizer("sgd", 0.1, 0.0, total_steps=4, warmup_steps=0)
    np.testing.assert_allclose(_updates(opt, 1)[0], -0.1, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_optimizers_on_pytree_reduce_quadratic(name):
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    opt = make_optimizer(name, 0.05, 1e-4, total_steps=20, warmup_steps=2)
    state = opt.init(params)

    def loss(p):
        return jnp.sum(p["w"] ** 2) + p["b"] ** 2

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return jax.tree_util.tree_map(lambda a, b: a + b, p, u), s

    l0 = float(loss(params))
    for _ in range(20):
        params, state = step(params, state)
    assert float(loss(params)) < l0


@pytest.mark.parametrize("total", [0, -3])
def test_total_steps_must_be_positive(total):
    with pytest.raises(ValueError) as exc:
        make_optimizer("adam", 1e-3, 0.0, total_steps=total)
    assert str(total) in str(exc.value) and "total_steps" in str(exc.value)


@pytest.mark.parametrize("warmup", [10, 11, -1])
def test_warmup_must_be_in_range(warmup):
    with pytest.raises(ValueError) as exc:
        make_optimizer("adam", 1e-3, 0.0, total_steps=10, warmup_steps=warmup)
    msg = str(exc.value)
    assert f"warmup_steps={warmup}" in msg and "10" in msg


def test_unknown_optimizer_name_raises():
    with pytest.raises(ValueError) as exc:
        make_optimizer("lamb", 1e-3, 0.0, total_steps=10)
    msg = str(exc.value)
    assert "'lamb'" in msg
    for name in ("adam", "adamw", "sgd", "lars"):
        assert name in msg


def test_lars_scales_matrices_by_trust_ratio_and_leaves_vectors_plain():
    """First LARS update (momentum buffer empty): a matrix leaf moves by
    ``-lr * 0.001 * |w| / |g + wd w| * (g + wd w)``; a vector leaf (bias, BatchNorm) by
    ``-lr * g`` with neither weight decay nor trust ratio (SimSiam's LARS)."""
    lr, wd = 0.5, 0.1
    opt = make_optimizer("lars", lr, wd, total_steps=5, schedule="constant")
    w = jnp.array([[3.0, 4.0], [0.0, 0.0]])  # |w| = 5
    b = jnp.array([1.0, -1.0])
    g = {"w": jnp.array([[1.0, 0.0], [0.0, 0.0]]), "b": jnp.array([2.0, 0.5])}
    params = {"w": w, "b": b}
    u, _ = opt.update(g, opt.init(params), params)
    gw = g["w"] + wd * w
    want_w = -lr * 1e-3 * 5.0 / float(jnp.linalg.norm(gw)) * gw
    np.testing.assert_allclose(u["w"], want_w, rtol=1e-5)
    np.testing.assert_allclose(u["b"], -lr * g["b"], rtol=1e-6)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError) as exc:
        make_optimizer("adam", 1e-3, 0.0, total_steps=10, schedule="step")
    msg = str(exc.value)
    assert "'step'" in msg and "cosine" in msg and "constant" in msg
