"""One XLA CPU device per core for command-line runs on CPU-only hosts.

On CPU, XLA runs each device's program with intra-op threads over all
cores; small convolutions (16-64 channels, 28x28) parallelise poorly that way.
Splitting the host into one XLA device per core and running the ordinary
data-parallel step over them (``training.mesh``: the batch split over
devices, BatchNorm statistics and InfoNCE / NT-Xent negatives taken over the
global batch through all-reduces) computes the same step with a smaller
working set per core (1/N of the batch each). Measured on the 2-core dev machine
(``benchmarks/results/cpu.json`` vs ``cpu_1device.json``): the ResNet-10
w16 InfoNCE steal step at batch 256 runs 1.17x faster on 2 devices than on 1
(745 -> 873 img/s), ResNet-18 w16 MSE 1.28x (385 -> 494), SimCLR 1.29x,
victim inference 1.16x; 4 devices on 2 cores gain nothing more.

This module must not import jax: the device count is an ``XLA_FLAGS`` entry
read when JAX initialises its CPU backend, so :func:`configure_cpu_devices`
has to run before the first JAX computation (``sslsteal_jax.main`` calls it
first thing). Results equal the single-device ones up to float summation
order (``tests/test_sharding.py``); ``SSLSTEAL_CPU_DEVICES=1`` gives exactly
the single-device numbers.
"""
from __future__ import annotations

import os
import sys

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Upper bound of the automatic choice: measured only on 2 cores, so many-core
# hosts do not get a batch split into slivers (batch 64 over 8 devices = 8 each).
MAX_AUTO_DEVICES = 8
# Devices on one host meet at every all-reduce; XLA:CPU aborts the process
# (LOG(FATAL), no checkpoint saved) when one device waits at a rendezvous longer
# than its terminate timeout, 40 s by default, which a loaded or niced host
# reaches (seen: "Termination timeout for `all to all ...` of 40 seconds
# exceeded"). These raise the waits to an hour, as tests/conftest.py does; they
# exist in jaxlib >= MIN_JAXLIB (unknown XLA flags are fatal, so older jaxlibs
# get no automatic split).
COLLECTIVE_TIMEOUT_FLAGS = {"--xla_cpu_collective_call_terminate_timeout_seconds": "3600",
                            "--xla_cpu_collective_call_warn_stuck_timeout_seconds": "600",
                            "--xla_cpu_collective_timeout_seconds": "3600"}
MIN_JAXLIB = (0, 10)


def usable_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_device_count(cores: int) -> int:
    """Largest power of two <= ``min(cores, MAX_AUTO_DEVICES)`` (int >= 1): a power
    of two divides every batch size the configs use (64, 256, ...), so the
    automatic split never changes a batch (``trainers.surrogate.effective_batch_size``
    rounds a batch down to a multiple of the device count otherwise)."""
    n = max(1, min(int(cores), MAX_AUTO_DEVICES))
    return 1 << (n.bit_length() - 1)


def configure_cpu_devices(env: dict | None = None, cores: int | None = None,
                          jaxlib_version: tuple | None = None) -> int | None:
    """Add ``--xla_force_host_platform_device_count=N`` (and ``COLLECTIVE_TIMEOUT_FLAGS``)
    to ``XLA_FLAGS`` in ``env``.

    N is ``$SSLSTEAL_CPU_DEVICES`` if set (any N >= 1; one that does not divide
    a batch size makes that batch a multiple of N, see
    ``trainers.surrogate.effective_batch_size``), else :func:`auto_device_count` of
    the usable cores. Nothing is changed (returns None) when N <= 1, when
    ``XLA_FLAGS`` already sets the device count (the user's choice wins), on
    a multi-host run without ``$SSLSTEAL_CPU_DEVICES``, when the installed
    jaxlib is older than ``MIN_JAXLIB`` (no automatic split; an explicit
    ``$SSLSTEAL_CPU_DEVICES`` is then added without the timeout flags), or
    when JAX's backends are already initialised in this process (too late to
    take effect). On a GPU / TPU host the flag only adds CPU devices, which
    the data mesh does not use (it takes the default backend's devices).
    A multi-host run (``$SSLSTEAL_DISTRIBUTED`` set, not 0/false) gets no
    automatic split; an explicit ``$SSLSTEAL_CPU_DEVICES`` is honoured there
    (``launch/local.sh --processes=N`` gives each process that many devices).

    Args:
      env: environment mapping to read and update (default ``os.environ``).
      cores: usable cores (default :func:`usable_cores`).
      jaxlib_version: ``(major, minor)`` of jaxlib (default: the installed one).
    Returns:
      N when the flag was added, else None.
    Raises:
      ValueError: ``$SSLSTEAL_CPU_DEVICES`` is not an integer >= 1.
    """
    env = os.environ if env is None else env
    raw = str(env.get("SSLSTEAL_CPU_DEVICES", "")).strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"SSLSTEAL_CPU_DEVICES={raw!r}; allowed: an integer >= 1 "
                             "(1 = one device, exactly the single-device numbers)")
        n = int(raw)
    else:
        n = auto_device_count(cores or usable_cores())
    flags = env.get("XLA_FLAGS", "")
    if n <= 1 or DEVICE_COUNT_FLAG in flags or _backends_initialised():
        return None
    if not raw and str(env.get("SSLSTEAL_DISTRIBUTED", "")).strip().lower() not in ("", "0", "false"):
        return None  # multi-host: no automatic split (an explicit count is honoured)
    timeouts_known = tuple(jaxlib_version or _jaxlib_version()) >= MIN_JAXLIB
    if not raw and not timeouts_known:
        return None
    extra = [f"{DEVICE_COUNT_FLAG}={n}"]
    if timeouts_known:
        extra += [f"{k}={v}" for k, v in COLLECTIVE_TIMEOUT_FLAGS.items() if k not in flags]
    env["XLA_FLAGS"] = " ".join([flags] + extra).strip()
    return n


def _jaxlib_version() -> tuple:
    try:
        from importlib.metadata import version
        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except Exception:  # not installed / odd version string: assume old
        return (0, 0)


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # private API moved: assume initialised, change nothing
        return True
