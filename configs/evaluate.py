"""Evaluate saved encoder checkpoints (victim or surrogates) without retraining.

Usage:
  python -m sslsteal_jax.main --config=configs/evaluate.py \
      --config.checkpoints=runs/quickstart/surrogate_infonce/checkpoints \
      --workdir=runs/eval1
``--config.victim_checkpoint`` (default: the shipped victim) enables fidelity;
set it to '' to skip. ``--config.expect_model.arch=resnet18`` asserts an
architecture (a checkpoint of another one is refused with a clear error).
"""
import ml_collections


def get_config(arg: str = ""):
    del arg
    c = ml_collections.ConfigDict()
    c.experiment = "evaluate"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.checkpoints = ""
    c.victim_checkpoint = "victims/fashion_mnist_resnet10_w16/checkpoints"
    c.api_output = "representation"
    c.expect_model = ml_collections.ConfigDict(dict(arch="", width=0, stem=""))
    c.seed = 0
    c.overwrite = False
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=True))
    return c
