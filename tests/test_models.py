"""Tests for sslsteal_jax/models (tiny widths and images, CPU).

Compiling Flax's threefry-based random initialisers is by far the slowest
part on a small, busy CPU, so most tests build abstract variables with
``jax.eval_shape`` and fill them deterministically with numpy
(``_materialise``); ``init_encoder`` itself is exercised concretely once
(jitted, with a cheap ``rbg`` key).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.models import _jitted_init
from sslsteal_jax.models import (ARCHITECTURES, MLPHead, SimCLRModel, build_encoder,
                                 init_encoder, init_variables, representation_dim)

WIDTH = 4
EXPECTED_DIM = {"resnet10": WIDTH * 8, "resnet18": WIDTH * 8, "resnet34": WIDTH * 8,
                "resnet50": WIDTH * 32}


def _materialise(abstract, seed=0):
    """Concrete variables for an abstract (eval_shape) variable tree: He-normal
    kernels, unit BN scale / running variance, zero biases / running means."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) * std, leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _variables(module, x_shape, seed=0):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    abstract = jax.eval_shape(lambda k, xx: module.init(k, xx, train=False),
                              jax.random.PRNGKey(0), x)
    return _materialise(abstract, seed)


def _x(b, hw, c, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, size=(b, hw, hw, c)), jnp.float32)


def test_architecture_table():
    assert {"resnet10", "resnet18", "resnet34", "resnet50"} <= set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet34", "resnet50"])
def test_build_encoder_representation_dim(arch):
    enc = build_encoder(arch, width=WIDTH)
    assert enc.representation_dim == EXPECTED_DIM[arch]
    assert representation_dim(arch, WIDTH) == EXPECTED_DIM[arch]
    variables = _variables(enc, (2, 16, 16, 3))
    assert set(variables) == {"params", "batch_stats"}
    h = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, _x(2, 16, 3))
    assert h.shape == (2, EXPECTED_DIM[arch])
    assert h.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(h)))


@pytest.mark.slow
def test_init_encoder_concrete():
    enc = build_encoder("resnet10", width=WIDTH)
    # jitted: one compile instead of many op-by-op ones
    variables = jax.jit(lambda k: init_encoder(enc, k, (16, 16, 3)))(
        jax.random.key(0, impl="unsafe_rbg"))
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, WIDTH)
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    # same structure and shapes as the abstract init used elsewhere in this file
    ref = _variables(enc, (2, 16, 16, 3))
    assert (jax.tree_util.tree_map(lambda a: a.shape, variables)
            == jax.tree_util.tree_map(lambda a: a.shape, ref))
    h = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, _x(2, 16, 3))
    assert h.shape == (2, WIDTH * 8) and np.all(np.isfinite(np.asarray(h)))


def test_init_variables_equals_op_by_op_init():
    """The jitted init (one program) gives the variables of flax's eager init bit for bit
    (what the trainers and the independent baseline rely on: the same models as before)."""
    model = SimCLRModel(encoder=build_encoder("resnet10", width=2), head_hidden=8, head_out=5)
    key, x = jax.random.key(3), _x(2, 8, 1)
    got, want = init_variables(model, key, x), model.init(key, x)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.std(np.asarray(got["params"]["encoder"]["stem_conv"]["kernel"])) > 0.1


def test_init_variables_reuses_the_program_of_an_equal_module():
    """An equal module (a new instance, e.g. the independent encoder of the surrogate's
    architecture) initialised again is not compiled again, and its other key still gives
    flax's eager init."""
    def model():
        return SimCLRModel(encoder=build_encoder("resnet10", width=2), head_hidden=8, head_out=5)
    x = _x(2, 8, 1)
    init_variables(model(), jax.random.key(3), x)
    got = init_variables(model(), jax.random.key(4), x)
    assert _jitted_init(model(), ())._cache_size() == 1  # one compiled program for both
    want = model().init(jax.random.key(4), x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_deep_encoders_shapes_abstract(arch):
    # Abstract evaluation (no compile) of train-mode apply: shape and dtype of h and batch_stats.
    enc = build_encoder(arch, width=WIDTH)
    x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
    variables = jax.eval_shape(lambda k, xx: enc.init(k, xx, train=False), jax.random.PRNGKey(0), x)
    h, upd = jax.eval_shape(lambda v, xx: enc.apply(v, xx, train=True, mutable=["batch_stats"]),
                            variables, x)
    assert h.shape == (2, EXPECTED_DIM[arch]) and h.dtype == jnp.float32
    assert "batch_stats" in upd


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_accepts_1_and_3_channels(channels):
    enc = build_encoder("resnet10", width=WIDTH)
    variables = _variables(enc, (2, 16, 16, channels))
    stem_kernel = variables["params"]["stem_conv"]["kernel"]
    assert stem_kernel.shape == (3, 3, channels, WIDTH)
    h = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, _x(2, 16, channels))
    assert h.shape == (2, WIDTH * 8) and h.dtype == jnp.float32


@pytest.mark.slow
def test_imagenet_stem_32x32():
    enc = build_encoder("resnet10", width=WIDTH, stem="imagenet")
    variables = _variables(enc, (2, 32, 32, 3))
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, WIDTH)
    h = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, _x(2, 32, 3))
    assert h.shape == (2, WIDTH * 8) and h.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(h)))


@pytest.mark.slow
def test_bfloat16_compute_returns_float32():
    enc = build_encoder("resnet10", width=WIDTH, dtype=jnp.bfloat16)
    abstract = jax.eval_shape(lambda k: enc.init(k, jnp.zeros((2, 16, 16, 1)), train=False),
                              jax.random.PRNGKey(0))
    # parameters stay float32
    leaves = jax.tree_util.tree_leaves(abstract["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    variables = _materialise(abstract)
    h = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, _x(2, 16, 1))
    assert h.dtype == jnp.float32 and h.shape == (2, WIDTH * 8)


@pytest.mark.parametrize("bad", ["resnet101", "ResNet18", ""])
def test_unknown_arch_raises(bad):
    with pytest.raises(ValueError) as exc:
        build_encoder(bad, width=WIDTH)
    msg = str(exc.value)
    assert repr(bad) in msg
    for name in ARCHITECTURES:
        assert name in msg


def test_unknown_stem_raises():
    with pytest.raises(ValueError) as exc:
        build_encoder("resnet18", width=WIDTH, stem="tiny")
    msg = str(exc.value)
    assert "'tiny'" in msg and "cifar" in msg and "imagenet" in msg


@pytest.mark.parametrize("bad", [0, -4])
def test_non_positive_width_raises(bad):
    with pytest.raises(ValueError) as exc:
        build_encoder("resnet18", width=bad)
    assert str(bad) in str(exc.value)
    assert "width" in str(exc.value)


@pytest.fixture(scope="module")
def simclr():
    model = SimCLRModel(encoder=build_encoder("resnet10", width=WIDTH), head_hidden=8, head_out=5)
    return model, _variables(model, (2, 16, 16, 3))


def test_simclr_model_outputs_and_param_tree(simclr):
    model, variables = simclr
    assert set(variables["params"]) == {"encoder", "head"}
    assert set(variables["batch_stats"]) == {"encoder"}
    head = variables["params"]["head"]
    assert head["dense1"]["kernel"].shape == (WIDTH * 8, 8)
    assert head["dense2"]["kernel"].shape == (8, 5)
    h, z = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _x(3, 16, 3))
    assert h.shape == (3, WIDTH * 8) and z.shape == (3, 5)
    assert h.dtype == jnp.float32 and z.dtype == jnp.float32
    # z is the head applied to h
    z_ref = MLPHead(8, 5).apply({"params": head}, h)
    np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-5, atol=1e-6)


def test_simclr_eval_mode_deterministic_and_no_batch_stats_change(simclr):
    model, variables = simclr
    x = _x(3, 16, 3, seed=1)
    f = jax.jit(lambda v, xx: model.apply(v, xx, train=False, mutable=["batch_stats"]))
    (h1, z1), upd1 = f(variables, x)
    (h2, z2), upd2 = f(variables, x)
    np.testing.assert_array_equal(np.asarray(h1), np.asarray(h2))
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(upd1["batch_stats"])
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # eval mode does not depend on the rest of the batch (running statistics are used)
    (h_single, _), _ = jax.jit(lambda v, xx: model.apply(v, xx, train=False,
                                                          mutable=["batch_stats"]))(variables, x[:1])
    np.testing.assert_allclose(np.asarray(h_single[0]), np.asarray(h1[0]), rtol=1e-4, atol=1e-5)


def test_simclr_train_mode_updates_batch_stats(simclr):
    model, variables = simclr
    x = _x(3, 16, 3, seed=2)
    (h, z), upd = jax.jit(lambda v, xx: model.apply(v, xx, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert h.shape == (3, WIDTH * 8) and z.shape == (3, 5)
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(upd["batch_stats"])
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(before, after))
