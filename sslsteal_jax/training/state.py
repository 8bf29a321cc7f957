"""Train state carrying BatchNorm statistics next to parameters."""
from __future__ import annotations

from typing import Any

from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState plus ``batch_stats`` (BatchNorm running means/variances).

    Fields: ``step`` int32 scalar (optimizer steps taken), ``params``,
    ``batch_stats``, ``opt_state``; ``apply_fn``/``tx`` are static.
    """

    batch_stats: Any = None
