"""Paper scale, CIFAR-10: budget scan against a ResNet-18/34 SimCLR victim.

Defined in sslsteal_jax/configs/cifar10.py (commands, settings and the expected time
there). Its arguments (``configs/cifar10.py:NAME=VALUE,...``), documentation and
resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/cifar10.py --show_config
"""
from sslsteal_jax.configs.cifar10 import get_config  # noqa: F401
