"""Report rows of encoders: linear probe (full labels, few labels), kNN, fidelity.

The experiments evaluate every encoder the same way (Dziedzic et al., ICML 2022,
Section 4: linear probe on the frozen representation; fidelity to the victim's
answers on the probe test set), next to two baselines every report carries: an
independent randomly initialised encoder of the same architecture and raw pixels.
"""
from __future__ import annotations

import functools

import jax

from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.features import extract_features, raw_pixels
from sslsteal_jax.evaluation.parallel import default_workers, run_concurrently
from sslsteal_jax.errors import check_int
from sslsteal_jax.evaluation.report import evaluate_features
from sslsteal_jax.models import init_variables

#: Label of the independent-encoder row.
INDEPENDENT = "independent (random init)"
# Result rows evaluated at once by ``evaluate_rows``.
ROWS_IN_FLIGHT = 2


def eval_kwargs(cfg) -> dict:
    """Keyword arguments of ``evaluate_features`` from a config's ``eval`` block
    (``per_class`` labels per class, ``probe_epochs``, ``select_probe``)."""
    return dict(per_class=int(cfg.eval.per_class), probe_epochs=int(cfg.eval.probe_epochs),
                select_probe=bool(cfg.eval.select_probe))


def encoder_row(encoder: Encoder, data, key, victim_outputs=None, ev: dict | None = None,
                strict: bool = False, progress: bool = True) -> dict:
    """Evaluate one encoder on ``data``'s probe splits.

    Args:
      encoder: the :class:`~sslsteal_jax.evaluation.encoder.Encoder` (its
        representation is probed; its ``victim_space`` output is compared with
        ``victim_outputs``).
      data: ``data.splits.ExperimentData``.
      key: PRNG key (probe initialisation and order, few-label subset).
      victim_outputs: float32 ``(N_test, D)`` the victim API's answers on
        ``data.probe_test_x``; None (or an encoder without ``victim_space``, or an
        output of another shape unless ``strict``) skips fidelity.
      ev: ``evaluate_features`` keywords (:func:`eval_kwargs`).
      strict: an encoder output whose shape differs from ``victim_outputs`` is an
        error instead of a row without fidelity.
      progress: a progress bar over the probe-train feature batches.
    Returns:
      the report row (``evaluation.report.evaluate_features``).
    Raises:
      ValueError: ``strict`` and the shapes differ (names both).
    """
    tr = encoder.features(data.probe_train_x,
                          desc=f"features {encoder.name} (probe train)" if progress else None)
    fidelity = victim_outputs is not None and encoder.victim_space is not None
    if fidelity and encoder.victim_space != encoder.representation:
        # one forward pass for the representation and the output compared with the victim
        both = extract_features(encoder.apply(("representation", "victim_space")),
                                data.probe_test_x)
        te, out = both[:, :tr.shape[1]], both[:, tr.shape[1]:]
    else:
        te = encoder.features(data.probe_test_x)
        out = te if fidelity else None
    if out is not None and out.shape != victim_outputs.shape:
        if strict:
            raise ValueError(f"victim_outputs has shape {tuple(victim_outputs.shape)} but "
                             f"encoder {encoder.name!r} answers {tuple(out.shape)} on "
                             "data.probe_test_x; pass the victim's answers on exactly those "
                             "images (api.query('owner', data.probe_test_x)), or None")
        out = None
    return evaluate_features(encoder.name, tr, te, data, key, victim_outputs, out, **(ev or {}))


def independent_encoder(module, data, seed: int, victim_space: int | None = None) -> Encoder:
    """``module`` freshly initialised with PRNG key ``seed + 1000``: the independent
    encoder of the same architecture that every report includes (its output
    ``victim_space``, if given, is compared with the victim's answers)."""
    variables = init_variables(module, jax.random.key(int(seed) + 1000),
                               data.probe_test_x[:2] / 255.0)
    return Encoder(INDEPENDENT, module, variables, 0, victim_space, "independent")


def raw_pixels_row(data, key, ev: dict | None = None) -> dict:
    """Metrics of the raw-pixel baseline (no fidelity)."""
    return evaluate_features("raw pixels", raw_pixels(data.probe_train_x),
                             raw_pixels(data.probe_test_x), data, key, **(ev or {}))


def evaluate_rows(jobs) -> list[dict]:
    """Compute result rows, ``ROWS_IN_FLIGHT`` at a time, in the order of ``jobs``.

    ``jobs`` are zero-argument callables returning a row. Feature extraction
    (convolutions on all cores) of one row then overlaps the probe fits of the
    previous one (chains of tiny programs that leave cores idle). Each row's
    numbers depend only on its own arguments, so they are the same as computed
    one by one (``$SSLSTEAL_EVAL_WORKERS=1`` does that). Measured on the 2-core
    dev machine, main job (4 rows): evaluation 134 s one row at a time, 110 s
    with two rows in flight.

    Concurrency rule (``training.mesh``): the rows' feature extractions are
    multi-device programs and take turns under ``mesh.COLLECTIVES``; the probes
    and kNN are single-device programs and overlap freely. On a multi-host run the
    rows are computed one at a time: the lock orders programs within one process
    only, and every process must run the same collectives in the same order.
    There every process extracts each row's features (collectively), process 0
    alone fits the probes and computes kNN and fidelity, and every process
    returns the same rows (``evaluation.report.evaluate_features``).

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


def evaluate_encoders(encoders, data, key, victim_outputs=None, ev: dict | None = None,
                      raw: bool = True) -> list[dict]:
    """Rows of ``encoders`` (in order; each an :class:`Encoder`, or a zero-argument
    callable returning a row for a custom row), plus the raw-pixel row when
    ``raw``; evaluated ``ROWS_IN_FLIGHT`` at a time (:func:`evaluate_rows`)."""
    jobs = [e if callable(e) and not isinstance(e, Encoder)
            else functools.partial(encoder_row, e, data, key, victim_outputs, ev)
            for e in encoders]
    if raw:
        jobs.append(functools.partial(raw_pixels_row, data, key, ev))
    return evaluate_rows(jobs)


def evaluate_encoder(encoder: Encoder, data, key, victim_outputs=None, *, per_class: int = 100,
                     probe_epochs: int = 60, select_probe: bool = True,
                     progress: bool = True) -> dict:
    """Evaluate one encoder as the experiments' report rows do (Python API).

    Args:
      encoder: an :class:`Encoder` (e.g. ``Encoder.surrogate("stolen", module,
        variables)`` for a trained surrogate, ``Encoder.victim(module, variables)``).
      data: ``data.splits.ExperimentData`` (probe train / test images and labels).
      key: PRNG key (probe initialisation and order, few-label subset).
      victim_outputs: float32 ``(N_test, D)`` the victim API's answers on
        ``data.probe_test_x`` (e.g. ``api.query("owner", data.probe_test_x)``), for
        fidelity; None skips fidelity.
      per_class, probe_epochs, select_probe: as ``evaluation.report.evaluate_features``
        (labels per class of the few-label probe and probe epochs: integers >= 1).
      progress: a progress bar over the feature batches (False: silent, as the other
        Python-API calls' ``progress=False``).
    Returns:
      the report row: ``name``, ``probe_full`` / ``probe_100`` / ``knn`` (accuracy in
      percent), ``cosine_fidelity`` (mean cosine similarity to the victim's answers, in
      [-1, 1], higher is closer) / ``l2_fidelity`` (mean L2 distance of the unit-normalised
      outputs, in [0, 2], lower is closer; ``evaluation.fidelity``) (both None without
      fidelity), and ``probe_full_settings``.
    Raises:
      TypeError: ``encoder`` is not an Encoder, or ``key`` not a JAX PRNG key.
      ValueError: ``per_class`` or ``probe_epochs`` not an integer >= 1;
        ``victim_outputs`` not a finite float ``(len(data.probe_test_x), D)`` array, or
        of another shape than the encoder's ``victim_space`` output (checked before the
        probes run; fidelity is never dropped silently).
    """
    import numpy as np
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be an sslsteal_jax.Encoder (e.g. Encoder.surrogate("
                        f"name, module, variables)), got {type(encoder).__name__}")
    if not (isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                            or (key.dtype == np.uint32 and key.shape == (2,)))):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(0)), got {key!r}")
    check_int("per_class", per_class)
    check_int("probe_epochs", probe_epochs)
    if victim_outputs is not None:
        vo = np.asarray(victim_outputs)
        n = len(data.probe_test_x)
        if vo.ndim != 2 or len(vo) != n or not np.issubdtype(vo.dtype, np.floating):
            raise ValueError(f"victim_outputs must be float (N_test={n}, D) answers on "
                             f"data.probe_test_x, got {vo.dtype} {vo.shape}")
        if not np.isfinite(vo).all():
            raise ValueError(f"victim_outputs must be finite: {int((~np.isfinite(vo)).sum())} "
                             f"of {vo.size} values are NaN or infinite")
        victim_outputs = vo
    return encoder_row(encoder, data, key, victim_outputs,
                       dict(per_class=int(per_class), probe_epochs=int(probe_epochs),
                            select_probe=bool(select_probe)), strict=True,
                       progress=bool(progress))
