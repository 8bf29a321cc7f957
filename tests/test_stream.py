"""Streaming input (data.stream), the chunked answer cache (pipeline.queries) and
streamed feature extraction: bit-identical to the in-memory path, resumable, exact
charges (issue 12, items 1-2)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sslsteal_jax.data import registry, stream
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.pipeline import queries
from sslsteal_jax.data.order import epoch_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist@32x32x3"])
def test_streamed_batches_equal_in_memory(name):
    x, y = registry.load_split(name, "test")
    pool = stream.StreamSource(name, "test").subset(0, 3000)
    assert pool.shape == (3000, *x.shape[1:]) and pool.dtype == np.uint8
    bs, seed = 96, 7
    steps = range(28, 36)  # crosses the epoch boundary at step 31 (3000 // 96 = 31)
    got = list(stream.training_batches(pool, bs, seed, steps[0], steps[-1] + 1, rows=slice(0, bs)))
    assert len(got) == len(steps)
    for s, (images, labels) in zip(steps, got):
        idx = epoch_batches(3000, bs, seed, s)
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, x[:3000][idx])
        np.testing.assert_array_equal(labels, y[:3000][idx])
    seq = list(stream.sequential_batches(pool, 1000, start=500, stop=2700))
    assert [len(b) for b, _ in seq] == [1000, 1000, 200]
    np.testing.assert_array_equal(np.concatenate([b for b, _ in seq]), x[500:2700])
    np.testing.assert_array_equal(pool[[5, -1, 7]], x[[5, 2999, 7]])


class _IndexSource:
    """A source whose rows are their own indices (to check which rows a shard reads)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get(self, idx):
        return np.asarray(idx), np.asarray(idx)


def test_two_shards_disjoint_and_cover_the_epoch_once():
    n, bs, seed = 1000, 64, 3
    steps = n // bs  # one epoch: 15 steps, 40 examples dropped
    shards = [np.concatenate([i for i, _ in stream.training_batches(
        _IndexSource(n), bs, seed, 0, steps, rows=rows)])
        for rows in (slice(0, bs // 2), slice(bs // 2, bs))]
    assert len(shards[0]) == len(shards[1]) == steps * bs // 2
    assert not set(shards[0]) & set(shards[1])
    both = np.concatenate(shards)
    assert len(np.unique(both)) == steps * bs  # each example at most once ...
    perm = np.random.default_rng([seed, 0]).permutation(n)
    assert set(both) == set(perm[:steps * bs])  # ... and exactly the epoch's batches
    # the second epoch starts a new permutation
    nxt = next(iter(stream.training_batches(_IndexSource(n), bs, seed, steps, steps + 1,
                                            rows=slice(0, bs))))[0]
    np.testing.assert_array_equal(nxt, np.random.default_rng([seed, 1]).permutation(n)[:bs])


def test_stream_config_errors():
    with pytest.raises(ConfigError, match="rows"):
        stream.StreamSource("fashion_mnist", "test", start=5, stop=20000)
    with pytest.raises(ConfigError, match="unknown split"):
        stream.StreamSource("fashion_mnist", "validation")
    with pytest.raises(ConfigError, match="batch_size"):
        stream.training_batches(_IndexSource(10), 11, 0, 0, 1, rows=slice(0, 11))
    with pytest.raises(ConfigError, match="prefetch"):
        stream.sequential_batches(_IndexSource(10), 2, prefetch=0)


def _fake_buy(calls, fail_at=None):
    """buy(start, stop, request_id): answers = row index; one query charged per row."""

    def buy(start, stop, request_id):
        if fail_at is not None and start >= fail_at:
            raise RuntimeError("crash")
        calls.append((start, stop, request_id))
        rows = np.arange(start, stop)
        images = np.broadcast_to(rows.astype(np.uint8)[:, None, None, None], (len(rows), 2, 2, 1))
        return images.copy(), np.stack([rows, -rows], 1).astype(np.float32), len(rows)

    return buy


def test_chunked_cache_resumes_and_extends(tmp_path):
    path, fp = str(tmp_path / "cache"), {"pool": "p", "query_set": "clean"}
    calls = []
    with pytest.raises(RuntimeError):  # a crash while buying rows 300..
        queries.cached_answers(path, fp, 1000, _fake_buy(calls, fail_at=300), chunk=128)
    assert [c[:2] for c in calls] == [(0, 128), (128, 256), (256, 384)]
    calls.clear()
    got = queries.cached_answers(path, fp, 1000, _fake_buy(calls), chunk=128)
    assert [c[:2] for c in calls] == [(384, 512), (512, 640), (640, 768), (768, 896), (896, 1000)]
    assert got.queries_charged == 1000 - 384 and got.total_charged == 1000 and not got.from_cache
    assert got.answers.shape == (1000, 2) and got.images.shape == (1000, 2, 2, 1)
    idx = np.array([999, 0, 383, 384, 127, 128, 500])
    np.testing.assert_array_equal(got.answers[idx][:, 0], idx)
    np.testing.assert_array_equal(got.images[idx][:, 0, 0, 0], idx.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(got.answers)[:, 1], -np.arange(1000))
    # reused (a prefix), then extended from the partial last chunk: nothing bought twice
    calls.clear()
    again = queries.cached_answers(path, fp, 700, _fake_buy(calls), chunk=128)
    assert calls == [] and again.from_cache and again.queries_charged == 0 and len(again.images) == 700
    more = queries.cached_answers(path, fp, 1100, _fake_buy(calls), chunk=128)
    assert [c[:2] for c in calls] == [(1000, 1024), (1024, 1100)]
    assert more.total_charged == 1100
    # request ids: stable per chunk, distinct between chunks
    assert len({c[2] for c in calls}) == 2 and calls[0][2].endswith(":1000-1024")
    with pytest.raises(ConfigError, match="other settings"):
        queries.cached_answers(path, dict(fp, pool="q"), 10, _fake_buy([]), chunk=128)
    with pytest.raises(ConfigError, match="chunks of 128"):
        queries.cached_answers(path, fp, 10, _fake_buy([]), chunk=64)
    with pytest.raises(ConfigError, match="positive"):
        queries.cached_answers(str(tmp_path / "other"), fp, 10, _fake_buy([]), chunk=0)


def test_streamed_feature_extraction_equals_array():
    import jax.numpy as jnp
    from sslsteal_jax.evaluation.features import extract_features

    def apply(x):  # per-image features, so padding never matters
        x = x.astype(jnp.float32) / 255.0
        return jnp.stack([x.mean((1, 2, 3)), x.max((1, 2, 3)), x[:, 3, 5, 0]], 1)

    x, _ = registry.load_split("fashion_mnist", "test")
    pool = stream.StreamSource("fashion_mnist", "test").subset(100, 1100)
    want = extract_features(apply, x[100:1100], batch_size=64)
    np.testing.assert_array_equal(extract_features(apply, pool, batch_size=64), want)
    batches = stream.sequential_batches(pool, 300)  # batches of 300: cut to 64, padded
    np.testing.assert_array_equal(extract_features(apply, batches, batch_size=64), want)


def _run_workload(cache, ledger, budget, chunk, pause):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "stream_query_workload.py"),
           str(cache), str(ledger), str(budget), str(chunk), str(pause)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def _charged(ledger):
    return {f: json.load(open(os.path.join(ledger, f)))["n"]
            for f in os.listdir(ledger) if f.startswith("charged_") and f.endswith(".json")}


@pytest.mark.slow
def test_kill9_during_streamed_query_run_charges_the_budget_once(tmp_path):
    budget, chunk = 600, 50
    ref = _run_workload(tmp_path / "ref_cache", tmp_path / "ref_ledger", budget, chunk, 0)
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["total_charged"] == budget

    cache, ledger = tmp_path / "cache", tmp_path / "ledger"
    proc = _run_workload(cache, ledger, budget, chunk, 0.5)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill while a chunk is charged but not yet committed
        committed = len([f for f in os.listdir(cache) if f.startswith("chunk_")
                         and f.endswith(".json")]) if os.path.isdir(cache) else 0
        pending = len(_charged(ledger)) if os.path.isdir(ledger) else 0
        if committed >= 2 and pending > committed:
            break
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    else:
        pytest.fail("the query run never reached its third chunk")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    charged_at_kill = sum(_charged(ledger).values())
    assert chunk * 3 <= charged_at_kill < budget

    again = _run_workload(cache, ledger, budget, chunk, 0)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["total_charged"] == budget
    assert sum(_charged(ledger).values()) == budget  # the provider's ledger: once each
    assert len(_charged(ledger)) == budget // chunk
    with open(os.path.join(ledger, "replays.log")) as f:
        assert len(f.read().split()) == 1  # the chunk killed before its commit: replayed
    mine = queries.cached_answers(str(cache), {"pool": "fashion_mnist/test[:5000]",
                                               "query_set": "clean"}, budget, None, chunk=chunk)
    theirs = queries.cached_answers(str(tmp_path / "ref_cache"),
                                    {"pool": "fashion_mnist/test[:5000]", "query_set": "clean"},
                                    budget, None, chunk=chunk)
    assert mine.from_cache and theirs.from_cache
    np.testing.assert_array_equal(np.asarray(mine.answers), np.asarray(theirs.answers))
    np.testing.assert_array_equal(np.asarray(mine.images), np.asarray(theirs.images))
    x, _ = registry.load_split("fashion_mnist", "test")
    np.testing.assert_array_equal(np.asarray(mine.images), x[:budget])


@pytest.mark.parametrize("config, field, value, message", [
    ("quickstart", "stream.threads", -1, "stream.threads=-1; allowed: an integer >= 0"),
    ("quickstart", "stream.answer_chunk", 0, "stream.answer_chunk=0; allowed: an integer >= 1"),
    ("quickstart", "stream.enabled", "yes", "stream.enabled='yes'; allowed: True | False"),
    ("budget_scan", "stream.enabled", 1, "stream.enabled=1; allowed: True | False"),
    ("budget_scan", "stream.prefetch", 0, "stream.prefetch=0; allowed: an integer >= 1"),
])
def test_stream_config_is_validated_in_one_line(config, field, value, message):
    from sslsteal_jax.configs import load_config, validate

    cfg = load_config(config)
    block, key = field.split(".")
    with cfg[block].ignore_type():  # a value of the wrong type, as a hand-edited config has
        cfg[block][key] = value
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_streamed_run_refuses_strategies_it_does_not_stream():
    from sslsteal_jax.configs import load_config, validate

    cfg = load_config("quickstart", "strategies=direct+augmented_queries")
    cfg.stream.enabled = True
    with pytest.raises(ConfigError, match=r"^strategies='augmented_queries'; allowed: with "
                                          r"stream.enabled=True: direct \| stolenencoder"):
        validate(cfg)


@pytest.mark.slow  # ~25 s: the in-memory side resizes all 70,000 Fashion-MNIST images
def test_streamed_experiment_data_equals_in_memory():
    """experiment_data(stream=True): every part holds the in-memory part's bytes, also an
    out-of-distribution pool resized to a resized victim dataset's shape."""
    from sslsteal_jax.data.splits import experiment_data

    kw = dict(dataset="fashion_mnist@32x32x3", query_dataset="digits", probe_test_size=300,
              victim_train_size=200, probe_train_size=400)
    mem, lazy = experiment_data(**kw), experiment_data(**kw, stream=True)
    assert lazy.names == mem.names
    for part in ("victim_train", "query_pool", "probe_train_x", "probe_test_x"):
        assert isinstance(getattr(lazy, part), stream.StreamSource), part
        np.testing.assert_array_equal(np.asarray(getattr(lazy, part)), getattr(mem, part))
    for part in ("probe_train_y", "probe_test_y"):
        np.testing.assert_array_equal(getattr(lazy, part), getattr(mem, part))
        assert getattr(lazy, part).dtype == np.int32


@pytest.mark.slow
def test_two_process_streamed_extraction_reads_only_each_hosts_rows(tmp_path):
    """A pod in miniature (2 processes x 1 CPU device, jax.distributed over gloo, the
    launcher of launch/local.sh): each process reads only its half of every batch of a
    lazy source, and both get every row's features, equal to one process's."""
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-m", "sslsteal_jax.cluster", "launch", "2", "0",
                          sys.executable, os.path.join(ROOT, "tests", "multihost",
                                                       "stream_features.py"), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = [json.load(open(tmp_path / f"process_{i}.json")) for i in (0, 1)]
    assert out[0]["devices"] == out[1]["devices"] == 2
    assert out[0]["reads"] == [[i, i + 32] for i in range(0, 1000, 64)]
    assert out[1]["reads"] == [[i + 32, min(i + 64, 1000)] for i in range(0, 1000, 64)]
    x, _ = registry.load_split("fashion_mnist", "test")
    x = x[:1000].astype(np.float32)
    want = np.stack([x.mean((1, 2, 3)), x[:, 3, 5, 0]], 1)
    for o in out:
        np.testing.assert_allclose(np.asarray(o["features"], np.float32), want, rtol=1e-6)
    np.testing.assert_array_equal(out[0]["features"], out[1]["features"])
