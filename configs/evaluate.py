"""Evaluate saved encoder checkpoints (victim or surrogates) without retraining.

Defined in sslsteal_jax/configs/evaluate.py. Its arguments (``configs/evaluate.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/evaluate.py --show_config
"""
from sslsteal_jax.configs.evaluate import get_config  # noqa: F401
