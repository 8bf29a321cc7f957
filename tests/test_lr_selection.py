"""Claim 2 under equal batch and equal steps: one batch size for every loss and each
loss's learning rate chosen on a validation split of the probe-train set
(``configs/budget_scan.py`` ``batch_size`` / ``lr_grid``; docs/results/claim2_protocols.md)."""
import os

import numpy as np
import pytest

from sslsteal_jax.configs import config_module
from sslsteal_jax.data.splits import ExperimentData
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.experiments import budget_scan
from sslsteal_jax.pipeline.workdir import REPO_ROOT
from sslsteal_jax.trainers.surrogate import resolve_hparams, steal_config

VICTIM = os.path.join(REPO_ROOT, "victims", "fashion_mnist_resnet10_w16", "checkpoints")


def _config(arg: str):
    return config_module("budget_scan").get_config(arg)


def test_validation_split_is_the_tail_of_probe_train_and_never_probe_test():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    test_x = np.full((3, 1, 1, 1), 99, np.uint8)
    data = ExperimentData(x[:0], x[:4], x, y, test_x, np.zeros(3, np.int32),
                          {"probe_train": "ds/train[:10]", "probe_test": "ds/test[7:]"})
    v = budget_scan.validation_split(data, 3)
    assert v.probe_train_x[:, 0, 0, 0].tolist() == list(range(7))
    assert v.probe_train_y.tolist() == list(range(7))
    assert v.probe_test_x[:, 0, 0, 0].tolist() == [7, 8, 9] == v.probe_test_y.tolist()
    assert 99 not in v.probe_test_x and v.query_pool is data.query_pool
    assert v.names["probe_test"] == "ds/train[:10] rows [7:10] (validation)"
    for bad in (0, 10):
        with pytest.raises(ConfigError, match=f"validation_size={bad} must be in"):
            budget_scan.validation_split(data, bad)


def test_equal_batch_and_each_losss_learning_rate():
    """``batch_size=128`` holds for every loss (the per-loss 256 / 64 are overridden); a
    selected rate replaces a loss's own, with or without an existing override entry."""
    cfg = _config("losses=mse+infonce,batch_size=128")
    picked = budget_scan.with_learning_rates(cfg, {"mse": 3e-3, "infonce": 3e-4})
    for loss, lr in (("mse", 3e-3), ("infonce", 3e-4)):
        h = resolve_hparams(steal_config(picked.steal, loss, None, picked.loss_overrides))
        assert (h["batch_size"], h["learning_rate"]) == (128, lr)
    own = {l: resolve_hparams(steal_config(c.steal, l, None, c.loss_overrides))["batch_size"]
           for c in (_config("losses=mse+infonce"),) for l in ("mse", "infonce")}
    assert own == {"mse": 64, "infonce": 256}  # what batch_size=128 replaces
    assert "learning_rate" not in cfg.loss_overrides.get("mse", {})  # the input is not changed


def test_lr_selection_config_errors():
    cfg = _config("lr_grid=1e-3+3e-3")
    cfg.steal.learning_rate = 1e-3
    with pytest.raises(ConfigError, match=r"steal.learning_rate=0.001 with lr_grid"):
        config_module("budget_scan").check_lr_selection(cfg)
    cfg = _config("lr_grid=1e-3,select_budget=99999")
    with pytest.raises(ConfigError, match="select_budget=99999 exceeds the largest budget 20000"):
        config_module("budget_scan").check_lr_selection(cfg)
    cfg = _config("lr_grid=1e-3,probe_train_size=5000")
    with pytest.raises(ConfigError, match="validation_size=5000 must be smaller than "
                                          "probe_train_size=5000"):
        config_module("budget_scan").check_lr_selection(cfg)
    with pytest.raises(ConfigError, match=r"lr_grid=.-1. must be >= 1e-12"):
        _config("lr_grid=-1")


@pytest.mark.slow
def test_scan_selects_the_rate_that_learns_and_trains_with_it(tmp_path):
    """Real victim and data, lr 1e-3 vs 30 for 8 steps, scored on a 200-image validation
    split: the better rate is chosen (measured: 30 wins, 52.5 vs 46.0 % — BatchNorm keeps
    huge Adam steps from wrecking the encoder and 8 steps of 1e-3 barely move it), the
    scan cell trains with it, the selection cells carry no fidelity (validation images
    are never sent to the API), and a rerun reuses every cell."""
    cfg = _config("losses=mse,protocol=examples,examples=512,batch_size=64,"
                  "probe_train_size=1000,lr_grid=1e-3+30")
    cfg.victim.checkpoint = VICTIM
    cfg.budgets, cfg.query_sources, cfg.probe_test_size = (256,), "fashion_mnist", 500
    cfg.validation_size = 200
    cfg.eval.update(dict(per_class=10, probe_epochs=10, select_probe=False))
    wd = str(tmp_path / "scan")
    res = budget_scan.run(cfg, wd)
    sel = res["lr_selection"]
    assert sel["grid"] == [1e-3, 30.0] and sel["budget"] == 256 and sel["seed"] == 0
    acc = sel["accuracy"]["mse"]
    print("validation accuracy per lr:", acc)
    assert all(0 < a <= 100 for a in acc) and abs(acc[0] - acc[1]) > 1  # different encoders
    best = sel["grid"][int(np.argmax(acc))]
    assert sel["chosen"] == {"mse": best}
    assert sel["at_edge"] == ["mse"]  # 2 rates: either is an edge, and the table says so
    assert sel["validation"] == "fashion_mnist/train[:1000] rows [800:1000] (validation)"
    for name, row in sel["cells"].items():
        assert name.endswith("__val200") and row["cosine_fidelity"] is None
        assert row["steps"] == 8  # 512 examples at batch 64
    (cell,) = res["cells"]
    assert cell["surrogate_config"]["learning_rate"] == best
    assert cell["surrogate_config"]["batch_size"] == 64
    assert cell["steps"] == 8 and 0 < cell["cosine_fidelity"] <= 1
    cfg.overwrite = True
    again = budget_scan.run(cfg, wd)
    assert again["stack"]["groups_trained_this_run"] == []
    assert again["lr_selection"]["accuracy"] == sel["accuracy"]

