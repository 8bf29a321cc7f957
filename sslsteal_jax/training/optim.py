"""Optimizers and learning-rate schedules (optax).

Fixes the reference code's quirk of sizing the schedule in batches but stepping
it per epoch (docs/science.md section 4): here schedules are functions of the optimizer
step and sized by the total number of steps.
"""
from __future__ import annotations

import weakref
from typing import Callable

import optax

from sslsteal_jax.errors import ConfigError

#: Optimizer names :func:`make_optimizer` accepts (``steal.optimizer`` / ``optimizer`` fields).
OPTIMIZERS = ("adam", "adamw", "sgd", "lars")

#: LARS trust coefficient (eta): SimSiam's linear evaluation and the stealing reference's
#: optional LARS (You et al., 2017, Eq. 6; Chen & He, CVPR 2021, Appendix).
LARS_TRUST = 1e-3


def _matrices(params):
    """Mask of the leaves with ndim > 1 (conv kernels, dense weights): the leaves LARS
    adapts and decays; biases and BatchNorm scales / offsets (ndim <= 1) are excluded,
    as in SimSiam's LARS."""
    import jax
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(name: str, learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int = 0, schedule: str = "cosine"):
    """Build an optax optimizer with a per-step schedule.

    Args:
      name: "adam" (L2-coupled weight decay, as torch.optim.Adam in the
        reference) or "adamw" (decoupled) or "sgd" (momentum 0.9) or "lars"
        (``optax.lars``: momentum 0.9, trust coefficient :data:`LARS_TRUST`, weight
        decay and layer-wise adaptation on ndim > 1 leaves only; the ImageNet-scale
        stealing and linear-probe optimizer of the SimSiam-victim reference).
      learning_rate: peak learning rate.
      weight_decay: decay coefficient (>= 0).
      total_steps: number of optimizer steps the schedule spans (> 0).
      warmup_steps: linear warm-up steps (>= 0, < total_steps).
      schedule: "cosine" (warm-up then cosine decay to 0) or "constant".
    Raises:
      ConfigError (a ValueError): unknown ``name`` (lists :data:`OPTIMIZERS`), or no steps.
      ValueError: unknown ``schedule`` or inconsistent warm-up steps.
    """
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be > 0, got {total_steps} (epochs too small for the data and batch size?)")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
    if schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else learning_rate,
                                                learning_rate, warmup_steps, total_steps, 0.0)
    elif schedule == "constant":
        lr = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: 'cosine', 'constant'")
    if name == "adam":
        tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
                         optax.scale_by_learning_rate(lr))
    elif name == "adamw":
        tx = optax.adamw(lr, weight_decay=weight_decay)
    elif name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=0.9))
    elif name == "lars":
        tx = optax.lars(lr, weight_decay=weight_decay, weight_decay_mask=_matrices,
                        trust_coefficient=LARS_TRUST, trust_ratio_mask=_matrices, momentum=0.9)
    else:
        raise ConfigError(f"unknown optimizer {name!r}; allowed: {list(OPTIMIZERS)}")
    _SCHEDULES[tx.update] = lr
    return tx


# optimizer (its update function) -> its learning-rate schedule, for logging
_SCHEDULES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def learning_rate_fn(tx) -> Callable[[int], float] | None:
    """The schedule ``step -> learning rate`` of an optimizer made by :func:`make_optimizer`
    (the rate of update number ``step``, counting from 0), or None for any other
    optimizer. Used to log the learning rate (``training.summaries``)."""
    try:
        return _SCHEDULES.get(tx.update)
    except (AttributeError, TypeError):
        return None
