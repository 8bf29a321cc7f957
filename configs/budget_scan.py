"""Query-budget scan against the shipped Fashion-MNIST victim (docs/science.md claims 1-4).

Defined in sslsteal_jax/configs/budget_scan.py. Its arguments (``configs/budget_scan.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/budget_scan.py --show_config
"""
from sslsteal_jax.configs.budget_scan import get_config  # noqa: F401
