"""Blocks shared by the experiment configs, and the checks their ``validate`` functions use.

One definition each: the shipped victims' paths, the data fields, the ``eval``
block, the surrogate-training ``steal`` block with its per-loss
``loss_overrides`` (``sslsteal_jax.defaults.default_steal_block``,
``sslsteal_jax.losses.LOSSES``), and the arguments several configs take
(``seed``, ``losses``). The checks raise :class:`sslsteal_jax.errors.ConfigError`
with one line naming the field, the value and what is allowed; they need no data
and no training, so a config is checked before any work
(``sslsteal_jax.configs.validate``).
"""
from __future__ import annotations

import math

import ml_collections

from sslsteal_jax import losses
from sslsteal_jax.configs.args import Arg
from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT, default_steal_block
from sslsteal_jax.trainers.surrogate import check_steal  # noqa: F401 (re-exported)
from sslsteal_jax.errors import (ConfigError, check_choice, check_int,  # noqa: F401 (re-exported)
                                 check_number, fail)

#: The victim the main job steals from (stage-2 fine-tuned; also evaluate's fidelity reference).
MAIN_VICTIM = DEFAULT_VICTIM_CHECKPOINT
#: The stage-1 shipped victim (28 epochs): defense matrix victim, watermark fine-tuning start.
STAGE1_VICTIM = "victims/fashion_mnist_resnet10_w16/checkpoints"
#: The shipped watermarked victim (configs/watermark_victim.py run), verify's default.
WATERMARKED_VICTIM = "victims/fashion_mnist_resnet10_w16_watermark/checkpoints"

SEED_ARG = Arg(0, "seed of the run (surrogate initialisation, data order, probes)")


def losses_arg(default: str) -> Arg:
    """The ``losses`` argument: stealing losses, or a group name."""
    return Arg((default,), "stealing losses (" + " ".join(losses.ALL_LOSSES) + "), or all (the "
               "paper's: " + " ".join(losses.STEALING_LOSSES) + ") | extra (the rest) | every")


def placeholder(kind: type):
    """An optional field of type ``kind``: None until set, then type-checked
    (``--config.FIELD=VALUE`` can set it; a plain None field cannot be overridden)."""
    return ml_collections.config_dict.placeholder(kind)


def data_fields(c: ml_collections.ConfigDict, dataset: str = "fashion_mnist",
                probe_test_size: int = 5000, test_split: str = "test") -> None:
    """Set ``c.dataset`` (the victim's dataset, a ``data.registry`` name),
    ``c.probe_test_size`` (the last N images of the test split hold out the probes' test
    set) and ``c.test_split`` (that labelled held-out split: "test"; imagenet2012's
    labelled one is "validation")."""
    c.dataset = dataset
    c.probe_test_size = probe_test_size
    c.test_split = test_split


def stream_block() -> ml_collections.ConfigDict:
    """The ``stream`` block (streaming input, ``data.stream``; BUILD.md "Data").

    Fields: ``enabled`` (False: every split in memory, the shipped numbers; True: the
    query pool and probe sets are read lazily a batch at a time and the answers go
    to the chunked on-disk cache, ``pipeline.queries``), ``answer_chunk`` (queries
    per committed cache chunk: a crash loses at most one), ``threads`` (grain worker
    threads decoding batches) and ``prefetch`` (batches read ahead).
    """
    return ml_collections.ConfigDict(dict(enabled=False, answer_chunk=1000, threads=2,
                                          prefetch=2))


def stream_settings(cfg):
    """The config's ``stream`` block (:func:`stream_block`) when streaming is on, else None
    (also for configs written before the block existed)."""
    st = cfg.get("stream")
    return st if st is not None and st.enabled else None


def stream_data_kwargs(cfg) -> dict:
    """``data.splits.experiment_data`` keyword arguments for the config's streaming:
    ``{"stream": False}``, or ``{"stream": True, "stream_threads": int,
    "stream_prefetch": int}`` from the enabled ``stream`` block."""
    st = stream_settings(cfg)
    if st is None:
        return {"stream": False}
    return {"stream": True, "stream_threads": int(st.threads),
            "stream_prefetch": int(st.prefetch)}


def eval_block(select_probe: bool) -> ml_collections.ConfigDict:
    """The ``eval`` block: 100 labels per class for the few-label probe, 60 probe
    epochs, ``select_probe`` (choose the probe's weight decay on a validation split)."""
    return ml_collections.ConfigDict(dict(per_class=100, probe_epochs=60,
                                          select_probe=select_probe))


def steal_fields(c: ml_collections.ConfigDict, epochs: int, seed: int) -> None:
    """Set ``c.steal`` (the main job's surrogate-training block,
    ``defaults.default_steal_block``: ``batch_size`` / ``learning_rate`` /
    ``temperature`` None = the loss's registry settings) and ``c.loss_overrides``
    (``losses.scale_overrides()``: the per-loss settings at this CPU scale)."""
    c.steal = default_steal_block(epochs, seed)
    c.loss_overrides = ml_collections.ConfigDict(losses.scale_overrides())


def join(items) -> str:
    """A tuple argument as the comma string the experiments read (``("mse", "infonce")``
    -> ``"mse,infonce"``)."""
    return ",".join(str(i) for i in items)


# ------------------------------------------------------------------- time estimates

#: Dense bf16 peak FLOP/s of the machines the paper-scale configs quote times for (vendor
#: data sheets, as ``benchmarks/run.py``'s ``PEAK_FLOPS``): one H100 / H200 GPU, and a
#: Cloud TPU v4-8 (4 chips x 275e12).
PEAK_BF16_FLOPS = {"one H100/H200": 989e12, "TPU v4-8": 4 * 275e12}
#: Model FLOP utilisation the estimates assume (stated in each docstring).
ASSUMED_MFU = 0.4


def time_estimate(forward_flops: float, trained_images: float, forward_images: float) -> dict:
    """Estimated compute of a run: ``3 x forward_flops`` per trained image (forward +
    backward) plus ``forward_flops`` per image only encoded (API answers, probe features).

    Args:
      forward_flops: FLOPs of one image's forward pass (2 per multiply-add).
      trained_images: images through a training step (views and epochs counted).
      forward_images: images encoded without gradients.
    Returns:
      ``{"flops": float, "<machine>": hours}`` for each of :data:`PEAK_BF16_FLOPS`, at
      :data:`ASSUMED_MFU`. An estimate: input pipelines, small batches and float32 are
      not modelled.
    """
    flops = 3.0 * forward_flops * trained_images + forward_flops * forward_images
    return {"flops": flops, **{m: flops / (ASSUMED_MFU * peak) / 3600.0
                               for m, peak in PEAK_BF16_FLOPS.items()}}


def scan_estimate(cfg, forward_flops: float, probe_train_size: int) -> dict:
    """:func:`time_estimate` of a budget scan ``cfg`` (``configs/budget_scan.py``'s fields,
    protocol ``epochs``). Trained images: per source and loss ``steal.epochs`` x the sum
    of the budgets. Encoded images: each source's largest budget (the API's answers) and,
    per cell plus the victim and independent reference rows, ``probe_train_size`` +
    ``probe_test_size`` probe images.

    Args:
      forward_flops: FLOPs of one forward pass of the surrogate / victim architecture.
      probe_train_size: labelled train images the probes use (the split's size when
        ``cfg.probe_train_size`` is None).
    """
    sources = [s for s in cfg.query_sources.split(",") if s.strip()]
    losses = check_losses("losses", cfg.losses)
    trained = cfg.steal.epochs * sum(cfg.budgets) * len(losses) * len(sources)
    cells = len(cfg.budgets) * len(losses) * len(sources) + 2
    encoded = max(cfg.budgets) * len(sources) + cells * (probe_train_size + cfg.probe_test_size)
    return time_estimate(forward_flops, trained, encoded)


# ----------------------------------------------------------------------------- checks

def check_int_tuple(field: str, value, minimum: int, example: str,
                    allow_empty: bool = False) -> None:
    """``value`` is a tuple of ints >= ``minimum`` (non-empty unless ``allow_empty``).

    Raises:
      ConfigError: ``"<field>=<items>; allowed: integers >= <minimum>, e.g.
        --config.<field>=<example>"`` (items comma-joined as they are typed).
    """
    ok = isinstance(value, (tuple, list)) and (allow_empty or len(value) > 0) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
        fail(field, shown, f"integers >= {minimum}" + ("" if allow_empty else ", at least one")
             + f", e.g. --config.{field}={example}")


def check_losses(field: str, spec: str) -> list[str]:
    """The loss names of a ``losses`` field (``losses.parse_losses``), or ConfigError."""
    return losses.parse_losses(spec)


def check_dataset(field: str, name: str) -> None:
    """``name`` (``"name"`` or ``"name:split"``) is an offline dataset with that split, or a
    tensorflow-datasets name (looked up without preparing anything).

    Raises:
      ConfigError: ``data.registry.unknown_dataset_error`` (the closest offline name and
        how to install them), or an unknown split of an offline dataset.
    """
    from sslsteal_jax.data import registry

    base, _, split = (name or "").partition(":")
    if not base:
        fail(field, name, f"a dataset name ({', '.join(registry.OFFLINE_DATASETS)}, or a "
             "tensorflow-datasets name)")
    base, _ = registry.parse_resize(base)  # "name@HxWxC": the resized dataset "name"
    offline = {**{k: k for k in registry.OFFLINE_DATASETS},
               **{b: k for k, b in registry.OFFLINE_BUILDER_NAMES.items()}}
    if base in offline:
        if split:  # the registry's own check (and message) of a split of an offline dataset
            registry.check_split(base, split, registry.OFFLINE_SPLITS[offline[base]])
        return
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # tfds is a dependency; without it only offline names are known
        raise registry.unknown_dataset_error(base) from None
    try:
        tfds.builder_cls(base)
    except tfds.core.registered.DatasetNotFoundError:
        raise registry.unknown_dataset_error(base) from None


def check_stream(st, strategies=None) -> None:
    """The ``stream`` block: ``enabled`` a bool, ``answer_chunk`` >= 1, ``threads`` >= 0,
    ``prefetch`` >= 1; when enabled, only the strategies that send clean pool images
    (``strategies``: direct, stolenencoder) are streamed.

    Raises:
      ConfigError: the first bad field (``stream.<field>``).
    """
    if not isinstance(st.enabled, bool):
        fail("stream.enabled", st.enabled, "True | False")
    check_int("stream.answer_chunk", st.answer_chunk)
    check_int("stream.threads", st.threads, minimum=0)
    check_int("stream.prefetch", st.prefetch)
    bad = [s for s in (strategies or ()) if s not in STREAMED_STRATEGIES]
    if st.enabled and bad:
        fail("strategies", ",".join(bad), "with stream.enabled=True: "
             + " | ".join(STREAMED_STRATEGIES) + " (augmented views and label answers are "
             "bought in memory)")


#: Query strategies a streamed run supports (they send clean pool images, one per query).
STREAMED_STRATEGIES = ("direct", "stolenencoder")


def check_eval(ev) -> None:
    """The ``eval`` block: per_class >= 1, probe_epochs >= 1."""
    check_int("eval.per_class", ev.per_class)
    check_int("eval.probe_epochs", ev.probe_epochs)


def check_api_output(value) -> None:
    """``api_output`` is one of ``api.victim_api.OUTPUTS`` (same message as the API's)."""
    from sslsteal_jax.api.victim_api import OUTPUTS

    if value not in OUTPUTS:
        raise ConfigError(f"unknown API output {value!r}; allowed: {list(OUTPUTS)}")
