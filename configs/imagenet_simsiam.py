"""Paper scale, ImageNet: steal the public SimSiam ResNet-50 with 50k-250k queries.

Defined in sslsteal_jax/configs/imagenet_simsiam.py (commands, settings and the expected time
there). Its arguments (``configs/imagenet_simsiam.py:NAME=VALUE,...``), documentation and
resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/imagenet_simsiam.py --show_config
"""
from sslsteal_jax.configs.imagenet_simsiam import get_config  # noqa: F401
