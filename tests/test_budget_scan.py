"""Budget scan on real Fashion-MNIST at toy scale: one cache of victim answers,
fresh surrogates per budget, accounting, resume, and InfoNCE improving with
the budget (SPEC claim 3)."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.experiments.common import REPO_ROOT

BUDGETS = (256, 1024, 4096)


def _config_module(name):
    spec = importlib.util.spec_from_file_location(
        f"_scan_cfg_{name}", os.path.join(REPO_ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_victim():
    """The shipped stage-1 victim (SimCLR ResNet-10 width 16, 22 epochs): a real
    encoder, so budget effects are not drowned by a near-random victim."""
    return os.path.join(REPO_ROOT, "victims", "fashion_mnist_resnet10_w16", "checkpoints")


def scan_config(victim, **overrides):
    cfg = _config_module("budget_scan").get_config("losses=infonce,protocol=epochs,epochs=3,probe_train_size=2000")
    cfg.victim.checkpoint = victim
    cfg.budgets = ",".join(map(str, BUDGETS))
    cfg.query_sources = "fashion_mnist"
    cfg.probe_test_size = 1000
    cfg.eval.per_class = 50
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def scan(tiny_victim, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("scan"))
    return wd, budget_scan.run(scan_config(tiny_victim), wd)


def test_scan_files_accounting_and_fresh_cells(scan):
    wd, res = scan
    for f in ("results.json", "results.csv", "scan_fashion_mnist.png", "answers_fashion_mnist.npz"):
        assert os.path.exists(os.path.join(wd, f)), f
    # One account, charged exactly the largest budget, once.
    assert res["queries_charged_this_run"] == {"fashion_mnist": max(BUDGETS)}
    with np.load(os.path.join(wd, "answers_fashion_mnist.npz")) as z:
        assert z["answers"].shape[0] == max(BUDGETS)
    cells = {c["budget"]: c for c in res["cells"]}
    assert sorted(cells) == list(BUDGETS)
    for b, c in cells.items():
        # the paper's protocol: 3 epochs over each budget (batch 256)
        assert c["steps"] == 3 * (b // 256) and c["epochs"] == 3, (b, c)
        # each cell has its own freshly initialised surrogate checkpoint
        assert os.path.isdir(os.path.join(wd, "cells", budget_scan.cell_name(
            "fashion_mnist", "infonce", b, 0), "checkpoints"))
    print("\n" + budget_scan.format_scan(res["cells"], res["reference"]))


def test_infonce_improves_with_budget(scan):
    _, res = scan
    cells = {c["budget"]: c for c in res["cells"]}
    fid = [cells[b]["cosine_fidelity"] for b in BUDGETS]
    assert fid[0] < fid[1] < fid[2], fid
    assert cells[BUDGETS[-1]]["probe_full"] > cells[BUDGETS[0]]["probe_full"]
    assert fid[-1] > res["reference"]["independent"]["cosine_fidelity"] + 0.1


def test_resume_skips_finished_cells_and_never_requeries(scan, tiny_victim, monkeypatch):
    wd, res = scan
    os.remove(os.path.join(wd, "results.json"))
    redo = budget_scan.cell_name("fashion_mnist", "infonce", 1024, 0)
    os.remove(os.path.join(wd, "cells", redo + ".json"))
    trained = []
    real_train = budget_scan.train_surrogate

    def counting_train(images, answers, cfg, workdir, **kw):
        trained.append(len(images))
        return real_train(images, answers, cfg, workdir, **kw)

    def no_queries(*a, **k):
        raise AssertionError("the scan re-queried the API although answers were cached")

    monkeypatch.setattr(budget_scan, "train_surrogate", counting_train)
    monkeypatch.setattr(budget_scan, "collect_answers", no_queries)
    again = budget_scan.run(scan_config(tiny_victim), wd)
    assert trained == [1024]  # only the missing cell; it resumes from its final checkpoint
    assert again["queries_charged_this_run"] == {"fashion_mnist": 0}
    before = {c["budget"]: c["cosine_fidelity"] for c in res["cells"]}
    after = {c["budget"]: c["cosine_fidelity"] for c in again["cells"]}
    assert after == pytest.approx(before, abs=1e-6)


def test_budget_above_pool_fails_before_querying(tiny_victim, tmp_path):
    cfg = scan_config(tiny_victim, budgets="256,9001")
    with pytest.raises(ValueError, match=r"budget 9001 exceeds the query pool .*9000 images"):
        budget_scan.run(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_parse_int_list_errors():
    assert budget_scan.parse_int_list("500, 250,500", "budgets", 1) == [250, 500]
    with pytest.raises(ValueError, match="budgets='a,1'"):
        budget_scan.parse_int_list("a,1", "budgets", 1)
    with pytest.raises(ValueError, match=">= 1"):
        budget_scan.parse_int_list("0,5", "budgets", 1)


def test_equal_examples_protocol_steps():
    # 60,000 examples at batch 256: 235 steps whatever the budget
    assert budget_scan.cell_steps(20000, 256, 60000) == 235
    assert budget_scan.cell_steps(1000, 256, 60000) == 235
    # a budget below the batch size trains on smaller batches, so more steps
    n = jax.device_count()
    assert budget_scan.cell_steps(250, 256, 60000) == -(-60000 // (250 // n * n))


def test_cell_trained_with_other_settings_is_not_reused(scan, tiny_victim):
    wd, _ = scan
    cfg = scan_config(tiny_victim, overwrite=True)
    cfg.steal.epochs = 4  # the cells in wd were trained for 3 epochs
    with pytest.raises(ValueError, match="another surrogate config"):
        budget_scan.run(cfg, wd)
