"""Helpers shared by experiments: work directories, result files, encoder evaluation."""
from __future__ import annotations

import csv
import os
import time

import jax

from sslsteal_jax.evaluation.features import extract_features, make_apply, raw_pixels
from sslsteal_jax.evaluation.parallel import default_workers, run_concurrently
from sslsteal_jax.evaluation.report import COLUMNS, evaluate_features
from sslsteal_jax.training import mesh as mesh_lib, summaries
from sslsteal_jax.training.checkpoint import write_json_atomic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkdirExistsError(FileExistsError):
    """The work directory already holds final results and overwrite was not requested."""


def prepare_workdir(workdir: str, overwrite: bool) -> None:
    """Create ``workdir``; refuse to reuse one that already holds ``results.json``.

    With ``overwrite`` the old results are kept as ``results.<unix time>.{json,csv,png}``
    (never deleted). A workdir without results (an interrupted run) is reused
    and the run resumes from its checkpoints.
    Raises:
      WorkdirExistsError: results exist and ``overwrite`` is False.
    """
    os.makedirs(workdir, exist_ok=True)
    res = os.path.join(workdir, "results.json")
    exists = os.path.exists(res)
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


def resolve_path(path: str | None) -> str | None:
    """Absolute path; relative paths are tried from the cwd, then from the repository root."""
    if not path:
        return None
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(REPO_ROOT, path)


def _csv_value(v):
    """Floats with 10 significant digits (84.62, not 84.61999999999999; p-values
    such as 1.4e-13 keep their exponent); other values as they are."""
    return f"{v:.10g}" if isinstance(v, float) else v


def write_csv_atomic(path: str, rows: list[dict], fields) -> None:
    """Write ``rows`` (dicts) as CSV with header ``fields`` to ``path`` atomically
    (temporary file + rename); missing keys are empty cells, floats are written
    with 10 significant digits (the full values are in results.json). On a
    multi-host run only process 0 writes (``training.mesh.is_writer``)."""
    if not mesh_lib.is_writer():  # [multi-host] one writer per file
        return
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in fields})
    os.replace(tmp, path)


def write_results(workdir: str, results: dict, rows: list[dict], columns=None) -> None:
    """Write ``results.json`` and ``results.csv`` (one line per row, fields
    ``name`` + ``columns``, default the evaluation report's) atomically, and the rows
    as TensorBoard scalars in ``<workdir>/tensorboard`` (``training.summaries``)."""
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    write_csv_atomic(os.path.join(workdir, "results.csv"), rows,
                     ["name", *(COLUMNS if columns is None else columns)])
    summaries.write_results_summary(workdir, rows, results)  # [TensorBoard] process 0 only


def encoder_row(name, module, variables, data, key, victim_test_out=None, output_index=0,
                fidelity_index=None, cfg_eval=None):
    """Evaluate a flax module whose call returns a tuple (representation, ...).

    ``output_index`` selects the representation used for probes;
    ``fidelity_index`` the output compared with ``victim_test_out`` (None: skip).
    """
    rep = make_apply(module, variables, output_index)
    tr = extract_features(rep, data.probe_train_x, desc=f"features {name} (probe train)")
    fidelity = fidelity_index is not None and victim_test_out is not None
    if fidelity and fidelity_index != output_index:
        # one forward pass for the representation and the output compared with the victim
        both = extract_features(make_apply(module, variables, (output_index, fidelity_index)),
                                data.probe_test_x)
        te, out = both[:, :tr.shape[1]], both[:, tr.shape[1]:]
    else:
        te = extract_features(rep, data.probe_test_x)
        out = te if fidelity else None
    if out is not None and out.shape != victim_test_out.shape:
        out = None
    return evaluate_features(name, tr, te, data, key, victim_test_out, out,
                             **(cfg_eval or {}))


def evaluate_encoder(module, variables, data, key, victim_outputs=None, output_index=0,
                     fidelity_index=None, *, name: str = "encoder", per_class: int = 100,
                     probe_epochs: int = 60, select_probe: bool = True) -> dict:
    """Evaluate one encoder as the experiments' report rows do (Python API; a thin
    wrapper over :func:`encoder_row` with the ``eval`` block's settings as keywords).

    Args:
      module, variables: a flax module whose call returns a tuple ``(representation,
        ...)`` (a victim's ``SimCLRModel``, a ``SurrogateModel``) and its
        ``{'params', 'batch_stats'}``.
      data: ``data.splits.ExperimentData`` (probe train / test images and labels).
      key: PRNG key (probe initialisation and order, few-label subset).
      victim_outputs: float32 ``(N_test, D)`` the victim API's answers on
        ``data.probe_test_x`` (e.g. ``api.query("owner", data.probe_test_x)``), for
        fidelity; None skips fidelity.
      output_index: which output is the representation probed (0).
      fidelity_index: which output is compared with ``victim_outputs`` (1 for a
        surrogate: its output in the API's space; None skips fidelity).
      per_class, probe_epochs, select_probe: as ``evaluation.report.evaluate_features``.
    Returns:
      the report row: ``name``, ``probe_full`` / ``probe_100`` / ``knn`` (accuracy in
      percent), ``cosine_fidelity`` / ``l2_fidelity`` (None without fidelity), and
      ``probe_full_settings``.
    """
    return encoder_row(name, module, variables, data, key, victim_outputs, output_index,
                       fidelity_index, dict(per_class=int(per_class),
                                            probe_epochs=int(probe_epochs),
                                            select_probe=bool(select_probe)))


def independent_row(module, data, key, seed: int, victim_test_out=None, fidelity_index=None,
                    cfg_eval=None):
    """Metrics of ``module`` freshly initialised with PRNG key ``seed + 1000``: the
    independent encoder of the same architecture that every report includes."""
    variables = module.init(jax.random.key(int(seed) + 1000), data.probe_test_x[:2] / 255.0)
    return encoder_row("independent (random init)", module, variables, data, key,
                       victim_test_out, 0, fidelity_index, cfg_eval)


# Result rows evaluated at once by ``evaluate_rows``.
ROWS_IN_FLIGHT = 2


def evaluate_rows(jobs) -> list[dict]:
    """Compute result rows, ``ROWS_IN_FLIGHT`` at a time, in the order of ``jobs``.

    ``jobs`` are zero-argument callables returning a row (``encoder_row``,
    ``independent_row``, ``raw_pixels_row`` wrapped in ``functools.partial``).
    Feature extraction (convolutions on all cores) of one row then overlaps
    the probe fits of the previous one (chains of tiny programs that leave
    cores idle). Each row's numbers depend only on its own arguments, so they
    are the same as computed one by one (``$SSLSTEAL_EVAL_WORKERS=1`` does
    that). Measured on the 2-core dev machine, main job (4 rows, probe jobs
    already concurrent within a row): evaluation 134 s one row at a time,
    110 s with two rows in flight.

    Concurrency rule (``training.mesh``): the rows' feature extractions are
    multi-device programs and take turns under ``mesh.COLLECTIVES`` (two of
    them in flight at once could deadlock at their all-gather); the probes
    and kNN are single-device programs and overlap freely with the other
    row's extraction. On a multi-host run the rows are computed one at a time:
    the lock orders programs within one process only, and every process must
    run the same collectives in the same order.

    Raises:
      whatever a job raises (after the other rows in flight finish).
    """
    workers = min(ROWS_IN_FLIGHT, default_workers())
    if jax.process_count() > 1:
        # [multi-host] the rows' extractions are collectives across processes: every process
        # must run them in the same order, which threads do not guarantee (a cross-host
        # deadlock otherwise). One row at a time; its probes still run side by side.
        workers = 1
    return run_concurrently(list(jobs), max_workers=workers)


def run_environment() -> dict:
    """What the numbers of a run depend on besides its config and seed:
    ``{"jax": version, "platform": "cpu" | "gpu" | "tpu", "devices": int}``
    (data-parallel device count: float summation order, hence the last digits,
    depends on it; see ``sslsteal_jax.host_devices``)."""
    return {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "devices": jax.device_count()}


def eval_kwargs(cfg) -> dict:
    """Keyword arguments of ``evaluate_features`` from a config's ``eval`` block."""
    return dict(per_class=int(cfg.eval.per_class), probe_epochs=int(cfg.eval.probe_epochs),
                select_probe=bool(cfg.eval.get("select_probe", True)))


def raw_pixels_row(data, key, cfg_eval=None):
    """Metrics of the raw-pixel baseline (no fidelity)."""
    return evaluate_features("raw pixels", raw_pixels(data.probe_train_x),
                             raw_pixels(data.probe_test_x), data, key, **(cfg_eval or {}))
