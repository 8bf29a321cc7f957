"""Work directories, repository-relative paths and the run environment."""
from __future__ import annotations

import functools
import os
import time

import jax

from sslsteal_jax.defaults import REPO_ROOT, resolve_path  # noqa: F401 - re-exported
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.training import mesh as mesh_lib


class WorkdirExistsError(ConfigError, FileExistsError):
    """The work directory already holds final results and overwrite was not requested."""


def prepare_workdir(workdir: str, overwrite: bool) -> None:
    """Create ``workdir``; refuse to reuse one that already holds ``results.json``.

    With ``overwrite`` the old results are kept as ``results.<unix time>.{json,csv,png}``
    (never deleted). A workdir without results (an interrupted run) is reused
    and the run resumes from its checkpoints. On a multi-host run every process
    checks and only process 0 renames (``training.mesh.is_writer``).

    Raises:
      WorkdirExistsError: results exist and ``overwrite`` is False.
      ConfigError: ``workdir`` exists and is not a directory, or cannot be created
        (a parent that is a file, no permission).
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} is an existing file, not a directory; "
                          "choose a directory path")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} cannot be created ({e.strerror}); choose a "
                          "directory path you can write to") from e
    exists = os.path.exists(os.path.join(workdir, "results.json"))
    mesh_lib.sync("prepare_workdir")  # [multi-host] every process looked before any rename
    if exists:
        if not overwrite:
            raise WorkdirExistsError(
                f"{workdir!r} already holds results.json from a finished run; choose a new "
                f"--workdir or pass --config.overwrite=True (the old results are kept as "
                f"results.<time>.json)")
        if not mesh_lib.is_writer():  # [multi-host] process 0 keeps the old results
            return
        stamp = int(time.time())
        for ext in ("json", "csv", "png"):
            old = os.path.join(workdir, f"results.{ext}")
            if os.path.exists(old):
                os.replace(old, os.path.join(workdir, f"results.{stamp}.{ext}"))


def run_environment() -> dict:
    """What the numbers of a run depend on besides its config and seed:
    ``{"jax": version, "platform": "cpu" | "gpu" | "tpu", "devices": int, "device_kind": str,
    "cpu": str, "cpu_vector_isa": str}``: the data-parallel device count (float summation
    order, hence the last digits, depends on it; see ``sslsteal_jax.host_devices``), the
    accelerator's kind, and the host CPU's model and widest vector instruction set
    (:func:`cpu_description`: XLA:CPU's code, hence the rounding of a CPU run, differs
    between AVX2 and AVX-512 machines)."""
    return {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            **cpu_description()}


@functools.cache
def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """``{"cpu": model name, "cpu_vector_isa": "avx512" | "avx2" | "avx" | "sse" | "sve2" |
    "sve" | "neon" | "unknown"}`` of this host, read from ``cpuinfo`` (Linux's
    ``/proc/cpuinfo``; where it cannot be read, e.g. on macOS, the model from
    ``platform.processor()`` and "unknown"). On a multi-host run each process reads its
    own host, and results files record process 0's."""
    import platform
    model, flags = None, set()  # the first core's lines
    try:
        with open(cpuinfo, errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = next((name for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"),
                                        ("sse", "sse2"), ("sve2", "sve2"), ("sve", "sve"),
                                        ("neon", "asimd"), ("neon", "neon"))
                if flag in flags), "unknown")
    model = model or platform.processor() or platform.machine() or "unknown"
    return {"cpu": model, "cpu_vector_isa": isa}
