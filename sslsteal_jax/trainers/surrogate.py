"""Surrogate trainer (direct extraction): train a freshly initialised surrogate
encoder on the API's answers.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 3 ("direct
extraction": the surrogate's representation of each queried image is trained
to match the victim's returned representation under a stealing loss) and
Section 4 (hyper-parameters: Adam, weight decay 1e-4; per-loss batch size,
learning rate and temperature: ``losses.LOSSES``).

Variants share this one training function (``attacks.strategies`` decides
what was bought; the loss's ``LossSpec.needs`` decides which extra inputs the
step takes): surrogate-side augmented views (StolenEncoder, Liu et al.
CCS 2022), cross-view targets for the SimSiam-style "symmetrized" loss,
training through a recreated projection head (``attacks.head_recreation``),
class labels for the "supcon" baseline, and class-distribution answers for the
Knockoff-style label baselines (loss "xent").

The attacker only sees ``(images, answers)`` arrays returned by the API, never
the victim's parameters.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sslsteal_jax import losses
from sslsteal_jax.data.augment import AugmentConfig, augment_batch
from sslsteal_jax.defaults import default_steal_block
from sslsteal_jax.errors import ConfigError, check_choice, check_int, check_number
from sslsteal_jax.evaluation.features import extract_features
from sslsteal_jax.models import (SurrogateModel, arch_family, arch_name, default_width,
                                 encoder_from_config, encoder_options, init_variables)
from sslsteal_jax.trainers.simclr import augment_config
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState

def steal_config(steal, loss: str, victim_encoder=None, loss_overrides=None,
                 seed: int | None = None) -> ml_collections.ConfigDict:
    """The surrogate-training config of ``loss`` (what ``train_surrogate`` takes): a
    resolved copy of the ``steal`` block with ``loss`` (and ``seed``, when given) set,
    an empty ``model.arch`` taken from ``victim_encoder`` (a ``models.resnet.ResNet``
    or ``models.vit.VisionTransformer``), then ``loss_overrides[loss]`` applied to the
    fields the ``steal`` block leaves None (the per-loss ``LossSpec.scale_overrides`` of
    the CPU-scale configs): an explicit ``steal.learning_rate`` (or batch size,
    temperature) holds for every loss, a ``loss_overrides.<loss>`` entry for the
    fields nobody set. The one code path
    of the main job, budget scan and defense matrix, and of :func:`surrogate_config`.

    An empty ``model.width`` / ``stem`` and the encoder options (``models.encoder_options``:
    input normalisation; a ViT's depth, heads, pooling) are the victim's when the
    surrogate is of the victim's family (ResNet or ViT), else the architecture's
    defaults (a ViT surrogate of a ResNet victim does not take the ResNet's width).

    Raises:
      ConfigError: unknown surrogate architecture.
    """
    scfg = steal.copy_and_resolve_references()
    scfg.loss = loss
    if seed is not None:
        scfg.seed = int(seed)
    if victim_encoder is not None:
        victim_arch = arch_name(victim_encoder)
        scfg.model.arch = scfg.model.arch or victim_arch
        if arch_family(scfg.model.arch) == arch_family(victim_arch):
            scfg.model.width = scfg.model.width or victim_encoder.width
            scfg.model.stem = scfg.model.stem or victim_encoder.stem
            for k, v in encoder_options(victim_encoder).items():
                if scfg.model.get(k) in (None, ""):
                    scfg.model[k] = v
        else:
            scfg.model.width = scfg.model.width or default_width(scfg.model.arch)
    if loss_overrides and loss in loss_overrides:
        scfg.update({k: v for k, v in dict(loss_overrides[loss]).items()
                     if scfg.get(k) is None})
    return scfg


#: Optional ``train_surrogate`` fields :func:`surrogate_config` accepts beyond the steal block.
OPTIONAL_FIELDS = ("steps", "surrogate_views", "view_weight", "view_augment", "predictor_hidden")


def check_steal(prefix: str, steal) -> None:
    """The ``steal`` block (a surrogate config): epochs >= 1; batch_size / learning_rate
    / temperature None (the loss's registry setting, or its ``loss_overrides`` entry) or
    positive; weight decay >= 0; the optimizer (``training.optim.OPTIMIZERS``); the
    compute dtype. Used by every config's validation (``configs.base``) and by
    :func:`surrogate_config`.

    Raises:
      ConfigError: the first bad field (``<prefix>steal.<field>``).
    """
    from sslsteal_jax.models import compute_dtype
    from sslsteal_jax.training.optim import OPTIMIZERS

    p = f"{prefix}steal"
    check_int(f"{p}.epochs", steal.epochs)
    check_int(f"{p}.batch_size", steal.batch_size, optional=True)
    check_number(f"{p}.learning_rate", steal.learning_rate, optional=True)
    check_number(f"{p}.temperature", steal.temperature, optional=True)
    check_number(f"{p}.weight_decay", steal.weight_decay, zero=True)
    check_choice(f"{p}.optimizer", steal.optimizer, OPTIMIZERS)
    compute_dtype(steal.model.dtype)


def surrogate_config(loss: str = "infonce", epochs: int = 30, victim_encoder=None, *,
                     seed: int = 0, **overrides) -> ml_collections.ConfigDict:
    """The main job's surrogate config for ``loss``, for use from Python (notebooks).

    The same ConfigDict ``experiments.steal`` trains with: :func:`default_steal_block`
    (``configs/quickstart.py``'s ``steal`` block) through :func:`steal_config` with the
    registry's ``losses.scale_overrides()``, then ``overrides`` (a field of the block,
    ``model={"width": 8}`` merges into ``model``, or one of :data:`OPTIONAL_FIELDS`).

    Args:
      loss: a stealing loss (``losses.ALL_LOSSES``).
      epochs: training epochs over the bought answers.
      victim_encoder: the victim's encoder (``LoadedModel.module.encoder``): the
        surrogate's architecture, width and stem default to it; without it, give
        ``model={"arch": ..., "width": ..., "stem": ...}``.
      seed: initialisation and data-order seed.
    Raises:
      ConfigError (a ValueError): unknown loss or override field, ``epochs`` not an
        integer >= 1, ``seed`` not an integer >= 0, a bad steal field (batch size,
        learning rate, temperature, optimizer, dtype: ``configs.base.check_steal``), or
        an unknown architecture / no architecture (neither ``victim_encoder`` nor
        ``model``).
    """
    from sslsteal_jax.models import ARCHITECTURES, VIT_ARCHITECTURES

    if loss not in losses.ALL_LOSSES:
        raise ConfigError(f"unknown stealing loss {loss!r}; allowed: {list(losses.ALL_LOSSES)}")
    check_int("epochs", epochs, minimum=1)
    check_int("seed", seed, minimum=0)
    scfg = steal_config(default_steal_block(epochs, seed), loss, victim_encoder,
                        losses.scale_overrides())
    for k, v in overrides.items():
        if k not in scfg and k not in OPTIONAL_FIELDS:
            raise ConfigError(f"unknown surrogate config field {k!r}; allowed: "
                              f"{sorted(scfg.keys()) + list(OPTIONAL_FIELDS)}")
        try:
            if k == "model" and isinstance(v, dict):
                scfg.model.update(v)
            else:
                scfg[k] = v
        except TypeError:  # ml_collections refuses a value of another type
            raise ConfigError(f"{k}={v!r}: not of the field's type "
                              f"({type(scfg.get(k)).__name__})") from None
    check_steal("", scfg)
    archs = sorted(ARCHITECTURES) + sorted(VIT_ARCHITECTURES)
    if not scfg.model.get("arch"):
        raise ConfigError("surrogate_config needs an architecture: pass victim_encoder (the "
                          "victim's LoadedModel.module.encoder) or model={'arch': ..., "
                          f"'width': ..., 'stem': ...}}; architectures: {archs}")
    if scfg.model.arch not in archs:
        raise ConfigError(f"model.arch={scfg.model.arch!r}; allowed: {archs}")
    return scfg


def resolve_hparams(cfg) -> dict:
    """Fill ``batch_size``, ``learning_rate``, ``temperature`` left None in the
    steal config with the loss's reference settings (``losses.LOSSES[cfg.loss]``,
    :meth:`losses.LossSpec.defaults`).

    Returns:
      ``{"batch_size", "learning_rate", "temperature"}`` (temperature None for
      losses without one, unless the config sets it).
    Raises:
      ValueError: unknown loss name (lists the allowed ones).
    """
    if cfg.loss not in losses.LOSSES:
        raise ValueError(f"unknown stealing loss {cfg.loss!r}; allowed: {sorted(losses.LOSSES)}")
    d = losses.LOSSES[cfg.loss].defaults()
    for k in d:
        if cfg.get(k) is not None:
            d[k] = cfg.get(k)
    return d


def effective_batch_size(batch_size: int, n: int) -> int:
    """Surrogate batch size for ``n`` cached answers: ``min(batch_size, n)`` rounded
    down to a multiple of the data-parallel device count (at least one per device).

    Raises:
      ValueError: fewer answers than devices.
    """
    devices = jax.device_count()
    b = min(int(batch_size), int(n)) // devices * devices
    if b < devices:
        raise ValueError(f"{n} answers cannot fill a batch over {devices} devices")
    return b


def surrogate_schedule(cfg, n: int) -> tuple[int, int]:
    """``(batch_size, total_steps)`` of a surrogate trained on ``n`` answers.

    Batch size: :func:`effective_batch_size` of the loss's resolved batch
    size. Steps: ``cfg.steps`` when set (an exact number of optimizer steps,
    e.g. equal training examples for every budget of a scan), else
    ``cfg.epochs`` full epochs of ``n // batch_size`` steps.

    Raises:
      ValueError: unknown loss, or fewer answers than devices.
    """
    bsz = effective_batch_size(resolve_hparams(cfg)["batch_size"], n)
    return bsz, int(cfg.get("steps") or 0) or int(cfg.epochs) * (int(n) // bsz)


def make_steal_step(model: SurrogateModel, loss: str, temperature, aug=None, *,
                    surrogate_views: int = 0, view_weight: float = 1.0, view_aug=None,
                    target_head=None, with_labels: bool = False, paired: bool = False):
    """Return the jittable training step of a surrogate.

    Step signature: ``step(state, images, answers, [labels], [pair_images,
    pair_answers], key) -> (state, {"loss"})`` with images uint8
    ``(B,H,W,C)``, answers float32 ``(B,D)`` (already mapped by the recreated
    head when ``target_head`` is set), labels int ``(B,)`` (``with_labels``),
    pair_images / pair_answers the other queried view of each image and its
    answer (``paired``).

    View groups: group 0 is the queried image (an augmented view of it when
    ``aug`` is an AugmentConfig, no extra query). ``surrogate_views = k > 0``
    adds k surrogate-side augmented views (``view_aug``) of each queried image
    with the same answer as target (StolenEncoder, Liu et al. CCS 2022, Eq. 3:
    loss on the clean image plus ``view_weight`` x the mean loss on the views;
    no query is charged for them). All groups go through the encoder as one
    batch. A loss that needs a "pair" (``losses.LOSSES``: "symmetrized",
    ``losses.symmetrized_loss``) pairs group 0 with each further group (the
    other queried view when ``paired``, else one surrogate-side view) and
    averages; every other loss is ``L(o_0, v) + view_weight * mean_j L(o_j, v)``.

    ``target_head``: a frozen function ``(B, D) -> (B, D')`` (the recreated
    projection head) applied to the surrogate outputs before the loss.

    Raises:
      ValueError: unknown ``loss`` or negative ``surrogate_views``.
    """
    if surrogate_views < 0:
        raise ValueError(f"surrogate_views={surrogate_views} must be >= 0")
    needs_pair = "pair" in losses.get_spec(loss).needs
    view_aug = view_aug or AugmentConfig()

    def batch_loss(o, t, labels, pair=None):
        return losses.stealing_loss(loss, o, t, temperature, labels=labels, pair=pair)

    def loss_fn(params, batch_stats, xs, ts, labels):
        b = xs[0].shape[0]
        (h, o), upd = model.apply({"params": params, "batch_stats": batch_stats},
                                  xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0),
                                  train=True, mutable=["batch_stats"])
        if target_head is not None:
            o = target_head(o)
        os_ = [o[i * b:(i + 1) * b] for i in range(len(xs))]
        if needs_pair:
            val = jnp.mean(jnp.stack([batch_loss(os_[0], ts[0], labels, pair=(os_[j], ts[j]))
                                      for j in range(1, len(xs))]))
        else:
            val = batch_loss(os_[0], ts[0], labels)
            if len(xs) > 1:
                val = val + view_weight * jnp.mean(jnp.stack(
                    [batch_loss(os_[j], ts[j], labels) for j in range(1, len(xs))]))
        return val, upd.get("batch_stats", {})  # {} for encoders without BatchNorm (ViT)

    def step(state, images, answers, *rest):
        *extra, key = rest
        labels = extra.pop(0) if with_labels else None
        x = images.astype(jnp.float32) / 255.0
        if aug is not None:
            x = augment_batch(key, x, aug)
        xs, ts = [x], [answers]
        if surrogate_views:
            for j in range(surrogate_views):
                xs.append(augment_batch(jax.random.fold_in(key, j + 1),
                                        images.astype(jnp.float32) / 255.0, view_aug))
                ts.append(answers)
        elif paired:
            xs.append(extra[0].astype(jnp.float32) / 255.0)
            ts.append(extra[1])
        elif needs_pair:
            xs.append(augment_batch(jax.random.fold_in(key, 1), images.astype(jnp.float32) / 255.0,
                                    view_aug))
            ts.append(answers)
        (val, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, xs, ts, labels)
        return state.apply_gradients(grads=grads, batch_stats=bs), {"loss": val}

    return step


class SurrogateSetup(NamedTuple):
    """Everything :func:`train_surrogate` hands to ``training.loop.run_training``.

    Fields: ``model`` (SurrogateModel), ``state`` (fresh TrainState: step 0,
    parameters initialised with the first key of
    ``jax.random.split(jax.random.key(cfg.seed))``), ``step_fn``
    (:func:`make_steal_step`, not jitted), ``arrays`` (host arrays with
    leading dimension N: uint8 images, float32 targets, [int32 labels],
    [pair images, pair targets]), ``batch_size`` (int), ``total_steps``
    (int), ``step_key`` (PRNG key; step s uses ``fold_in(step_key, s)``),
    ``seed`` (int, data order), ``meta`` (checkpoint JSON), ``hparams``
    (resolved batch size / learning rate / temperature), ``surrogate_views``
    (int), ``desc`` (progress label).
    """
    model: SurrogateModel
    state: TrainState
    step_fn: Callable
    arrays: list
    batch_size: int
    total_steps: int
    step_key: jax.Array
    seed: int
    meta: dict
    hparams: dict
    surrogate_views: int
    desc: str


def _check_uint8_images(what: str, images) -> None:
    """``images`` are uint8 ``(N, H, W, C)`` pixels (the training step divides by 255:
    float images in [0, 1] would train on near-black inputs without any error).

    Raises:
      ValueError: another dtype or rank (names both and how to convert floats).
    """
    dtype, shape = getattr(images, "dtype", None), tuple(getattr(images, "shape", ()))
    if dtype != np.uint8 or len(shape) != 4:
        raise ValueError(
            f"{what} must be uint8 (N, H, W, C) pixels in [0, 255], got {dtype} {shape}"
            + ("; for float images in [0, 1] pass (x * 255).round().astype(np.uint8)"
               if dtype is not None and np.issubdtype(dtype, np.floating) else ""))


def prepare_surrogate(images: np.ndarray, answers: np.ndarray, cfg, *,
                      labels: np.ndarray | None = None, pair: tuple | None = None,
                      target_head=None, abstract: bool = False) -> SurrogateSetup:
    """Build a surrogate's model, fresh train state, step and data without training.

    Arguments as in :func:`train_surrogate`. Returns a :class:`SurrogateSetup`.
    ``abstract``: the state's leaves are ``jax.ShapeDtypeStruct`` (shapes
    only, from ``jax.eval_shape``: nothing is initialised), for memory
    estimates (``trainers.stacked.estimate_member_bytes``).
    The init key and step key are ``jax.random.split(jax.random.key(cfg.seed))``;
    the optimizer schedule spans ``total_steps`` with ``min(total // 20, 200)``
    warm-up steps.

    Raises:
      ValueError: as :func:`train_surrogate`.
    """
    _check_uint8_images("images", images)
    if len(images) != len(answers):
        raise ValueError(f"{len(images)} images but {len(answers)} answers")
    if answers.ndim != 2:
        raise ValueError(f"answers must be float (N, D), got shape {answers.shape}")
    if not np.isfinite(answers).all():
        raise ValueError(f"answers must be finite: {int((~np.isfinite(answers)).sum())} of "
                         f"{answers.size} values are NaN or infinite")
    hp = resolve_hparams(cfg)
    needs = losses.LOSSES[cfg.loss].needs
    if "labels" in needs and labels is None:
        raise ValueError(f"loss {cfg.loss!r} needs labels for the queried images (labels=...)")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    paired = "pair" in needs and pair is not None
    if paired:
        _check_uint8_images("pair images", pair[0])
    if paired and (len(pair[0]) != len(images) or np.shape(pair[1]) != answers.shape):
        raise ValueError(f"pair arrays must match images {images.shape} and answers "
                         f"{answers.shape}, got {np.shape(pair[0])} and {np.shape(pair[1])}")
    n = len(images)
    bsz, total = surrogate_schedule(cfg, n)
    enc = encoder_from_config(cfg.model)
    out_dim = answers.shape[1]
    adapter = (None if enc.representation_dim == out_dim and "class_targets" not in needs
               else out_dim)
    predictor = None
    if "predictor" in needs:
        predictor = int(cfg.get("predictor_hidden") or max(out_dim // 4, 1))
    model = SurrogateModel(enc, adapter, predictor)
    key = jax.random.key(int(cfg.seed))
    init_key, step_key = jax.random.split(key)
    tx = make_optimizer(cfg.optimizer, hp["learning_rate"], cfg.weight_decay, total,
                        min(total // 20, 200))

    def init_state():
        variables = init_variables(model, init_key, jnp.zeros((2, *images.shape[1:]), jnp.float32))
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    state = jax.eval_shape(init_state) if abstract else init_state()
    aug = augment_config(cfg.augment) if cfg.get("augment") else None
    view_aug = augment_config(cfg.view_augment) if cfg.get("view_augment") else None
    k_views = int(cfg.get("surrogate_views") or 0)
    step_fn = make_steal_step(model, cfg.loss, hp["temperature"], aug,
                              surrogate_views=k_views,
                              view_weight=float(cfg.get("view_weight", 1.0)), view_aug=view_aug,
                              target_head=target_head, with_labels=labels is not None,
                              paired=paired)
    targets = answers.astype(np.float32)
    pair_targets = np.asarray(pair[1], np.float32) if paired else None
    if target_head is not None:  # targets are constants: map them through the frozen head once
        head = jax.jit(target_head)
        targets = extract_features(head, targets)
        pair_targets = extract_features(head, pair_targets) if paired else None
    arrays = [images, targets]
    if labels is not None:
        arrays.append(np.asarray(labels, np.int32))
    if paired:
        arrays += [pair[0], pair_targets]
    meta = {"kind": "surrogate", "config": cfg.to_dict(), "adapter_dim": adapter,
            "predictor_hidden": predictor, "image_shape": list(images.shape[1:]), "queries": n}
    return SurrogateSetup(model, state, step_fn, arrays, bsz, total, step_key, int(cfg.seed), meta,
                          hp, k_views, f"steal[{cfg.loss}, {n} queries]")


def train_surrogate(images: np.ndarray, answers: np.ndarray, cfg, workdir: str | None,
                    progress: bool = True, *, labels: np.ndarray | None = None,
                    pair: tuple | None = None, target_head=None):
    """Train a surrogate encoder from the API's answers (direct extraction and
    its variants).

    Args:
      images: uint8 ``(N, H, W, C)`` queried images (or queried augmented
        views; N = training examples).
      answers: float32 ``(N, D)`` the API's answers for them (cached: each
        image was paid for once; epochs reuse the cache). For ``loss="xent"``
        (label baselines) rows are class distributions (one-hot or
        probabilities) and the surrogate's linear head outputs D logits.
      cfg: ConfigDict with ``loss`` (a key of ``losses.LOSSES``), ``model``
        (arch, width, stem, optional dtype "float32" | "bfloat16"), ``epochs``
        (or an exact number of optimizer ``steps``), ``batch_size``, ``learning_rate``,
        ``temperature`` (None = the loss's ``losses.LOSSES`` default), ``weight_decay``,
        ``optimizer``, ``seed``, ``augment`` (None or augmentation dict for
        surrogate-side views of group 0). Optional: ``surrogate_views`` (k
        StolenEncoder views per image, default 0), ``view_weight`` (default
        1.0), ``view_augment`` (augmentation dict of those views, default the
        SimCLR ``AugmentConfig()``), ``predictor_hidden`` ("symmetrized" only:
        hidden width of the SimSiam predictor, default ``D // 4`` as in SimSiam's
        bottleneck).
      workdir: where ``checkpoints/`` and ``train_log.jsonl`` go (None: no
        checkpoints). A run found there is resumed.
      labels: int ``(N,)`` class labels of the images; required by "supcon".
      pair: ``(pair_images uint8 (N,H,W,C), pair_answers float32 (N,D))``: for
        each example, another queried view of the same image and its answer
        (used by "symmetrized" for cross-view targets; ignored by other losses).
      target_head: frozen jittable ``(B, D) -> (B, D')`` (head recreation):
        answers are mapped through it once and the surrogate outputs are mapped
        through it before the loss.
    Returns:
      ``(module, variables, summary)``: ``SurrogateModel`` (call returns
      ``(h, o)``), ``{'params', 'batch_stats'}``, dict with ``steps``,
      ``wall_seconds``, ``examples_per_second``, ``final_loss``, ``hparams``.
    Raises:
      ValueError: images (or pair images) not uint8 ``(N, H, W, C)``, answers not a
        finite 2-D array, unknown loss, mismatched ``images``/``answers``/``labels``/
        ``pair``, missing labels for a loss that needs them, bad sizes.

    The setup (model, initial state, step, data, keys) is
    :func:`prepare_surrogate`; ``trainers.stacked.train_surrogates_stacked``
    trains K such setups in one compiled program with identical per-member
    results.
    """
    su = prepare_surrogate(images, answers, cfg, labels=labels, pair=pair,
                           target_head=target_head)
    ckpt_dir = os.path.join(workdir, "checkpoints") if workdir else None
    log_path = os.path.join(workdir, "train_log.jsonl") if workdir else None
    state, summary = run_training(su.state, su.step_fn, su.arrays, batch_size=su.batch_size,
                                  total_steps=su.total_steps, key=su.step_key, seed=su.seed,
                                  ckpt_dir=ckpt_dir, meta=su.meta, desc=su.desc,
                                  log_path=log_path, progress=progress)
    summary = dict(summary, final_loss=summary["final_metrics"].get("loss"), hparams=su.hparams,
                   examples=len(images), surrogate_views=su.surrogate_views)
    return su.model, {"params": state.params, "batch_stats": state.batch_stats}, summary
