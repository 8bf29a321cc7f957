"""Defense matrix: defenses x strengths x attacks on the shipped Fashion-MNIST victim.

Defined in sslsteal_jax/configs/defense_matrix.py. Its arguments (``configs/defense_matrix.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/defense_matrix.py --show_config
"""
from sslsteal_jax.configs.defense_matrix import get_config  # noqa: F401
