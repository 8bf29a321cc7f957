"""The main job: steal the shipped Fashion-MNIST victim with 5,000 InfoNCE queries.

Defined in sslsteal_jax/configs/quickstart.py. Its arguments (``configs/quickstart.py:NAME=VALUE,...``),
documentation and resolved fields, without running anything:
  python -m sslsteal_jax.main --config=configs/quickstart.py --show_config
"""
from sslsteal_jax.configs.quickstart import get_config  # noqa: F401
