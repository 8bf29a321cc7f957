"""The pipeline layer: the steps every experiment composes.

* ``workdir``: work directories (refuse to overwrite results), repository paths,
  the run environment recorded with results.
* ``victim``: load the victim checkpoint or train it (load-or-train).
* ``queries``: buy API answers once into a checked, atomic cache file; a
  resumed run reuses them and is never charged twice.
* ``cells``: a resumable store of finished cells (scan cells, matrix cells)
  guarded by a settings fingerprint.
* ``evaluate``: report rows of ``evaluation.encoder.Encoder`` values (linear
  probe, kNN, fidelity), the independent and raw-pixel baselines.
* ``results``: results.json / results.csv written atomically, tables and plots.

Layering (``tests/test_imports.py``): ``pipeline`` imports the building blocks,
training infrastructure, trainers, attacks, evaluation, verification and the
API; only ``experiments`` and ``main`` import ``pipeline``.
"""
