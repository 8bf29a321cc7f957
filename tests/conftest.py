"""Shared pytest setup.

Forces 8 host (CPU) devices so sharding / mesh tests can run without
accelerators. This must happen before jax is imported anywhere, which is why
it lives at the top of conftest.py (loaded by pytest before test modules).
An XLA_FLAGS value already present in the environment is left untouched.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# Make the package importable when pytest is run as `pytest` (not `python -m pytest`).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
