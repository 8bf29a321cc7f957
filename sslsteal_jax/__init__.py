"""sslsteal_jax: model extraction of self-supervised encoders behind a representation API.

Reimplements Dziedzic et al., "On the Difficulty of Defending Self-Supervised
Learning against Model Extraction" (ICML 2022) in JAX/Flax. Subpackages:
``configs`` (every experiment's config and its checks), ``data``, ``models``,
``losses``, ``api``, ``serve``, ``attacks``, ``defenses``, ``trainers``,
``verification``, ``evaluation``, ``training``, ``pipeline``, ``experiments``;
entry point ``sslsteal_jax.main``.

Python API (for notebooks; README "Python API"): the objects a researcher composes
by hand, importable from the package top level. They are imported lazily on first
use (module ``__getattr__``), so ``import sslsteal_jax`` loads neither JAX nor orbax.

* ``load_model(ckpt_dir)``: a victim or surrogate checkpoint
  (``training.checkpoint.load_model``).
* ``VictimAPI.from_checkpoint(ckpt_dir, defenses=...)``: the provider's
  representation API with an optional defense chain (``api.VictimAPI``).
* ``collect_answers(api, user, images, budget)``: buy answers
  (``attacks.query.collect_answers``).
* ``surrogate_config(loss, epochs, victim_encoder, **overrides)`` and
  ``train_surrogate(images, answers, cfg, workdir)``: train a surrogate with the
  main job's settings (``trainers.surrogate``).
* ``experiment_data(...)``: the fixed query pool and probe splits
  (``data.splits.experiment_data``).
* ``Encoder``: a frozen model plus which output is its representation and which
  lives in the victim's answer space (``evaluation.encoder``); e.g.
  ``Encoder.surrogate("stolen", module, variables)``.
* ``evaluate_encoder(encoder, data, key, victim_outputs, ...)``: linear probe, kNN
  and fidelity as in the reports (``pipeline.evaluate``).
"""
import importlib

__version__ = "0.1.0"

#: Top-level name -> module that defines it (imported on first access).
_LAZY = {
    "load_model": "sslsteal_jax.training.checkpoint",
    "VictimAPI": "sslsteal_jax.api.victim_api",
    "collect_answers": "sslsteal_jax.attacks.query",
    "surrogate_config": "sslsteal_jax.trainers.surrogate",
    "train_surrogate": "sslsteal_jax.trainers.surrogate",
    "experiment_data": "sslsteal_jax.data.splits",
    "evaluate_encoder": "sslsteal_jax.pipeline.evaluate",
    "Encoder": "sslsteal_jax.evaluation.encoder",
    "ConfigError": "sslsteal_jax.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    """Import a Python-API name (:data:`_LAZY`) on first access.

    Raises:
      AttributeError: ``name`` is not part of the package's top level.
    """
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sslsteal_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
