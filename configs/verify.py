"""Owner-side verification: watermark + dataset inference for a list of suspects.

Defined in sslsteal_jax/configs/verify.py. Its arguments (``configs/verify.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/verify.py --show_config
"""
from sslsteal_jax.configs.verify import get_config  # noqa: F401
