"""Evaluate saved encoder checkpoints (victim or surrogates) without retraining.

Usage:
  python -m sslsteal_jax.main --config=configs/evaluate.py \
      --config.checkpoints=runs/quickstart/surrogate_infonce/checkpoints \
      --workdir=runs/eval1
Fields:
  checkpoints         comma-separated checkpoint directories (required)
  victim_checkpoint   fidelity reference; default: the victim the main job steals from,
                      victims/fashion_mnist_resnet10_w16_ft6/checkpoints
                      (sslsteal_jax.defaults.DEFAULT_VICTIM); '' skips fidelity
  expect_model.arch   e.g. resnet18: a checkpoint of another architecture is refused
                      with a clear error (also .width, .stem)
  dataset, probe_test_size, api_output (representation | projection), seed, eval.*
"""
import ml_collections

from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT


def get_config(arg: str = ""):
    """The evaluate experiment's config; takes no ``:arguments`` (use ``--config.<field>``).

    Raises:
      ValueError: an argument was given after ``configs/evaluate.py:``.
    """
    if arg:
        raise ValueError(f"configs/evaluate.py takes no arguments, got {arg!r}; set fields with "
                         "--config.<field>=<value>, e.g. --config.checkpoints=DIR")
    c = ml_collections.ConfigDict()
    c.experiment = "evaluate"
    c.dataset = "fashion_mnist"
    c.probe_test_size = 5000
    c.checkpoints = ""
    c.victim_checkpoint = DEFAULT_VICTIM_CHECKPOINT
    c.api_output = "representation"
    c.expect_model = ml_collections.ConfigDict(dict(arch="", width=0, stem=""))
    c.seed = 0
    c.overwrite = False
    c.eval = ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60, select_probe=True))
    return c
