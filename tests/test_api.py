"""Tests for the victim representation API (sslsteal_jax/api) and the
attacker's query-once helper (sslsteal_jax/attacks/query.py).

One tiny SimCLR victim (ResNet-10, width 4, head 16 -> 8, 28x28x1 images) is
initialised once per module; every test builds cheap VictimAPI objects on it.
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslsteal_jax.api import BudgetExceededError, QueryValidationError, VictimAPI
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.models import build_simclr

SHAPE = (28, 28, 1)
WIDTH = 4
REP_DIM = WIDTH * 8  # ResNet-10 basic blocks: width * 2**3
HEAD_OUT = 8


@pytest.fixture(scope="module")
def victim():
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=WIDTH, stem="cifar",
                                         head_hidden=16, head_out=HEAD_OUT))
    model = build_simclr(cfg)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"),  # rbg: cheap to compile
                                    jnp.zeros((2, *SHAPE), jnp.float32))
    # Non-trivial BatchNorm running statistics, so that inference-mode BN differs
    # visibly from batch-statistics BN (tests of batch-composition independence).
    rng = np.random.default_rng(0)
    bs = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(rng.uniform(0.5, 2.0, x.shape) if p[-1].key == "var"
                                 else rng.normal(0, 0.3, x.shape), x.dtype),
        variables["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": bs}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (40, *SHAPE), dtype=np.uint8)


@pytest.fixture(scope="module")
def api(victim):
    """A shared API (compiled once); tests use distinct user names."""
    model, variables = victim
    return VictimAPI(model, variables, SHAPE, batch_size=16)


@pytest.mark.slow
def test_output_dims(victim, api, images):
    model, variables = victim
    proj = VictimAPI(model, variables, SHAPE, output="projection")
    assert api.output_dim == REP_DIM and proj.output_dim == HEAD_OUT
    r = api.query("dims", images[:3])
    p = proj.query("dims", images[:3])
    assert r.shape == (3, REP_DIM) and r.dtype == np.float32
    assert p.shape == (3, HEAD_OUT) and p.dtype == np.float32
    # The representation is the backbone output h, the projection is g(h).
    h, z = model.apply(variables, images[:3].astype(np.float32) / 255.0, train=False)
    np.testing.assert_allclose(r, np.asarray(h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p, np.asarray(z), rtol=1e-5, atol=1e-5)


def test_unknown_output_raises(victim):
    model, variables = victim
    with pytest.raises(ValueError, match="unknown API output 'logits'.*representation.*projection"):
        VictimAPI(model, variables, SHAPE, output="logits")


def test_uint8_and_float_inputs_agree(api, images):
    a = api.query("u8", images[:5])
    b = api.query("f32", images[:5].astype(np.float32) / 255.0)
    c = api.query("f64", images[:5].astype(np.float64) / 255.0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)


def test_queries_counted_per_user(api, images):
    api.query("alice", images[:3])
    api.query("alice", images[:4])
    api.query("bob", images[:1])
    assert api.queries_used("alice") == 7
    assert api.queries_used("bob") == 1
    assert api.queries_used("carol") == 0
    assert api.remaining("alice") is None  # default budget: unlimited


def test_budget_enforced(api, images):
    api.register("eve", 10)
    api.query("eve", images[:7])
    assert api.remaining("eve") == 3
    with pytest.raises(BudgetExceededError) as e:
        api.query("eve", images[:5])
    msg = str(e.value)
    # names the request (5), what is left (3) and the budget (10)
    assert re.search(r"\b5\b", msg) and re.search(r"\b3\b", msg) and re.search(r"\b10\b", msg), msg
    assert "'eve'" in msg
    assert api.queries_used("eve") == 7  # nothing charged
    out = api.query("eve", images[:3])  # exactly at the budget: allowed
    assert out.shape == (3, REP_DIM)
    assert api.queries_used("eve") == 10 and api.remaining("eve") == 0
    with pytest.raises(BudgetExceededError):
        api.query("eve", images[:1])
    assert api.queries_used("eve") == 10


def test_default_budget_and_register(victim, images):
    model, variables = victim
    a = VictimAPI(model, variables, SHAPE, default_budget=2)
    assert a.remaining("anyone") == 2
    with pytest.raises(BudgetExceededError):
        a.query("anyone", images[:3])
    a.register("vip", None)
    a.query("vip", images[:3])
    with pytest.raises(ValueError, match="budget must be >= 0"):
        a.register("x", -1)


@pytest.mark.parametrize("bad, pattern", [
    (np.zeros((2, 28, 28, 3), np.uint8), r"\(B, 28, 28, 1\).*\(2, 28, 28, 3\)"),
    (np.zeros((28, 28, 1), np.uint8), r"\(B, 28, 28, 1\).*\(28, 28, 1\)"),
    (np.zeros((2, 32, 32, 1), np.uint8), r"\(B, 28, 28, 1\).*\(2, 32, 32, 1\)"),
    (np.zeros((0, 28, 28, 1), np.uint8), r"empty"),
    (np.zeros((2, 28, 28, 1), np.int32), r"uint8.*float32.*int32"),
    (np.zeros((2, 28, 28, 1), np.float16), r"uint8.*float32.*float16"),
    (np.full((2, 28, 28, 1), 0.5, np.float32) * np.array([1, -1], np.float32)[:, None, None, None],
     r"\[0, 1\].*-0\.5"),
    (np.full((2, 28, 28, 1), 255.0, np.float32), r"\[0, 1\].*255"),
    (np.where(np.arange(2)[:, None, None, None] == 1, np.nan, 0.5).astype(np.float32)
     * np.ones((1, 28, 28, 1), np.float32), r"NaN"),
    (np.full((1, 28, 28, 1), np.inf, np.float32), r"inf"),
])
def test_invalid_queries_rejected(api, bad, pattern):
    user = "validate"
    before = api.queries_used(user)
    with pytest.raises(QueryValidationError, match=pattern):
        api.query(user, bad)
    assert api.queries_used(user) == before  # nothing charged


@pytest.mark.slow
def test_answers_independent_of_batch_composition(victim, images):
    """BatchNorm runs in inference mode: one image's answer does not depend on
    which other images share its batch, nor on the API's internal batch size."""
    model, variables = victim
    a16 = VictimAPI(model, variables, SHAPE, batch_size=16)
    alone = np.concatenate([a16.query("u", images[i:i + 1]) for i in (0, 17, 39)])
    full = a16.query("u", images)            # 40 images: 3 passes, last one padded
    reordered = a16.query("u", images[::-1])
    a7 = VictimAPI(model, variables, SHAPE, batch_size=7)
    other_bs = a7.query("u", images)
    np.testing.assert_allclose(full[[0, 17, 39]], alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reordered[::-1], full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(other_bs, full, rtol=1e-4, atol=1e-5)
    # ... whereas training-mode (batch-statistics) BN would depend on the batch.
    h_train, _ = model.apply(variables, images[:8].astype(np.float32) / 255.0, train=True,
                             mutable=["batch_stats"])[0]
    assert not np.allclose(np.asarray(h_train), full[:8], atol=1e-3)


def test_collect_answers(api, images):
    api.register("attacker", 30)
    q, ans = collect_answers(api, "attacker", images, 25, chunk=10, progress=False)
    assert api.queries_used("attacker") == 25  # exactly the budget, never overshot
    np.testing.assert_array_equal(q, images[:25])
    assert ans.shape == (25, REP_DIM) and ans.dtype == np.float32
    np.testing.assert_allclose(ans, api.query("reference", images[:25]), rtol=1e-5, atol=1e-6)


def test_collect_answers_budget_larger_than_pool(api, images):
    api.register("greedy", None)
    with pytest.raises(ValueError, match=r"query budget 41 .*query pool size 40"):
        collect_answers(api, "greedy", images, 41, progress=False)
    with pytest.raises(ValueError, match="pool size 40"):
        collect_answers(api, "greedy", images, 0, progress=False)
    assert api.queries_used("greedy") == 0


def test_collect_answers_account_budget_smaller(api, images):
    api.register("poor", 15)
    with pytest.raises(BudgetExceededError):
        collect_answers(api, "poor", images, 20, chunk=10, progress=False)
    # the first chunk of 10 was answered and charged; the second (would reach 20) was refused
    assert api.queries_used("poor") == 10
