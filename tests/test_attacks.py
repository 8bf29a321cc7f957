"""Unit tests of the attack suite: query plans and accounting, augmented views,
the StolenEncoder / symmetrized / head-recreation training steps, head
recreation, and the provider's classifier API (label baselines).

A tiny random SimCLR victim (ResNet-10 width 4, 28x28x1) stands in for the
real one; the real-data checks are in ``test_attacks_real.py``.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslsteal_jax import losses
from sslsteal_jax.api import BudgetExceededError, VictimAPI
from sslsteal_jax.api.classifier_api import ClassifierAPI
from sslsteal_jax.attacks import strategies as st
from sslsteal_jax.attacks.head_recreation import fit_projection_head
from sslsteal_jax.attacks.query import augmented_views, collect_view_answers
from sslsteal_jax.data.augment import AugmentConfig
from sslsteal_jax.evaluation.probe import probe_logits
from sslsteal_jax.models import SurrogateModel, build_encoder, build_simclr
from sslsteal_jax.trainers.surrogate import make_steal_step
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState

SHAPE = (28, 28, 1)
IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0,
                         gray_p=0.0, blur_p=0.0)


@pytest.fixture(scope="module")
def victim():
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=4, stem="cifar", head_hidden=16,
                                         head_out=8))
    model = build_simclr(cfg)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, *SHAPE)))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (24, *SHAPE), dtype=np.uint8)


# ---- query plans -----------------------------------------------------------------------

def test_query_plans_accounting():
    p = {s: st.plan_queries(s, 600, 3, 1000) for s in st.STRATEGIES if s != "head_recreation"}
    assert (p["direct"].images, p["direct"].queries, p["direct"].query_set) == (600, 600, "clean")
    assert p["stolenencoder"].query_set == "clean"  # shares the direct query set: paid once
    assert (p["augmented_queries"].images, p["augmented_queries"].views,
            p["augmented_queries"].queries, p["augmented_queries"].query_set) == (200, 3, 600, "views3")
    assert (p["labels"].api, p["probabilities"].query_set) == ("classifier", "probabilities")
    h = st.plan_queries("head_recreation", 600, 2, 1000)
    assert (h.images, h.views, h.query_set) == (300, 2, "views2")


@pytest.mark.parametrize("args, match", [
    (("augmented_queries", 601, 2, 1000), "601 must be a positive multiple of views=2"),
    (("head_recreation", 600, 1, 1000), "needs views >= 2, got views=1"),
    (("direct", 1001, 2, 1000), "must fit the query pool size 1000"),
    (("bogus", 10, 2, 1000), r"unknown query strategy 'bogus'; allowed: \['direct'"),
])
def test_query_plan_errors(args, match):
    with pytest.raises(ValueError, match=match):
        st.plan_queries(*args)


def test_parse_strategies_and_partner_index():
    assert st.parse_strategies("all") == list(st.STRATEGIES)
    assert st.parse_strategies(" labels, direct,labels") == ["labels", "direct"]
    assert st.parse_strategies("labels,all") == ["labels"] + [
        n for n in st.STRATEGIES if n != "labels"]
    with pytest.raises(ValueError, match="'knockoff'"):
        st.parse_strategies("direct,knockoff")
    np.testing.assert_array_equal(st.partner_index(2, 3), [1, 2, 0, 4, 5, 3])
    np.testing.assert_array_equal(st.partner_index(2, 1), [0, 1])


class _CountingAPI:
    """An API that answers each image with its mean pixel and charges like VictimAPI."""

    def __init__(self, budget):
        self.budget, self.used = budget, 0

    def remaining(self, user):
        return self.budget - self.used

    def query(self, user, x):
        if len(x) > self.remaining(user):
            raise BudgetExceededError(f"{user!r} over budget")
        self.used += len(x)
        return x.reshape(len(x), -1).mean(1, keepdims=True).astype(np.float32)


def test_collect_answers_checks_the_budget_before_sending_and_its_arguments():
    """A budget the account cannot pay fails before any query: nothing charged, no paid
    answer lost (before, chunks were charged, then the error dropped their answers)."""
    from sslsteal_jax.attacks.query import collect_answers
    pool = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1)
    api = _CountingAPI(3)
    with pytest.raises(BudgetExceededError, match=r"'a' would send 5 queries but has 3 left; "
                                                  r"nothing was sent"):
        collect_answers(api, "a", pool, 5, chunk=2, progress=False)
    assert api.used == 0
    x, v = collect_answers(api, "a", pool, 3, chunk=2, progress=False)
    assert api.used == 3 and np.array_equal(x, pool[:3])
    np.testing.assert_allclose(v[:, 0], pool[:3].reshape(3, -1).mean(1))
    for kw, msg in ((dict(chunk=0), r"query chunk=0; allowed: images per API call, an "
                                    r"integer >= 1"),
                    (dict(chunk=-1), r"query chunk=-1"),
                    (dict(budget=2.9), r"query budget=2.9; allowed: an integer"),
                    (dict(budget="abc"), r"query budget='abc'; allowed: an integer")):
        args = {**dict(budget=2, chunk=1), **kw}
        with pytest.raises(ValueError, match=msg):
            collect_answers(_CountingAPI(5), "a", pool, progress=False, **args)


def test_query_pool_labels_parse_and_errors():
    with pytest.raises(ValueError, match="not of the form"):
        st.query_pool_labels("fashion_mnist")


# ---- augmented views and charging ------------------------------------------------------

@pytest.mark.slow
def test_augmented_views_deterministic_and_chunk_independent(images):
    key = jax.random.key(3)
    a = augmented_views(images[:10], 2, key, chunk=4)
    b = augmented_views(images[:10], 2, key, chunk=10)
    assert a.shape == (20, *SHAPE) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:8], augmented_views(images[:4], 2, key))  # prefix-stable
    assert not np.array_equal(a[0], a[1])  # two different views of image 0
    ident = augmented_views(images[:3], 2, key, IDENTITY)
    np.testing.assert_array_equal(ident, np.repeat(images[:3], 2, axis=0))


@pytest.mark.slow
def test_collect_view_answers_charges_each_view_once(victim, images):
    model, variables = victim
    api = VictimAPI(model, variables, SHAPE, batch_size=16)
    api.register("a", 12)
    sent, answers = collect_view_answers(api, "a", images, 12, 3, jax.random.key(1), chunk=5,
                                         progress=False)
    assert api.queries_used("a") == 12 and sent.shape == (12, *SHAPE)
    np.testing.assert_allclose(answers, api.query("check", sent), rtol=1e-5, atol=1e-6)
    with pytest.raises(BudgetExceededError):
        collect_view_answers(api, "a", images, 3, 3, jax.random.key(1), progress=False)
    assert api.queries_used("a") == 12
    with pytest.raises(ValueError, match="multiple of views=3"):
        collect_view_answers(api, "b", images, 10, 3, jax.random.key(1))
    assert api.queries_used("b") == 0


# ---- training steps ----------------------------------------------------------------------

def _state(model, key=0):
    # jitted: one compilation instead of one per operation of an eager ResNet init
    variables = jax.jit(model.init)(jax.random.key(key), jnp.zeros((2, *SHAPE)))
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=make_optimizer("adam", 1e-3, 0.0, 10),
                             batch_stats=variables["batch_stats"])


def _loss_at(step_fn, state, *arrays):
    return float(jax.jit(step_fn)(state, *arrays, jax.random.key(7))[1]["loss"])


def _train_outputs(model, variables, x):
    """The surrogate's outputs on uint8 ``x`` in train mode (batch statistics), as the
    steal step computes them; jitted (one compilation, not one per eager operation)."""
    f = jax.jit(lambda v, x: model.apply(v, jnp.asarray(x, jnp.float32) / 255.0, train=True,
                                         mutable=["batch_stats"])[0][1])
    return f(variables, x)


@pytest.mark.slow
def test_stolenencoder_views_with_identity_augmentation(images):
    """With identity 'augmentations' each view equals the clean image, so the
    StolenEncoder loss is exactly (1 + view_weight) x the direct loss."""
    model = SurrogateModel(build_encoder("resnet10", 2), 8)
    state = _state(model)
    x = images[:8]
    v = np.random.default_rng(1).uniform(0, 1, (8, 8)).astype(np.float32)
    direct = _loss_at(make_steal_step(model, "cosine", None), state, x, v)
    se = _loss_at(make_steal_step(model, "cosine", None, surrogate_views=2, view_weight=0.5,
                                  view_aug=IDENTITY), state, x, v)
    assert se == pytest.approx(1.5 * direct, rel=1e-4)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    o = _train_outputs(model, variables, x)
    assert direct == pytest.approx(float(losses.cosine_loss(o, v)), rel=1e-5)


@pytest.mark.slow
def test_symmetrized_step_uses_predictor_and_cross_view_answers(images):
    model = SurrogateModel(build_encoder("resnet10", 2), 8, predictor_hidden=4)
    state = _state(model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    assert "predictor" in variables["params"]
    x1, x2 = images[:6], images[6:12]
    rng = np.random.default_rng(2)
    v1, v2 = (rng.uniform(0, 1, (6, 8)).astype(np.float32) for _ in range(2))
    paired = _loss_at(make_steal_step(model, "symmetrized", None, paired=True), state, x1, v1, x2, v2)
    p = _train_outputs(model, variables, np.concatenate([x1, x2]))
    expected = float(losses.symmetrized_loss(p[:6], p[6:], v1, v2))
    assert paired == pytest.approx(expected, rel=1e-5)
    # one answer per image: the second view is a surrogate-side view with the same target
    single = _loss_at(make_steal_step(model, "symmetrized", None, view_aug=IDENTITY), state, x1, v1)
    p = _train_outputs(model, variables, np.concatenate([x1, x1]))
    assert single == pytest.approx(float(losses.symmetrized_loss(p[:6], p[6:], v1, v1)), rel=1e-5)


@pytest.mark.slow
def test_target_head_and_supcon_labels_in_step(images):
    model = SurrogateModel(build_encoder("resnet10", 2), 8)
    state = _state(model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = images[:8]
    v = np.random.default_rng(3).uniform(0, 1, (8, 8)).astype(np.float32)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(8, 5)), jnp.float32)
    head = lambda z: jnp.tanh(z @ w)  # noqa: E731
    got = _loss_at(make_steal_step(model, "mse", None, target_head=head), state, x, np.asarray(head(v)))
    o = _train_outputs(model, variables, x)
    assert got == pytest.approx(float(jnp.mean((head(o) - head(v)) ** 2)), rel=1e-5)
    y = np.array([0, 1, 0, 1, 2, 2, 0, 1], np.int32)
    got = _loss_at(make_steal_step(model, "supcon", 0.2, with_labels=True), state, x, v, y)
    assert got == pytest.approx(float(losses.supcon_stealing_loss(o, v, y, 0.2)), rel=1e-5)


# ---- head recreation ---------------------------------------------------------------------

@pytest.mark.slow
def test_fit_projection_head_learns_to_match_pairs():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(256, 16)).astype(np.float32)
    v1 = base + 0.3 * rng.normal(size=base.shape).astype(np.float32)
    v2 = base + 0.3 * rng.normal(size=base.shape).astype(np.float32)
    head, summ = fit_projection_head(v1, v2, jax.random.key(0), hidden_dim=32, out_dim=8,
                                     epochs=30, batch_size=64, learning_rate=3e-3)
    assert head(jnp.asarray(v1[:3])).shape == (3, 8)
    assert summ["steps"] == 30 * 4
    assert summ["pair_top1"] > summ["initial_pair_top1"] + 10
    # deterministic: the same key gives the same head
    head2, _ = fit_projection_head(v1, v2, jax.random.key(0), hidden_dim=32, out_dim=8,
                                   epochs=30, batch_size=64, learning_rate=3e-3)
    np.testing.assert_array_equal(np.asarray(head(v1[:4])), np.asarray(head2(v1[:4])))
    with pytest.raises(ValueError, match="equal"):
        fit_projection_head(v1, v2[:10], jax.random.key(0))


# ---- provider's classifier API -------------------------------------------------------------

@pytest.mark.slow
def test_classifier_api_labels_probabilities_and_charges(victim, images):
    model, variables = victim
    labels = np.arange(len(images)) % 3
    clf = ClassifierAPI.from_victim(model, variables, SHAPE, images, labels, jax.random.key(0),
                                    epochs=5)
    clf.register("u", 10)
    y = clf.query("u", images[:6])
    p = clf.query("u", images[:4], output="probabilities")
    assert clf.queries_used("u") == 10 and clf.num_classes == 3
    assert y.dtype == np.int32 and y.shape == (6,)
    assert p.shape == (4, 3) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(p, 1), y[:4])
    reps = VictimAPI(model, variables, SHAPE).query("x", images[:6])
    np.testing.assert_array_equal(y, np.argmax(probe_logits(clf._probe, reps), 1))
    with pytest.raises(BudgetExceededError):
        clf.query("u", images[:1])
    with pytest.raises(ValueError, match="unknown classifier output 'logits'"):
        clf.query("v", images[:1], output="logits")
    assert clf.queries_used("v") == 0
