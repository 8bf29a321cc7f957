"""Joint training of a SimCLR victim with the secret rotation watermark task.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 5 (watermarking): the
encoder and a small MLP on its representation are trained together on the
SimCLR objective plus a secret task, ``loss = NT-Xent + lambda * CE(rotation)``,
so both the encoder and the MLP are updated (the reference code never trains
the MLP, a quirk not copied, docs/science.md section 4). The task follows the rotation
watermark of Jia et al. / Cao et al.: predict the rotation (0/90/180/270
degrees, or the binary [0,180) vs [180,360) variant) of the owner's secret
watermark images.

Because training a victim from scratch takes over an hour on a small CPU, a
watermarked victim is normally warm-started from an existing SimCLR checkpoint
(``init_from``) and fine-tuned jointly for a few epochs; the watermark MLP starts
from its random initialisation.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslsteal_jax import losses
from sslsteal_jax.data.augment import augment_batch
from sslsteal_jax.models import build_watermarked, init_variables
from sslsteal_jax.models.watermark import WatermarkedSimCLR, rotate_images, rotation_labels
from sslsteal_jax.trainers.simclr import augment_config, warm_start_variables
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.state import TrainState


def make_watermark_step(model: WatermarkedSimCLR, aug, temperature: float, lam: float,
                        wm_batch: int, wm_aug=None):
    """Return ``step(state, images uint8 (B,H,W,C), wm_images uint8 (B,H,W,C), key)``.

    Per step: two SimCLR views of ``images`` (NT-Xent on the head outputs) and
    the first ``wm_batch`` rows of ``wm_images``, each (optionally augmented
    with ``wm_aug``, then) rotated by an independent uniform multiple of 90
    degrees and labelled with ``rotation_labels``. All ``2B + wm_batch`` views
    go through the encoder in one batch (BatchNorm statistics over all of
    them); loss = ``nt_xent + lam * CE(watermark_logits(h_wm), label)``.
    Metrics: ``loss``, ``nt_xent``, ``wm_ce``, ``wm_acc`` (on the step's batch).
    """
    classes = model.watermark_classes

    def loss_fn(params, batch_stats, x1, x2, xw, yw):
        b = x1.shape[0]
        x = jnp.concatenate([x1, x2, xw], axis=0)
        (h, z), upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
        ntx = losses.nt_xent(z[:b], z[b:2 * b], temperature)
        logits = model.apply({"params": params}, h[2 * b:], method="watermark_logits")
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yw).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == yw)
        return ntx + lam * ce, (upd["batch_stats"], ntx, ce, acc)

    def step(state: TrainState, images, wm_images, key):
        x = images.astype(jnp.float32) / 255.0
        k1, k2, k3, k4 = jax.random.split(key, 4)
        x1, x2 = augment_batch(k1, x, aug), augment_batch(k2, x, aug)
        xw = wm_images[:wm_batch].astype(jnp.float32) / 255.0
        if wm_aug is not None:
            xw = augment_batch(k3, xw, wm_aug)
        rot = jax.random.randint(k4, (xw.shape[0],), 0, 4)
        xw, yw = rotate_images(xw, rot), rotation_labels(rot, classes)
        (loss, (bs, ntx, ce, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x1, x2, xw, yw)
        state = state.apply_gradients(grads=grads, batch_stats=bs)
        return state, {"loss": loss, "nt_xent": ntx, "wm_ce": ce, "wm_acc": acc}

    return step


def _merge_warm_start(init_vars: dict, loaded: dict) -> dict:
    """Encoder and head from ``loaded`` (a SimCLR checkpoint), watermark MLP from ``init_vars``.

    Raises:
      ValueError: ``loaded`` lacks the encoder/head or has other parameters.
    """
    if set(loaded["params"]) != {"encoder", "head"}:
        raise ValueError(f"init_from must hold a plain SimCLR victim (params 'encoder', 'head'), "
                         f"got {sorted(loaded['params'])}")
    return {"params": {**loaded["params"], "watermark": init_vars["params"]["watermark"]},
            "batch_stats": loaded["batch_stats"]}


def watermark_slices(n_train: int, train_images: int, verify_images: int) -> tuple[slice, slice]:
    """Index slices of the owner's secret watermark images in the victim's train split.

    The first ``train_images`` images are used for training, the last
    ``verify_images`` are held out for verification (config fields
    ``watermark.train_images`` / ``watermark.verify_images``).
    Raises:
      ValueError: a count is < 1 or the two ranges do not fit disjointly in ``n_train``.
    """
    n_tr, n_ver = int(train_images), int(verify_images)
    if n_tr < 1 or n_ver < 1 or n_tr + n_ver > n_train:
        raise ValueError(f"watermark.train_images={n_tr} and watermark.verify_images={n_ver} must "
                         f"be >= 1 and fit disjointly in the {n_train} train images")
    return slice(0, n_tr), slice(n_train - n_ver, n_train)


def train_watermark_victim(cfg, workdir: str, images: np.ndarray, wm_images: np.ndarray,
                           progress: bool = True):
    """Train (or resume) a watermarked SimCLR victim.

    Args:
      cfg: a ``configs/victim_simclr.py``-style ConfigDict whose ``model`` also
        has ``watermark_hidden`` and ``watermark_classes`` (2 or 4), plus
        ``watermark`` with ``lam`` (weight of the rotation CE), ``batch_size``
        (watermark images per step, <= ``batch_size``) and ``augment``
        (None or an augmentation dict applied before rotating); optional
        ``init_from`` (warm start of encoder + head, see ``trainers.simclr``).
      workdir: ``checkpoints/`` (kind "simclr", loadable by ``load_model``
        and ``VictimAPI.from_checkpoint``) and ``train_log.jsonl`` go here; a
        run found there is resumed.
      images: uint8 ``(N, H, W, C)`` SimCLR training images.
      wm_images: uint8 ``(N_w, H, W, C)`` secret watermark training images
        (square).
    Returns:
      ``(model, variables, summary)`` like ``trainers.simclr.train_simclr``;
      summary adds ``final_wm_acc`` and ``final_nt_xent``.
    Raises:
      ValueError: bad image arrays, batch sizes, or ``init_from`` content.
    """
    for name, a in (("images", images), ("wm_images", wm_images)):
        if a.ndim != 4 or a.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 (N,H,W,C), got {a.dtype} {a.shape}")
    n, bsz, wb = len(images), int(cfg.batch_size), int(cfg.watermark.batch_size)
    if not 2 <= bsz <= n:
        raise ValueError(f"batch_size={bsz} must be in [2, number of images={n}]")
    if not 1 <= wb <= bsz:
        raise ValueError(f"watermark.batch_size={wb} must be in [1, batch_size={bsz}]")
    total = int(cfg.epochs) * (n // bsz)
    model = build_watermarked(dict(cfg.model))
    tx = make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.weight_decay, total,
                        min(int(cfg.warmup_epochs * (n // bsz)), total // 10))
    init_key, _, aug_key = jax.random.split(jax.random.key(int(cfg.seed)), 3)
    # one compiled program, not ~100 eager ones; the same values (models.init_variables)
    variables = init_variables(model, init_key, jnp.zeros((2, *images.shape[1:]), jnp.float32))
    if cfg.get("init_from"):
        variables = _merge_warm_start(variables, warm_start_variables(cfg.init_from,
                                                                      dict(cfg.model),
                                                                      images.shape[1:]))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables["batch_stats"])
    wm_aug = augment_config(cfg.watermark.augment) if cfg.watermark.get("augment") else None
    step_fn = make_watermark_step(model, augment_config(cfg.augment), cfg.temperature,
                                  float(cfg.watermark.lam), wb, wm_aug)
    # Watermark images tiled to the length of the SimCLR set, so the loop's shuffled
    # batches carry a random watermark batch alongside every SimCLR batch.
    wm_tiled = wm_images[np.arange(n) % len(wm_images)]
    meta = {"kind": "simclr", "config": cfg.to_dict(), "image_shape": list(images.shape[1:]),
            "watermark": True}
    state, summary = run_training(
        state, step_fn, [images, wm_tiled], batch_size=bsz, total_steps=total, key=aug_key,
        seed=int(cfg.seed), ckpt_dir=os.path.join(workdir, "checkpoints"), meta=meta,
        desc="watermarked SimCLR victim", checkpoint_every=int(cfg.checkpoint_every_steps),
        log_every=int(cfg.log_every_steps), log_path=os.path.join(workdir, "train_log.jsonl"),
        progress=progress)
    fm = summary["final_metrics"]
    summary = {"steps": total, "epochs": int(cfg.epochs), "final_loss": fm.get("loss", float("nan")),
               "final_nt_xent": fm.get("nt_xent"), "final_wm_acc": fm.get("wm_acc"),
               "images_per_second": (2 * bsz + wb) / bsz * summary["examples_per_second"],
               "wall_seconds": summary["wall_seconds"]}
    return model, {"params": state.params, "batch_stats": state.batch_stats}, summary
