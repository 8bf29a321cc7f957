"""Tests for the victim representation API (sslsteal_jax/api) and the
attacker's query-once helper (sslsteal_jax/attacks/query.py).

One tiny SimCLR victim (ResNet-10, width 4, head 16 -> 8, 28x28x1 images) is
initialised once per module; every test builds cheap VictimAPI objects on it.
"""
import itertools
import re
import threading

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
    for bad in (-1, 1.7, "abc", True):  # refused, never truncated (1.7 -> 1, True -> 1)
        with pytest.raises(ValueError, match=r"budget=.*; allowed: an integer >= 0 or None"):
            a.register("x", bad)
    a.register("np", np.int64(4))
    assert a.remaining("np") == 4
    for user in (123, "", None):  # account names key the ledger and the defense secrets
        with pytest.raises(ValueError, match=r"user=.*; allowed: a non-empty account name"):
            a.query(user, images[:1])
        with pytest.raises(ValueError, match=r"user=.*; allowed: a non-empty account name"):
            a.register(user, 3)
    for kw, msg in ((dict(default_budget=-1), r"default_budget=-1; allowed: an integer >= 0"),
                    (dict(batch_size=0), r"batch_size=0; allowed: an integer >= 1 or None"),
                    (dict(seed="a"), r"seed='a'; allowed: an integer$")):
        with pytest.raises(ValueError, match=msg):
            VictimAPI(model, variables, SHAPE, **kw)


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
    with pytest.raises(BudgetExceededError, match="'poor' would send 20 queries but has 15 "
                                                  "left; nothing was sent"):
        collect_answers(api, "poor", images, 20, chunk=10, progress=False)
    # refused before the first chunk: nothing charged (a paid chunk's answers were lost before)
    assert api.queries_used("poor") == 0
    collect_answers(api, "poor", images, 15, chunk=10, progress=False)
    assert api.queries_used("poor") == 15 and api.remaining("poor") == 0


# ----- exact accounting under concurrent callers ---------------------------------------------

def _hammer(api, users, images, threads: int, per_call: int, calls_per_thread: int,
            fail=lambda: False):
    """``threads`` threads, thread t querying ``users[t % len(users)]`` with ``per_call``
    images per call, ``calls_per_thread`` times (a bounded loop), all released at once.
    Returns ``{user: images answered}``; refused calls (budget) are counted too."""
    answered = {u: 0 for u in users}
    refused = {u: 0 for u in users}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(t):
        user = users[t % len(users)]
        start.wait()
        for c in range(calls_per_thread):
            try:
                out = api.query(user, images[(t + c) % 4 * 8:][:per_call])
            except BudgetExceededError:
                with lock:
                    refused[user] += 1
                continue
            except RuntimeError as e:  # an injected forward failure
                assert "injected" in str(e)
                continue
            assert out.shape == (per_call, REP_DIM)
            with lock:
                answered[user] += len(out)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join(timeout=120)
    assert not any(p.is_alive() for p in pool), "a query thread hung"
    return answered, refused


def test_budget_exact_under_concurrent_callers(victim):
    """The reported bug: budget 512, 32 threads x 64 images answered and charged 2,048.
    Here 32 threads x 4 users (budget 512 each, 64 images a call, 4 calls a thread:
    2,048 images asked per user) are answered and charged exactly 512 each."""
    model, variables = victim
    api = VictimAPI(model, variables, SHAPE, batch_size=64)
    x = np.random.default_rng(2).integers(0, 256, (96, *SHAPE), dtype=np.uint8)
    users = [f"user{i}" for i in range(4)]
    for u in users:
        api.register(u, 512)
    answered, refused = _hammer(api, users, x, threads=32, per_call=64, calls_per_thread=4)
    for u in users:
        assert answered[u] == 512, (u, answered, refused)
        assert api.queries_used(u) == 512 and api.remaining(u) == 0
        assert refused[u] == 24  # 32 calls of 64 asked, 8 fit


def test_failed_answers_are_refunded_under_concurrency(victim, monkeypatch):
    """Every third forward pass fails: its reservation is refunded, so what is charged
    equals what was answered, exactly, and the budget still caps the answers."""
    model, variables = victim
    api = VictimAPI(model, variables, SHAPE, batch_size=32)
    x = np.random.default_rng(3).integers(0, 256, (64, *SHAPE), dtype=np.uint8)
    forward, count, lock = api.forward, [0], threading.Lock()

    def flaky(xb, batch_size=None):
        with lock:
            count[0] += 1
            bad = count[0] % 3 == 0
        if bad:
            raise RuntimeError("injected forward failure")
        return forward(xb, batch_size)

    monkeypatch.setattr(api, "forward", flaky)
    users = ["a", "b", "c"]
    for u in users:
        api.register(u, 100)
    answered, _ = _hammer(api, users, x, threads=12, per_call=16, calls_per_thread=5)
    for u in users:
        assert api.queries_used(u) == answered[u] <= 100
    assert count[0] >= 3  # failures did happen


@pytest.mark.slow
def test_concurrent_defended_answers_equal_a_sequential_order(victim):
    """Per-user defense state and call keys are updated under the user's lock: four
    concurrent calls of one user (noise keyed by the call number, plus a similarity
    history) get exactly the answers of the same calls made one after the other in
    some order (found by replaying all 24 orders on a second API with the same seed,
    the account reset before each replay)."""
    model, variables = victim
    spec = "gaussian:scale=0.05+similarity:threshold=0.99"
    x = np.random.default_rng(4).integers(0, 256, (4, 6, *SHAPE), dtype=np.uint8)
    api = VictimAPI(model, variables, SHAPE, defenses=spec, seed=5)
    out, start = [None] * 4, threading.Barrier(4)

    def worker(i):
        start.wait()
        out[i] = api.query("u", x[i])

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for p in pool:
        p.start()
    for p in pool:
        p.join(timeout=120)
    assert api.queries_used("u") == 24
    matches, ref = [], VictimAPI(model, variables, SHAPE, defenses=spec, seed=5)
    for order in itertools.permutations(range(4)):
        ref.register("u", None)  # fresh account: call counter and defense state reset
        seq = {i: ref.query("u", x[i]) for i in order}
        if all(np.array_equal(seq[i], out[i]) for i in range(4)):
            matches.append(order)
    assert len(matches) == 1, matches  # noise differs per call number: one order fits
