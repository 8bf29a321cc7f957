"""Defaults shared by configs and experiments (one definition each).

``DEFAULT_VICTIM`` is the victim the main job steals from and the fidelity
reference of ``configs/evaluate.py``: the shipped Fashion-MNIST ResNet-10
(width 16) after stage-2 fine-tuning (``victims/fashion_mnist_resnet10_w16_ft6``,
see its README.md). Paths are relative to the repository root
(:func:`resolve_path` tries the cwd first, then the root).
``default_steal_block`` is the main job's surrogate-training block, ``api_block``
the block that points experiments at a served victim. This module
imports only os and ml_collections, so config files stay quick to load.
"""
import os

import ml_collections

#: The repository root: shipped victims and configs are resolved against it
#: (:func:`resolve_path`).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(path: str | None) -> str | None:
    """Absolute path; relative paths are tried from the cwd, then from the repository root
    (the rule of the command line and of ``training.checkpoint.load_model``).
    None or "" stays None."""
    if not path:
        return None
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(REPO_ROOT, path)

#: Directory of the shipped default victim (run directory: config.json, results, README).
DEFAULT_VICTIM = "victims/fashion_mnist_resnet10_w16_ft6"

#: Its checkpoint directory, the value config fields such as ``victim_checkpoint`` take.
DEFAULT_VICTIM_CHECKPOINT = DEFAULT_VICTIM + "/checkpoints"


def default_steal_block(epochs: int = 30, seed: int = 0) -> ml_collections.ConfigDict:
    """The main job's ``steal`` block (``configs/quickstart.py``; one definition).

    Fields: ``epochs``, ``batch_size`` (int) / ``learning_rate`` (float) /
    ``temperature`` (float): placeholders, None = the loss's reference settings
    (``losses.LOSSES``), settable with ``--config.steal.batch_size=128``;
    ``weight_decay`` 1e-4, ``optimizer`` "adam", ``seed``, ``augment`` None,
    ``model`` (``arch`` "", ``width`` 0, ``stem`` "": the victim's; ``dtype``
    "float32"). No ``loss``: the trainer sets it per loss (the configs choose
    losses with their ``losses`` field). Source of the settings: Dziedzic et al.,
    ICML 2022, Section 4.
    """
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(
        epochs=epochs, batch_size=placeholder(int), learning_rate=placeholder(float),
        temperature=placeholder(float), weight_decay=1e-4, optimizer="adam", seed=seed,
        augment=None,
        model=ml_collections.ConfigDict(dict(arch="", width=0, stem="", dtype="float32"))))


def api_block() -> ml_collections.ConfigDict:
    """The ``api`` block: where experiments get their representation API
    (``sslsteal_jax.api.factory.make_api``; docs/serving.md).

    Fields: ``url`` ("" = the in-process ``VictimAPI``; else a served victim's base
    URL, e.g. ``http://127.0.0.1:8000``, or any embedding endpoint's full URL),
    ``key_env`` (environment variable holding the API key), ``keys_file`` (file of
    ``ACCOUNT=KEY`` lines for accounts with keys of their own; "" none),
    ``timeout_s`` (seconds per answer) and ``retries`` (per request, same
    idempotency key). API keys are never config values (configs are written to
    results files).
    """
    return ml_collections.ConfigDict(dict(url="", key_env="SSLSTEAL_API_KEY", keys_file="",
                                          timeout_s=120.0, retries=8))
