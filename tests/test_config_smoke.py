"""Every config runs: loaded by name, validated, and run through its experiment for
one optimizer step at tiny sizes into a fresh workdir, writing ``results.json``
with finite numbers. A config without an entry in ``SMOKE`` fails
``test_every_config_has_a_smoke_entry``: add one when you add a config."""
import json
import math
import os

import pytest

from sslsteal_jax import configs
from sslsteal_jax.configs import base, load_config, validate
from sslsteal_jax.pipeline.workdir import REPO_ROOT
from sslsteal_jax.main import run

# Small probes: 200 labelled train images, 100 test images, 5 labels per class for the
# few-label probe, one probe epoch (watermark_victim has no probe_test_size: the last
# 5,000 test images).
EVAL_BLOCK = {"eval.per_class": 5, "eval.probe_epochs": 1, "eval.select_probe": False}
PROBES = {"probe_train_size": 200, "probe_test_size": 100, **EVAL_BLOCK}
# Watermarked SimCLR training from scratch: the smallest ResNet-10, one step of 32 images.
TINY_SIMCLR = {"model.width": 4, "model.head_hidden": 16, "model.head_out": 8,
               "batch_size": 32, "victim_train_size": 32, "log_every_steps": 1}

#: config name -> (":arguments", {dotted field: value}): one optimizer step per surrogate /
#: victim, a 32-query budget (one batch) against the shipped victims.
SMOKE = {
    "evaluate": ("", {**PROBES, "checkpoints": base.STAGE1_VICTIM}),
    # ``nulls``: the shipped stage-1 SimCLR victim (a fully trained encoder the watermark
    # never saw) joins the independent null next to the random-init encoder.
    "verify": (f"budgets=32,samples=32,simclr_epochs=0,seeds=1,nulls=stage 1={base.STAGE1_VICTIM}",
               {"probe_test_size": 100, "attack.steal.batch_size": 32,
                "watermark.align_images": 32, "di.n_fit": 64, "di.n_private": 64,
                "di.n_public": 64, "di.components": 2}),
    "watermark_victim": ("init_from=,epochs=1",
                         {"probe_train_size": 200, **EVAL_BLOCK, **TINY_SIMCLR,
                          "model.watermark_hidden": 8,
                          "watermark.batch_size": 8, "watermark.train_images": 32,
                          "watermark.verify_images": 16, "watermark.augment": None}),
}


def _numbers(tree):
    """Every int / float in a JSON tree (bools excluded)."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


#: Configs whose run through ``main.run`` (load, validate, run, finite results) is tested
#: elsewhere: they need an input made by a test, or another test already pays for the same
#: run (a smoke entry here would compile the same programs a second time).
SMOKE_ELSEWHERE = {
    "quickstart": "tests/test_attacks_real.py::test_tiny_real_run_head_recreation_and_probabilities "
                  "(the quickstart config, two strategies, every row's numbers checked; "
                  "the default direct InfoNCE run: tests/test_end_to_end.py)",
    "victim_simclr": "tests/test_paper_configs.py::test_cifar10_config_one_step_of_each_phase "
                     "(one step of the victim command of configs/cifar10.py, its probe rows "
                     "finite; the Fashion-MNIST victim at width 8: tests/test_end_to_end.py)",
    "budget_scan": "tests/test_budget_scan.py (its scan fixture: the budget_scan config through "
                   "main.run, 3 budgets, every cell's numbers checked)",
    "defense_matrix": "tests/test_defense_matrix_real.py (the defense_matrix config at scale=tiny "
                      "through main.run, three defense families, values checked)",
    "import_checkpoint": "tests/test_public_encoders.py::test_import_experiment_writes_a_victim_checkpoint "
                         "(needs a "
                         "PyTorch checkpoint file, written there with torch)",
    "cifar10": "tests/test_paper_configs.py::test_cifar10_config_one_step_of_each_phase "
               "(needs the mock tfds datasets of tests/mock_tfds.py)",
    "imagenet_simsiam": "tests/test_paper_configs.py::"
                        "test_imagenet_simsiam_config_one_step_of_each_phase (mock tfds "
                        "datasets and an imported ResNet-50 written with torch)"}


def test_every_config_has_a_smoke_entry():
    assert sorted([*SMOKE, *SMOKE_ELSEWHERE]) == sorted(configs.CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_config_runs_one_step(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # shipped victims are given relative to the repository
    arg, overrides = SMOKE[name]
    cfg = load_config(name, arg, overrides)
    validate(cfg)
    wd = str(tmp_path / "w")
    run(cfg, wd)
    with open(os.path.join(wd, "results.json")) as f:
        results = json.load(f)
    rows = results.get("rows") or results.get("cells")
    assert rows, sorted(results)
    nums = list(_numbers(rows))
    assert nums and all(math.isfinite(x) for x in nums), rows
    if name == "verify":
        groups = results["watermark_null"]["groups"]
        indep = sorted(n for n, g in groups.items() if g == "independent")
        assert indep == ["independent (random init, seed 1001)", "stage 1"], groups
        wm = {n: d["watermark"] for n, d in results["details"].items()}
        # the victim is tested against the stronger of the two null encoders (method max)
        best = max((wm[n]["correct"] / wm[n]["total"]) for n in indep)
        assert wm["victim"]["null_tests"]["independent"]["n_null"] == 2
        assert wm["victim"]["null_tests"]["independent"]["null_accuracy"] == best
