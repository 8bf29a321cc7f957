"""The main job: victim -> representation API -> direct extraction -> evaluation.

Steps (Dziedzic et al., ICML 2022, Sections 3-4):
1. obtain the victim (shipped checkpoint, or train it into ``<workdir>/victim``);
2. the attacker opens an API account with the query budget and queries the
   first ``budget`` images of the query pool once (answers cached in
   ``<workdir>/query_cache.npz``);
3. for each loss, a freshly initialised surrogate is trained on the cached
   answers (``<workdir>/surrogate_<loss>``, resumable);
4. victim, surrogates, an independent randomly initialised encoder and raw
   pixels are evaluated on the same probe splits; ``results.json``,
   ``results.csv`` and ``results.png`` are written and a table is printed.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.direct import train_surrogate
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.report import format_table, plot_results
from sslsteal_jax.experiments import common, train_victim
from sslsteal_jax.losses import STEALING_LOSSES
from sslsteal_jax.models import SurrogateModel
from sslsteal_jax.training.encoders import load_model


def parse_losses(spec: str) -> list[str]:
    """``"infonce"`` / ``"mse,softnn"`` / ``"all"`` -> list of loss names.

    Raises:
      ValueError: unknown loss name (lists the allowed ones).
    """
    names = list(STEALING_LOSSES) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in STEALING_LOSSES]
    if bad or not names:
        raise ValueError(f"unknown stealing loss(es) {bad or spec!r}; allowed: "
                         f"{list(STEALING_LOSSES)} or 'all'")
    return names


def get_victim(cfg, workdir: str, data):
    """Load the victim checkpoint named by ``cfg.victim.checkpoint`` or train one.

    Returns ``(model, variables, source)``.
    Raises:
      FileNotFoundError: checkpoint missing and ``cfg.victim.train_if_missing`` False.
    """
    path = common.resolve_path(cfg.victim.checkpoint)
    if path and os.path.isdir(path) and not cfg.victim.train_from_scratch:
        loaded = load_model(path, dict(cfg.victim.expect_model) if cfg.victim.get("expect_model") else None)
        if loaded.kind != "simclr":
            raise ValueError(f"victim checkpoint {path} is a {loaded.kind!r} checkpoint, expected 'simclr'")
        return loaded.module, loaded.variables, path
    if not (cfg.victim.train_from_scratch or cfg.victim.train_if_missing):
        raise FileNotFoundError(f"victim checkpoint {cfg.victim.checkpoint!r} not found and "
                                f"victim.train_if_missing is False")
    vdir = os.path.join(workdir, "victim")
    model, variables, _ = train_victim.train(cfg.victim.train, vdir, data)
    return model, variables, vdir


def run(cfg, workdir: str) -> dict:
    """Run the main job; returns the results dict (also written to ``workdir``)."""
    t0 = time.time()
    losses = parse_losses(cfg.losses)
    data = experiment_data(cfg.dataset, cfg.get("query_dataset"), cfg.probe_test_size,
                           with_victim_train=bool(cfg.victim.train_from_scratch or not os.path.isdir(
                               common.resolve_path(cfg.victim.checkpoint) or "")),
                           victim_train_size=cfg.get("victim_train_size"),
                           probe_train_size=cfg.get("probe_train_size"))
    if not 1 <= cfg.budget <= len(data.query_pool):
        raise ValueError(f"query budget {cfg.budget} must be between 1 and the query pool size "
                         f"{len(data.query_pool)} ({data.names['query_pool']})")
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    model, variables, victim_source = get_victim(cfg, workdir, data)
    t_victim = time.time()

    # ---- attacker: query once, cache answers --------------------------------------------
    api = VictimAPI(model, variables, data.probe_test_x.shape[1:], output=cfg.api_output)
    cache = os.path.join(workdir, "query_cache.npz")
    if os.path.exists(cache):
        with np.load(cache) as z:
            q_images, answers = z["images"], z["answers"]
        print(f"reusing {len(answers)} cached API answers from {cache}")
    else:
        api.register("attacker", cfg.budget)
        q_images, answers = collect_answers(api, "attacker", data.query_pool, cfg.budget)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, images=q_images, answers=answers)
        os.replace(tmp, cache)
    t_query = time.time()

    # ---- surrogates ------------------------------------------------------------------------
    key = jax.random.key(int(cfg.seed))
    surrogates, train_summaries = {}, {}
    vcfg = model.encoder
    for loss in losses:
        scfg = cfg.steal.copy_and_resolve_references()
        scfg.loss = loss
        scfg.model.arch = scfg.model.arch or _arch_name(vcfg)
        scfg.model.width = scfg.model.width or vcfg.width
        scfg.model.stem = scfg.model.stem or vcfg.stem
        if loss in cfg.get("loss_overrides", {}):
            scfg.update(dict(cfg.loss_overrides[loss]))
        smod, svars, summ = train_surrogate(q_images, answers, scfg,
                                            os.path.join(workdir, f"surrogate_{loss}"))
        surrogates[loss] = (smod, svars)
        train_summaries[loss] = summ
    t_steal = time.time()

    # ---- evaluation ------------------------------------------------------------------------
    owner = api.query("owner", data.probe_test_x)
    ev = common.eval_kwargs(cfg)
    out_index = 0 if cfg.api_output == "representation" else 1
    rows = [common.encoder_row("victim", model, variables, data, key, owner, 0, out_index, ev)]
    for loss, (smod, svars) in surrogates.items():
        rows.append(common.encoder_row(f"surrogate ({loss})", smod, svars, data, key, owner, 0, 1, ev))
    s0 = next(iter(surrogates.values()))[0]
    rows.append(common.independent_row(SurrogateModel(s0.encoder, s0.out_dim), data, key, cfg.seed,
                                       owner, 1 if s0.out_dim is None else None, ev))
    rows.append(common.raw_pixels_row(data, key, ev))
    t_eval = time.time()

    title = (f"{cfg.dataset}: victim {victim_source and os.path.basename(os.path.dirname(victim_source))}, "
             f"{cfg.budget} queries from {data.names['query_pool']}")
    print(format_table(rows, title))
    results = {
        "experiment": "steal", "rows": rows, "budget": int(cfg.budget),
        "queries_charged": api.queries_used("attacker") or len(answers), "victim_checkpoint": victim_source,
        "splits": data.names, "surrogate_training": train_summaries,
        "timing_seconds": {"victim": t_victim - t0, "query": t_query - t_victim,
                           "steal": t_steal - t_query, "evaluate": t_eval - t_steal,
                           "total": t_eval - t0},
        "config": cfg.to_dict()}
    common.write_results(workdir, results, rows)
    plot_results(rows, os.path.join(workdir, "results.png"), title)
    print(f"wrote {os.path.join(workdir, 'results.json')} and results.png "
          f"(total {t_eval - t0:.0f} s)")
    return results


def _arch_name(encoder) -> str:
    from sslsteal_jax.models import ARCHITECTURES
    for name, (stages, block) in ARCHITECTURES.items():
        if tuple(stages) == tuple(encoder.stage_sizes) and block is encoder.block_cls:
            return name
    raise ValueError("victim encoder matches no known architecture")
