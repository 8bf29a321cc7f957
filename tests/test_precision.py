"""Mixed precision: model.dtype="bfloat16" means bf16 compute, float32 state."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslsteal_jax.models import SurrogateModel, build_encoder, build_simclr, compute_dtype
from sslsteal_jax.trainers.surrogate import make_steal_step
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState


def test_compute_dtype_names():
    assert compute_dtype("bfloat16") == jnp.bfloat16
    assert compute_dtype(jnp.bfloat16) == jnp.bfloat16
    assert compute_dtype(None) == jnp.float32 and compute_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match=r"unknown compute dtype 'float16'; allowed: \['bfloat16', 'float32'\]"):
        compute_dtype("float16")


def _train(dtype, steps=3):
    model = SurrogateModel(build_encoder("resnet10", 4, "cifar", dtype), 12)
    v = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
    st = TrainState.create(apply_fn=model.apply, params=v["params"], batch_stats=v["batch_stats"],
                           tx=make_optimizer("adam", 1e-3, 1e-4, 100))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    ans = rng.standard_normal((16, 12)).astype(np.float32)
    step = jax.jit(make_steal_step(model, "infonce", 0.1))
    out = []
    for i in range(steps):
        st, m = step(st, x, ans, jax.random.key(i))
        out.append(float(m["loss"]))
    return model, v, st, np.array(out)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params_and_optimizer_state_and_tracks_fp32_loss():
    m32, v32, st32, l32 = _train("float32")
    m16, v16, st16, l16 = _train("bfloat16")
    # same float32 initialisation whatever the compute dtype
    for a, b in zip(jax.tree.leaves(v32), jax.tree.leaves(v16)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for leaf in jax.tree.leaves((st16.params, st16.batch_stats, st16.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype
    # the convolutions really run in bf16
    jaxpr = str(jax.make_jaxpr(lambda x: m16.apply(v16, x, train=False))(jnp.zeros((2, 8, 8, 1))))
    convs = [ln for ln in jaxpr.splitlines() if "conv_general_dilated" in ln]
    assert convs and all("bf16" in ln for ln in convs)
    assert "bf16" not in str(jax.make_jaxpr(lambda x: m32.apply(v32, x, train=False))(
        jnp.zeros((2, 8, 8, 1))))
    # losses of 3 Adam steps stay within 2% of float32 (bf16 has an 8-bit mantissa)
    assert np.all(np.isfinite(l16)) and l32[-1] < l32[0]
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    assert not np.array_equal(l16, l32)  # bf16 really changed the arithmetic


def test_simclr_config_dtype_switch():
    cfg = ml_collections.ConfigDict(dict(arch="resnet10", width=4, stem="cifar", head_hidden=8,
                                         head_out=4, dtype="bfloat16"))
    assert build_simclr(cfg).encoder.dtype == jnp.bfloat16
    cfg.dtype = "fp16"
    with pytest.raises(ValueError, match="unknown compute dtype 'fp16'"):
        build_simclr(cfg)
