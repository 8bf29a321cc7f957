"""Experiment: owner-side ownership verification of suspect encoders.

For the victim, surrogates stolen from it (direct extraction through the
``VictimAPI`` at several query budgets, trained here), independently trained
encoders (a SimCLR encoder trained briefly on public images from another seed,
and a randomly initialised one) and any extra suspect checkpoints, run

* the watermark test (Dziedzic et al., ICML 2022, Section 5): accuracy of the
  owner's secret rotation MLP on the frozen suspect's representations of
  held-out watermark images, one-sided binomial test against chance;
* dataset inference (Dziedzic et al., NeurIPS 2022): Gaussian-mixture
  log-likelihood of held-out private training images vs public images under
  the suspect's representations, one-sided Welch t-test;

and write ``results.json`` / ``results.csv`` (p-values, watermark accuracy,
decisions at ``alpha``) atomically into a fresh work directory.

Splits (Fashion-MNIST by default): private data = the victim's train split;
watermark images = the slices stored in the watermarked victim's checkpoint
config (training: first ``train_images``; verification: last
``verify_images``); DI fit / held-out private halves = disjoint random subsets
of the train split, or of its first ``di.private_size`` images (permutation
from the config seed); DI public images = the
probe-test hold-out (last test images: nobody trains on them); attacker's query
pool = the first test images; the independent SimCLR encoder trains on the
query pool (public, same distribution, never the private data).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.direct import train_surrogate
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.experiments import common
from sslsteal_jax.training.encoders import build_model, load_model
from sslsteal_jax.training.simclr import train_simclr
from sslsteal_jax.training.watermark import watermark_slices
from sslsteal_jax.verification import (dataset_inference, fit_linear_map, rotation_task,
                                       verify_watermark)
from sslsteal_jax.verification.watermark import owner_logits_fn

COLUMNS = ["kind", "budget", "wm_accuracy", "wm_p_value", "watermarked", "di_ll_gap",
           "di_t_statistic", "di_p_value", "di_stolen"]


@dataclasses.dataclass
class Suspect:
    """A frozen encoder under test.

    name: row label; kind: "victim" | "surrogate" | "independent" | "checkpoint";
    module / variables: flax module and its variables; victim_space_index:
    output of the module in the victim's representation space (the surrogate's
    adapter output, else the representation), used by the watermark test;
    rep_index: the representation used by dataset inference; info: extra
    JSON-able facts (budget, loss, source path, ...).
    """

    name: str
    kind: str
    module: object
    variables: dict
    victim_space_index: int = 0
    rep_index: int = 0
    info: dict = dataclasses.field(default_factory=dict)


def suspect_from_checkpoint(name: str, path: str, kind: str = "checkpoint") -> Suspect:
    """Load a victim or surrogate checkpoint as a suspect (surrogates are judged
    through their victim-space output, index 1).

    Raises:
      FileNotFoundError / CheckpointMismatchError: see ``load_model``.
    """
    m = load_model(path)
    return Suspect(name, kind, m.module, m.variables, 1 if m.kind == "surrogate" else 0, 0,
                   {"source": path, "checkpoint_kind": m.kind})


def parse_suspects(spec: str) -> list[tuple[str, str]]:
    """``"name=path,name=path"`` -> [(name, path)].

    Raises:
      ValueError: a part is not ``name=path``.
    """
    out = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        if "=" not in part:
            raise ValueError(f"suspect {part!r} is not name=path")
        name, path = (s.strip() for s in part.split("=", 1))
        out.append((name, path))
    return out


def parse_budgets(spec) -> list[int]:
    """``"500,2000"`` (or an int) -> [500, 2000]; empty -> [].

    Raises:
      ValueError: a budget is not a positive integer.
    """
    parts = [spec] if isinstance(spec, int) else [p for p in str(spec or "").split(",") if p.strip()]
    out = [int(p) for p in parts]
    if any(b < 1 for b in out):
        raise ValueError(f"query budgets must be positive integers, got {spec!r}")
    return out


def watermark_test(owner_logits, victim_dim: int, suspect: Suspect, wm_x, wm_y,
                   num_classes: int, alpha: float, align_x=None, victim_apply=None) -> dict:
    """Watermark verification of one frozen suspect.

    Args:
      owner_logits: the owner's watermark MLP ``(B, victim_dim) -> logits``.
      victim_dim: size of the victim's representation.
      suspect: the suspect.
      wm_x, wm_y: rotated held-out watermark images uint8 ``(N,H,W,C)`` and labels ``(N,)``.
      num_classes, alpha: see ``verification.verify_watermark``.
      align_x, victim_apply: public images and the victim's representation
        function, used only when the suspect's size differs from ``victim_dim``
        (a least-squares linear map from suspect to victim space is fitted).
    Returns:
      ``verify_watermark``'s dict plus ``linear_map`` (bool).
    Raises:
      ValueError: sizes differ and no ``align_x`` / ``victim_apply`` was given.
    """
    f = make_apply(suspect.module, suspect.variables, suspect.victim_space_index)
    reps = extract_features(f, wm_x)
    mapped = reps.shape[1] != victim_dim
    if mapped:
        if align_x is None or victim_apply is None:
            raise ValueError(f"suspect {suspect.name!r} has {reps.shape[1]}-d representations, the "
                             f"victim {victim_dim}-d; pass align_x and victim_apply")
        w, b = fit_linear_map(extract_features(f, align_x), extract_features(victim_apply, align_x))
        reps = np.asarray(reps @ w + b)
    return dict(verify_watermark(owner_logits, reps, wm_y, num_classes, alpha), linear_map=mapped)


def di_test(suspect: Suspect, fit_x, private_x, public_x, key, n_components: int = 10,
            covariance_type: str = "diag", alpha: float = 0.01) -> dict:
    """Dataset inference of one frozen suspect on uint8 image arrays (see
    ``verification.dataset_inference``)."""
    f = make_apply(suspect.module, suspect.variables, suspect.rep_index)
    reps = [extract_features(f, x) for x in (fit_x, private_x, public_x)]
    return dataset_inference(*reps, key, n_components, covariance_type, alpha)


def _steal(cfg, workdir, api, data, victim_module) -> list[Suspect]:
    """Surrogates stolen at every (loss, budget) of ``cfg.attack`` (resumable)."""
    out = []
    enc = victim_module.encoder
    from sslsteal_jax.experiments.steal import _arch_name
    for loss in [s.strip() for s in cfg.attack.losses.split(",") if s.strip()]:
        for budget in parse_budgets(cfg.attack.budgets):
            if budget > len(data.query_pool):
                raise ValueError(f"query budget {budget} exceeds the query pool size "
                                 f"{len(data.query_pool)}")
            user = f"attacker_{loss}_{budget}"
            api.register(user, budget)
            q, answers = collect_answers(api, user, data.query_pool, budget, progress=False)
            scfg = cfg.attack.steal.copy_and_resolve_references()
            scfg.loss = loss
            scfg.model.arch, scfg.model.width, scfg.model.stem = _arch_name(enc), enc.width, enc.stem
            if loss in cfg.attack.get("loss_overrides", {}):
                scfg.update(dict(cfg.attack.loss_overrides[loss]))
            scfg.epochs = max(1, math.ceil(int(cfg.attack.samples) / budget))
            t = time.time()
            mod, var, summ = train_surrogate(q, answers, scfg,
                                             os.path.join(workdir, f"surrogate_{loss}_b{budget}"))
            out.append(Suspect(f"surrogate {loss} {budget} queries", "surrogate", mod, var, 1, 0,
                               {"budget": budget, "loss": loss, "epochs": scfg.epochs,
                                "queries_charged": api.queries_used(user),
                                "train_seconds": time.time() - t, "final_loss": summ["final_loss"]}))
    return out


def _independents(cfg, workdir, data, victim) -> list[Suspect]:
    """Independent encoders of the victim's architecture: SimCLR trained briefly on
    the public query pool from another seed (if ``independent.simclr_epochs`` > 0)
    and a random initialisation."""
    out = []
    icfg = cfg.independent
    model_cfg = dict(victim.meta["config"]["model"])
    if int(icfg.simclr_epochs) > 0:
        tcfg = icfg.train.copy_and_resolve_references()
        tcfg.model.update({k: model_cfg[k] for k in ("arch", "width", "stem", "head_hidden", "head_out")})
        tcfg.epochs, tcfg.seed = int(icfg.simclr_epochs), int(icfg.seed)
        t = time.time()
        mod, var, summ = train_simclr(tcfg, os.path.join(workdir, "independent_simclr"),
                                      data.query_pool)
        out.append(Suspect(f"independent SimCLR ({tcfg.epochs} ep, seed {tcfg.seed})",
                           "independent", mod, var, 0, 0,
                           {"train_images": data.names["query_pool"], "epochs": tcfg.epochs,
                            "train_seconds": time.time() - t, "final_loss": summ["final_loss"]}))
    if icfg.random_init:
        plain = {k: model_cfg[k] for k in ("arch", "width", "stem", "head_hidden", "head_out")}
        mod = build_model("simclr", plain)
        var = mod.init(jax.random.key(int(icfg.seed) + 1000), data.probe_test_x[:2] / 255.0)
        out.append(Suspect("independent (random init)", "independent", mod, var, 0, 0,
                           {"init_seed": int(icfg.seed) + 1000}))
    return out


def run(cfg, workdir: str) -> dict:
    """Run the verification experiment; returns the results dict (also written to ``workdir``).

    Raises:
      ValueError: the victim checkpoint is not a SimCLR victim, the watermark
        test is enabled but the victim has no watermark head, or bad sizes.
      WorkdirExistsError: ``workdir`` already holds results (fresh workdir required).
    """
    t0 = time.time()
    common.prepare_workdir(workdir, cfg.get("overwrite", False))
    data = experiment_data(cfg.dataset, probe_test_size=int(cfg.probe_test_size))
    vpath = common.resolve_path(cfg.victim_checkpoint)
    victim = load_model(vpath)
    if victim.kind != "simclr":
        raise ValueError(f"victim_checkpoint={vpath!r} holds a {victim.kind!r} checkpoint; a SimCLR "
                         "victim is required")
    key = jax.random.key(int(cfg.seed))
    k_split, k_gmm = jax.random.split(key)
    private = data.victim_train
    victim_apply = make_apply(victim.module, victim.variables, 0)
    victim_dim = int(extract_features(victim_apply, data.probe_test_x[:2]).shape[1])

    # ---- owner's secrets -------------------------------------------------------------------
    wm = None
    if cfg.watermark.enabled:
        if not hasattr(victim.module, "watermark_logits"):
            raise ValueError(f"watermark.enabled but {vpath!r} has no watermark head; train one with "
                             "configs/watermark_victim.py or set --config.watermark.enabled=False")
        vconf = victim.meta["config"]
        _, ver = watermark_slices(len(private), vconf["watermark"]["train_images"],
                                  vconf["watermark"]["verify_images"])
        classes = int(vconf["model"]["watermark_classes"])
        wm_x, wm_y = rotation_task(private[ver], classes)
        wm = dict(logits=owner_logits_fn(victim.module, victim.variables), x=wm_x, y=wm_y,
                  classes=classes, align_x=data.probe_test_x[:int(cfg.watermark.align_images)],
                  verify_images=f"{data.names['victim_train']}[{ver.start}:{ver.stop}]")
    di = None
    if cfg.di.enabled:
        n_fit, n_priv, n_pub = int(cfg.di.n_fit), int(cfg.di.n_private), int(cfg.di.n_public)
        pool = private[:cfg.di.get("private_size") or len(private)]
        if n_fit + n_priv > len(pool) or n_pub > len(data.probe_test_x):
            raise ValueError(f"di.n_fit + di.n_private = {n_fit + n_priv} must be <= {len(pool)} "
                             f"(private pool) and di.n_public = {n_pub} <= {len(data.probe_test_x)}")
        perm = np.asarray(jax.random.permutation(k_split, len(pool)))
        di = dict(fit=pool[np.sort(perm[:n_fit])],
                  private=pool[np.sort(perm[n_fit:n_fit + n_priv])],
                  public=data.probe_test_x[:n_pub],
                  pool=f"{data.names['victim_train']}[:{len(pool)}]")
    t_setup = time.time()

    # ---- suspects --------------------------------------------------------------------------
    suspects = [Suspect("victim", "victim", victim.module, victim.variables, 0, 0, {"source": vpath})]
    for name, path in parse_suspects(cfg.suspects):
        suspects.append(suspect_from_checkpoint(name, common.resolve_path(path)))
    api = VictimAPI(victim.module, victim.variables, data.probe_test_x.shape[1:])
    suspects += _steal(cfg, workdir, api, data, victim.module)
    t_steal = time.time()
    suspects += _independents(cfg, workdir, data, victim)
    t_indep = time.time()

    # ---- verification ----------------------------------------------------------------------
    rows, details = [], {}
    for s in suspects:
        row = {"name": s.name, "kind": s.kind, "budget": s.info.get("budget")}
        d = {"info": s.info}
        if wm is not None:
            r = watermark_test(wm["logits"], victim_dim, s, wm["x"], wm["y"], wm["classes"],
                               float(cfg.watermark.alpha), wm["align_x"], victim_apply)
            row.update(wm_accuracy=r["accuracy"], wm_p_value=r["p_value"], watermarked=r["watermarked"])
            d["watermark"] = r
        if di is not None:
            r = di_test(s, di["fit"], di["private"], di["public"], k_gmm, int(cfg.di.components),
                        cfg.di.covariance, float(cfg.di.alpha))
            row.update(di_ll_gap=r["ll_gap"], di_t_statistic=r["t_statistic"],
                       di_p_value=r["p_value"], di_stolen=r["stolen"])
            d["dataset_inference"] = r
        rows.append(row)
        details[s.name] = d
        print(_format_row(row), flush=True)
    t_verify = time.time()

    results = {
        "experiment": "verify", "victim_checkpoint": vpath, "rows": rows, "details": details,
        "splits": dict(data.names, watermark_verify=wm and wm["verify_images"],
                       di_fit=f"{cfg.di.n_fit} random images of {di['pool']}" if di else None,
                       di_private=f"{cfg.di.n_private} other images of {di['pool']}" if di else None,
                       di_public=f"{data.names['probe_test']}[:{cfg.di.n_public}]" if di else None),
        "watermark_classes": wm and wm["classes"], "watermark_trials": wm and int(len(wm["y"])),
        "timing_seconds": {"setup": t_setup - t0, "steal": t_steal - t_setup,
                           "independent": t_indep - t_steal, "verify": t_verify - t_indep,
                           "total": t_verify - t0},
        "config": cfg.to_dict()}
    common.write_results(workdir, results, rows, COLUMNS)
    print(f"wrote {os.path.join(workdir, 'results.json')} and results.csv "
          f"(total {t_verify - t0:.0f} s)")
    return results


def _format_row(r: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    return (f"{r['name']:<40} wm acc {f(r.get('wm_accuracy'), '.3f')} p {f(r.get('wm_p_value'), '.2e')}"
            f"  | DI gap {f(r.get('di_ll_gap'), '+.2f')} p {f(r.get('di_p_value'), '.2e')}")
