"""The main job at toy scale for the multi-process tests (tests/test_multihost.py).

A ResNet-10 width-4 victim trained here (SimCLR, 1 epoch of 8 steps on 256
Fashion-MNIST images, batch 32, a checkpoint every 3 steps and a log line every
2; views by random crop and flip, no colour jitter: its step compiled in 6.3 s
instead of 21 s of a loaded machine's wall time, 39.5 s instead of 45 s of CPU
for the reference launch), 256 InfoNCE queries, a surrogate trained for 2 epochs of 4 steps (batch 64),
evaluation on 128 / 128 probe images (every feature batch 128 images: one
compiled program per encoder) with probes of 2 epochs (256 probe-train images and
5 epochs before: the same rows and comparisons; the reference run's evaluation
took 39 s instead of 64 s on a loaded machine). On the 2-process runs only
process 0 fits the probes and computes kNN (``evaluation.report.evaluate_features``);
the tests' module took 178 s of CPU for its four launches (217 s with colour
jitter and a second init compile per process; 273 s before the jitted model init
and the test's XLA flags, 2026-12-01).
The training batches stay 32 / 64: with 16 / 32 (4 / 8 rows per device on 2 x 2)
the 2 x 2 run's victim losses drifted 1e-5 relative from the reference by step 6,
past the 1e-6 the comparison asserts. Usage (from the repository root):
  launch/local.sh --processes=2 tests/multihost/tiny_steal.py WORKDIR
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "configs"))
import quickstart  # noqa: E402
import victim_simclr  # noqa: E402


def get_config(arg: str = ""):
    """The toy config (no arguments)."""
    c = quickstart.get_config("losses=infonce,budget=256,victim=scratch,epochs=2")
    c.victim.checkpoint = ""  # never the shipped victim
    c.victim.train = victim_simclr.get_config("width=4,epochs=1,batch_size=32,head_hidden=16,"
                                              "head_out=8")
    c.victim.train.augment.jitter_p = 0.0  # no colour jitter: crops and flips keep per-view randomness
    c.victim.train.log_every_steps = 2
    c.victim.train.checkpoint_every_steps = 3
    c.victim_train_size = 256
    c.probe_train_size = 128
    c.probe_test_size = 128
    c.loss_overrides.infonce.batch_size = 64
    c.eval.probe_epochs = 2
    c.eval.per_class = 5
    c.eval.select_probe = False
    return c
