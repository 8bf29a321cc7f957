"""Watermarked SimCLR victim: warm start from the shipped victim, joint fine-tuning
with the secret rotation watermark task (Dziedzic et al., ICML 2022, Section 5).

Defined in sslsteal_jax/configs/watermark_victim.py. Its arguments (``configs/watermark_victim.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/watermark_victim.py --show_config
"""
from sslsteal_jax.configs.watermark_victim import get_config  # noqa: F401
