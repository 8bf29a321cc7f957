"""End to end on real Fashion-MNIST, at toy scale, through ``sslsteal_jax.main.run``:
victim SimCLR trained from scratch -> representation API with a budget ->
InfoNCE direct extraction -> linear probes / kNN / fidelity -> results files.

Sizes are chosen so the whole chain takes about a minute on a small CPU;
the assertions are the qualitative ones that hold at this scale (the
surrogate imitates the victim better than an independent encoder does).
"""
import json
import os

import pytest

from sslsteal_jax.configs import config_module
from sslsteal_jax.experiments import steal
from sslsteal_jax.pipeline.workdir import WorkdirExistsError
from sslsteal_jax.main import run

BUDGET = 1000
# Surrogate epochs over the 1,000 answers (12 steps of batch 256; was 8 epochs on a victim
# trained on 2,048 images). Measured with these sizes (victim on 1,024 images): cosine
# fidelity 0.951 vs the independent encoder's 0.573 (the test asks for +0.1), every probe
# and kNN >= 42.0 % (asked: > 30 %).
EPOCHS = 4


_load_config_module = config_module


def tiny_config(**quickstart_args):
    """The quickstart config scaled down: victim trained here (ResNet-10, width 8,
    1 epoch on 1,024 images), 1,000 InfoNCE queries (EPOCHS epochs), small probe splits (1,000 / 500
    images, 20 labels per class for probe_100, 30 probe epochs)."""
    args = ",".join(f"{k}={v}" for k, v in {"losses": "infonce", "budget": BUDGET,
                                              "victim": "scratch", "epochs": EPOCHS,
                                              **quickstart_args}.items())
    cfg = _load_config_module("quickstart").get_config(args)
    cfg.victim.checkpoint = ""  # never touch the shipped victim
    cfg.victim.train = _load_config_module("victim_simclr").get_config(
        "width=8,epochs=1,batch_size=128,head_hidden=64,head_out=32")
    cfg.victim.train.log_every_steps = 8
    cfg.victim_train_size = 1024  # 8 SimCLR steps: the probes only have to clear 30 %
    # Small probes (no weight-decay selection): every probe only has to clear 30 %.
    cfg.probe_train_size = 1000
    cfg.probe_test_size = 500
    cfg.eval.update(dict(probe_epochs=30, per_class=20, select_probe=False))
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("e2e"))
    results = run(tiny_config(), wd)
    return wd, results


@pytest.mark.slow
def test_end_to_end_steal(finished):
    wd, results = finished
    for f in ("results.json", "results.csv", "results.png", "query_cache.npz"):
        assert os.path.exists(os.path.join(wd, f)), f
    with open(os.path.join(wd, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk["queries_charged"] == BUDGET == results["queries_charged"]
    assert on_disk["budget"] == BUDGET
    assert on_disk["resumed"] is False  # every step trained in this invocation
    rows = {r["name"]: r for r in on_disk["rows"]}
    assert set(rows) == {"victim", "surrogate (infonce)", "independent (random init)",
                         "raw pixels"}
    vic, sur, ind = rows["victim"], rows["surrogate (infonce)"], rows["independent (random init)"]
    print("\nend-to-end rows:")
    for r in on_disk["rows"]:
        print(f"  {r['name']:<28} probe_full={r['probe_full']:.2f} probe_100={r['probe_100']:.2f} "
              f"knn={r['knn']:.2f} cos={r['cosine_fidelity']} l2={r['l2_fidelity']}")
    print("timing:", {k: round(v, 1) for k, v in on_disk["timing_seconds"].items()})
    # The victim is compared with its own API output: fidelity 1.
    assert vic["cosine_fidelity"] == pytest.approx(1.0, abs=1e-4)
    assert vic["l2_fidelity"] == pytest.approx(0.0, abs=1e-3)
    # Stealing makes the surrogate imitate the victim better than an independent encoder.
    assert sur["cosine_fidelity"] > ind["cosine_fidelity"] + 0.1
    assert sur["l2_fidelity"] < ind["l2_fidelity"]
    for r in rows.values():
        for k in ("probe_full", "probe_100", "knn"):
            assert 30.0 < r[k] <= 100.0, (r["name"], k, r[k])
    assert on_disk["surrogate_training"]["infonce"]["steps"] == EPOCHS * (BUDGET // 256)
    # the query pool: the test split less the 500 probe-test images
    assert on_disk["splits"]["query_pool"] == "fashion_mnist/test[:9500]"
    assert os.path.isdir(os.path.join(wd, "victim", "checkpoints"))
    assert os.path.isdir(os.path.join(wd, "surrogate_infonce", "checkpoints"))


@pytest.mark.slow
def test_streamed_run_gives_the_in_memory_numbers(finished, tmp_path):
    """stream.enabled: the pool and probes read lazily, the answers bought into the
    chunked cache (3 chunks of 400) and read back memory-mapped; every number of the
    in-memory run's rows is reproduced bit for bit (same victim, same seed)."""
    wd, results = finished
    cfg = tiny_config(victim="shipped")
    cfg.victim.checkpoint = os.path.join(wd, "victim", "checkpoints")
    cfg.stream.update(dict(enabled=True, answer_chunk=400))
    streamed = run(cfg, str(tmp_path / "streamed"))
    assert streamed["queries_charged"] == BUDGET
    chunks = sorted(f for f in os.listdir(tmp_path / "streamed" / "query_cache")
                    if f.endswith(".json") and f.startswith("chunk_"))
    assert chunks == ["chunk_000000000_000000400.json", "chunk_000000400_000000800.json",
                      "chunk_000000800_000001000.json"]
    keys = ("probe_full", "probe_100", "knn", "cosine_fidelity", "l2_fidelity")
    assert ([{k: r[k] for k in ("name", *keys)} for r in streamed["rows"]]
            == [{k: r[k] for k in ("name", *keys)} for r in results["rows"]])


@pytest.mark.slow
def test_rerun_from_finished_checkpoints_says_resumed(finished, tmp_path):
    """An overwrite rerun finds every training step in the checkpoints: same rows, and
    ``results.json`` says its times cover this invocation only (``resumed``)."""
    import shutil
    wd, results = finished
    copy = str(tmp_path / "again")
    shutil.copytree(wd, copy)
    cfg = tiny_config()
    cfg.overwrite = True
    again = run(cfg, copy)
    assert again["resumed"] is True
    assert again["surrogate_training"]["infonce"]["resumed_from"] == EPOCHS * (BUDGET // 256)
    assert again["rows"] == results["rows"]


@pytest.mark.slow
def test_rerun_into_finished_workdir_refused(finished):
    wd, _ = finished
    with pytest.raises(WorkdirExistsError, match="overwrite"):
        run(tiny_config(), wd)


def test_parse_losses():
    import re
    from sslsteal_jax import losses
    assert steal.parse_losses("infonce") == ["infonce"]
    assert steal.parse_losses(" mse, softnn ") == ["mse", "softnn"]
    # "all" is the paper's four, in order; every group is the registry's own definition
    assert steal.parse_losses("all") == ["mse", "infonce", "softnn", "wasserstein"]
    for group, names in losses.LOSS_GROUPS.items():
        assert steal.parse_losses(group) == list(names), group
    extra = steal.parse_losses("extra")
    assert {"cosine", "barlow", "symmetrized", "supcon", "softce"} <= set(extra)
    assert steal.parse_losses("every") == steal.parse_losses("all") + extra
    # a group inside a list adds its losses (it was "unknown loss 'all'", though listed)
    assert steal.parse_losses("all+cosine") == ["mse", "infonce", "softnn", "wasserstein",
                                                "cosine"]
    assert steal.parse_losses("infonce,all") == ["infonce", "mse", "softnn", "wasserstein"]
    allowed = re.escape(f"allowed: {list(losses.ALL_LOSSES)} or 'all'")
    for bad in ("bogus", "mse,bogus", "", ",", "xent"):  # xent: a baseline, not selectable
        with pytest.raises(ValueError, match=allowed):
            steal.parse_losses(bad)


def test_unknown_loss_fails_before_anything(tmp_path):
    cfg = tiny_config()
    cfg.losses = "infonce,bogus"
    with pytest.raises(ValueError, match="bogus"):
        run(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # rejected before the workdir is created


@pytest.mark.slow
def test_budget_larger_than_pool_fails_before_training(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("the victim must not be trained when the budget is invalid")

    from sslsteal_jax.pipeline import victim as victim_lib
    monkeypatch.setattr(victim_lib, "train_victim", no_training)
    monkeypatch.setattr(steal, "train_surrogate", no_training)
    cfg = tiny_config(budget=10 ** 6)
    with pytest.raises(ValueError, match=r"query budget 1000000 .*query pool size 9500 "
                                         r"\(fashion_mnist/test\[:9500\]\)"):
        run(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "victim")
