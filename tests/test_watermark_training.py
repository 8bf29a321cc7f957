"""Joint watermark training (tiny), checkpoint round trip, and the verify experiment
end to end on real Fashion-MNIST at toy scale (no stealing, no SimCLR baseline)."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.data.registry import load_split
from sslsteal_jax.experiments import verify
from sslsteal_jax.pipeline.workdir import REPO_ROOT, WorkdirExistsError
from sslsteal_jax.models import build_watermarked
from sslsteal_jax.models.watermark import WatermarkedSimCLR
from sslsteal_jax.trainers.watermark import (_merge_warm_start, train_watermark_victim,
                                             watermark_slices)
from sslsteal_jax.training.checkpoint import load_model
from sslsteal_jax.verification import fisher_pvalue

from sslsteal_jax.configs import verify as verify_config  # noqa: E402
from sslsteal_jax.configs import watermark_victim as wm_config  # noqa: E402


def tiny_cfg():
    c = wm_config.get_config("init_from=,epochs=1,train_size=64")
    c.model.update(dict(width=4, head_hidden=16, head_out=8, watermark_hidden=8))
    c.batch_size, c.warmup_epochs, c.log_every_steps = 32, 0.0, 1
    c.watermark.update(dict(batch_size=8, train_images=64, verify_images=16))
    c.watermark.augment = None  # fewer ops to compile
    c.learning_rate = 1e-2
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("wm_victim"))
    x, _ = load_split("fashion_mnist", "train")
    cfg = tiny_cfg()
    tr, _ = watermark_slices(len(x), 64, 16)
    model, variables, summary = train_watermark_victim(cfg, wd, x[:64], x[tr], progress=False)
    return wd, cfg, model, variables, summary


@pytest.mark.slow
def test_joint_training_updates_encoder_and_watermark_mlp(trained):
    wd, cfg, model, variables, summary = trained
    assert isinstance(model, WatermarkedSimCLR) and summary["steps"] == 2
    init = model.init(jax.random.split(jax.random.key(cfg.seed), 3)[0], jnp.zeros((2, 28, 28, 1)))
    for part in ("encoder", "head", "watermark"):
        moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                       variables["params"][part], init["params"][part])
        assert max(jax.tree_util.tree_leaves(moved)) > 0, part
    log = [json.loads(line) for line in open(os.path.join(wd, "train_log.jsonl"))]
    assert {"loss", "nt_xent", "wm_ce", "wm_acc"} <= set(log[-1])
    assert log[-1]["loss"] == pytest.approx(log[-1]["nt_xent"] + cfg.watermark.lam * log[-1]["wm_ce"],
                                            rel=1e-5)


@pytest.mark.slow
def test_checkpoint_round_trip_and_api(trained):
    wd, _, model, variables, _ = trained
    loaded = load_model(os.path.join(wd, "checkpoints"))
    assert loaded.kind == "simclr" and isinstance(loaded.module, WatermarkedSimCLR)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.variables, variables)
    api = VictimAPI.from_checkpoint(os.path.join(wd, "checkpoints"))
    x = load_split("fashion_mnist", "test")[0][:3]
    np.testing.assert_allclose(api.query("u", x),
                               model.apply(variables, x / 255.0)[0], rtol=1e-5, atol=1e-6)


def test_warm_start_merge_rejects_other_models():
    init = {"params": {"encoder": 1, "head": 2, "watermark": 3}, "batch_stats": {}}
    merged = _merge_warm_start(init, {"params": {"encoder": 10, "head": 20}, "batch_stats": {"e": 1}})
    assert merged == {"params": {"encoder": 10, "head": 20, "watermark": 3}, "batch_stats": {"e": 1}}
    with pytest.raises(ValueError, match="plain SimCLR victim"):
        _merge_warm_start(init, init)
    with pytest.raises(ValueError, match="watermark_classes=3 is not allowed"):
        build_watermarked(dict(arch="resnet10", width=4, head_hidden=8, head_out=8,
                               watermark_hidden=8, watermark_classes=3))
    with pytest.raises(ValueError, match="fit disjointly"):
        watermark_slices(70, 64, 16)


@pytest.mark.slow
def test_verify_experiment_end_to_end(trained, tmp_path):
    wd, *_ = trained
    cfg = verify_config.get_config("budgets=,simclr_epochs=0,seeds=2")
    cfg.victim_checkpoint = os.path.join(wd, "checkpoints")
    cfg.probe_test_size = 1000
    cfg.watermark.align_images = 50
    cfg.di.update(dict(n_public=100, components=2))  # private set auto: the victim's 64 images
    out = str(tmp_path / "verify")
    res = verify.run(cfg, out)
    names = [r["name"] for r in res["rows"]]
    assert names == ["victim", "independent (random init, seed 1001)",
                     "independent (random init, seed 1002)"]
    assert res["watermark_trials"] == 64 and res["watermark_classes"] == 4
    assert res["watermark_null"]["groups"] == {n: "independent" for n in names[1:]}
    assert res["splits"]["di_control"] == "fashion_mnist/train[64:128]"
    counts = {n: (d["watermark"]["correct"], d["watermark"]["total"])
              for n, d in res["details"].items()}
    for r in res["rows"]:
        assert 0.0 <= r["wm_p_value"] <= 1.0 and 0.0 <= r["di_p_value"] <= 1.0
        assert r["di_stolen"] == (r["di_p_value"] < 0.01)
        assert r["watermarked"] == (r["wm_p_value"] < 0.01)
        assert 0.0 <= r["wm_p_chance"] <= 1.0 and r["wm_p_ancestor"] is None  # no init_from
        det = res["details"][r["name"]]
        assert det["watermark"]["total"] == 64
        assert (det["dataset_inference"]["n_fit"], det["dataset_inference"]["n_private"]) == (32, 32)
        assert 0.0 <= r["di_control_p_value"] <= 1.0
        assert det["dataset_inference"]["control"]["n_fit"] == 32
        # leave-one-out "max" null: the strongest other independent encoder
        others = [counts[n] for n in names[1:] if n != r["name"]]
        best = max(others, key=lambda ct: ct[0])
        assert r["wm_p_value"] == pytest.approx(fisher_pvalue(*counts[r["name"]], *best))
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names and "di_p_value" in rows[0]
    with pytest.raises(WorkdirExistsError):
        verify.run(cfg, out)
    cfg.watermark.enabled = True
    cfg.victim_checkpoint = os.path.join(REPO_ROOT, "victims/fashion_mnist_resnet10_w16/checkpoints")
    with pytest.raises(ValueError, match="has no watermark head"):
        verify.run(cfg, str(tmp_path / "verify2"))
