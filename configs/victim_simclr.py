"""SimCLR victim training config (docs/science.md section 4, scaled to CPU).

Defined in sslsteal_jax/configs/victim_simclr.py. Its arguments (``configs/victim_simclr.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/victim_simclr.py --show_config
"""
from sslsteal_jax.configs.victim_simclr import get_config  # noqa: F401
