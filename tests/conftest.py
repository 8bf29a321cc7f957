"""Shared pytest setup.

Forces 8 host (CPU) devices so sharding / mesh tests can run without
accelerators. This must happen before jax is imported anywhere, which is why
it lives at the top of conftest.py (loaded by pytest before test modules).
An XLA_FLAGS value already present in the environment is kept (the device
count is only added when absent).

The 8 forced devices share 2 cores in CI, so one device thread can wait tens
of seconds at a collective (the gradient all-reduce) for the others; XLA:CPU
aborts the process ("Termination timeout ... Exiting to ensure a consistent
program state", seen as `Fatal Python error: Aborted` under heavy load) when a
rendezvous waits longer than its terminate timeout. The timeouts are raised to
an hour so an overloaded machine only makes the suite slower, never kills it.
"""
import os
import shutil
import sys
import tempfile

_FLAGS = {"--xla_force_host_platform_device_count": "8",
          "--xla_cpu_collective_call_terminate_timeout_seconds": "3600",
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds": "600",
          "--xla_cpu_collective_timeout_seconds": "3600"}
_present = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_present] + [f"{k}={v}" for k, v in _FLAGS.items() if k not in _present]).strip()

# One persistent XLA compilation cache for the whole session: the pytest process, its
# xdist workers and every subprocess a test starts (they inherit the environment), so a
# program compiled by one test (the shipped victim's feature extraction, a steal step,
# a probe) is read back by the next instead of compiled again. Every program is cached
# (minimum compile time 0). A JAX_COMPILATION_CACHE_DIR already set is kept (and kept
# after the session); the one made here is removed by the process that made it.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sslsteal-xla-cache-")
    os.environ["SSLSTEAL_TEST_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Make the package importable when pytest is run as `pytest` (not `python -m pytest`).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long end-to-end or stress test; the fast tier is `pytest -m 'not slow'`")


def pytest_unconfigure(config):
    if os.environ.get("SSLSTEAL_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
