"""Result files: results.json and results.csv written atomically, the printed
table and the plots, in one call at the end of every experiment."""
from __future__ import annotations

import csv
import os

from sslsteal_jax.evaluation.report import COLUMNS
from sslsteal_jax.training import mesh as mesh_lib, summaries
from sslsteal_jax.training.checkpoint import write_json_atomic


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
    summaries.write_results_summary(workdir, rows, results)  # [TensorBoard] process 0 only
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    write_csv_atomic(os.path.join(workdir, "results.csv"), rows,
                     ["name", *(COLUMNS if columns is None else columns)])


def finish(workdir: str, results: dict, rows: list[dict], *, fields, table: str = "",
           plots=(), seconds: float | None = None, series=("name",),
           step_key: str | None = None) -> dict:
    """The end of every experiment: print ``table``, write ``results.json`` and
    ``results.csv`` (header ``fields``) atomically, draw each plot, print what
    was written.

    Args:
      workdir: the run's work directory.
      results: the JSON-able results dict.
      rows: one dict per CSV line.
      fields: CSV columns, in order.
      table: text printed before writing (the experiment's table).
      plots: ``(file name, function(path))`` pairs; each function writes its PNG
        atomically to the path it is given.
      seconds: wall time reported in the last line (None: not reported).
      series, step_key: how rows become TensorBoard curves in ``<workdir>/tensorboard``
        (``training.summaries.write_results_summary``; process 0 only).
    Returns:
      ``results``.
    """
    if table:
        print(table)
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    write_csv_atomic(os.path.join(workdir, "results.csv"), rows, list(fields))
    summaries.write_results_summary(workdir, rows, results, series=series, step_key=step_key)
    names = ["results.json", "results.csv"]
    for name, draw in plots:
        if mesh_lib.is_writer():  # [multi-host] one writer per file
            draw(os.path.join(workdir, name))
        names.append(name)
    took = "" if seconds is None else f" ({seconds:.0f} s)"
    print(f"wrote {', '.join(names)} in {workdir}{took}")
    return results
