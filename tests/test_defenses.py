"""Output-perturbing defenses, the chain spec and the VictimAPI hook, against their definitions."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.defenses import DEFENSES, DefenseChain, parse_spec
from sslsteal_jax.defenses import perturb
from sslsteal_jax.models import build_simclr

KEY = jax.random.key(0)


def test_gaussian_noise_moments():
    x = jnp.zeros((4000, 50))
    out, state = perturb.gaussian_noise(x, "s", KEY, {"mean": 0.5, "scale": 2.0})
    out = np.asarray(out)
    n = out.size
    assert state == "s"
    assert abs(out.mean() - 0.5) < 5 * 2.0 / math.sqrt(n)
    assert out.std() == pytest.approx(2.0, rel=0.01)
    # excess kurtosis of a Gaussian is 0
    z = (out - out.mean()) / out.std()
    assert abs((z ** 4).mean() - 3.0) < 0.05


def test_laplace_noise_moments():
    x = jnp.ones((4000, 50))
    out = np.asarray(perturb.laplace_noise(x, None, KEY, {"mean": -1.0, "scale": 0.5})[0]) - 1.0
    assert abs(out.mean() + 1.0) < 5 * math.sqrt(2) * 0.5 / math.sqrt(out.size)
    assert np.abs(out + 1.0).mean() == pytest.approx(0.5, rel=0.01)  # mean absolute deviation = b
    assert out.std() == pytest.approx(math.sqrt(2) * 0.5, rel=0.015)
    z = (out - out.mean()) / out.std()
    assert abs((z ** 4).mean() - 6.0) < 0.4  # Laplace excess kurtosis 3


def test_same_key_same_noise_other_key_other_noise():
    x = jnp.zeros((3, 4))
    p = {"mean": 0.0, "scale": 1.0}
    a = perturb.gaussian_noise(x, None, KEY, p)[0]
    b = perturb.gaussian_noise(x, None, KEY, p)[0]
    c = perturb.gaussian_noise(x, None, jax.random.key(1), p)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_round_topk_quantize_hand_computed():
    x = jnp.array([[0.123, -1.987, 2.5049, 0.0]])
    np.testing.assert_allclose(perturb.round_decimals(x, None, KEY, {"decimals": 2})[0],
                               [[0.12, -1.99, 2.50, 0.0]], atol=1e-6)
    np.testing.assert_allclose(perturb.round_decimals(x, None, KEY, {"decimals": 0})[0],
                               [[0.0, -2.0, 3.0, 0.0]])
    y = jnp.array([[3.0, -5.0, 1.0, 0.5], [0.1, 0.2, -0.3, 0.05]])
    np.testing.assert_allclose(perturb.top_k(y, None, KEY, {"k": 2})[0],
                                  [[3.0, -5.0, 0.0, 0.0], [0.0, 0.2, -0.3, 0.0]])
    q = jnp.array([[-1.0, 0.2, 0.3, 0.74, 0.76, 5.0]])
    p = {"low": 0.0, "high": 1.0, "levels": 3, "bits": 0}
    np.testing.assert_allclose(perturb.quantize(q, None, KEY, p)[0], [[0, 0, 0.5, 0.5, 1, 1]])
    p1 = dict(p, bits=1)  # 2 levels {0, 1}
    np.testing.assert_allclose(perturb.quantize(q, None, KEY, p1)[0], [[0, 0, 0, 1, 1, 1]])


def test_transform_link_applies_the_users_secret():
    # The "transform" link answers apply_transform(kind, reps, secret): hand-built affine
    # secret with x @ A = (x_1, 2 x_0) and b = (1, -1).
    fn = DEFENSES["transform"].fn
    x = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    secret = {"A": jnp.array([[0.0, 2.0], [1.0, 0.0]]), "b": jnp.array([1.0, -1.0])}
    out, state = fn(x, {"secret": secret}, KEY, {"transform": "affine"})
    np.testing.assert_allclose(out, [[3.0, 1.0], [0.0, -1.0]])  # x @ A + b
    assert state["secret"] is secret
    # through the chain: the secret comes from the user's key, pad_shuffle keeps the answer
    # (un-permuted, its first D coordinates) and appends `pad` secret-noise coordinates
    chain = DefenseChain("transform:transform=pad_shuffle,pad=3", 2, 2, KEY)
    assert chain.output_dim == 5
    st = chain.init_state(jax.random.key(7))
    y, _ = chain.apply(x, st, jax.random.key(8))
    perm = np.asarray(st[0]["secret"]["perm"])
    np.testing.assert_allclose(np.asarray(y)[:, np.argsort(perm)][:, :2], x)
    np.testing.assert_array_equal(
        y, chain.apply(x, chain.init_state(jax.random.key(7)), jax.random.key(8))[0])


def test_spec_formats_agree_and_defaults_fill():
    a = parse_spec("gaussian:scale=0.3,mean=1+round:decimals=1")
    b = parse_spec([{"name": "gaussian", "scale": 0.3, "mean": 1}, {"name": "round", "decimals": 1}])
    assert a == b == [("gaussian", {"mean": 1.0, "scale": 0.3}), ("round", {"decimals": 1})]
    assert parse_spec(None) == parse_spec("none") == parse_spec("") == []
    assert parse_spec("similarity")[0][1]["threshold"] == 0.8


# One test per registered defense that checks it against its definition, as
# "file::function" from the repository root (adding a defense = function + DEFENSES entry
# + test + an entry here; see docs/extending.md).
_PER_DEFENSE_TEST = {
    "gaussian": "tests/test_defenses.py::test_gaussian_noise_moments",
    "laplace": "tests/test_defenses.py::test_laplace_noise_moments",
    "round": "tests/test_defenses.py::test_round_topk_quantize_hand_computed",
    "topk": "tests/test_defenses.py::test_round_topk_quantize_hand_computed",
    "quantize": "tests/test_defenses.py::test_round_topk_quantize_hand_computed",
    "similarity": "tests/test_similarity_b4b.py::test_detector_flags_exactly_and_answers_garbage",
    "b4b": "tests/test_similarity_b4b.py::test_b4b_noise_follows_coverage",
    "transform": "tests/test_defenses.py::test_transform_link_applies_the_users_secret",
}


def test_every_registered_defense_has_its_own_test():
    from registry_guard import missing_tests
    problems = missing_tests(
        "defense", sorted(DEFENSES), _PER_DEFENSE_TEST, "_PER_DEFENSE_TEST",
        "tests/test_defenses.py", "add a test checking it against its definition (a "
        "hand-computed output or its noise statistics) to tests/test_defenses.py",
        "tests/test_defenses.py")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.mark.parametrize("spec, pattern", [
    ("gausian:scale=1", r"unknown defense 'gausian'.*allowed.*gaussian.*laplace"),
    ("gaussian:sigma=1", r"unknown parameter 'sigma'.*allowed.*mean.*scale"),
    ("round:decimals=1.5", r"decimals=.1\.5.*int"),
    ("gaussian:scale", r"not param=value"),
    ("b4b:transform=rotate", r"transform='rotate'.*affine.*pad_shuffle"),
    ("topk:k=99", r"k=99 must be in \[1, 8\]"),
    ("gaussian:scale=-1", r"scale=-1.0 must be >= 0"),
    ("quantize:low=1,high=0", r"low < high"),
    ("similarity:threshold=1.5", r"threshold=1.5 must be in \[0, 1\]"),
])
def test_bad_specs_raise_naming_value(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        DefenseChain(spec, 8, 4, KEY)


def test_chain_composes_with_split_keys():
    chain = DefenseChain("gaussian:scale=0.5+round:decimals=1", 6, 3, KEY)
    x = jnp.arange(12.0).reshape(2, 6) / 7
    out, _ = chain.apply(x, chain.init_state(KEY), jax.random.key(5))
    k0, _ = jax.random.split(jax.random.key(5))
    manual = jnp.round(perturb.gaussian_noise(x, None, k0, {"mean": 0.0, "scale": 0.5})[0], 1)
    np.testing.assert_allclose(out, manual, atol=1e-6)


# Links that squash their input (quantize, similarity garbage, binary) come first or alone,
# so a non-finite value produced by any link would reach the output.
@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    "quantize:levels=65536+quantize:bits=1+similarity:threshold=0,garbage_scale=1e6"
    "+gaussian:scale=1e6+laplace:scale=1e6,mean=-1e3+round:decimals=8+round:decimals=-3+topk:k=1",
    "b4b:beta=1e-3,bits=2,tables=3+b4b:transform=pad_shuffle,beta=1e-3,bits=1,center=false"
    "+transform:transform=affine",
    "b4b:transform=binary,beta=1e-3",
])
def test_no_nan_or_inf_for_extreme_settings(spec):
    ref = jax.random.uniform(jax.random.key(4), (32, 8), maxval=10.0)
    chain = DefenseChain(spec, 8, 4, KEY, reference=ref)
    x = jax.random.uniform(jax.random.key(1), (64, 8), maxval=10.0)
    head = jax.random.normal(jax.random.key(2), (64, 4))
    state = chain.init_state(jax.random.key(3))
    for i in range(2):
        out, state = chain.apply(x, state, jax.random.key(i), head=head)
        assert out.shape == (64, chain.output_dim)
        assert np.isfinite(np.asarray(out)).all()


# ----- the VictimAPI hook -----------------------------------------------------------------
SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def victim():
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=4, stem="cifar", head_hidden=16,
                                         head_out=8))
    model = build_simclr(cfg)
    return model, jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((2, *SHAPE)))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (12, *SHAPE), dtype=np.uint8)


@pytest.mark.slow
def test_api_without_defenses_unchanged(victim, images):
    model, variables = victim
    plain = VictimAPI(model, variables, SHAPE)
    none = VictimAPI(model, variables, SHAPE, defenses="none")
    np.testing.assert_array_equal(plain.query("a", images), none.query("a", images))
    assert plain.defenses == "none" and plain.defense_summary("a") == {}


@pytest.mark.slow
def test_api_defended_answers_reproducible_per_user_and_call(victim, images):
    model, variables = victim
    clean = VictimAPI(model, variables, SHAPE).query("a", images)
    spec = "gaussian:scale=0.2"
    a1 = VictimAPI(model, variables, SHAPE, defenses=spec, seed=3)
    a2 = VictimAPI(model, variables, SHAPE, defenses=spec, seed=3)
    a2.query("someone else", images)  # other users' traffic does not change a user's answers
    r1, r2 = a1.query("u", images), a2.query("u", images)
    np.testing.assert_array_equal(r1, r2)
    again = a1.query("u", images)  # next call: fresh noise
    assert not np.allclose(r1, again)
    other = a1.query("v", images)
    assert not np.allclose(r1, other)
    for r in (r1, again, other):
        assert (r - clean).std() == pytest.approx(0.2, rel=0.15)
    seed4 = VictimAPI(model, variables, SHAPE, defenses=spec, seed=4).query("u", images)
    assert not np.allclose(r1, seed4)
    assert a1.queries_used("u") == 24


@pytest.mark.slow
def test_api_output_dim_follows_chain(victim, images):
    model, variables = victim
    api = VictimAPI(model, variables, SHAPE, defenses="b4b:transform=pad_shuffle,pad=5",
                    defense_reference=images)
    assert api.output_dim == 32 + 5
    assert api.query("u", images).shape == (12, 37)
    assert api.defense_summary("u")["0:b4b.coverage"] > 0
    api.register("u", None)  # reopening an account resets its defense state
    assert api.defense_summary("u") == {}


def _matrix_config():
    from sslsteal_jax.configs import config_module
    return config_module("defense_matrix")


def _matrix_specs():
    mod = _matrix_config()
    specs = {t.format(s=s) for _, t, strengths, _ in mod.FAMILIES + mod.TINY_FAMILIES
             for s in strengths}
    return sorted(specs | set(mod.get_config().b4b_measure.specs))


@pytest.mark.slow
@pytest.mark.parametrize("spec", _matrix_specs())
def test_no_nan_or_inf_for_every_matrix_setting(spec):
    # Answers like the shipped victim's: D = 128, post-ReLU (>= 0), a few large coordinates.
    # 1,500 queries in 3 calls drive B4B's coverage past the matrix's betas (noise at its cap).
    d, hd = 128, 64
    rng = np.random.default_rng(0)
    ref = np.maximum(rng.normal(0.3, 1.0, (500, d)), 0).astype(np.float32)
    chain = DefenseChain(spec, d, hd, KEY, reference=ref)
    state = chain.init_state(jax.random.key(3))
    for i in range(3):
        x = np.maximum(rng.normal(0.3, 1.0, (500, d)), 0).astype(np.float32) * 3.0
        head = rng.normal(size=(500, hd)).astype(np.float32)
        head[250:] = head[:250]  # repeats for the similarity detector
        out, state = chain.apply(x, state, jax.random.key(i), head=head)
        assert out.shape == (500, chain.output_dim)
        assert np.isfinite(np.asarray(out)).all(), spec
    again = DefenseChain(spec, d, hd, KEY, reference=ref)
    s2 = again.init_state(jax.random.key(3))
    a1, _ = chain.apply(x, chain.init_state(jax.random.key(3)), jax.random.key(9), head=head)
    a2, _ = again.apply(x, s2, jax.random.key(9), head=head)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))  # same key, same answers
