"""Direct extraction: train a freshly initialised surrogate encoder on the API's answers.

Source: Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022), Section 3 ("direct
extraction": the surrogate's representation of each queried image is trained
to match the victim's returned representation under a stealing loss) and
Section 4 (hyper-parameters: Adam, weight decay 1e-4; mse / wasserstein batch
64 lr 1e-3; infonce batch 256 lr 3e-4; softnn batch 256 lr 1e-3).

The attacker only sees ``(images, answers)`` arrays returned by the API, never
the victim's parameters.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax import losses
from sslsteal_jax.data.augment import augment_batch
from sslsteal_jax.models import SurrogateModel, build_encoder
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.optim import make_optimizer
from sslsteal_jax.training.simclr import augment_config
from sslsteal_jax.training.state import TrainState

# Reference per-loss defaults (ICML 2022, Section 4), used when a config leaves them None.
LOSS_DEFAULTS = {
    "mse": {"batch_size": 64, "learning_rate": 1e-3, "temperature": None},
    "wasserstein": {"batch_size": 64, "learning_rate": 1e-3, "temperature": None},
    "infonce": {"batch_size": 256, "learning_rate": 3e-4, "temperature": 0.07},
    "softnn": {"batch_size": 256, "learning_rate": 1e-3, "temperature": 100.0},
}


def resolve_hparams(cfg) -> dict:
    """Fill ``batch_size``, ``learning_rate``, ``temperature`` left None in the
    steal config with the loss's reference defaults.

    Raises:
      ValueError: unknown loss name.
    """
    if cfg.loss not in LOSS_DEFAULTS:
        raise ValueError(f"unknown stealing loss {cfg.loss!r}; allowed: {sorted(LOSS_DEFAULTS)}")
    d = dict(LOSS_DEFAULTS[cfg.loss])
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


def make_steal_step(model: SurrogateModel, loss: str, temperature, aug=None):
    """Return ``step(state, images uint8 (B,H,W,C), answers float32 (B,D), key)``.

    With ``aug`` (an AugmentConfig) the surrogate sees an augmented view of
    each queried image while the target stays the API's answer for the clean
    image (no extra query is charged).
    """

    def loss_fn(params, batch_stats, x, v):
        (h, o), upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
        return losses.stealing_loss(loss, o, v, temperature), upd["batch_stats"]

    def step(state, images, answers, key):
        x = images.astype(jnp.float32) / 255.0
        if aug is not None:
            x = augment_batch(key, x, aug)
        (val, bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, answers)
        return state.apply_gradients(grads=grads, batch_stats=bs), {"loss": val}

    return step


def train_surrogate(images: np.ndarray, answers: np.ndarray, cfg, workdir: str | None,
                    progress: bool = True):
    """Train a surrogate encoder by direct extraction.

    Args:
      images: uint8 ``(N, H, W, C)`` queried images (N = queries spent).
      answers: float32 ``(N, D)`` the API's answers for them (cached: each
        image was paid for once; epochs reuse the cache).
      cfg: ConfigDict with ``loss`` (mse | infonce | softnn | wasserstein),
        ``model`` (arch, width, stem, optional dtype "float32" | "bfloat16"), ``epochs``, ``batch_size``,
        ``learning_rate``, ``temperature`` (None = loss default),
        ``weight_decay``, ``optimizer``, ``seed``, optional ``steps``
        (exact optimizer steps, overriding ``epochs``), ``augment`` (None or
        augmentation dict for surrogate-side views).
      workdir: where ``checkpoints/`` and ``train_log.jsonl`` go (None: no
        checkpoints). A run found there is resumed.
    Returns:
      ``(module, variables, summary)``: ``SurrogateModel`` (call returns
      ``(h, o)``), ``{'params', 'batch_stats'}``, dict with ``steps``,
      ``wall_seconds``, ``examples_per_second``, ``final_loss``, ``hparams``.
    Raises:
      ValueError: unknown loss, mismatched ``images``/``answers``, bad sizes.
    """
    if len(images) != len(answers):
        raise ValueError(f"{len(images)} images but {len(answers)} answers")
    if answers.ndim != 2 or not np.isfinite(answers).all():
        raise ValueError(f"answers must be finite float (N, D), got shape {answers.shape}")
    hp = resolve_hparams(cfg)
    n = len(images)
    bsz = effective_batch_size(hp["batch_size"], n)
    steps_per_epoch = n // bsz
    # ``steps`` (optional) fixes the number of optimizer steps exactly, e.g. equal
    # training examples for every budget of a scan; otherwise ``epochs`` full epochs.
    total = int(cfg.get("steps") or 0) or int(cfg.epochs) * steps_per_epoch
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.stem,
                        cfg.model.get("dtype", "float32"))
    out_dim = answers.shape[1]
    adapter = None if enc.representation_dim == out_dim else out_dim
    model = SurrogateModel(enc, adapter)
    key = jax.random.key(int(cfg.seed))
    init_key, step_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros((2, *images.shape[1:]), jnp.float32))
    tx = make_optimizer(cfg.optimizer, hp["learning_rate"], cfg.weight_decay, total,
                        min(total // 20, 200))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables["batch_stats"])
    aug = augment_config(cfg.augment) if cfg.get("augment") else None
    step_fn = make_steal_step(model, cfg.loss, hp["temperature"], aug)
    meta = {"kind": "surrogate", "config": cfg.to_dict(), "adapter_dim": adapter,
            "image_shape": list(images.shape[1:]), "queries": n}
    ckpt_dir = os.path.join(workdir, "checkpoints") if workdir else None
    log_path = os.path.join(workdir, "train_log.jsonl") if workdir else None
    state, summary = run_training(state, step_fn, [images, answers.astype(np.float32)], bsz, total,
                                  step_key, int(cfg.seed), ckpt_dir, meta,
                                  f"steal[{cfg.loss}, {n} queries]", log_path=log_path,
                                  progress=progress)
    summary = dict(summary, final_loss=summary["final_metrics"].get("loss"), hparams=hp)
    return model, {"params": state.params, "batch_stats": state.batch_stats}, summary
