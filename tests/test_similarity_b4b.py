"""Query-similarity detector and B4B against their definitions on hand-built cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.defenses import DefenseChain, b4b, similarity, transforms

E = np.eye(3, dtype=np.float32)
# q0=e1, q1=e2, q2=e1 (repeat of q0), q3=-e1, q4=(e1+e2)/sqrt2 (cos 0.707 to e1), q5=e3
SEQ = np.stack([E[0], E[1], E[0], -E[0], (E[0] + E[1]) / math.sqrt(2), E[2]])
SCORES = [0.0, 0.5, 1.0, 0.5, (1 + 1 / math.sqrt(2)) / 2, 0.5]


def _scores_in_calls(seq, sizes, memory):
    state, out = similarity.init_history(memory, seq.shape[1]), []
    i = 0
    for n in sizes:
        s, state = similarity.similarity_scores(jnp.asarray(seq[i:i + n]), state)
        out.append(np.asarray(s))
        i += n
    return np.concatenate(out), state


@pytest.mark.parametrize("sizes", [(6,), (2, 4), (1,) * 6, (5, 1)])
def test_detector_scores_constructed_sequence_any_batch_split(sizes):
    scores, state = _scores_in_calls(SEQ * 3.0, sizes, memory=16)  # scale-invariant
    np.testing.assert_allclose(scores, SCORES, atol=1e-6)
    assert int(state["seen"]) == 6
    assert state["history"].shape == (16, 3)  # bounded memory, whatever the query count


@pytest.mark.parametrize("sizes", [(4,), (1, 3), (3, 1), (1, 1, 1, 1)])
def test_detector_forgets_beyond_its_memory(sizes):
    seq = np.stack([E[0], E[1], E[2], E[0]])
    s2, _ = _scores_in_calls(seq, sizes, memory=2)  # q3 sees only q1, q2
    s3, _ = _scores_in_calls(seq, sizes, memory=3)  # q3 still sees q0
    np.testing.assert_allclose(s2, [0.0, 0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(s3, [0.0, 0.5, 0.5, 1.0], atol=1e-6)


def test_detector_flags_exactly_and_answers_garbage():
    reps = jnp.arange(12.0).reshape(6, 2)
    params = {"threshold": 0.8, "memory": 8, "garbage_mean": 1000.0, "garbage_scale": 1.0}
    out, state = similarity.similarity_defense(reps, similarity.init_history(8, 3),
                                               jax.random.key(0), params, head=jnp.asarray(SEQ))
    flagged = np.array([False, False, True, False, True, False])
    out = np.asarray(out)
    np.testing.assert_array_equal(out[~flagged], np.asarray(reps)[~flagged])
    assert np.all(np.abs(out[flagged] - 1000.0) < 6.0)
    assert int(state["flagged"]) == 2
    out2, _ = similarity.similarity_defense(reps, similarity.init_history(8, 3),
                                            jax.random.key(0), params, head=jnp.asarray(SEQ))
    np.testing.assert_array_equal(out, out2)


def test_lsh_buckets_hand_built():
    planes = jnp.asarray(np.eye(2, dtype=np.float32)[None])  # 1 table, bits r0=(1,0), r1=(0,1)
    x = jnp.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(b4b.lsh_buckets(x, planes)[:, 0], [3, 2, 1, 0])


@pytest.mark.parametrize("sizes", [(4,), (1, 3), (2, 2), (1, 1, 1, 1)])
def test_online_coverage_hand_built_in_query_order(sizes):
    # two tables of 1 bit: table 0 splits on x, table 1 on y.
    planes = jnp.asarray(np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32))
    x = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]])
    occupied = jnp.zeros((2, 2), bool)
    cov, i = [], 0
    for n in sizes:
        c, occupied = b4b.online_coverage(b4b.lsh_buckets(x[i:i + n], planes), occupied)
        cov.append(np.asarray(c))
        i += n
    # before q0: nothing; q0 fills one bucket per table -> 50%; q1 adds table 1 bucket 0 -> 75%;
    # q2 adds table 0 bucket 0 -> 100%
    np.testing.assert_allclose(np.concatenate(cov), [0.0, 50.0, 75.0, 100.0])
    assert bool(occupied.all())


def test_noise_scale_formula_values():
    lam, alpha, beta = 1e-6, 0.8, 80.0
    c = jnp.array([0.0, 40.0, 80.0, 100.0])
    got = np.asarray(b4b.noise_scale(c, lam, alpha, beta, 1e4))
    want = [max(0.0, lam * (math.exp(math.log(alpha / lam) * ci / beta) - 1)) for ci in c.tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == 0.0
    assert got[2] == pytest.approx(alpha - lam, rel=1e-5)
    assert got[1] == pytest.approx(lam * (math.sqrt(alpha / lam) - 1), rel=1e-5)
    # capped: beyond max_scale the scale stays at max_scale, finite
    assert float(b4b.noise_scale(jnp.array(100.0), lam, alpha, 1.0, 50.0)) == pytest.approx(50.0)


@pytest.mark.slow
def test_b4b_noise_follows_coverage():
    d = 16
    params = {"tables": 2, "bits": 1, "lam": 1e-6, "alpha": 0.5, "beta": 100.0, "max_scale": 1e4,
              "transform": "none", "pad": 0, "binary_dim": 0,
              "hyperplanes": b4b.lsh_hyperplanes(jax.random.key(1), 2, 1, d)}
    state = b4b.init_state(params, jax.random.key(2), d)
    x = jnp.ones((2000, d))
    fresh, _ = b4b.b4b_defense(x, state, jax.random.key(3), params)
    assert float(jnp.abs(fresh[0] - 1.0).max()) == 0.0  # coverage 0 before the first query
    full = dict(state, occupied=jnp.ones_like(state["occupied"]))  # coverage 100 -> sigma = alpha - lam
    noisy, new = b4b.b4b_defense(x, full, jax.random.key(3), params)
    assert float(jnp.std(noisy - 1.0)) == pytest.approx(0.5, rel=0.02)
    assert float(new["coverage"]) == 100.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["affine", "pad_shuffle"])
def test_transforms_invertible_and_consistent_per_user(kind):
    x = jax.random.uniform(jax.random.key(0), (50, 8))
    s1 = transforms.init_transform(kind, jax.random.key(10), 8, pad=4)
    s1b = transforms.init_transform(kind, jax.random.key(10), 8, pad=4)
    s2 = transforms.init_transform(kind, jax.random.key(11), 8, pad=4)
    y1 = transforms.apply_transform(kind, x, s1, jax.random.key(5))
    assert y1.shape == (50, transforms.output_dim(kind, 8, 4, 0))
    np.testing.assert_allclose(transforms.invert_transform(kind, y1, s1, 8), x, atol=1e-4)
    y1b = transforms.apply_transform(kind, x, s1b, jax.random.key(5))
    np.testing.assert_array_equal(y1, y1b)  # same user key -> same secret
    y2 = transforms.apply_transform(kind, x, s2, jax.random.key(5))
    assert not np.allclose(y1, y2)  # another user -> another coordinate system


def test_binary_transform_hamming_estimates_angle():
    x = jax.random.normal(jax.random.key(0), (20, 8))
    s = transforms.init_transform("binary", jax.random.key(1), 8, binary_dim=8192)
    y = np.asarray(transforms.apply_transform("binary", x, s, None))
    assert set(np.unique(y)) <= {0.0, 1.0}
    xn = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)
    angle = np.arccos(np.clip(xn @ xn.T, -1, 1)) / np.pi
    hamming = (y[:, None, :] != y[None, :, :]).mean(-1)
    assert np.abs(hamming - angle).max() < 0.03  # SimHash: P(bit differs) = angle / pi
    with pytest.raises(ValueError, match="not invertible"):
        transforms.invert_transform("binary", y, s, 8)


@pytest.mark.slow
def test_b4b_centring_uses_reference_mean_and_fills_more_buckets():
    # Non-negative answers (post-ReLU): uncentred SimHash sees one orthant only.
    rng = np.random.default_rng(0)
    d = 16
    ref = rng.uniform(0, 1, (400, d)).astype(np.float32)
    x = jnp.asarray(rng.uniform(0, 1, (600, d)).astype(np.float32))
    centred = DefenseChain("b4b:tables=4,bits=8,transform=none", d, 2, jax.random.key(0),
                           reference=ref)
    plain = DefenseChain("b4b:tables=4,bits=8,transform=none,center=false", d, 2,
                         jax.random.key(0))
    np.testing.assert_allclose(centred._params[0]["mean"], ref.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(plain._params[0]["mean"], np.zeros(d))
    planes = centred._params[0]["hyperplanes"]
    np.testing.assert_array_equal(b4b.lsh_buckets(x, planes, ref.mean(0)),
                                  b4b.lsh_buckets(x - ref.mean(0), planes))
    cov = {}
    for name, chain in (("centred", centred), ("plain", plain)):
        _, st = chain.apply(x, chain.init_state(jax.random.key(1)), jax.random.key(2))
        cov[name] = chain.summary(st)["0:b4b.coverage"]
    assert cov["centred"] > 2 * cov["plain"], cov


def test_b4b_centring_needs_reference_in_victim_coordinates():
    with pytest.raises(ValueError, match="center=True.*defense_reference.*center=false"):
        DefenseChain("b4b", 8, 2, jax.random.key(0))
    with pytest.raises(ValueError, match=r"reference answers must be \(N >= 1, 8\), got \(5, 3\)"):
        DefenseChain("b4b", 8, 2, jax.random.key(0), reference=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="after the secret transform of link 0.*center=false"):
        DefenseChain("transform+b4b", 8, 2, jax.random.key(0), reference=np.zeros((5, 8)))
    with pytest.raises(ValueError, match="NaN or inf"):
        DefenseChain("b4b", 2, 2, jax.random.key(0), reference=np.array([[np.nan, 0.0]]))
