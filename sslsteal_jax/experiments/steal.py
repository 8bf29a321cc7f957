"""The main job: victim -> representation API -> stealing -> evaluation.

Steps (Dziedzic et al., ICML 2022, Sections 3-4):
1. obtain the victim (shipped checkpoint, or train it into ``<workdir>/victim``);
2. for every query strategy (``cfg.strategies``, default "direct"; see
   ``attacks.strategies``) the attacker opens an API account with the query
   budget and buys its query set once (``pipeline.queries``: answers cached in
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
import os
import time

import jax
import numpy as np

from sslsteal_jax.api.factory import make_api
from sslsteal_jax.api.classifier_api import ClassifierAPI
from sslsteal_jax.attacks.head_recreation import fit_projection_head
from sslsteal_jax.attacks.query import collect_answers, collect_view_answers, owner_answers
from sslsteal_jax.attacks.strategies import (LABEL_STRATEGIES, parse_strategies, partner_index,
                                             plan_queries, query_pool_labels)
from sslsteal_jax.configs.base import check_stream, stream_data_kwargs, stream_settings
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.report import COLUMNS, format_table, plot_results
from sslsteal_jax.losses import LOSSES, parse_losses
from sslsteal_jax.models import SurrogateModel, compute_dtype
from sslsteal_jax.pipeline import evaluate, queries, results, victim as victim_lib, workdir as wd
from sslsteal_jax.trainers.simclr import augment_config
from sslsteal_jax.trainers.surrogate import steal_config, train_surrogate

# Salts folded into the run's PRNG key (one stream per purpose).
_VIEW_SALT, _HEAD_SALT, _CLASSIFIER_SALT = 101, 102, 103


def check_config(cfg) -> tuple[list[str], list[str]]:
    """Validate what needs no data: loss and strategy names, the surrogate dtype, the
    budget's lower bound. Returns ``(losses, strategies)``.

    Raises:
      ConfigError (a ValueError): the first bad value (named, with what is allowed).
    """
    losses, strategies = parse_losses(cfg.losses), parse_strategies(cfg.strategies or "direct")
    if cfg.get("stream") is not None:
        check_stream(cfg.stream, strategies)
    compute_dtype(cfg.steal.model.dtype)
    if int(cfg.steal.epochs) < 1:
        raise ConfigError(f"steal.epochs={cfg.steal.epochs} must be >= 1")
    if cfg.budget < 1:  # the upper bound (the pool size) is checked once the data is loaded
        raise ConfigError(f"query budget {cfg.budget} must be >= 1 (and at most the query "
                          f"pool size)")
    return losses, strategies


def run(cfg, workdir: str) -> dict:
    """Run the steal experiment; returns the results dict (also written to ``workdir``).

    Config fields beyond the quickstart's: ``strategies`` (comma list of
    ``attacks.strategies.STRATEGIES`` or "all"), ``views`` (k views sent per
    image by augmented_queries / head_recreation), ``surrogate_views``
    (StolenEncoder's free surrogate-side views), ``head`` (head recreation:
    hidden, out, epochs, batch_size, learning_rate, temperature).
    Raises:
      ConfigError (a ValueError): bad loss / strategy names / dtype / epochs or a budget
        below 1 (before any data is loaded), a budget the pool or the strategy's views
        cannot fill (before anything is trained or written), a cache of other settings.
    """
    t = [time.time()]
    losses, strategies = check_config(cfg)
    data = experiment_data(cfg.dataset, cfg.query_dataset, cfg.probe_test_size,
                           with_victim_train=not victim_lib.victim_available(cfg.victim),
                           victim_train_size=cfg.victim_train_size,
                           probe_train_size=cfg.probe_train_size,
                           test_split=cfg.get("test_split", "test"),
                           **stream_data_kwargs(cfg))
    if not 1 <= cfg.budget <= len(data.query_pool):
        raise ConfigError(f"query budget {cfg.budget} must be between 1 and the query pool size "
                          f"{len(data.query_pool)} ({data.names['query_pool']})")
    plans = {s: plan_queries(s, cfg.budget, int(cfg.views), len(data.query_pool))
             for s in strategies}
    wd.prepare_workdir(workdir, cfg.overwrite)
    victim = victim_lib.get_victim(cfg.victim, workdir, data)
    key = jax.random.key(int(cfg.seed))
    t.append(time.time())
    apis = _apis(cfg, victim, data, key, strategies)
    bought = {}
    for s, p in plans.items():
        if p.query_set not in bought:
            bought[p.query_set] = _buy(p, apis[p.api], data, cfg, workdir, key)
    t.append(time.time())
    surrogates, summaries, head = _train_surrogates(
        cfg, workdir, victim, data, key, plans, bought, losses,
        apis["classifier"] and apis["classifier"].num_classes)
    t.append(time.time())
    rows, victim_clf = _evaluate(cfg, victim, apis, data, key, surrogates)
    t.append(time.time())
    title = (f"{cfg.dataset}: victim {os.path.basename(os.path.dirname(victim.source))}, "
             f"{cfg.budget} queries from {data.names['query_pool']}")
    out = {"experiment": "steal", "rows": rows, "budget": int(cfg.budget),
           "queries_charged": int(sum(b.total_charged for b in bought.values())),
           "strategies": {s: dataclasses.asdict(p) for s, p in plans.items()},
           "query_sets": {qs: _set_info(qs, b, plans) for qs, b in bought.items()},
           "victim_checkpoint": victim.source, "splits": data.names,
           "surrogate_training": summaries,
           "timing_seconds": dict(zip(("victim", "query", "steal", "evaluate"), np.diff(t)),
                                  total=t[-1] - t[0]),
           # a resumed run's times cover this invocation only (the checkpoints' work is not in
           # them): the victim trained here or a surrogate resumed from its checkpoint
           "resumed": victim.resumed or any(int(sm.get("resumed_from") or 0) > 0
                                            for sm in summaries.values()),
           "environment": wd.run_environment(), "config": cfg.to_dict()}
    if head is not None:
        out["head_recreation"] = head
    table = format_table(rows, title)
    if victim_clf is not None:
        out["victim_classifier"] = victim_clf
        table += "\n" + format_classifier_table(rows, victim_clf)
    return results.finish(workdir, out, rows, fields=["name", *COLUMNS], table=table,
                          plots=[("results.png", lambda p: plot_results(rows, p, title))],
                          seconds=t[-1] - t[0])


def _apis(cfg, victim, data, key, strategies) -> dict:
    """``{"representation": VictimAPI, "classifier": ClassifierAPI or None}``: the
    provider's representation API and, when a label strategy runs, its downstream
    classifier (a linear probe on the victim, trained on the probe train split)."""
    shape = data.probe_test_x.shape[1:]
    apis = {"representation": make_api(cfg.api, victim.module, victim.variables, shape,
                                       output=cfg.api_output),  # api.url: a served victim
            "classifier": None}
    if any(s in LABEL_STRATEGIES for s in strategies):
        apis["classifier"] = ClassifierAPI.from_victim(
            victim.module, victim.variables, shape, data.probe_train_x, data.probe_train_y,
            jax.random.fold_in(key, _CLASSIFIER_SALT), epochs=int(cfg.eval.probe_epochs))
    return apis


def _buy(plan, api, data, cfg, workdir: str, key) -> queries.Answers:
    """Buy ``plan``'s query set once (``pipeline.queries.cached_answers``).

    The account is ``"attacker"`` for the clean set (the main job's) and
    ``"attacker_<set>"`` otherwise, with a budget of exactly ``plan.queries``.
    """
    qs = plan.query_set
    user = "attacker" if qs == "clean" else f"attacker_{qs}"

    def buy(start, stop):
        api.register(user, plan.queries)
        if plan.api == "classifier":
            x, y = collect_answers(api, user, data.query_pool, plan.queries,
                                   query_kwargs={"output": plan.strategy})
        elif plan.views == 1:
            x, y = collect_answers(api, user, data.query_pool, plan.queries)
        else:
            aug = augment_config(cfg.view_augment) if cfg.view_augment else None
            x, y = collect_view_answers(api, user, data.query_pool, plan.queries, plan.views,
                                        jax.random.fold_in(key, _VIEW_SALT), aug)
        return x, y, api.queries_used(user)

    name = "query_cache.npz" if qs == "clean" else f"query_cache_{qs}.npz"
    fp = {"pool": data.names["query_pool"], "query_set": qs}
    st = stream_settings(cfg)
    if st is None:
        return queries.cached_answers(os.path.join(workdir, name), fp, plan.queries, buy)
    # streamed (clean images only, configs.base.check_stream): chunk by chunk
    return queries.streamed_answers(api, user, data.query_pool, plan.queries,
                                    os.path.join(workdir, name[:-len(".npz")]), fp,
                                    int(st.answer_chunk))


def _set_info(qs: str, b: queries.Answers, plans) -> dict:
    """What results.json records of one bought query set."""
    p = next(p for p in plans.values() if p.query_set == qs)
    return {"queries_charged": b.total_charged, "from_cache": b.from_cache,
            "account": "attacker" if qs == "clean" else f"attacker_{qs}", "images": p.images,
            "views": p.views, "cache": os.path.basename(b.path)}


def _train_surrogates(cfg, workdir, victim, data, key, plans, bought, losses,
                      num_classes=None):
    """Train one surrogate per (loss, strategy) (label strategies: one knockoff each,
    ``num_classes`` the classifier API's classes) on the bought answers; returns
    ``(surrogates, training summaries, head summary)`` with
    ``surrogates[(loss, strategy)] = (module, variables)``."""
    surrogates, summaries, head_summary, head_fn = {}, {}, None, None
    enc = victim.module.encoder
    needs_labels = [loss for loss in losses if "labels" in LOSSES[loss].needs]  # e.g. supcon
    pool_labels = query_pool_labels(data.names["query_pool"]) if needs_labels else None
    for s, p in plans.items():
        images, answers = bought[p.query_set].images, bought[p.query_set].answers
        if s in LABEL_STRATEGIES:
            targets = (np.eye(num_classes, dtype=np.float32)[answers] if s == "labels"
                       else answers)
            scfg = steal_config(cfg.steal, "xent", enc, cfg.loss_overrides)
            smod, svars, summ = train_surrogate(images, targets, scfg,
                                                os.path.join(workdir, f"knockoff_{s}"))
            surrogates[("xent", s)] = (smod, svars)
            summaries[f"knockoff_{s}"] = summ
            continue
        extra = {}
        if p.views >= 2:
            j = partner_index(p.images, p.views)
            extra["pair"] = (images[j], answers[j])
        if s == "head_recreation":
            if head_fn is None:
                head_fn, head_summary = _recreate_head(cfg, answers, p.views, key)
            extra["target_head"] = head_fn
        for loss in losses:
            scfg = steal_config(cfg.steal, loss, enc, cfg.loss_overrides)
            if s == "stolenencoder":
                scfg.surrogate_views = int(cfg.surrogate_views)
            kw = dict(extra)
            if loss in needs_labels:
                kw["labels"] = np.repeat(pool_labels[:p.images], p.views)
            sub = f"surrogate_{loss}" if s == "direct" else f"surrogate_{s}_{loss}"
            smod, svars, summ = train_surrogate(images, answers, scfg, os.path.join(workdir, sub),
                                                **kw)
            surrogates[(loss, s)] = (smod, svars)
            summaries[loss if s == "direct" else f"{s}_{loss}"] = summ
    return surrogates, summaries, head_summary


def _recreate_head(cfg, answers, views: int, key):
    """Head recreation: fit the attacker's projection head g' on pairs of answers to
    two views of one image (``attacks.head_recreation``); returns ``(head function,
    summary)``."""
    hc = cfg.head
    head_fn, summary = fit_projection_head(
        answers[0::views], answers[1::views], jax.random.fold_in(key, _HEAD_SALT),
        hidden_dim=int(hc.hidden), out_dim=int(hc.out), epochs=int(hc.epochs),
        batch_size=int(hc.batch_size), learning_rate=float(hc.learning_rate),
        temperature=float(hc.temperature))
    print(f"recreated projection head: pair top-1 {summary['pair_top1']:.1f}% "
          f"(untrained {summary['initial_pair_top1']:.1f}%), NT-Xent {summary['final_loss']:.3f}")
    return head_fn, summary


def _evaluate(cfg, victim, apis, data, key, surrogates):
    """Report rows of the victim, every surrogate / knockoff, an independent encoder
    and raw pixels; with a classifier API, each row's downstream ``classifier_accuracy``
    and ``agreement``. Returns ``(rows, victim classifier summary or None)``."""
    api, clf_api = apis["representation"], apis["classifier"]
    owner = owner_answers(api, data.probe_test_x)  # streamed: a batch at a time
    ev = evaluate.eval_kwargs(cfg)
    clf_pred, victim_clf = None, None
    if clf_api is not None:
        clf_pred = clf_api.query("owner", data.probe_test_x)
        victim_clf = {"accuracy": float(100.0 * np.mean(clf_pred == data.probe_test_y)),
                      "epochs": int(cfg.eval.probe_epochs),
                      "trained_on": data.names["probe_train"]}
    ev_ref = ev if clf_pred is None else dict(ev, reference_predictions=clf_pred)

    def knockoff_row(name, smod, svars):
        row = evaluate.encoder_row(Encoder(name, smod, svars, kind="knockoff"), data, key,
                                   None, ev)
        pred = np.argmax(extract_features(make_apply(smod, svars, 1), data.probe_test_x), 1)
        row["classifier_accuracy"] = float(100.0 * np.mean(pred == data.probe_test_y))
        row["agreement"] = float(100.0 * np.mean(pred == clf_pred))
        return row

    encoders = [victim.encoder(cfg.api_output)]
    for (loss, s), (smod, svars) in surrogates.items():
        if s in LABEL_STRATEGIES:
            encoders.append(lambda n=f"knockoff ({s})", m=smod, v=svars: knockoff_row(n, m, v))
        else:
            name = f"surrogate ({loss})" if s == "direct" else f"surrogate ({loss}, {s})"
            encoders.append(Encoder.surrogate(name, smod, svars))
    enc = victim.module.encoder if not surrogates else next(iter(surrogates.values()))[0].encoder
    adapter = None if enc.representation_dim == api.output_dim else api.output_dim
    encoders.append(evaluate.independent_encoder(SurrogateModel(enc, adapter), data, cfg.seed,
                                                 1 if adapter is None else None))
    rows = evaluate.evaluate_encoders(encoders, data, key, owner, ev_ref)
    if clf_api is not None:
        for r in rows:
            r.setdefault("classifier_accuracy", r["probe_full"])
    return rows, victim_clf


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
