"""Obtain the victim: load its checkpoint, or train it when the config asks to.

Source: Dziedzic et al., ICML 2022, Section 3 (the victim is a SimCLR encoder
served behind the API); training recipe in ``trainers.simclr``.
"""
from __future__ import annotations

import dataclasses
import os

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.evaluation.encoder import Encoder
from sslsteal_jax.pipeline.workdir import resolve_path
from sslsteal_jax.trainers.simclr import train_simclr
from sslsteal_jax.training.checkpoint import load_model, write_json_atomic


@dataclasses.dataclass
class Victim:
    """The victim encoder of a run.

    module: the SimCLR model (``models.SimCLRModel``; call returns ``(representation,
    projection)``); variables: its ``{'params', 'batch_stats'}``; source: the
    checkpoint directory it came from (absolute path); meta: the checkpoint's
    metadata (``{}`` for a victim trained in this run before its first save);
    training: the training summary (``training.loop.run_training``: ``steps``,
    ``resumed_from``, ...) when this run trained or resumed the victim in its work
    directory, None for a victim loaded from a checkpoint.
    """

    module: object
    variables: dict
    source: str
    meta: dict = dataclasses.field(default_factory=dict)
    training: dict | None = None

    @property
    def resumed(self) -> bool:
        """Whether training steps of this victim ran in an earlier invocation (its
        work-directory checkpoint was resumed, or was already finished)."""
        return int((self.training or {}).get("resumed_from") or 0) > 0

    def encoder(self, api_output: str = "representation") -> Encoder:
        """The victim as an :class:`Encoder` whose victim-space output is what its
        API serves (``api_output``: "representation" or "projection")."""
        return Encoder.victim(self.module, self.variables, api_output)


def load_victim(path: str, expect_model: dict | None = None, field: str = "victim checkpoint") -> Victim:
    """Load a SimCLR victim checkpoint (``training.checkpoint.load_model``).

    Args:
      path: checkpoint directory (relative paths: cwd, then repository root).
      expect_model: model-config keys the checkpoint must match (None: any).
      field: the config field named in errors.
    Raises:
      ConfigError: no such directory (``CheckpointNotFoundError``), a checkpoint that
        is not a SimCLR victim, a mismatch or a corrupt file (``training.checkpoint``).
    """
    full = resolve_path(path)
    if not full or not os.path.isdir(full):
        raise ConfigError(f"{field} {path!r} not found ({full}); give a checkpoint directory "
                          "(e.g. victims/fashion_mnist_resnet10_w16_ft6/checkpoints)")
    loaded = load_model(full, expect_model)
    if loaded.kind != "simclr":
        raise ConfigError(f"{field} {full} is a {loaded.kind!r} checkpoint, expected a SimCLR "
                          "victim ('simclr')")
    return Victim(loaded.module, loaded.variables, full, loaded.meta)


def victim_available(victim_cfg) -> bool:
    """True when ``victim_cfg.checkpoint`` names an existing directory and the config
    does not ask to train from scratch (the victim's training images are then not needed)."""
    path = resolve_path(victim_cfg.checkpoint)
    return bool(path and os.path.isdir(path) and not victim_cfg.train_from_scratch)


def get_victim(victim_cfg, workdir: str, data) -> Victim:
    """Load the victim named by ``victim_cfg.checkpoint`` or train one (load-or-train).

    Args:
      victim_cfg: the config's ``victim`` block: ``checkpoint`` (path or ""),
        ``train_from_scratch``, ``train_if_missing``, ``train`` (a
        ``configs/victim_simclr.py`` config), ``expect_model`` (optional dict).
      workdir: the run's work directory (a trained victim goes to ``<workdir>/victim``,
        resumable).
      data: ``data.splits.ExperimentData`` with ``victim_train`` when training.
    Raises:
      ConfigError: a named checkpoint that does not exist (without
        ``train_from_scratch``: a typo is never a reason to spend hours training),
        no checkpoint named and ``train_if_missing`` False, or a checkpoint that is
        not a SimCLR victim.
    """
    if victim_available(victim_cfg):
        return load_victim(victim_cfg.checkpoint, dict(victim_cfg.get("expect_model") or {}) or None)
    if victim_cfg.checkpoint and not victim_cfg.train_from_scratch:
        raise ConfigError(f"victim checkpoint {victim_cfg.checkpoint!r} not found "
                          f"({resolve_path(victim_cfg.checkpoint)}); fix the path, or train a "
                          "victim into <workdir>/victim with configs/quickstart.py:victim=scratch")
    if not (victim_cfg.train_from_scratch or victim_cfg.train_if_missing):
        raise ConfigError(f"victim checkpoint {victim_cfg.checkpoint!r} not found and "
                          f"victim.train_if_missing is False")
    vdir = os.path.join(workdir, "victim")
    module, variables, summary = train_victim(victim_cfg.train, vdir, data)
    return Victim(module, variables, vdir, training=summary)


def train_victim(cfg, workdir: str, data):
    """Train (or resume) a SimCLR victim in ``workdir`` on ``data.victim_train``
    (``trainers.simclr.train_simclr``), recording ``config.json``; returns
    ``(module, variables, summary)``."""
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    return train_simclr(cfg, workdir, data.victim_train)
