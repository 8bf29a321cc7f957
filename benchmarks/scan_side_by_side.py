"""Scan-level side-by-side: the reference protocol in PyTorch vs our budget scan in JAX.

    python benchmarks/scan_side_by_side.py --out benchmarks/results/scan_side_by_side.json
    python benchmarks/scan_side_by_side.py --tiny --out /tmp/sbs.json   # smoke run

What a user feels when scanning query budgets (issue 13, item 4): wall time,
queries charged and final linear-probe accuracy of a ``len(budgets)`` x 1-loss
scan against the shipped Fashion-MNIST victim, run back to back on this host.

* **PyTorch, the reference protocol** (Dziedzic et al., "On the Difficulty of
  Defending Self-Supervised Learning against Model Extraction", ICML 2022,
  reference code): every budget B is its own job (fresh surrogate, fresh
  optimizer) and the victim is queried *inside the training loop*: every epoch
  iterates over the B query images in shuffled mini-batches (a ``DataLoader``
  without ``drop_last``: the last, smaller batch is queried and trained on too),
  asks the victim for each batch's representations and takes one steal step.
  So each job is charged B queries per epoch, the scan ``sum(budgets) x epochs``.
  The victim is answered in torch by the flax victim's weights ported into the
  torch twin of our ResNet (:func:`torch_encoder_from_flax`; checked against
  ``VictimAPI`` answers before the scan, :func:`check_port`), with the victim's
  own input normalisation.
* **JAX, this toolkit** (``experiments/budget_scan.py``, ``protocol=epochs``): one
  ``python -m sslsteal_jax.main --config=configs/budget_scan.py`` subprocess (its
  default one XLA device per core). It buys each pool image's answer once
  (queries charged = the largest budget: the budgets share a prefix of the pool),
  then trains every cell on its cached prefix; cells with equal step schedules
  are stacked (under ``protocol=epochs`` different budgets have different step
  counts, so here they train one after another). Each cell's row also carries
  the 100-label probe, kNN and fidelity, and the scan evaluates two reference
  rows (victim, independent encoder) first: that evaluation is part of its wall
  time and is reported separately (``jax.before_cells_seconds``).

Same on both sides: victim checkpoint, query pool (the first ``max(budgets)``
images of the Fashion-MNIST test split before the probe hold-out), surrogate
architecture (the victim's: ``steal_config`` of the scan config), loss, batch
size, peak learning rate and weight decay (``resolve_hparams(steal_config(...))``
with the config's ``loss_overrides``), Adam with L2-coupled weight decay, the
warm-up + cosine schedule of ``training.optim.make_optimizer`` (``min(total // 20,
200)`` warm-up steps over the job's total steps), epochs, probe data (the first
``probe_train_size`` labelled train images, the last ``probe_test_size`` test
images). Different: parameter initialisation (torch defaults vs flax's), data
order, steps per epoch (torch ``ceil(B / batch)``, JAX ``floor(B / batch)``:
our trainer drops the partial batch).

Probe accuracy, in percent on the probe test set:

* ``probe_torch`` (torch side only): the reference job's own linear probe, a
  softmax regression on standardised frozen surrogate features trained with
  AdamW (lr 2e-3, weight decay 1e-4, cosine decay, 60 epochs, batch 512, zero
  init): the fixed settings of ``evaluation.probe.fit_linear_probe``, in torch;
  timed as part of each torch job.
* ``probe_full`` (both sides, like for like): our selected linear probe
  (``evaluation.probe.selected_linear_probe``, settings chosen on a 10 %
  validation split, the key the scan uses) — the scan's own number on the JAX
  side, computed on the torch surrogates' features after the torch side's clock
  has stopped (``torch.ours_probe_seconds``, not in the torch wall time).

Writes JSON atomically (tmp file, then ``os.replace``) with the settings, per
side total / per-budget wall seconds, queries charged and accuracies, versions,
device / thread counts and ``os.getloadavg()`` before and after each side.
Needs torch (the ``[bench]`` or ``[test]`` extra).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

#: The victim both sides steal from (stage-1 shipped victim, ``victims/.../README.md``).
DEFAULT_VICTIM = "victims/fashion_mnist_resnet10_w16/checkpoints"
DEFAULT_BUDGETS = (500, 1000, 2000, 4000)
#: ``--tiny``: sizes for a smoke run. Measured on the loaded 2-core host: torch side 10 s,
#: JAX side 130 s (start-up, a compile per cell and the reference rows' probes dominate).
TINY = dict(budgets=(64, 128), epochs=1, probe_train_size=1000, probe_test_size=200, per_class=5)
#: The query source: the victim's test split minus the probe hold-out (``data.splits``).
QUERY_SOURCE = "fashion_mnist"


# ----------------------------------------------------------------------------- torch models

def _torch():
    import torch
    return torch


def torch_encoder_from_flax(encoder, variables=None, *, channels: int | None = None,
                            device="cpu"):
    """Port a flax ResNet (``models.resnet.ResNet``) into its torch twin.

    The twin is ``benchmarks/torch_ref.build_torch_encoder(arch, width, channels,
    stem)`` wrapped in :func:`TorchEncoder` (uint8 NHWC -> ``/255`` -> the encoder's
    ``(x - mean) / std`` -> ResNet -> global average pool). Mapping (the inverse of
    ``models.convert`` for our own layout): ``stem_conv`` / ``stem_bn`` -> the stem;
    ``stage<i>_block<j>`` -> the (i, j)-th residual block, its ``Conv_k`` /
    ``BatchNorm_k`` -> ``c<k+1>`` / ``b<k+1>`` for the main path and the last pair
    (present when the block changes stride or width) -> ``short.0`` / ``short.1``;
    conv kernels HWIO -> OIHW; BatchNorm ``scale, bias, mean, var`` -> ``weight,
    bias, running_mean, running_var`` (eps 1e-5 on both sides).

    Args:
      encoder: the flax ResNet (e.g. ``LoadedModel.module.encoder``).
      variables: its ``{'params', 'batch_stats'}`` (the encoder's own subtree, e.g.
        ``{'params': v['params']['encoder'], 'batch_stats': v['batch_stats']['encoder']}``);
        None leaves torch's default initialisation (a fresh surrogate).
      channels: input channels when ``variables`` is None (default: 1, or the number
        of per-channel ``mean`` values); with ``variables`` read from the stem kernel.
      device: torch device.
    Returns:
      a :class:`TorchEncoder` ``nn.Module`` in eval mode; call it on uint8 torch
      ``(B, H, W, C)`` images to get float32 ``(B, D)`` representations.
    Raises:
      ValueError: not a ResNet of ``models.ARCHITECTURES``, or arrays missing /
        of the wrong shape in ``variables`` (names the array).
    """
    from benchmarks.torch_ref import build_torch_encoder
    from sslsteal_jax.models import ResNet, arch_name

    if not isinstance(encoder, ResNet):
        raise ValueError(f"only ResNet encoders have a torch twin, got {type(encoder).__name__}")
    arch = arch_name(encoder)
    if variables is not None:
        channels = int(np.shape(variables["params"]["stem_conv"]["kernel"])[2])
    channels = int(channels or len(encoder.mean))
    body = build_torch_encoder(arch, int(encoder.width), channels, encoder.stem, device)
    net = TorchEncoder(body, encoder.mean, encoder.std, channels)
    if variables is not None:
        _load_flax_resnet(body, variables["params"], variables.get("batch_stats", {}))
    return net.eval()


def _load_flax_resnet(body, params, stats) -> None:
    """Copy flax ResNet arrays into ``body`` (``build_torch_encoder``'s Sequential), in place."""
    torch = _torch()

    def put(tensor, arr, name, transpose=None):
        a = np.asarray(arr, np.float32)
        if transpose is not None:
            a = a.transpose(transpose)
        if tuple(a.shape) != tuple(tensor.shape):
            raise ValueError(f"flax array {name} has shape {a.shape} (torch layout), the torch "
                             f"twin expects {tuple(tensor.shape)}")
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.array(a, np.float32, copy=True)))

    def conv(mod, p, name):
        put(mod.weight, p["kernel"], f"{name}/kernel", (3, 2, 0, 1))  # HWIO -> OIHW

    def bn(mod, p, s, name):
        put(mod.weight, p["scale"], f"{name}/scale")
        put(mod.bias, p["bias"], f"{name}/bias")
        put(mod.running_mean, s["mean"], f"{name}/mean")
        put(mod.running_var, s["var"], f"{name}/var")

    def get(tree, name):
        if name not in tree:
            raise ValueError(f"flax variables lack {name!r}; have {sorted(tree)}")
        return tree[name]

    mods = list(body)
    conv(mods[0], get(params, "stem_conv"), "stem_conv")
    bn(mods[1], get(params, "stem_bn"), get(stats, "stem_bn"), "stem_bn")
    blocks = [m for m in mods if hasattr(m, "c1")]
    names = sorted((k for k in params if k.startswith("stage")),
                   key=lambda k: tuple(int(x) for x in k[5:].split("_block")))
    if len(names) != len(blocks):
        raise ValueError(f"flax encoder has {len(names)} residual blocks, the torch twin "
                         f"{len(blocks)}")
    for name, blk in zip(names, blocks):
        p, s = params[name], stats.get(name, {})
        n_main = sum(1 for k in ("c1", "c2", "c3") if hasattr(blk, k))
        for k in range(n_main):
            conv(getattr(blk, f"c{k + 1}"), get(p, f"Conv_{k}"), f"{name}/Conv_{k}")
            bn(getattr(blk, f"b{k + 1}"), get(p, f"BatchNorm_{k}"), get(s, f"BatchNorm_{k}"),
               f"{name}/BatchNorm_{k}")
        if blk.short is not None:
            conv(blk.short[0], get(p, f"Conv_{n_main}"), f"{name}/Conv_{n_main}")
            bn(blk.short[1], get(p, f"BatchNorm_{n_main}"), get(s, f"BatchNorm_{n_main}"),
               f"{name}/BatchNorm_{n_main}")
        elif f"Conv_{n_main}" in p:
            raise ValueError(f"flax block {name} has a projection shortcut the torch twin lacks")


def TorchEncoder(body, mean, std, channels: int):
    """``nn.Module``: uint8 ``(B, H, W, C)`` torch images -> float32 ``(B, D)``.

    ``x / 255`` -> ``(x - mean) / std`` per channel (1 or C values, as
    ``models.resnet.normalize``) -> NCHW -> ``body`` -> mean over H, W. Training
    or eval mode is ``body``'s (BatchNorm batch statistics vs running averages).
    """
    torch = _torch()
    from torch import nn

    class _Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            shape = (1, -1, 1, 1)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float().div(255.0)
            x = (x - self.mean) / self.std
            return self.body(x.contiguous()).mean(dim=(2, 3))

    return _Encoder()


def load_torch_victim(ckpt_dir: str, device="cpu"):
    """``(loaded, torch_victim)``: the flax victim (``training.checkpoint.load_model``,
    kind ``simclr``) and its encoder ported to torch (:func:`torch_encoder_from_flax`),
    which answers what ``VictimAPI(output="representation")`` answers.

    Raises:
      FileNotFoundError / CheckpointMismatchError: see ``load_model``.
      ValueError: not a SimCLR ResNet victim.
    """
    from sslsteal_jax.training.checkpoint import load_model

    loaded = load_model(ckpt_dir)
    if loaded.kind != "simclr":
        raise ValueError(f"{ckpt_dir} holds a {loaded.kind!r} checkpoint, not a SimCLR victim")
    v = loaded.variables
    enc_vars = {"params": v["params"]["encoder"], "batch_stats": v["batch_stats"]["encoder"]}
    return loaded, torch_encoder_from_flax(loaded.module.encoder, enc_vars, device=device)


def torch_answers(net, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """float32 numpy ``(N, D)``: ``net`` (a :class:`TorchEncoder`, eval mode) on uint8
    ``(N, H, W, C)`` images, ``batch_size`` at a time, without gradients."""
    torch = _torch()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(net(torch.from_numpy(np.array(images[i:i + batch_size], copy=True)))
                       .numpy())
    return np.concatenate(out).astype(np.float32)


def check_port(api, torch_victim, images: np.ndarray) -> dict:
    """Compare the torch victim with the JAX ``VictimAPI`` on ``images``.

    Args:
      api: ``api.victim_api.VictimAPI`` without defenses (queried as user ``"port_check"``).
      torch_victim: :func:`load_torch_victim`'s torch encoder.
      images: uint8 ``(N, H, W, C)``.
    Returns:
      ``{"images": N, "max_rel_err": max_i |t_i - j_i| / |j_i| (L2 norms per image),
      "max_abs_err", "answer_dim"}``.
    """
    j = np.asarray(api.query("port_check", images), np.float64)
    t = torch_answers(torch_victim, images).astype(np.float64)
    if j.shape != t.shape:
        raise ValueError(f"torch victim answers {t.shape}, the API {j.shape}")
    rel = np.linalg.norm(t - j, axis=1) / (np.linalg.norm(j, axis=1) + 1e-12)
    return {"images": int(len(images)), "max_rel_err": float(rel.max()),
            "max_abs_err": float(np.abs(t - j).max()), "answer_dim": int(j.shape[1])}


# ----------------------------------------------------------------------------- settings

def scan_settings(loss: str, epochs: int, probe_train_size: int, victim_encoder, seed: int = 0):
    """The scan config's surrogate settings of ``loss`` for ``victim_encoder``.

    ``configs/budget_scan.py:losses=LOSS,protocol=epochs,epochs=E`` ->
    ``trainers.surrogate.steal_config`` (victim's architecture, ``loss_overrides``)
    -> ``resolve_hparams``. Returns ``{"loss", "epochs", "batch_size",
    "learning_rate", "weight_decay", "temperature", "optimizer", "model": {arch,
    width, stem, mean, std}, "seed"}``.

    Raises:
      ValueError: a setting the torch reference does not implement (optimizer
        other than adam, surrogate-side augmentation, bfloat16, an adapter because
        the surrogate's representation size differs from the victim's, or a loss
        outside ``torch_ref.TORCH_LOSSES``).
    """
    from benchmarks.torch_ref import TORCH_LOSSES
    from sslsteal_jax.configs.budget_scan import get_config
    from sslsteal_jax.models import arch_name, encoder_from_config
    from sslsteal_jax.trainers.surrogate import resolve_hparams, steal_config

    if loss not in TORCH_LOSSES:
        raise ValueError(f"the torch reference implements losses {list(TORCH_LOSSES)}, "
                         f"got {loss!r}")
    cfg = get_config(f"losses={loss},protocol=epochs,epochs={int(epochs)},"
                     f"probe_train_size={int(probe_train_size)},seed={int(seed)}")
    scfg = steal_config(cfg.steal, loss, victim_encoder, cfg.loss_overrides, seed)
    hp = resolve_hparams(scfg)
    if scfg.optimizer != "adam" or scfg.get("augment") or scfg.model.get("dtype") not in (
            None, "", "float32"):
        raise ValueError(f"torch reference covers adam, no augmentation, float32; the scan "
                         f"config has optimizer={scfg.optimizer!r}, augment={scfg.get('augment')!r}, "
                         f"dtype={scfg.model.get('dtype')!r}")
    senc = encoder_from_config(scfg.model)
    if senc.representation_dim != victim_encoder.representation_dim:
        raise ValueError("the surrogate's representation size differs from the victim's "
                         "(an adapter): not covered by the torch reference")
    return {"loss": loss, "epochs": int(scfg.epochs), "batch_size": int(hp["batch_size"]),
            "learning_rate": float(hp["learning_rate"]),
            "weight_decay": float(scfg.weight_decay),
            "temperature": None if hp["temperature"] is None else float(hp["temperature"]),
            "optimizer": scfg.optimizer,
            "model": {"arch": arch_name(senc), "width": int(senc.width), "stem": senc.stem,
                      "mean": list(senc.mean), "std": list(senc.std)},
            "seed": int(seed)}


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor of optimizer update ``step`` (0-based) under
    ``optax.warmup_cosine_decay_schedule(0, 1, warmup, total, 0)`` (what
    ``training.optim.make_optimizer`` uses): ``step / warmup`` during warm-up, then
    ``0.5 (1 + cos(pi (step - warmup) / (total - warmup)))``, 0 from ``total`` on."""
    if warmup and step < warmup:
        return step / warmup
    d = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, d) / d))


# ----------------------------------------------------------------------------- torch side

def torch_linear_probe(train_x, train_y, test_x, test_y, seed: int = 0, epochs: int = 60,
                       batch_size: int = 512, learning_rate: float = 2e-3,
                       weight_decay: float = 1e-4) -> float:
    """Softmax regression on standardised frozen features in torch; test accuracy (percent).

    The fixed settings of ``evaluation.probe.fit_linear_probe``: features
    standardised with the train mean / std (+1e-6), zero-initialised ``(D, K)``
    weights and bias, AdamW (decoupled weight decay) with cosine decay to 0 over
    ``epochs x floor(N / batch)`` steps, shuffled full batches (the partial batch
    of an epoch is dropped).

    Args:
      train_x: float32 ``(N, D)``; train_y: int ``(N,)`` in [0, K); test_x ``(M, D)``;
        test_y ``(M,)``; seed: shuffling seed.
    Returns:
      top-1 accuracy in percent (float in [0, 100]).
    Raises:
      ValueError: mismatched shapes or non-finite features.
    """
    torch = _torch()
    import torch.nn.functional as F

    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    if (train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]
            or len(train_x) != len(train_y) or len(test_x) != len(test_y)):
        raise ValueError(f"features (N,D)/(M,D) with N/M labels, got {train_x.shape}, "
                         f"{test_x.shape}, {np.shape(train_y)}, {np.shape(test_y)}")
    if not (np.isfinite(train_x).all() and np.isfinite(test_x).all()):
        raise ValueError("features contain NaN or inf")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std)
    xte = torch.from_numpy((test_x - mean) / std)
    ytr = torch.from_numpy(np.asarray(train_y, np.int64))
    k = int(max(np.max(train_y), np.max(test_y)) + 1)
    n, d = xtr.shape
    bs = min(batch_size, n)
    per_epoch = max(n // bs, 1)
    total = epochs * per_epoch
    w = torch.zeros(d, k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, total))
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)[:per_epoch * bs].view(per_epoch, bs)
        for idx in perm:
            loss = F.cross_entropy(xtr[idx] @ w + b, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = (xte @ w + b).argmax(1).numpy()
    return float(100.0 * np.mean(pred == np.asarray(test_y)))


def torch_steal_job(victim, pool: np.ndarray, budget: int, settings: dict, progress: bool = True):
    """One reference job: a fresh torch surrogate stolen from ``victim`` with ``budget``
    queries re-asked every epoch (Dziedzic et al. ICML 2022 reference code: the
    victim is queried inside the training loop, each epoch).

    Args:
      victim: torch victim (:func:`load_torch_victim`), eval mode.
      pool: uint8 ``(N, H, W, C)`` query pool; the job uses ``pool[:budget]``.
      budget: B, 1 <= B <= N.
      settings: :func:`scan_settings` (loss, epochs, batch size, learning rate,
        weight decay, temperature, surrogate model, seed).
    Returns:
      ``(surrogate (eval mode), record)``; record: ``budget``, ``epochs``,
      ``batch_size``, ``steps``, ``queries_charged`` (= B x epochs), ``train_seconds``
      (wall, victim queries included), ``query_seconds`` (victim forward passes
      alone), ``final_loss``.
    Raises:
      ValueError: ``budget`` outside [1, N].
    """
    torch = _torch()
    from benchmarks.torch_ref import build_torch_encoder, torch_stealing_loss
    from tqdm.auto import tqdm

    if not 1 <= int(budget) <= len(pool):
        raise ValueError(f"budget {budget} must be in [1, {len(pool)}] (the query pool)")
    budget, s = int(budget), settings
    m = s["model"]
    torch.manual_seed(s["seed"])  # fresh surrogate per job
    channels = pool.shape[-1]
    sur = TorchEncoder(build_torch_encoder(m["arch"], m["width"], channels, m["stem"]),
                       m["mean"], m["std"], channels).train()
    loss_fn = torch_stealing_loss(s["loss"], s["temperature"] or 0.1)
    bsz = min(s["batch_size"], budget)
    per_epoch = math.ceil(budget / bsz)
    total = s["epochs"] * per_epoch
    warm = min(total // 20, 200)
    opt = torch.optim.Adam(sur.parameters(), lr=s["learning_rate"], weight_decay=s["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_cosine(k, warm, total))
    gen = torch.Generator().manual_seed(s["seed"])
    images = torch.from_numpy(np.array(pool[:budget], copy=True))
    charged, query_s, val = 0, 0.0, float("nan")
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"torch steal[{s['loss']}, {budget} queries/epoch]",
               disable=not progress, leave=False)
    for _ in range(s["epochs"]):
        perm = torch.randperm(budget, generator=gen)
        for i in range(0, budget, bsz):
            x = images[perm[i:i + bsz]]
            tq = time.perf_counter()
            with torch.no_grad():
                v = victim(x)  # the victim is queried for this batch, this epoch
            query_s += time.perf_counter() - tq
            charged += len(x)
            loss = loss_fn(sur(x), v)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        val = float(loss.detach())
    bar.close()
    record = {"budget": budget, "epochs": s["epochs"], "batch_size": bsz, "steps": total,
              "queries_charged": charged, "train_seconds": time.perf_counter() - t0,
              "query_seconds": query_s, "final_loss": val}
    return sur.eval(), record


def run_torch_scan(victim, data, budgets, settings: dict, progress: bool = True) -> dict:
    """The reference protocol over ``budgets``: one :func:`torch_steal_job` per budget,
    each followed by its torch linear probe (:func:`torch_linear_probe`).

    Args:
      victim: torch victim; data: ``data.splits.ExperimentData`` (``query_pool``,
        probe train / test images and labels); budgets: ints; settings:
        :func:`scan_settings`.
    Returns:
      ``{"wall_seconds", "queries_charged" (sum(budgets) x epochs), "per_budget":
      [record + "eval_seconds", "wall_seconds", "probe_torch"], "features": {budget:
      (train feats, test feats)}, "victim_test": victim answers on the probe test
      set}`` (``features`` / ``victim_test`` are float32 arrays for
      :func:`add_our_probe`, not for the JSON). ``wall_seconds`` counts the jobs and
      their probes (the victim is loaded and ported before the clock starts).
    """
    t0 = time.perf_counter()
    per, feats = [], {}
    for b in budgets:
        sur, rec = torch_steal_job(victim, data.query_pool, b, settings, progress)
        te0 = time.perf_counter()
        ftr = torch_answers(sur, data.probe_train_x)
        fte = torch_answers(sur, data.probe_test_x)
        rec["probe_torch"] = torch_linear_probe(ftr, data.probe_train_y, fte, data.probe_test_y,
                                                settings["seed"])
        rec["eval_seconds"] = time.perf_counter() - te0
        rec["wall_seconds"] = rec["train_seconds"] + rec["eval_seconds"]
        feats[int(b)] = (ftr, fte)
        per.append(rec)
        if progress:
            print(f"torch  budget {b}: {rec['wall_seconds']:.1f} s, {rec['queries_charged']} "
                  f"queries, probe {rec['probe_torch']:.2f} %", flush=True)
    wall = time.perf_counter() - t0
    return {"wall_seconds": wall, "queries_charged": int(sum(r["queries_charged"] for r in per)),
            "per_budget": per, "features": feats,
            "victim_test": torch_answers(victim, data.probe_test_x)}


def add_our_probe(torch_side: dict, data, seed: int = 0) -> float:
    """Add ``probe_full`` (our ``selected_linear_probe``, the key the JAX scan uses:
    the first of ``jax.random.split(jax.random.key(seed), 3)``), its settings and
    ``cosine_fidelity`` (mean cosine to the victim's answers on the probe test set)
    to every per-budget record of :func:`run_torch_scan`'s result; returns the
    seconds it took (not part of the torch wall time)."""
    import jax

    from sslsteal_jax.evaluation.fidelity import cosine_fidelity
    from sslsteal_jax.evaluation.probe import selected_linear_probe

    t0 = time.perf_counter()
    k1 = jax.random.split(jax.random.key(int(seed)), 3)[0]
    for rec in torch_side["per_budget"]:
        ftr, fte = torch_side["features"][rec["budget"]]
        acc, st = selected_linear_probe(ftr, data.probe_train_y, fte, data.probe_test_y, k1)
        rec["probe_full"], rec["probe_full_settings"] = float(acc), st
        rec["cosine_fidelity"] = cosine_fidelity(fte, torch_side["victim_test"])
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- JAX side

def jax_scan_command(budgets, loss: str, epochs: int, probe_train_size: int,
                     probe_test_size: int, victim: str, workdir: str, seed: int = 0,
                     per_class: int | None = None) -> list[str]:
    """The ``python -m sslsteal_jax.main`` command line of our budget scan (argv list)."""
    cmd = [sys.executable, "-m", "sslsteal_jax.main",
           f"--config=configs/budget_scan.py:losses={loss},protocol=epochs,epochs={int(epochs)},"
           f"probe_train_size={int(probe_train_size)},seed={int(seed)}",
           f"--config.budgets={','.join(str(int(b)) for b in budgets)}",
           f"--config.query_sources={QUERY_SOURCE}",
           f"--config.probe_test_size={int(probe_test_size)}",
           f"--config.victim.checkpoint={victim}", f"--workdir={workdir}"]
    if per_class is not None:
        cmd.append(f"--config.eval.per_class={int(per_class)}")
    return cmd


def run_jax_scan(cmd: list[str], workdir: str, env=None, timeout: float | None = None) -> dict:
    """Run our scan (:func:`jax_scan_command`) in a subprocess and read its results.

    Returns ``{"wall_seconds" (the subprocess, start-up included),
    "results_wall_seconds" (the scan's own ``wall_seconds``), "before_cells_seconds"
    (launch to the answers being bought: imports, data, victim and independent
    reference rows, the queries), "queries_charged", "devices", "jax_version",
    "per_budget": [{"budget", "steps", "epochs", "batch_size", "train_seconds",
    "wall_seconds" (previous cell file to this one: training + evaluation),
    "probe_full", "probe_100", "knn", "cosine_fidelity"}], "reference":
    {victim / independent probe_full}}``.

    Raises:
      RuntimeError: the subprocess failed (exit status and the command).
    """
    from sslsteal_jax.experiments.budget_scan import cell_name

    t_launch = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"JAX scan exited with status {proc.returncode}: {' '.join(cmd)}")
    with open(os.path.join(workdir, "results.json")) as f:
        res = json.load(f)
    cells_dir = os.path.join(workdir, "cells")
    answers = [os.path.join(workdir, p) for p in os.listdir(workdir) if p.startswith("answers_")]
    t_prev = max(os.path.getmtime(p) for p in answers)
    stamps = {}
    for p in os.listdir(cells_dir):
        if p.endswith(".json") and not p.startswith("_"):
            with open(os.path.join(cells_dir, p)) as f:
                rec = json.load(f)
            stamps[rec["cell"]] = os.path.getmtime(os.path.join(cells_dir, p))
    rows = sorted(res["cells"], key=lambda r: r["budget"])
    from_files = {}
    for name, t in sorted(stamps.items(), key=lambda kv: kv[1]):
        from_files[name] = t - t_prev
        t_prev = t
    per = []
    for r in rows:
        name = cell_name(r["source"], r["loss"], r["budget"], r["seed"])
        per.append({"budget": int(r["budget"]), "steps": int(r["steps"]), "epochs": r["epochs"],
                    # the resolved batch (the stored config leaves it None = the loss's)
                    "batch_size": round(r["epochs"] * r["budget"] / r["steps"]),
                    "train_seconds": r["train_seconds"], "wall_seconds": from_files.get(name),
                    "probe_full": r["probe_full"], "probe_100": r["probe_100"], "knn": r["knn"],
                    "cosine_fidelity": r["cosine_fidelity"], "stacked": r.get("stacked")})
    return {"wall_seconds": wall, "results_wall_seconds": res["wall_seconds"],
            "before_cells_seconds": min(os.path.getmtime(p) for p in answers) - t_launch,
            "queries_charged": int(sum(res["queries_charged_this_run"].values())),
            "devices": res["environment"]["devices"], "jax_version": res["environment"]["jax"],
            "per_budget": per,
            "reference": {k: {"probe_full": v["probe_full"]} for k, v in res["reference"].items()},
            "command": " ".join(cmd[1:])}


# ----------------------------------------------------------------------------- main

def _versions() -> dict:
    import jax
    import jaxlib
    torch = _torch()
    return {"torch": torch.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def _write_json(path: str, obj) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sbs_", suffix=".json", dir=d)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                   help="comma list of query budgets (default %(default)s)")
    p.add_argument("--loss", default="mse", help="stealing loss: mse | infonce (default mse)")
    p.add_argument("--epochs", type=int, default=6, help="surrogate epochs over every budget")
    p.add_argument("--probe_train_size", type=int, default=5000)
    p.add_argument("--probe_test_size", type=int, default=2000)
    p.add_argument("--victim", default=DEFAULT_VICTIM, help="victim checkpoint directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="torch,jax",
                   help="which sides to run, in this order (default torch,jax)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default; 1 on a loaded host, where 2 threads "
                        "on 2 cores ran steps 10x slower)")
    p.add_argument("--workdir", default="", help="JAX scan workdir (default: a temporary one, "
                   "removed afterwards)")
    p.add_argument("--tiny", action="store_true", help=f"smoke sizes {TINY}")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--out", default="benchmarks/results/scan_side_by_side.json")
    a = p.parse_args(argv)
    a.per_class = None
    if a.tiny:
        a.budgets = ",".join(map(str, TINY["budgets"]))
        a.epochs, a.probe_train_size = TINY["epochs"], TINY["probe_train_size"]
        a.probe_test_size, a.per_class = TINY["probe_test_size"], TINY["per_class"]
    a.budgets = sorted({int(b) for b in str(a.budgets).split(",") if b.strip()})
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if not a.budgets or a.budgets[0] < 1:
        p.error("--budgets needs positive integers")
    if not set(a.sides) <= {"torch", "jax"} or not a.sides:
        p.error("--sides: torch and/or jax")
    return a


def main(argv=None) -> dict:
    """Run the side-by-side and write ``--out``; returns the JSON-ready result."""
    a = parse_args(argv)
    torch = _torch()
    if a.threads:
        torch.set_num_threads(a.threads)
    from sslsteal_jax.api.victim_api import VictimAPI
    from sslsteal_jax.data.splits import experiment_data

    progress = not a.no_progress
    victim_dir = a.victim if os.path.isabs(a.victim) else os.path.join(_ROOT, a.victim)
    out = {"benchmark": "scan_side_by_side",
           "settings": {"budgets": a.budgets, "loss": a.loss, "epochs": a.epochs,
                        "probe_train_size": a.probe_train_size,
                        "probe_test_size": a.probe_test_size, "victim": a.victim,
                        "query_source": QUERY_SOURCE, "seed": a.seed, "tiny": a.tiny,
                        "order": a.sides},
           "environment": {**_versions(), "torch_threads": torch.get_num_threads(),
                           "loadavg_start": os.getloadavg()}}
    data = experiment_data("fashion_mnist", QUERY_SOURCE, a.probe_test_size,
                           with_victim_train=False, probe_train_size=a.probe_train_size)
    if a.budgets[-1] > len(data.query_pool):
        raise SystemExit(f"budget {a.budgets[-1]} exceeds the query pool "
                         f"({len(data.query_pool)} images)")
    t_port = time.perf_counter()
    loaded, tvictim = load_torch_victim(victim_dir)
    out["victim_load_and_port_seconds"] = time.perf_counter() - t_port
    settings = scan_settings(a.loss, a.epochs, a.probe_train_size, loaded.module.encoder, a.seed)
    out["settings"]["surrogate"] = settings
    api = VictimAPI(loaded.module, loaded.variables, loaded.image_shape)
    out["port_check"] = check_port(api, tvictim, data.probe_test_x[:64])
    print(f"torch victim vs VictimAPI on 64 images: max relative error "
          f"{out['port_check']['max_rel_err']:.2e}", flush=True)
    if out["port_check"]["max_rel_err"] > 1e-4:
        raise SystemExit("the torch port of the victim does not match the JAX API")
    for side in a.sides:
        load0 = os.getloadavg()
        if side == "torch":
            res = run_torch_scan(tvictim, data, a.budgets, settings, progress)
            res["ours_probe_seconds"] = add_our_probe(res, data, a.seed)
            res.pop("features"), res.pop("victim_test")
            res.update(threads=torch.get_num_threads(), torch_version=torch.__version__,
                       protocol="reference: each budget its own job, victim re-queried every "
                                "epoch (B queries per epoch)")
        else:
            root = a.workdir or tempfile.mkdtemp(prefix="sbs_jax_")
            wdir = os.path.join(root, "scan") if not a.workdir else a.workdir
            cmd = jax_scan_command(a.budgets, a.loss, a.epochs, a.probe_train_size,
                                   a.probe_test_size, a.victim, wdir, a.seed, a.per_class)
            print("JAX scan:", " ".join(cmd[1:]), flush=True)
            try:
                res = run_jax_scan(cmd, wdir)
            finally:
                if not a.workdir:
                    shutil.rmtree(root, ignore_errors=True)
            res["protocol"] = ("budget_scan protocol=epochs: answers bought once (largest "
                               "budget), cells trained on cached prefixes")
        res["loadavg_before"], res["loadavg_after"] = load0, os.getloadavg()
        out[side] = res
        _write_json(a.out, out)  # partial results survive a failure of the next side
    out["environment"]["loadavg_end"] = os.getloadavg()
    if "torch" in out and "jax" in out:
        out["summary"] = {
            "wall_seconds": {"torch": out["torch"]["wall_seconds"],
                             "jax": out["jax"]["wall_seconds"]},
            "jax_speedup": out["torch"]["wall_seconds"] / out["jax"]["wall_seconds"],
            "queries_charged": {"torch": out["torch"]["queries_charged"],
                                "jax": out["jax"]["queries_charged"]},
            "probe_full": {side: {r["budget"]: r["probe_full"] for r in out[side]["per_budget"]}
                           for side in ("torch", "jax")},
            "probe_torch": {r["budget"]: r["probe_torch"] for r in out["torch"]["per_budget"]}}
    _write_json(a.out, out)
    if "summary" in out:
        s = out["summary"]
        print(json.dumps(s, indent=1), flush=True)
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
