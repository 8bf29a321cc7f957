"""Optimizers and learning-rate schedules (optax).

Fixes the reference code's quirk of sizing the schedule in batches but stepping
it per epoch (docs/science.md section 4): here schedules are functions of the optimizer
step and sized by the total number of steps.
"""
from __future__ import annotations

import optax

from sslsteal_jax.errors import ConfigError


def make_optimizer(name: str, learning_rate: float, weight_decay: float, total_steps: int,
                   warmup_steps: int = 0, schedule: str = "cosine"):
    """Build an optax optimizer with a per-step schedule.

    Args:
      name: "adam" (L2-coupled weight decay, as torch.optim.Adam in the
        reference) or "adamw" (decoupled) or "sgd" (momentum 0.9).
      learning_rate: peak learning rate.
      weight_decay: decay coefficient (>= 0).
      total_steps: number of optimizer steps the schedule spans (> 0).
      warmup_steps: linear warm-up steps (>= 0, < total_steps).
      schedule: "cosine" (warm-up then cosine decay to 0) or "constant".
    Raises:
      ValueError: unknown ``name``/``schedule`` or inconsistent step counts.
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
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
                           optax.scale_by_learning_rate(lr))
    if name == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=0.9))
    raise ValueError(f"unknown optimizer {name!r}; allowed: 'adam', 'adamw', 'sgd'")
