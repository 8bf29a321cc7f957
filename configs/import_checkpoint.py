"""Import a PyTorch / timm self-supervised checkpoint as a victim checkpoint.

Defined in sslsteal_jax/configs/import_checkpoint.py. Its arguments
(``configs/import_checkpoint.py:source=PATH,arch=resnet50``), documentation and resolved
fields, without running anything:
  python -m sslsteal_jax.main --config=configs/import_checkpoint.py --show_config
"""
from sslsteal_jax.configs.import_checkpoint import get_config  # noqa: F401
