"""The main job: victim -> representation API -> stealing -> evaluation.

Steps (Dziedzic et al., ICML 2022, Sections 3-4):
1. obtain the victim (shipped checkpoint, or train it into ``<workdir>/victim``);
2. for every query strategy (``cfg.strategies``, default "direct"; see
   ``attacks.strategies``) the attacker opens an API account with the query
   budget and buys its query set once (answers cached in
   ``<workdir>/query_cache.npz`` for the clean images, ``query_cache_<set>.npz``
   for augmented views and classifier answers; strategies that send the same
   inputs share one set, and a cached set is never charged again);
3. for each (strategy, loss) a freshly initialised surrogate is trained on the
   cached answers (``<workdir>/surrogate_<loss>`` for direct,
   ``surrogate_<strategy>_<loss>`` otherwise, ``knockoff_<strategy>`` for the
   label baselines; all resumable);
4. victim, surrogates, an independent randomly initialised encoder and raw
   pixels are evaluated on the same probe splits; ``results.json``,
   ``results.csv`` and ``results.png`` are written and a table is printed. With
   a label baseline in the run, every row also gets the downstream
   ``classifier_accuracy`` and its ``agreement`` with the provider's classifier.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.api.classifier_api import ClassifierAPI
from sslsteal_jax.attacks.head_recreation import fit_projection_head
from sslsteal_jax.attacks.query import collect_answers, collect_view_answers
from sslsteal_jax.attacks.strategies import (LABEL_STRATEGIES, parse_strategies, partner_index,
                                             plan_queries, query_pool_labels)
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.report import format_table, plot_results
from sslsteal_jax.experiments import common, train_victim
from sslsteal_jax.losses import ALL_LOSSES, EXTRA_LOSSES, STEALING_LOSSES
from sslsteal_jax.models import compute_dtype, SurrogateModel
from sslsteal_jax.trainers.simclr import augment_config
from sslsteal_jax.trainers.surrogate import steal_config, train_surrogate
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training.checkpoint import load_model

# Salts folded into the run's PRNG key (one stream per purpose).
_VIEW_SALT, _HEAD_SALT, _CLASSIFIER_SALT = 101, 102, 103


def parse_losses(spec: str) -> list[str]:
    """``"infonce"`` / ``"mse,softnn"`` / ``"all"`` (the paper's four losses) /
    ``"extra"`` (cosine, barlow, symmetrized, supcon, softce) / ``"every"``
    (all nine) -> list of loss names.

    Raises:
      ValueError: unknown loss name (lists the allowed ones).
    """
    groups = {"all": STEALING_LOSSES, "extra": EXTRA_LOSSES, "every": ALL_LOSSES}
    names = (list(groups[spec]) if spec in groups
             else [s.strip() for s in spec.split(",") if s.strip()])
    bad = [n for n in names if n not in ALL_LOSSES]
    if bad or not names:
        raise ConfigError(f"unknown stealing loss(es) {bad or spec!r}; allowed: "
                          f"{list(ALL_LOSSES)} or 'all' (the paper's four), 'extra', 'every'")
    return names


def get_victim(cfg, workdir: str, data):
    """Load the victim checkpoint named by ``cfg.victim.checkpoint`` or train one.

    Returns ``(model, variables, source)``.
    Raises:
      ConfigError (a ValueError): a named checkpoint that does not exist (without
        ``victim.train_from_scratch``), no checkpoint named and
        ``cfg.victim.train_if_missing`` False, or a checkpoint that is not a SimCLR victim.
    """
    path = common.resolve_path(cfg.victim.checkpoint)
    if path and os.path.isdir(path) and not cfg.victim.train_from_scratch:
        loaded = load_model(path, dict(cfg.victim.expect_model) if cfg.victim.get("expect_model") else None)
        if loaded.kind != "simclr":
            raise ConfigError(f"victim checkpoint {path} is a {loaded.kind!r} checkpoint, "
                              "expected 'simclr'")
        return loaded.module, loaded.variables, path
    if path and not cfg.victim.train_from_scratch:
        # a named checkpoint that is not there is a typo, never a reason to spend hours
        # training a new victim (train_if_missing applies when no checkpoint is named)
        raise ConfigError(f"victim checkpoint {cfg.victim.checkpoint!r} not found ({path}); fix "
                          "the path, or train a victim into <workdir>/victim with "
                          "configs/quickstart.py:victim=scratch")
    if not (cfg.victim.train_from_scratch or cfg.victim.train_if_missing):
        raise ConfigError(f"victim checkpoint {cfg.victim.checkpoint!r} not found and "
                          f"victim.train_if_missing is False")
    vdir = os.path.join(workdir, "victim")
    model, variables, _ = train_victim.train(cfg.victim.train, vdir, data)
    return model, variables, vdir


def run(cfg, workdir: str) -> dict:
    """Run the steal experiment; returns the results dict (also written to ``workdir``).

    Config fields beyond the quickstart's (all optional; absent = the plain
    direct-extraction main job): ``strategies`` (comma list of
    ``attacks.strategies.STRATEGIES`` or "all"), ``views`` (k views sent per
    image by augmented_queries / head_recreation, default 2),
    ``surrogate_views`` (StolenEncoder's free surrogate-side views, default 1),
    ``head`` (head recreation: hidden, out, epochs, batch_size,
    learning_rate, temperature).
    Raises:
      ConfigError (a ValueError): bad loss / strategy names / dtype or a budget below 1
        (before any data is loaded), a budget the pool or the strategy's views cannot
        fill (before anything is trained or written).
    """
    t0 = time.time()
    losses = parse_losses(cfg.losses)
    strategies = parse_strategies(cfg.get("strategies") or "direct")
    compute_dtype(cfg.steal.model.get("dtype", "float32"))  # a bad dtype fails before any query
    if cfg.budget < 1:  # the upper bound (the pool size) is checked once the data is loaded
        raise ConfigError(f"query budget {cfg.budget} must be >= 1 (and at most the query "
                          f"pool size)")
    data = experiment_data(cfg.dataset, cfg.get("query_dataset"), cfg.probe_test_size,
                           with_victim_train=bool(cfg.victim.train_from_scratch or not os.path.isdir(
                               common.resolve_path(cfg.victim.checkpoint) or "")),
                           victim_train_size=cfg.get("victim_train_size"),
                           probe_train_size=cfg.get("probe_train_size"))
    if not 1 <= cfg.budget <= len(data.query_pool):
        raise ConfigError(f"query budget {cfg.budget} must be between 1 and the query pool size "
                          f"{len(data.query_pool)} ({data.names['query_pool']})")
    plans = {s: plan_queries(s, cfg.budget, int(cfg.get("views") or 2), len(data.query_pool))
             for s in strategies}
    pool_labels = (query_pool_labels(data.names["query_pool"]) if "supcon" in losses else None)
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    model, variables, victim_source = get_victim(cfg, workdir, data)
    t_victim = time.time()
    key = jax.random.key(int(cfg.seed))

    # ---- provider: representation API (+ downstream classifier API) ------------------------
    api = VictimAPI(model, variables, data.probe_test_x.shape[1:], output=cfg.api_output)
    clf_api = None
    if any(s in LABEL_STRATEGIES for s in strategies):
        clf_api = ClassifierAPI.from_victim(model, variables, data.probe_test_x.shape[1:],
                                            data.probe_train_x, data.probe_train_y,
                                            jax.random.fold_in(key, _CLASSIFIER_SALT),
                                            epochs=int(cfg.eval.probe_epochs))

    # ---- attacker: buy each query set once, cache answers ------------------------------------
    bought = {}
    for s in strategies:
        p = plans[s]
        if p.query_set not in bought:
            bought[p.query_set] = _buy(p, api if p.api == "representation" else clf_api,
                                       data, cfg, workdir, key)
    t_query = time.time()

    # ---- surrogates ------------------------------------------------------------------------
    surrogates, train_summaries, head_summary = {}, {}, None
    head_fn = None
    for s in strategies:
        p = plans[s]
        q_images, answers = bought[p.query_set]["images"], bought[p.query_set]["answers"]
        if s in LABEL_STRATEGIES:
            targets = (np.eye(clf_api.num_classes, dtype=np.float32)[answers] if s == "labels"
                       else answers)
            scfg = _steal_cfg(cfg, "xent", model.encoder)
            smod, svars, summ = train_surrogate(q_images, targets, scfg,
                                                os.path.join(workdir, f"knockoff_{s}"))
            surrogates[("xent", s)] = (smod, svars)
            train_summaries[f"knockoff_{s}"] = summ
            continue
        extra = {}
        if p.views >= 2:
            j = partner_index(p.images, p.views)
            extra["pair"] = (q_images[j], answers[j])
        if s == "head_recreation":
            if head_fn is None:
                hc = dict(cfg.get("head") or {})
                head_fn, head_summary = fit_projection_head(
                    answers[0::p.views], answers[1::p.views], jax.random.fold_in(key, _HEAD_SALT),
                    hidden_dim=int(hc.get("hidden", 512)), out_dim=int(hc.get("out", 128)),
                    epochs=int(hc.get("epochs", 100)), batch_size=int(hc.get("batch_size", 256)),
                    learning_rate=float(hc.get("learning_rate", 1e-3)),
                    temperature=float(hc.get("temperature", 0.1)))
                print(f"recreated projection head: pair top-1 {head_summary['pair_top1']:.1f}% "
                      f"(untrained {head_summary['initial_pair_top1']:.1f}%), "
                      f"NT-Xent {head_summary['final_loss']:.3f}")
            extra["target_head"] = head_fn
        for loss in losses:
            scfg = _steal_cfg(cfg, loss, model.encoder)
            if s == "stolenencoder":
                scfg.surrogate_views = int(cfg.get("surrogate_views") or 1)
            kw = dict(extra)
            if loss == "supcon":
                kw["labels"] = np.repeat(pool_labels[:p.images], p.views)
            sub = f"surrogate_{loss}" if s == "direct" else f"surrogate_{s}_{loss}"
            smod, svars, summ = train_surrogate(q_images, answers, scfg,
                                                os.path.join(workdir, sub), **kw)
            surrogates[(loss, s)] = (smod, svars)
            train_summaries[loss if s == "direct" else f"{s}_{loss}"] = summ
    t_steal = time.time()

    # ---- evaluation ------------------------------------------------------------------------
    owner = api.query("owner", data.probe_test_x)
    ev = common.eval_kwargs(cfg)
    clf_pred, victim_clf = None, None
    if clf_api is not None:
        clf_pred = clf_api.query("owner", data.probe_test_x)
        victim_clf = {"accuracy": float(100.0 * np.mean(clf_pred == data.probe_test_y)),
                      "epochs": int(cfg.eval.probe_epochs),
                      "trained_on": data.names["probe_train"]}
    ev_ref = ev if clf_pred is None else dict(ev, reference_predictions=clf_pred)
    out_index = 0 if cfg.api_output == "representation" else 1

    def knockoff_row(name, smod, svars):
        row = common.encoder_row(name, smod, svars, data, key, None, 0, None, ev)
        pred = np.argmax(extract_features(make_apply(smod, svars, 1), data.probe_test_x), 1)
        row["classifier_accuracy"] = float(100.0 * np.mean(pred == data.probe_test_y))
        row["agreement"] = float(100.0 * np.mean(pred == clf_pred))
        return row

    jobs = [functools.partial(common.encoder_row, "victim", model, variables, data, key, owner,
                              0, out_index, ev_ref)]
    for (loss, s), (smod, svars) in surrogates.items():
        if s in LABEL_STRATEGIES:
            jobs.append(functools.partial(knockoff_row, f"knockoff ({s})", smod, svars))
        else:
            name = f"surrogate ({loss})" if s == "direct" else f"surrogate ({loss}, {s})"
            jobs.append(functools.partial(common.encoder_row, name, smod, svars, data, key, owner,
                                          0, 1, ev_ref))
    enc = model.encoder if not surrogates else next(iter(surrogates.values()))[0].encoder
    adapter = None if enc.representation_dim == api.output_dim else api.output_dim
    jobs.append(functools.partial(common.independent_row, SurrogateModel(enc, adapter), data, key,
                                  cfg.seed, owner, 1 if adapter is None else None, ev_ref))
    jobs.append(functools.partial(common.raw_pixels_row, data, key, ev_ref))
    rows = common.evaluate_rows(jobs)
    if clf_api is not None:
        for r in rows:
            r.setdefault("classifier_accuracy", r["probe_full"])
    t_eval = time.time()

    title = (f"{cfg.dataset}: victim {victim_source and os.path.basename(os.path.dirname(victim_source))}, "
             f"{cfg.budget} queries from {data.names['query_pool']}")
    print(format_table(rows, title))
    if clf_api is not None:
        print(format_classifier_table(rows, victim_clf))
    query_sets = {k: v["info"] for k, v in bought.items()}
    results = {
        "experiment": "steal", "rows": rows, "budget": int(cfg.budget),
        "queries_charged": int(sum(v["queries_charged"] for v in query_sets.values())),
        "strategies": {s: dataclasses.asdict(plans[s]) for s in strategies},
        "query_sets": query_sets, "victim_checkpoint": victim_source,
        "splits": data.names, "surrogate_training": train_summaries,
        "timing_seconds": {"victim": t_victim - t0, "query": t_query - t_victim,
                           "steal": t_steal - t_query, "evaluate": t_eval - t_steal,
                           "total": t_eval - t0},
        "environment": common.run_environment(), "config": cfg.to_dict()}
    if head_summary is not None:
        results["head_recreation"] = head_summary
    if victim_clf is not None:
        results["victim_classifier"] = victim_clf
    common.write_results(workdir, results, rows)
    plot_results(rows, os.path.join(workdir, "results.png"), title)
    print(f"wrote {os.path.join(workdir, 'results.json')} and results.png "
          f"(total {t_eval - t0:.0f} s)")
    return results


def format_classifier_table(rows, victim_clf: dict) -> str:
    """Text table of downstream-classifier accuracy and agreement with the provider's classifier."""
    lines = [f"downstream classifier (provider's: {victim_clf['accuracy']:.2f}% test accuracy)",
             f"{'encoder':<40}{'classifier acc %':>17}{'agreement %':>13}"]
    lines.append("-" * len(lines[1]))
    for r in rows:
        agr = r.get("agreement")
        lines.append(f"{r['name']:<40}{r['classifier_accuracy']:>17.2f}"
                     f"{(f'{agr:.2f}' if agr is not None else '-'):>13}")
    return "\n".join(lines)


def _steal_cfg(cfg, loss: str, victim_encoder):
    """The surrogate-training config of ``loss``: ``cfg.steal`` with the
    architecture defaulting to the victim's and ``cfg.loss_overrides[loss]`` applied."""
    return steal_config(cfg.steal, loss, victim_encoder, cfg.get("loss_overrides", {}))


def _buy(plan, api, data, cfg, workdir: str, key) -> dict:
    """Buy ``plan``'s query set once (or load it from its cache file).

    The account is ``"attacker"`` for the clean set (the main job's) and
    ``"attacker_<set>"`` otherwise, with a budget of exactly ``plan.queries``.
    Returns dict with ``images`` (uint8, what was sent), ``answers``, and
    ``info``: ``queries_charged`` (what the API counted when the set was
    bought), ``from_cache``, ``account``, ``images``, ``views``, ``cache``.
    Raises:
      ValueError: a cache file from another budget / pool / strategy setting.
    """
    qs = plan.query_set
    cache = os.path.join(workdir, "query_cache.npz" if qs == "clean" else f"query_cache_{qs}.npz")
    user = "attacker" if qs == "clean" else f"attacker_{qs}"
    pool_name = data.names["query_pool"]
    cached = os.path.exists(cache)
    mesh_lib.sync(f"query cache {qs}")  # [multi-host] all looked before process 0 writes it
    if cached:
        with np.load(cache) as z:
            q_images, answers = z["images"], z["answers"]
            charged = int(z["queries_charged"]) if "queries_charged" in z else len(answers)
            stored = str(z["pool"]) if "pool" in z else pool_name
        if len(answers) != plan.queries or stored != pool_name:
            raise ValueError(f"{cache} holds {len(answers)} answers from {stored!r}, this run asks "
                             f"for {plan.queries} from {pool_name!r}: use a new workdir")
        print(f"reusing {len(answers)} cached API answers from {cache} (not charged again)")
        from_cache = True
    else:
        api.register(user, plan.queries)
        if plan.api == "classifier":
            q_images, answers = collect_answers(api, user, data.query_pool, plan.queries,
                                                query_kwargs={"output": plan.strategy})
        elif plan.views == 1:
            q_images, answers = collect_answers(api, user, data.query_pool, plan.queries)
        else:
            aug = augment_config(cfg.view_augment) if cfg.get("view_augment") else None
            q_images, answers = collect_view_answers(api, user, data.query_pool, plan.queries,
                                                     plan.views, jax.random.fold_in(key, _VIEW_SALT),
                                                     aug)
        charged = api.queries_used(user)
        if mesh_lib.is_writer():  # [multi-host] one writer (every process holds the answers)
            tmp = cache + ".tmp.npz"
            np.savez(tmp, images=q_images, answers=answers, queries_charged=charged,
                     pool=pool_name, query_set=qs)
            os.replace(tmp, cache)
        from_cache = False
    return {"images": q_images, "answers": answers,
            "info": {"queries_charged": charged, "from_cache": from_cache, "account": user,
                     "images": plan.images, "views": plan.views, "cache": os.path.basename(cache)}}
