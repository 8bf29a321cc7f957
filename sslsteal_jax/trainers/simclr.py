"""SimCLR victim training: one jitted step (augment on device -> encoder ->
projection head -> NT-Xent), a resumable loop with orbax checkpoints.

Source: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML 2020); victim protocol of Dziedzic et al. (ICML 2022,
Section 4): ResNet + 2-layer head, NT-Xent, Adam, weight decay 1e-4.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax import losses
from sslsteal_jax.data.augment import AugmentConfig, augment_batch
from sslsteal_jax.models import SimCLRModel, build_simclr, init_variables
from sslsteal_jax.training.checkpoint import load_model
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState


def augment_config(cfg) -> AugmentConfig:
    """AugmentConfig from a ConfigDict / dict of the same field names (lists become tuples).

    Raises:
      TypeError: a field name AugmentConfig does not have.
    """
    d = dict(cfg)
    return AugmentConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})


def make_simclr_step(model: SimCLRModel, aug: AugmentConfig, temperature: float):
    """Return ``step(state, images_uint8 (B,H,W,C), key) -> (state, metrics)``.

    Two views per image are drawn on device; the encoder sees both views in one
    batch of 2B (BatchNorm statistics over the global 2B batch); loss is
    ``losses.nt_xent(z1, z2, temperature)``.
    """

    def loss_fn(params, batch_stats, x1, x2):
        x = jnp.concatenate([x1, x2], axis=0)
        (h, z), upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
        b = x1.shape[0]
        loss = losses.nt_xent(z[:b], z[b:], temperature)
        return loss, upd.get("batch_stats", {})  # {} for encoders without BatchNorm (ViT)

    def step(state: TrainState, images, key):
        x = images.astype(jnp.float32) / 255.0
        k1, k2 = jax.random.split(key)
        x1, x2 = augment_batch(k1, x, aug), augment_batch(k2, x, aug)
        (loss, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x1, x2)
        state = state.apply_gradients(grads=grads, batch_stats=bs)
        return state, {"loss": loss}

    return step


def train_simclr(cfg, workdir: str, images: np.ndarray, progress: bool = True):
    """Train (or resume) a SimCLR victim.

    Args:
      cfg: ConfigDict with ``model`` (arch, width, stem, head_hidden, head_out),
        ``augment``, ``temperature``, ``batch_size``, ``epochs``, ``optimizer``,
        ``learning_rate``, ``weight_decay``, ``warmup_epochs``, ``seed``,
        ``checkpoint_every_steps``, ``log_every_steps``; optional
        ``init_from``: a SimCLR checkpoint directory whose parameters and
        BatchNorm statistics start this run (a warm restart: fresh optimizer
        state and a fresh warm-up + cosine schedule over ``epochs``).
      workdir: checkpoints go to ``workdir/checkpoints`` and the loss log to
        ``workdir/train_log.jsonl``. An existing checkpoint is resumed (same
        data order and keys as an uninterrupted run).
      images: uint8 ``(N, H, W, C)`` victim training images.
    Returns:
      ``(model, variables, summary)``: the SimCLRModel, its variables
      ``{'params', 'batch_stats'}``, and a dict with ``steps``, ``epochs``,
      ``final_loss``, ``images_per_second`` (augmented views per second),
      ``wall_seconds`` (this invocation only), ``resumed_from`` (the checkpoint step
      this invocation started from; 0 for a fresh run).
    Raises:
      ValueError: bad batch size / image array, or ``init_from`` is not a
        SimCLR checkpoint for this image shape.
      CheckpointMismatchError: ``init_from`` holds another architecture.
      KeyboardInterrupt: on Ctrl-C / SIGTERM, after saving a checkpoint.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N,H,W,C), got {images.dtype} {images.shape}")
    n, bsz = images.shape[0], int(cfg.batch_size)
    if not 2 <= bsz <= n:
        raise ValueError(f"batch_size={bsz} must be in [2, number of images={n}]")
    steps_per_epoch = n // bsz
    total = int(cfg.epochs) * steps_per_epoch
    model = build_simclr(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.weight_decay, total,
                        min(int(cfg.warmup_epochs * steps_per_epoch), total // 10))
    key = jax.random.key(int(cfg.seed))
    init_key, _, aug_key = jax.random.split(key, 3)
    variables = init_variables(model, init_key, jnp.zeros((2, *images.shape[1:]), jnp.float32))
    if cfg.get("init_from"):
        variables = warm_start_variables(cfg.init_from, dict(cfg.model), images.shape[1:])
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}))
    meta = {"kind": "simclr", "config": cfg.to_dict(), "image_shape": list(images.shape[1:])}
    step_fn = make_simclr_step(model, augment_config(cfg.augment), cfg.temperature)
    state, summary = run_training(
        state, step_fn, [images], batch_size=bsz, total_steps=total, key=aug_key,
        seed=int(cfg.seed), ckpt_dir=os.path.join(workdir, "checkpoints"), meta=meta,
        desc="SimCLR victim", checkpoint_every=int(cfg.checkpoint_every_steps),
        log_every=int(cfg.log_every_steps), log_path=os.path.join(workdir, "train_log.jsonl"),
        progress=progress)
    summary = {"steps": total, "epochs": int(cfg.epochs),
               "final_loss": summary["final_metrics"].get("loss", float("nan")),
               "images_per_second": 2 * summary["examples_per_second"],
               "wall_seconds": summary["wall_seconds"],
               "resumed_from": summary["resumed_from"]}
    return model, {"params": state.params, "batch_stats": state.batch_stats}, summary


def warm_start_variables(ckpt_dir: str, model_cfg: dict, image_shape) -> dict:
    """Variables ``{'params', 'batch_stats'}`` of the SimCLR checkpoint in ``ckpt_dir``
    (the ``init_from`` of a victim config), loaded with ``model_cfg``'s arch, width,
    stem, head_hidden and head_out.

    Args:
      ckpt_dir: a SimCLR checkpoint directory.
      model_cfg: dict of the run's model config.
      image_shape: ``(H, W, C)`` of the run's images.
    Raises:
      ValueError: the checkpoint is not a SimCLR model or was trained on
        another image shape.
      FileNotFoundError: no checkpoint in ``ckpt_dir``.
      CheckpointMismatchError: its arrays do not fit ``model_cfg``.
    """
    loaded = load_model(ckpt_dir, {k: model_cfg.get(k) for k in
                                   ("arch", "width", "stem", "head_hidden", "head_out")})
    if loaded.kind != "simclr":
        raise ValueError(f"init_from={ckpt_dir!r} holds a {loaded.kind!r} checkpoint; "
                         "a SimCLR (victim) checkpoint is required")
    if tuple(loaded.image_shape) != tuple(image_shape):
        raise ValueError(f"init_from={ckpt_dir!r} was trained on images {loaded.image_shape}, "
                         f"this run has {tuple(image_shape)}")
    return loaded.variables
