"""Defaults shared by configs and experiments (one definition each).

``DEFAULT_VICTIM`` is the victim the main job steals from and the fidelity
reference of ``configs/evaluate.py``: the shipped Fashion-MNIST ResNet-10
(width 16) after stage-2 fine-tuning (``victims/fashion_mnist_resnet10_w16_ft6``,
see its README.md). Paths are relative to the repository root
(``experiments.common.resolve_path`` tries the cwd first, then the root).
"""

#: Directory of the shipped default victim (run directory: config.json, results, README).
DEFAULT_VICTIM = "victims/fashion_mnist_resnet10_w16_ft6"

#: Its checkpoint directory, the value config fields such as ``victim_checkpoint`` take.
DEFAULT_VICTIM_CHECKPOINT = DEFAULT_VICTIM + "/checkpoints"
