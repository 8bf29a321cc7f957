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

Tests check values, not the speed of generated code, so LLVM runs at optimisation level
0 (``--xla_backend_optimization_level=0``): most of the suite's time is XLA compiling
small programs, and level 0 compiles them in about half the time (test_sharding 163 ->
74 s of CPU, test_end_to_end 148 -> 99 s). Numbers a test compares against each other
are computed under the same flag; benchmarks and user runs keep XLA's default.
"""
import os
import shutil
import sys
import tempfile

_FLAGS = {"--xla_force_host_platform_device_count": "8",
          "--xla_cpu_collective_call_terminate_timeout_seconds": "3600",
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds": "600",
          "--xla_cpu_collective_timeout_seconds": "3600",
          "--xla_backend_optimization_level": "0"}
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


# Test files in decreasing cost (seconds of one file on 2 busy cores, `--durations`), so that
# `-n 2 --dist loadfile` starts the longest files first and the two workers finish together
# (longest-processing-time-first). xdist's default order (files with the most tests first)
# left the few-test, multi-minute files (multi-process launches, stress runs) for the end,
# where one worker ran them alone. Files not listed follow in collection order.
_LONGEST_FIRST = ("test_multihost.py", "test_collectives.py", "test_attacks_real.py",
                  "test_config_smoke.py", "test_budget_scan.py", "test_sharding.py",
                  "test_accelerator_check.py", "test_end_to_end.py", "test_public_encoders.py",
                  "test_attacks.py", "test_defense_matrix_real.py", "test_serve_load.py",
                  "test_readme_example.py", "test_checkpoint.py", "test_watermark_training.py")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long end-to-end or stress test; the fast tier is `pytest -m 'not slow'`")
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def pytest_unconfigure(config):
    if os.environ.get("SSLSTEAL_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
