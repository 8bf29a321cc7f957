"""Command-line entry point.

  python -m sslsteal_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

``--config`` is an ml_collections config file (optionally ``file.py:args``);
its ``experiment`` field selects the experiment (train_victim, steal,
evaluate, budget_scan, defense_matrix, watermark_victim, verify). Any field can be overridden with ``--config.<field>=<value>``.
``--watchdog_seconds`` (default 900, 0 = off) stops a run that makes no
progress for that long with its Python stacks (``sslsteal_jax.watchdog``).
"""
from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_WATCHDOG = flags.DEFINE_float(
    "watchdog_seconds", 900.0,
    "Stop the run (exit status 3, Python stacks of all threads printed and saved in the workdir "
    "as stalled.<time>.txt) when it makes no progress for this many seconds; 0 disables. "
    "Rerunning the command resumes from the last checkpoint.")

# config.experiment -> module sslsteal_jax.experiments.<name> (each defines run(cfg, workdir)).
EXPERIMENTS = ("train_victim", "steal", "evaluate", "budget_scan", "defense_matrix",
               "watermark_victim", "verify")


def run(cfg, workdir: str):
    """Dispatch ``cfg.experiment``; returns the experiment's results dict.

    Raises:
      ValueError: unknown experiment name.
    """
    if cfg.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {cfg.experiment!r}; allowed: {list(EXPERIMENTS)}")
    exp = importlib.import_module(f"sslsteal_jax.experiments.{cfg.experiment}")
    return exp.run(cfg, workdir)


def main(argv):
    """absl entry point: validate flags, run the experiment; exit 130 after Ctrl-C/SIGTERM
    (the checkpoint is saved, rerunning the command resumes)."""
    logging.set_verbosity(logging.WARNING)  # silence orbax's per-checkpoint INFO lines
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("both --config and --workdir are required")
    if not _WORKDIR.value.strip():
        raise app.UsageError("--workdir is empty; give a directory, e.g. --workdir=runs/quickstart")
    from sslsteal_jax.evaluation.parallel import default_workers
    from sslsteal_jax.host_devices import configure_cpu_devices
    try:
        configure_cpu_devices()  # one XLA CPU device per core (before JAX starts; host_devices.py)
        default_workers()  # a bad $SSLSTEAL_EVAL_WORKERS fails now, not after training
    except ValueError as e:  # bad environment variable: a usage error, not a traceback
        raise app.UsageError(str(e)) from None
    from sslsteal_jax.training.mesh import initialize_distributed
    initialize_distributed()  # multi-host (SLURM / TPU pod) when $SSLSTEAL_DISTRIBUTED=1
    from sslsteal_jax.experiments.common import WorkdirExistsError
    from sslsteal_jax.watchdog import Watchdog
    if _WATCHDOG.value < 0:
        raise app.UsageError(f"--watchdog_seconds={_WATCHDOG.value:g}; allowed: seconds > 0, or 0 "
                             "to disable the watchdog")
    dog = Watchdog(_WATCHDOG.value, _WORKDIR.value) if _WATCHDOG.value > 0 else None
    try:
        if dog is not None:
            dog.start()
        run(_CONFIG.value, _WORKDIR.value)
    except WorkdirExistsError as e:  # nothing was run or changed: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("stopped; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    finally:
        if dog is not None:
            dog.stop()


if __name__ == "__main__":
    app.run(main)
