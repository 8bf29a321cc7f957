"""Experiment: owner-side ownership verification of suspect encoders.

For the victim, surrogates stolen from it (direct extraction through the
``VictimAPI`` at several query budgets, trained here), independently trained
encoders (a SimCLR encoder trained briefly on public images from another seed,
and a randomly initialised one) and any extra suspect checkpoints, run

* the watermark test (Dziedzic et al., ICML 2022, Section 5): accuracy of the
  owner's secret rotation MLP on the frozen suspect's representations of
  held-out watermark images; the ownership decision is a one-sided Fisher
  exact test against an empirical null -- the watermark accuracy of
  independently trained encoders (several seeds, leave-one-out for the
  references themselves) -- because the MLP reads rotations above chance from
  unwatermarked encoders too; the p-value against the victim's never-watermarked
  ancestor (a harder null: same training, same coordinates, no watermark) and
  the binomial p-value against chance are reported next to it;
* dataset inference (Dziedzic et al., NeurIPS 2022): Gaussian-mixture
  log-likelihood of held-out private training images vs public images under
  the suspect's representations, one-sided Welch t-test; plus a control
  (``di.control``): the same test with non-member train images (the ones
  right after the private set) in place of the private set, which must not
  flag (a calibration check on every suspect);

and write ``results.json`` / ``results.csv`` (p-values, watermark accuracy,
decisions at ``alpha``) atomically into a fresh work directory.

Splits (Fashion-MNIST by default): private data = the victim's train split;
watermark images = the slices stored in the watermarked victim's checkpoint
config (training: first ``train_images``; verification: last
``verify_images``); DI private set = the first ``di.private_size`` train
images (``auto``: the victim checkpoint's ``victim_train_size``, i.e. exactly
the images it trained on; all of them if unset); DI fit / held-out private
halves = disjoint random subsets of it (permutation from the config seed); DI
control = the train images right after it (never trained on); DI public
images = the probe-test hold-out (last test images: nobody trains on them);
attacker's query pool = the first test images; the independent SimCLR
encoders train on the query pool (public, same distribution, never the
private data).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np

from sslsteal_jax.api import VictimAPI
from sslsteal_jax.attacks.query import collect_answers
from sslsteal_jax.configs.verify import parse_named_checkpoints
from sslsteal_jax.data.splits import experiment_data
from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.evaluation.features import extract_features
from sslsteal_jax.losses import parse_losses
from sslsteal_jax.models import build_model, init_variables
from sslsteal_jax.models.watermark import rotation_task
from sslsteal_jax.pipeline import queries, results, workdir as wd
from sslsteal_jax.pipeline.victim import load_victim
from sslsteal_jax.trainers.simclr import train_simclr
from sslsteal_jax.trainers.surrogate import steal_config, train_surrogate
from sslsteal_jax.trainers.watermark import watermark_slices
from sslsteal_jax.training.checkpoint import load_model
from sslsteal_jax.verification import dataset_inference, fit_linear_map, verify_watermark
from sslsteal_jax.verification.watermark import null_test, owner_logits_fn

COLUMNS = ["kind", "budget", "wm_accuracy", "wm_p_chance", "wm_p_value", "watermarked",
           "wm_p_ancestor", "di_ll_gap", "di_t_statistic", "di_p_value", "di_stolen",
           "di_control_p_value"]
# Null groups of the watermark test: encoders not derived from the watermarked victim.
NULL_INDEPENDENT, NULL_ANCESTOR = "independent", "ancestor"


@dataclasses.dataclass
class Suspect:
    """A frozen encoder under test.

    encoder: the :class:`~sslsteal_jax.evaluation.encoder.Encoder` (its name and
    kind -- "victim" | "surrogate" | "independent" | "ancestor" | "checkpoint" --
    label the row; its ``victim_space`` output is read by the watermark test, its
    representation by dataset inference); info: extra JSON-able facts (budget,
    loss, source path, ...); null_group: None, or the watermark null group it
    belongs to (``NULL_INDEPENDENT`` / ``NULL_ANCESTOR``).
    """

    encoder: Encoder
    info: dict = dataclasses.field(default_factory=dict)
    null_group: str | None = None

    @property
    def name(self) -> str:
        """The row label (the encoder's name)."""
        return self.encoder.name

    @property
    def kind(self) -> str:
        """The encoder's kind."""
        return self.encoder.kind


def suspect_from_checkpoint(name: str, path: str, kind: str = "checkpoint") -> Suspect:
    """Load a victim or surrogate checkpoint as a suspect (a surrogate is judged
    through its output in the victim's space, a victim through its representation).

    Raises:
      ConfigError: see ``training.checkpoint.load_model``.
    """
    m = load_model(path)
    enc = Encoder(name, m.module, m.variables, 0, 1 if m.kind == "surrogate" else 0, kind)
    return Suspect(enc, {"source": path, "checkpoint_kind": m.kind})


def _named_suspect(field: str, name: str, path: str) -> Suspect:
    """A ``suspects`` item as a suspect, a ``nulls`` item as a member of the independent
    null group.

    Raises:
      ConfigError: the checkpoint cannot be loaded (the message names the item).
    """
    try:
        sus = suspect_from_checkpoint(name, wd.resolve_path(path),
                                      "independent" if field == "nulls" else "checkpoint")
    except ConfigError as e:
        raise ConfigError(f"{field} item {name!r}: {e}") from None
    return dataclasses.replace(sus, null_group=NULL_INDEPENDENT) if field == "nulls" else sus


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
    f = suspect.encoder.apply("victim_space")
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
    f = suspect.encoder.apply("representation")
    reps = [extract_features(f, x) for x in (fit_x, private_x, public_x)]
    return dataset_inference(*reps, key, n_components, covariance_type, alpha)


def _steal(cfg, workdir, api, data, victim_module) -> list[Suspect]:
    """Surrogates stolen at every (loss, budget) of ``cfg.attack`` (resumable: answers
    cached per account in ``<workdir>/answers_<account>.npz``, training checkpointed)."""
    out = []
    for loss in parse_losses(cfg.attack.losses):
        for budget in parse_budgets(cfg.attack.budgets):
            if budget > len(data.query_pool):
                raise ConfigError(f"query budget {budget} exceeds the query pool size "
                                  f"{len(data.query_pool)}")
            user = f"attacker_{loss}_{budget}"

            def buy(start, stop, user=user, budget=budget):
                api.register(user, budget)
                x, y = collect_answers(api, user, data.query_pool, budget, progress=False)
                return x, y, api.queries_used(user)

            bought = queries.cached_answers(os.path.join(workdir, f"answers_{user}.npz"),
                                            {"pool": data.names["query_pool"], "account": user},
                                            budget, buy)
            scfg = steal_config(cfg.attack.steal, loss, victim_module.encoder,
                                cfg.attack.loss_overrides)
            scfg.epochs = max(1, math.ceil(int(cfg.attack.samples) / budget))
            t = time.time()
            mod, var, summ = train_surrogate(bought.images, bought.answers, scfg,
                                             os.path.join(workdir, f"surrogate_{loss}_b{budget}"))
            out.append(Suspect(Encoder.surrogate(f"surrogate {loss} {budget} queries", mod, var),
                               {"budget": budget, "loss": loss, "epochs": scfg.epochs,
                                "queries_charged": bought.total_charged,
                                "train_seconds": time.time() - t,
                                "final_loss": summ["final_loss"]}))
    return out


def _independents(cfg, workdir, data, victim) -> list[Suspect]:
    """Independent encoders of the victim's architecture, for each of
    ``independent.seeds`` seeds (``independent.seed``, ``+1``, ...): SimCLR
    trained briefly on the public query pool (if ``independent.simclr_epochs``
    > 0; never on the private data) and a random initialisation (if
    ``independent.random_init``). All form the watermark test's independent null."""
    out = []
    icfg = cfg.independent
    model_cfg = dict(victim.meta["config"]["model"])
    plain = {k: model_cfg[k] for k in ("arch", "width", "stem", "head_hidden", "head_out")}
    n_seeds = int(icfg.seeds)
    if n_seeds < 1:
        raise ConfigError(f"independent.seeds={n_seeds} must be >= 1")
    for seed in range(int(icfg.seed), int(icfg.seed) + n_seeds):
        if int(icfg.simclr_epochs) > 0:
            tcfg = icfg.train.copy_and_resolve_references()
            tcfg.model.update(plain)
            tcfg.epochs, tcfg.seed = int(icfg.simclr_epochs), seed
            t = time.time()
            mod, var, summ = train_simclr(tcfg, os.path.join(workdir, f"independent_simclr_s{seed}"),
                                          data.query_pool)
            out.append(Suspect(Encoder(f"independent SimCLR ({tcfg.epochs} ep, seed {seed})",
                                       mod, var, 0, 0, "independent"),
                               {"train_images": data.names["query_pool"], "epochs": tcfg.epochs,
                                "seed": seed, "train_seconds": time.time() - t,
                                "final_loss": summ["final_loss"]}, NULL_INDEPENDENT))
        if icfg.random_init:
            mod = build_model("simclr", plain)
            var = init_variables(mod, jax.random.key(seed + 1000), data.probe_test_x[:2] / 255.0)
            out.append(Suspect(Encoder(f"independent (random init, seed {seed + 1000})", mod, var,
                                       0, 0, "independent"),
                               {"init_seed": seed + 1000}, NULL_INDEPENDENT))
    return out


def ancestor_path(spec: str | None, victim_meta: dict) -> str | None:
    """Checkpoint of the victim's never-watermarked ancestor (the harder watermark null).

    Args:
      spec: ``"auto"`` (the victim's ``init_from``, i.e. the SimCLR checkpoint
        the watermark fine-tuning started from, if any), ``""`` / None (no
        ancestor), or a checkpoint path.
      victim_meta: the victim checkpoint's metadata (``load_model(...).meta``).
    Returns:
      the resolved path or None. A recorded absolute ``init_from`` from another
      checkout (the repository moved) is re-rooted: the longest trailing part
      of it that exists under the repository root is used.
    Raises:
      FileNotFoundError: ``auto`` and the recorded ``init_from`` exists nowhere
        (pass ``ancestor=<path>`` or ``ancestor=``).
    """
    if spec != "auto":
        return wd.resolve_path(spec) if spec else None
    rec = (victim_meta.get("config") or {}).get("init_from")
    if not rec:
        return None
    if os.path.exists(rec):
        return os.path.abspath(rec)
    parts = os.path.normpath(rec).split(os.sep)
    for i in range(1, len(parts)):
        cand = os.path.join(wd.REPO_ROOT, *parts[i:])
        if parts[i:] and os.path.exists(cand):
            return cand
    raise FileNotFoundError(f"the victim's ancestor (init_from={rec!r}) was not found; pass "
                            "ancestor=<checkpoint path> or ancestor= (none) to configs/verify.py")


def watermark_null_pvalues(counts: dict, groups: dict, method: str) -> dict:
    """p-values of every suspect against each watermark null group (leave-one-out).

    Args:
      counts: suspect name -> ``(correct, total)`` watermark counts.
      groups: suspect name -> null group name or None.
      method: ``verification.watermark.null_test`` method.
    Returns:
      suspect name -> {group: ``null_test`` dict, or None when the group has no
      member other than the suspect itself}.
    """
    members = {}
    for name, g in groups.items():
        if g is not None:
            members.setdefault(g, []).append(name)
    out = {}
    for name, (c, t) in counts.items():
        out[name] = {}
        for g, names in members.items():
            ref = [counts[m] for m in names if m != name]
            out[name][g] = null_test(c, t, ref, method) if ref else None
    return out


def di_private_size(spec, victim_meta: dict, n_train: int) -> int:
    """Number of leading train-split images that form the victim's private set.

    Args:
      spec: ``"auto"`` / None (the victim checkpoint's ``victim_train_size``: the
        first N train images it was trained on; the whole split if unset or if
        the victim was warm-started (``init_from``): its ancestor's training
        images are not recorded, and the shipped ancestor used them all),
        ``"all"``, or a positive int.
      victim_meta: the victim checkpoint's metadata; n_train: train-split size.
    Raises:
      ValueError: not in ``(0, n_train]`` or an unknown string.
    """
    if spec in (None, "auto"):
        vcfg = victim_meta.get("config") or {}
        spec = n_train if vcfg.get("init_from") else (vcfg.get("victim_train_size") or n_train)
    elif spec == "all":
        spec = n_train
    try:
        size = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f"di.private_size={spec!r} must be 'auto', 'all' or a positive integer")
    if not 0 < size <= n_train:
        raise ValueError(f"di.private_size={size} must be in (0, {n_train}]")
    return size


def run(cfg, workdir: str) -> dict:
    """Run the verification experiment; returns the results dict (also written to ``workdir``).

    Raises:
      ConfigError: the victim checkpoint is missing or not a SimCLR victim, the
        watermark test is enabled but the victim has no watermark head, bad sizes,
        or ``workdir`` already holds results (``WorkdirExistsError``).
    """
    t = [time.time()]
    wd.prepare_workdir(workdir, cfg.overwrite)
    data = experiment_data(cfg.dataset, probe_test_size=int(cfg.probe_test_size))
    victim = load_victim(cfg.victim_checkpoint, field="victim_checkpoint")
    k_split, k_gmm = jax.random.split(jax.random.key(int(cfg.seed)))
    wm = _watermark_secrets(cfg, victim, data) if cfg.watermark.enabled else None
    di = _di_sets(cfg, victim, data, k_split) if cfg.di.enabled else None
    t.append(time.time())
    suspects = [Suspect(Encoder("victim", victim.module, victim.variables, 0, 0, "victim"),
                        {"source": victim.source})]
    anc = ancestor_path(cfg.ancestor, victim.meta) if wm is not None else None
    if anc:
        suspects.append(dataclasses.replace(suspect_from_checkpoint(
            "ancestor (never watermarked)", anc, "ancestor"), null_group=NULL_ANCESTOR))
    # the user's named checkpoints load first: a bad path fails before any training
    named = {f: [_named_suspect(f, name, path)
                 for name, path in parse_named_checkpoints(cfg.get(f) or "")]
             for f in ("suspects", "nulls")}
    suspects += named["suspects"]
    api = VictimAPI(victim.module, victim.variables, data.probe_test_x.shape[1:])
    suspects += _steal(cfg, workdir, api, data, victim.module)
    t.append(time.time())
    suspects += _independents(cfg, workdir, data, victim)
    suspects += named["nulls"]
    t.append(time.time())
    names = [s.name for s in suspects]
    if len(set(names)) != len(names):  # results are keyed by name (a bug: validate checks)
        raise ValueError(f"suspect names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    rows, details = _verify_all(cfg, suspects, victim, data, wm, di, k_gmm)
    t.append(time.time())
    out = {
        "experiment": "verify", "victim_checkpoint": victim.source, "rows": rows,
        "details": details,
        "splits": dict(data.names, watermark_verify=wm and wm["verify_images"],
                       di_fit=f"{di['n_fit']} random images of {di['pool']}" if di else None,
                       di_private=f"{di['n_private']} other images of {di['pool']}" if di else None,
                       di_public=f"{data.names['probe_test']}[:{cfg.di.n_public}]" if di else None,
                       di_control=di.get("control_pool") if di else None),
        "watermark_classes": wm and wm["classes"], "watermark_trials": wm and int(len(wm["y"])),
        "watermark_null": wm and {"method": cfg.watermark.null_method,
                                  "decision": "wm_p_value (vs independent encoders) < alpha",
                                  "groups": {s.name: s.null_group for s in suspects
                                             if s.null_group}},
        "timing_seconds": dict(zip(("setup", "steal", "independent", "verify"), np.diff(t)),
                               total=t[-1] - t[0]),
        "environment": wd.run_environment(), "config": cfg.to_dict()}
    return results.finish(workdir, out, rows, fields=["name", *COLUMNS], seconds=t[-1] - t[0])


def _watermark_secrets(cfg, victim, data) -> dict:
    """The owner's watermark secrets: its rotation MLP, the held-out rotated watermark
    images and labels, the public images for a linear map to the victim's space.

    Raises:
      ConfigError: the victim has no watermark head.
    """
    if not hasattr(victim.module, "watermark_logits"):
        raise ConfigError(f"watermark.enabled but {victim.source!r} has no watermark head; train "
                          "one with configs/watermark_victim.py or set "
                          "--config.watermark.enabled=False")
    vconf = victim.meta["config"]
    _, ver = watermark_slices(len(data.victim_train), vconf["watermark"]["train_images"],
                              vconf["watermark"]["verify_images"])
    classes = int(vconf["model"]["watermark_classes"])
    wm_x, wm_y = rotation_task(data.victim_train[ver], classes)
    return dict(logits=owner_logits_fn(victim.module, victim.variables), x=wm_x, y=wm_y,
                classes=classes, align_x=data.probe_test_x[:int(cfg.watermark.align_images)],
                verify_images=f"{data.names['victim_train']}[{ver.start}:{ver.stop}]")


def _di_sets(cfg, victim, data, key) -> dict:
    """Dataset inference's image sets: disjoint random fit / held-out halves of the
    private pool (permutation from ``key``), the public set, and the control sets
    (the train images right after the private pool, never trained on).

    Raises:
      ConfigError: sizes that do not fit the private pool or the probe-test split.
    """
    private = data.victim_train
    pool = private[:di_private_size(cfg.di.private_size, victim.meta, len(private))]
    n_fit = int(cfg.di.n_fit) if cfg.di.n_fit else min(10000, len(pool) // 2)
    n_priv = int(cfg.di.n_private) if cfg.di.n_private else min(5000, len(pool) - n_fit)
    n_pub = int(cfg.di.n_public)
    if n_fit + n_priv > len(pool) or n_pub > len(data.probe_test_x):
        raise ConfigError(f"di.n_fit + di.n_private = {n_fit + n_priv} must be <= {len(pool)} "
                          f"(private pool) and di.n_public = {n_pub} <= {len(data.probe_test_x)}")
    perm = np.asarray(jax.random.permutation(key, len(pool)))
    di = dict(fit=pool[np.sort(perm[:n_fit])], private=pool[np.sort(perm[n_fit:n_fit + n_priv])],
              public=data.probe_test_x[:n_pub], pool=f"{data.names['victim_train']}[:{len(pool)}]",
              n_fit=n_fit, n_private=n_priv)
    # Control: the same test with a "private" set the victim never trained on (the next
    # train images after the private set); it must not flag anything (calibration).
    lo, hi = len(pool), len(pool) + n_fit + n_priv
    if cfg.di.control and hi <= len(private):
        di.update(control_fit=private[lo:lo + n_fit], control_private=private[lo + n_fit:hi],
                  control_pool=f"{data.names['victim_train']}[{lo}:{hi}]")
    return di


def _verify_all(cfg, suspects, victim, data, wm, di, key) -> tuple[list[dict], dict]:
    """Watermark test (with its null-group p-values) and dataset inference of every
    suspect; returns ``(rows, details)`` and prints one line per suspect."""
    victim_apply = Encoder("victim", victim.module, victim.variables).apply()
    victim_dim = int(extract_features(victim_apply, data.probe_test_x[:2]).shape[1])
    alpha = float(cfg.watermark.alpha)
    wm_res, nulls = {}, {}
    if wm is not None:
        for s in suspects:
            wm_res[s.name] = watermark_test(wm["logits"], victim_dim, s, wm["x"], wm["y"],
                                            wm["classes"], alpha, wm["align_x"], victim_apply)
        nulls = watermark_null_pvalues({n: (r["correct"], r["total"]) for n, r in wm_res.items()},
                                       {s.name: s.null_group for s in suspects},
                                       cfg.watermark.null_method)
    rows, details = [], {}
    for s in suspects:
        row = {"name": s.name, "kind": s.kind, "budget": s.info.get("budget")}
        d = {"info": s.info}
        if wm is not None:
            r, nl = wm_res[s.name], nulls[s.name]
            ind, anc_t = nl.get(NULL_INDEPENDENT), nl.get(NULL_ANCESTOR)
            p_ind = ind and ind["p_value"]
            row.update(wm_accuracy=r["accuracy"], wm_p_chance=r["p_value"], wm_p_value=p_ind,
                       watermarked=None if p_ind is None else bool(p_ind < alpha),
                       wm_p_ancestor=anc_t and anc_t["p_value"])
            d["watermark"] = dict(r, null_tests=nl)
        if di is not None:
            args = (key, int(cfg.di.components), cfg.di.covariance, float(cfg.di.alpha))
            r = di_test(s, di["fit"], di["private"], di["public"], *args)
            row.update(di_ll_gap=r["ll_gap"], di_t_statistic=r["t_statistic"],
                       di_p_value=r["p_value"], di_stolen=r["stolen"])
            if "control_fit" in di:
                rc = di_test(s, di["control_fit"], di["control_private"], di["public"], *args)
                row.update(di_control_p_value=rc["p_value"])
                r = dict(r, control=rc)
            d["dataset_inference"] = r
        rows.append(row)
        details[s.name] = d
        print(_format_row(row), flush=True)
    return rows, details


def _format_row(r: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    return (f"{r['name']:<40} wm acc {f(r.get('wm_accuracy'), '.3f')} p(chance) "
            f"{f(r.get('wm_p_chance'), '.1e')} p(indep) {f(r.get('wm_p_value'), '.1e')} p(ancestor) "
            f"{f(r.get('wm_p_ancestor'), '.1e')}  | DI gap {f(r.get('di_ll_gap'), '+.2f')} p "
            f"{f(r.get('di_p_value'), '.1e')} control p {f(r.get('di_control_p_value'), '.1e')}")
