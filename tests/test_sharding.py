"""Data-parallel steps on 8 forced CPU devices equal the single-device steps.

conftest.py forces 8 host devices; each test compiles the same step for a
1-device mesh and for the 8-device ("data",) mesh and compares losses,
parameters and BatchNorm statistics. Companion checks show what a wrong
(per-device) implementation would give, so the equalities are not vacuous.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax import losses
from sslsteal_jax.data.augment import AugmentConfig
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.models import SimCLRModel, SurrogateModel, build_encoder
from sslsteal_jax.trainers.simclr import make_simclr_step
from sslsteal_jax.trainers.surrogate import make_steal_step
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState
from sslsteal_jax.training.vmap import make_vmapped_steal_step, stack_trees, unstack_tree

B, HW = 16, 8


def _devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return jax.devices()


def _state(model, key=0):
    v = model.init(jax.random.key(key), jnp.zeros((2, HW, HW, 1)))
    # SGD + momentum: the update is linear in the gradient, so parameters
    # compare to float tolerance (Adam's first step is sign(g) wherever |g| ~ eps).
    tx = make_optimizer("sgd", 0.1, 1e-4, 100)
    st = TrainState.create(apply_fn=model.apply, params=v["params"], tx=tx,
                           batch_stats=v["batch_stats"])
    # host copies: each mesh gets its own buffers (the compiled step donates them)
    return jax.tree.map(np.asarray, st.replace(step=jnp.asarray(0, jnp.int32)))


def _run(step_fn, state, batch, mesh, steps=2):
    jstep = mesh_lib.compile_step(step_fn, mesh, len(batch))
    st = mesh_lib.replicate(state, mesh)
    key = mesh_lib.replicate(jax.random.key(7), mesh)
    out = []
    for s in range(steps):
        st, m = jstep(st, *mesh_lib.shard_batch(batch, mesh), jax.random.fold_in(key, s))
        out.append(float(m["loss"]))
    return st, np.array(out)


def _assert_same(st1, st8, l1, l8):
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((st1.params, st1.batch_stats, st1.opt_state)),
                    jax.tree.leaves((st8.params, st8.batch_stats, st8.opt_state))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5)
    # the 8-device state really is replicated on all 8 devices
    leaf = jax.tree.leaves(st8.params)[0]
    assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated


def _images(seed=0, n=B):
    return np.random.default_rng(seed).integers(0, 256, (n, HW, HW, 1), dtype=np.uint8)


@pytest.mark.slow
def test_simclr_step_sharded_equals_single_device():
    devs = _devices()
    model = SimCLRModel(build_encoder("resnet10", 4), 16, 8)
    aug = AugmentConfig(crop_scale=(0.5, 1.0))
    step = make_simclr_step(model, aug, 0.2)
    state, batch = _state(model), [_images()]
    st1, l1 = _run(step, state, batch, mesh_lib.data_mesh(devs[:1]))
    st8, l8 = _run(step, state, batch, mesh_lib.data_mesh(devs))
    assert np.all(np.isfinite(l1)) and l1[0] > 1.0  # NT-Xent over 2B=32 rows: about log(31)
    _assert_same(st1, st8, l1, l8)


@pytest.mark.slow
def test_infonce_steal_step_sharded_equals_single_device_with_global_negatives():
    devs = _devices()
    model = SurrogateModel(build_encoder("resnet10", 4), 12)
    step = make_steal_step(model, "infonce", 0.1)
    answers = np.random.default_rng(1).standard_normal((B, 12)).astype(np.float32)
    state, batch = _state(model), [_images(1), answers]
    st1, l1 = _run(step, state, batch, mesh_lib.data_mesh(devs[:1]))
    st8, l8 = _run(step, state, batch, mesh_lib.data_mesh(devs))
    _assert_same(st1, st8, l1, l8)
    # The loss uses negatives from the whole global batch: a per-device loss
    # (each device contrasting only its own 2 rows) is a different number.
    s = np.random.default_rng(2).standard_normal((B, 12)).astype(np.float32)
    glob = float(losses.infonce_loss(s, answers, 0.1))
    local = np.mean([float(losses.infonce_loss(s[i:i + 2], answers[i:i + 2], 0.1))
                     for i in range(0, B, 2)])
    sharded = jax.jit(lambda a, b: losses.infonce_loss(a, b, 0.1),
                      out_shardings=mesh_lib.replicated(mesh_lib.data_mesh(devs)))
    got = float(sharded(*mesh_lib.shard_batch([s, answers], mesh_lib.data_mesh(devs))))
    assert abs(glob - local) > 0.5
    np.testing.assert_allclose(got, glob, rtol=1e-5)


def test_batchnorm_statistics_cover_the_global_batch():
    """Hand-computed: one BatchNorm step from zero running mean with momentum 0.9
    stores 0.1 * (global batch mean); each device holds rows of a different value."""
    mesh = mesh_lib.data_mesh(_devices())
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
    x = np.repeat(np.arange(8, dtype=np.float32), 2)[:, None] * np.ones((1, 3), np.float32)
    variables = bn.init(jax.random.key(0), x)

    def step(state, xb, key):
        y, upd = bn.apply(state, xb, mutable=["batch_stats"])
        return {"params": state["params"], "batch_stats": upd["batch_stats"]}, {"y": y[:, 0]}

    st, m = mesh_lib.compile_step(step, mesh, 1)(
        mesh_lib.replicate(jax.tree.map(np.asarray, variables), mesh),
        *mesh_lib.shard_batch([x], mesh), mesh_lib.replicate(jax.random.key(0), mesh))
    np.testing.assert_allclose(np.asarray(st["batch_stats"]["mean"]), [0.35] * 3, rtol=1e-6)
    # biased batch variance of 0..7 (each twice) = 5.25; running var = 0.9 * 1 + 0.1 * 5.25
    np.testing.assert_allclose(np.asarray(st["batch_stats"]["var"]), [1.425] * 3, rtol=1e-5)
    # normalised with the global mean 3.5 and std sqrt(5.25): not per-device zeros
    np.testing.assert_allclose(np.asarray(m["y"]), (x[:, 0] - 3.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)


def test_shard_batch_places_contiguous_rows_per_device():
    mesh = mesh_lib.data_mesh(_devices())
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    (arr,) = mesh_lib.shard_batch([x], mesh)
    assert arr.shape == (16, 3)
    for shard in arr.addressable_shards:
        i = list(mesh.devices.flat).index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data), x[2 * i:2 * i + 2])
    assert mesh_lib.process_rows(16, mesh) == slice(0, 16)
    with pytest.raises(ValueError, match="batch size 12 is not divisible by the 8 devices"):
        mesh_lib.shard_batch([x[:12]], mesh)
    (stacked,) = mesh_lib.shard_batch([np.stack([x, x + 1])], mesh, leading_axes=1)
    assert stacked.sharding.spec == jax.sharding.PartitionSpec(None, "data")


@pytest.mark.slow
def test_sharded_feature_extraction_equals_single_device():
    devs = _devices()
    enc = build_encoder("resnet10", 4)
    v = enc.init(jax.random.key(3), jnp.zeros((2, HW, HW, 1)))
    imgs = _images(3, n=25)  # not a multiple of 8: padded and trimmed
    one = extract_features(make_apply(enc, v, mesh=mesh_lib.data_mesh(devs[:1])), imgs, 10)
    eight = extract_features(make_apply(enc, v, mesh=mesh_lib.data_mesh(devs)), imgs, 10)
    ref = np.asarray(enc.apply(v, imgs.astype(np.float32) / 255.0, train=False))
    assert eight.shape == (25, 32)
    np.testing.assert_allclose(one, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_vmapped_steal_step_equals_sequential_members():
    """Both stacked modes (jax.vmap; "unroll" = mode "auto" on CPU) give each
    member exactly its own sequential step, batch axis split over 8 devices."""
    mesh = mesh_lib.data_mesh(_devices())
    model = SurrogateModel(build_encoder("resnet10", 4), 12)
    step = make_steal_step(model, "mse", None)
    k = 2
    states = [_state(model, key=i) for i in range(k)]
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, (k, B, HW, HW, 1), dtype=np.uint8)
    ans = rng.standard_normal((k, B, 12)).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), k)
    seq = jax.jit(step)
    refs = [seq(jax.tree.map(jnp.asarray, states[i]), imgs[i], ans[i], keys[i]) for i in range(k)]
    for mode in ("vmap", "unroll"):
        vstep = mesh_lib.compile_step(make_vmapped_steal_step(step, mode), mesh, 2, leading_axes=1)
        st, m = vstep(mesh_lib.replicate(stack_trees(states), mesh),
                      *mesh_lib.shard_batch([imgs, ans], mesh, leading_axes=1),
                      mesh_lib.replicate(keys, mesh))
        assert m["loss"].shape == (k,)
        members = unstack_tree(st)
        for (ref, mref), member, loss in zip(refs, members, np.asarray(m["loss"])):
            np.testing.assert_allclose(loss, float(mref["loss"]), rtol=1e-5)
            for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(member.params)):
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-5)
        # members start from different initialisations and stay different
        assert not np.allclose(jax.tree.leaves(members[0].params)[0],
                               jax.tree.leaves(members[1].params)[0])
    with pytest.raises(ValueError, match="differ in number, shape or dtype"):
        stack_trees([states[0], _state(SurrogateModel(build_encoder("resnet10", 4), 10))])
    with pytest.raises(ValueError, match="unknown mode 'pmap'"):
        make_vmapped_steal_step(step, "pmap")


def test_one_process_reads_the_whole_batch_and_local_rows_must_fit():
    """With one process, process_batch_indices is the whole global batch and
    place_local_rows is shard_batch; a local block of the wrong size is refused."""
    from sslsteal_jax.training.loop import epoch_batches, process_batch_indices
    mesh = mesh_lib.data_mesh()
    np.testing.assert_array_equal(process_batch_indices(100, 16, 3, 7, mesh),
                                  epoch_batches(100, 16, 3, 7))
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    (a,), (b,) = mesh_lib.place_local_rows([x], 16, mesh), mesh_lib.shard_batch([x], mesh)
    assert a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"rows \[0, 16\) of a global batch of 16, got 8 rows"):
        mesh_lib.place_local_rows([x[:8]], 16, mesh)
    # replicate keeps typed PRNG keys and numpy leaves, host_copy/to_host give numpy back
    tree = mesh_lib.replicate({"k": jax.random.key(1), "w": np.ones(3, np.float32)}, mesh)
    assert tree["w"].sharding.is_fully_replicated and jax.dtypes.issubdtype(
        tree["k"].dtype, jax.dtypes.prng_key)
    assert isinstance(mesh_lib.host_copy(tree["w"]), np.ndarray)
    np.testing.assert_array_equal(mesh_lib.to_host(a), x)


def test_wait_for_key_waits_in_slices_until_the_value_or_the_deadline(monkeypatch):
    """``wait_for_key``: blocking calls of at most ``slice_ms`` (a Python signal handler
    runs between them), the value once it is there, the client's deadline error once the
    total wait has passed, any other error at once."""
    clock = [0.0]
    monkeypatch.setattr(mesh_lib.time, "monotonic", lambda: clock[0])

    class Client:
        def __init__(self, ready_after_s=None, error=None):
            self.ready_after_s, self.error, self.calls = ready_after_s, error, []

        def blocking_key_value_get(self, key, timeout_ms):
            self.calls.append(timeout_ms)
            if self.error:
                raise self.error
            if self.ready_after_s is not None and clock[0] >= self.ready_after_s:
                return "v"
            clock[0] += timeout_ms / 1000
            raise RuntimeError(f"DEADLINE_EXCEEDED: GetKeyValue() timed out with key: {key}")

    c = Client(ready_after_s=1.2)
    assert mesh_lib.wait_for_key(c, "k", 10_000, slice_ms=500) == "v"
    assert c.calls == [500, 500, 500, 500]  # 0-0.5, 0.5-1.0, 1.0-1.5 s, then there
    clock[0] = 0.0
    c = Client()
    with pytest.raises(RuntimeError, match="DEADLINE_EXCEEDED"):
        mesh_lib.wait_for_key(c, "k", 1_200, slice_ms=500)
    assert c.calls == [500, 500, 200]  # never past the total
    c = Client(error=RuntimeError("UNAVAILABLE: Socket closed"))
    with pytest.raises(RuntimeError, match="Socket closed"):
        mesh_lib.wait_for_key(c, "k", 10_000, slice_ms=500)
    assert c.calls == [500]


def test_writer_computes_runs_on_process_zero_and_shares_the_value(monkeypatch):
    """Two processes simulated in one (a dict as the coordination service's key-value
    store): process 0 runs each function and publishes its value; process 1 runs none and
    receives the same values, call by call, floats bit for bit."""
    import itertools

    from jax._src import distributed

    assert mesh_lib.writer_computes(lambda: 7) == 7  # one process: just the call
    store = {}

    class Client:
        def key_value_set(self, key, value):
            assert key not in store
            store[key] = value

        def blocking_key_value_get(self, key, timeout_in_ms):
            assert timeout_in_ms == mesh_lib.WAIT_SLICE_MS  # sliced: signals get through
            return store[key]

    monkeypatch.setattr(distributed.global_state, "client", Client())
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    values = [{"name": "a", "probe_full": 0.1 + 0.2, "knn": None, "settings": {"lr": 2e-3}},
              [1e-300, 3, "b"]]
    got = {}
    for pid in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda pid=pid: pid)
        monkeypatch.setattr(mesh_lib, "_WRITER_CALLS", itertools.count())
        calls = []

        def fn(v, pid=pid):
            if pid:
                pytest.fail("process 1 ran the function")
            calls.append(v)
            return v

        got[pid] = [mesh_lib.writer_computes(lambda v=v: fn(v)) for v in values]
        assert len(calls) == (2 if pid == 0 else 0)
    assert got[0] == got[1] == values
    assert got[1][0]["probe_full"] == 0.30000000000000004 and got[1][1][0] == 1e-300
    assert len(store) == 2
