"""The budget scan with ``stream.enabled=True``: lazy data views, answers bought into
the chunked on-disk cache (budgets are its prefixes, a larger budget tops it up),
surrogates trained on memory-mapped answers, streamed probe features; every cell's
results equal the in-memory scan's."""
import json
import os

import pytest

from sslsteal_jax.configs import config_module, validate
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.pipeline import queries
from sslsteal_jax.pipeline.workdir import REPO_ROOT

VICTIM = os.path.join(REPO_ROOT, "victims", "fashion_mnist_resnet10_w16", "checkpoints")


def tiny_scan(stream: bool, budgets=(64, 128)):
    """Two budgets of one loss (mse), one epoch each, small probes; answers bought in
    chunks of 48 when streamed (128 answers: 3 chunks, the last one partial)."""
    cfg = config_module("budget_scan").get_config(
        "losses=mse,protocol=epochs,epochs=1,probe_train_size=200,stack=1")
    cfg.victim.checkpoint = VICTIM
    cfg.budgets = budgets
    cfg.query_sources = "fashion_mnist"
    cfg.probe_test_size = 100
    cfg.eval.update(dict(per_class=5, probe_epochs=5, select_probe=False))
    cfg.stream.update(dict(enabled=stream, answer_chunk=48, threads=0))
    validate(cfg)
    return cfg


@pytest.mark.slow  # two tiny scans and a top-up (~30 s idle; compiles dominate)
def test_streamed_scan_equals_in_memory_scan_and_tops_up_its_cache(tmp_path):
    mem = budget_scan.run(tiny_scan(False), str(tmp_path / "mem"))
    swd = str(tmp_path / "stream")
    st = budget_scan.run(tiny_scan(True), swd)
    assert st["queries_charged_this_run"] == mem["queries_charged_this_run"] == {
        "fashion_mnist": 128}
    assert [(c["budget"], c["loss"]) for c in st["cells"]] == [(64, "mse"), (128, "mse")]
    for a, b in zip(mem["cells"], st["cells"]):
        assert a["steps"] == b["steps"] == b["budget"] // 64  # mse: batch 64, one epoch
        for k in ("probe_full", "probe_100", "knn"):
            assert a[k] == b[k], (a["budget"], k, a[k], b[k])
        for k in ("cosine_fidelity", "l2_fidelity"):  # answers bought in chunks of 48, not
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["budget"], k)  # 128

    for ref in ("victim", "independent"):
        for k in ("probe_full", "probe_100", "knn"):
            assert mem["reference"][ref][k] == st["reference"][ref][k], (ref, k)
    cache = os.path.join(swd, "answers_fashion_mnist")
    assert not os.path.exists(cache + ".npz")
    assert sorted(f for f in os.listdir(cache) if f.endswith(".json")) == [
        "chunk_000000000_000000048.json", "chunk_000000048_000000096.json",
        "chunk_000000096_000000128.json", "manifest.json"]

    # a larger budget in the same workdir buys only the missing answers (a top-up of the
    # chunked cache) and reuses both finished cells
    cfg = tiny_scan(True, budgets=(64, 128, 160))
    cfg.overwrite = True
    again = budget_scan.run(cfg, swd)
    assert again["queries_charged_this_run"] == {"fashion_mnist": 32}
    assert again["cells"][:2] == json.loads(json.dumps(st["cells"]))
    assert again["cells"][2]["budget"] == 160
    with open(os.path.join(cache, "chunk_000000128_000000144.json")) as f:
        assert json.load(f) == {"charged": 16}  # chunk boundaries stay multiples of 48


def test_chunked_prefix_is_a_memory_mapped_view(tmp_path):
    import numpy as np

    x = np.arange(30, dtype=np.float32).reshape(10, 3)

    def buy(start, stop, request_id):
        return x[start:stop].astype(np.uint8), x[start:stop], stop - start

    got = queries.cached_answers(str(tmp_path / "c"), {"pool": "p"}, 10, buy, chunk=4)
    head = queries.prefix(got.answers, 6)
    assert isinstance(head, queries.ChunkedArray) and head.shape == (6, 3)
    np.testing.assert_array_equal(head[:], x[:6])
    np.testing.assert_array_equal(head[np.array([5, 0])], x[[5, 0]])
    with pytest.raises(IndexError):
        head[6]
    with pytest.raises(ValueError, match="11 rows asked of a view of 10"):
        got.answers.head(11)
    np.testing.assert_array_equal(queries.prefix(x, 2), x[:2])


def test_streamed_scan_refuses_a_bad_stream_block():
    cfg = tiny_scan(True)
    cfg.stream.answer_chunk = 0
    with pytest.raises(ConfigError, match="stream.answer_chunk"):
        validate(cfg)
