"""K surrogates of equal shapes trained in one compiled program (vmapped scans).

A budget scan trains many small surrogates that differ only in their seed
and in how many of the cached victim answers they see (their budget
prefix). :func:`train_surrogates_stacked` builds each member exactly as
``trainers.surrogate.train_surrogate`` would (``trainers.surrogate.prepare_surrogate``:
fresh initialisation from ``key(seed)``, data order ``epoch_batches(N_k,
batch, seed, step)``, step key ``fold_in(step_key, step)``), stacks the K
train states along a leading axis and trains them with one compiled step
(``training.vmap.make_vmapped_steal_step``: ``jax.vmap`` on accelerators, the
K member steps unrolled into one program on CPU) through the same
``training.loop.run_training`` loop. Member k therefore ends with the
parameters the same cell trained alone would have, up to float
reassociation (``tests/test_budget_scan.py`` checks this).

Members must share everything that is static in the compiled step: the
surrogate config except ``seed`` (loss, model, optimizer, learning rate,
augmentation, ...), the effective batch size and the number of steps (the
optimizer schedule is a static field of the TrainState), and the image and
answer shapes. Different losses are never stacked (``jax.vmap`` runs one
step function for all members).

Memory guard: :func:`estimate_member_bytes` (parameters, gradients,
optimizer state, activations of one step from the model's shapes) and
:func:`available_memory_bytes` (host RAM on CPU, free accelerator memory
from ``Device.memory_stats()`` elsewhere) size the largest K that fits
(:func:`fit_stack_size`).

Timings of a stack=1 vs stack=4 scan on this project's CPU are in the
docstring of ``configs/budget_scan.py`` (idle: 4 cells trained in 0.75x the
sequential time; identical per-cell metrics).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax import losses
from sslsteal_jax.trainers.surrogate import SurrogateSetup, prepare_surrogate
from sslsteal_jax.training.loop import run_training
from sslsteal_jax.training.vmap import make_vmapped_steal_step, stack_trees, unstack_tree

# Backward-pass factor on the forward activations captured by flax: the saved
# forward outputs plus cotangents of the same size (a rough upper estimate;
# XLA frees many of them early).
ACTIVATION_FACTOR = 2.0


def shared_config(cfg) -> dict:
    """The surrogate config as a dict without ``seed``: what members of one
    compiled step must share (stacked cells may differ only in seed and budget)."""
    d = cfg.to_dict()
    d.pop("seed", None)
    return d


def check_stackable(setups: Sequence[SurrogateSetup], cfgs: Sequence) -> None:
    """Raise ValueError unless the setups can train as members of one compiled step.

    Members must agree in the surrogate config except ``seed`` (the step
    function and optimizer are built from member 0's), in batch size, number
    of steps, and the trailing shapes / dtypes of their data arrays. The
    message names the first member and field that differ.
    """
    if not setups:
        raise ValueError("a stacked group needs at least one member")
    ref = shared_config(cfgs[0])
    for i, (su, cfg) in enumerate(zip(setups, cfgs)):
        d = shared_config(cfg)
        diff = sorted(k for k in set(ref) | set(d) if ref.get(k) != d.get(k))
        if diff:
            raise ValueError(f"member {i} differs from member 0 in surrogate config field(s) "
                             f"{diff}; only 'seed' and the budget may differ within a stack")
        if (su.batch_size, su.total_steps) != (setups[0].batch_size, setups[0].total_steps):
            raise ValueError(f"member {i} trains {su.total_steps} steps of batch {su.batch_size}, "
                             f"member 0 {setups[0].total_steps} steps of batch "
                             f"{setups[0].batch_size}; stacked members need equal schedules")
        shapes = [(a.shape[1:], a.dtype) for a in su.arrays]
        ref_shapes = [(a.shape[1:], a.dtype) for a in setups[0].arrays]
        if shapes != ref_shapes:
            raise ValueError(f"member {i} data shapes {shapes} differ from member 0's "
                             f"{ref_shapes}")


def train_surrogates_stacked(members: Sequence[tuple], workdir: str | None, *,
                             mode: str = "auto", progress: bool = True) -> list[tuple]:
    """Train K direct-extraction surrogates in one compiled program.

    Args:
      members: K tuples ``(images, answers, cfg)`` as for
        ``trainers.surrogate.train_surrogate``: uint8 ``(N_k, H, W, C)`` queried
        images, float32 ``(N_k, D)`` answers (e.g. the first ``budget_k``
        rows of one shared cache), and the surrogate ConfigDict. Configs may
        differ only in ``seed``; ``N_k`` may differ as long as batch size and
        step count agree (``cfg.steps`` fixes them across budgets).
      workdir: the group's directory: ``checkpoints/`` (orbax, the stacked
        state of all K members, saved every 500 steps, at the end and on
        SIGTERM / Ctrl-C) and ``train_log.jsonl`` (per-member loss lists).
        A checkpoint found there is resumed (the same members in the same
        order must be passed again; another composition is a different
        group and needs another directory). None: no checkpoints.
      mode: "auto" | "vmap" | "unroll" (``training.vmap.make_vmapped_steal_step``).
      progress: show a progress bar.
    Returns:
      list of K ``(module, variables, summary)`` in member order, as
      ``train_surrogate`` returns them; each summary also has ``stacked``
      (K) and ``member`` (k), and ``wall_seconds`` / ``examples_per_second``
      are those of the whole group.
    Raises:
      ValueError: no members, members that cannot share one compiled step
        (:func:`check_stackable` names the field), unknown ``mode``, and
        everything ``train_surrogate`` raises for a member.
      KeyboardInterrupt: on Ctrl-C / SIGTERM, after checkpointing the group.
    """
    if not len(members):
        raise ValueError("train_surrogates_stacked needs at least one member")
    setups = [prepare_surrogate(x, a, c) for x, a, c in members]
    cfgs = [c for _, _, c in members]
    check_stackable(setups, cfgs)
    k = len(setups)
    s0 = setups[0]
    states = stack_trees([su.state.replace(step=np.int32(su.state.step)) for su in setups])
    keys = jnp.stack([su.step_key for su in setups])
    meta = {"kind": "surrogate_stack", "members": [su.meta for su in setups]}
    ckpt_dir = os.path.join(workdir, "checkpoints") if workdir else None
    log_path = os.path.join(workdir, "train_log.jsonl") if workdir else None
    sizes = [len(su.arrays[0]) for su in setups]
    state, summary = run_training(
        states, make_vmapped_steal_step(s0.step_fn, mode), [su.arrays for su in setups],
        batch_size=s0.batch_size, total_steps=s0.total_steps, key=keys,
        seed=[su.seed for su in setups], ckpt_dir=ckpt_dir, meta=meta,
        desc=f"steal[{cfgs[0].loss}, {k} stacked, {min(sizes)}-{max(sizes)} queries]",
        log_path=log_path, progress=progress, members=k)
    losses = summary["final_metrics"].get("loss") or [None] * k
    out = []
    for i, (su, member) in enumerate(zip(setups, unstack_tree(state, k))):
        summ = dict(summary, final_loss=losses[i], hparams=su.hparams, examples=sizes[i],
                    surrogate_views=su.surrogate_views, stacked=k, member=i)
        out.append((su.model, {"params": member.params, "batch_stats": member.batch_stats}, summ))
    return out


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def estimate_member_bytes(setup: SurrogateSetup, num_devices: int | None = None) -> int:
    """Estimated peak device bytes one member adds to a stacked step.

    Sum of: parameters, BatchNorm statistics and optimizer state (replicated
    on every device), gradients (parameter size), the per-device share of
    the batch arrays, and ``ACTIVATION_FACTOR`` x the bytes of every module
    output of one training forward pass over all view groups
    (``jax.eval_shape`` with flax ``capture_intermediates``: shapes only,
    nothing is computed). An estimate, not XLA's exact buffer assignment.

    Args:
      setup: a member from ``trainers.surrogate.prepare_surrogate``.
      num_devices: devices the batch is split over (default ``jax.device_count()``).
    Returns:
      int bytes.
    """
    nd = int(num_devices or jax.device_count())
    st = setup.state
    state_bytes = _tree_bytes((st.params, st.batch_stats, st.opt_state))
    grad_bytes = _tree_bytes(st.params)
    b = setup.batch_size
    batch_bytes = sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in setup.arrays) * b
    # Pair-loss steps add one surrogate-side (or second queried) view group.
    pair_group = "pair" in losses.LOSSES[setup.meta["config"]["loss"]].needs
    groups = 1 + setup.surrogate_views + int(pair_group)
    x = jax.ShapeDtypeStruct((groups * b, *setup.arrays[0].shape[1:]), jnp.float32)

    def fwd(params, batch_stats, x):
        return setup.model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                 mutable=["batch_stats", "intermediates"],
                                 capture_intermediates=True)

    _, upd = jax.eval_shape(fwd, st.params, st.batch_stats, x)
    act_bytes = ACTIVATION_FACTOR * _tree_bytes(upd["intermediates"])
    return int(state_bytes + grad_bytes + (batch_bytes + act_bytes) / nd)


def available_memory_bytes(device=None) -> int | None:
    """Free memory of ``device`` (default ``jax.devices()[0]``) in bytes, or None if unknown.

    CPU: the host's available RAM (``psutil.virtual_memory().available``, else
    ``os.sysconf`` free pages x page size). Accelerators:
    ``bytes_limit - bytes_in_use`` from ``Device.memory_stats()`` (GPU/TPU
    backends that report it); None when the backend reports nothing.
    """
    dev = device if device is not None else jax.devices()[0]
    if dev.platform == "cpu":
        try:
            import psutil
            return int(psutil.virtual_memory().available)
        except ImportError:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
        stats = {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def fit_stack_size(requested: int, member_bytes: int, available: int | None,
                   fraction: float) -> int:
    """Largest K <= ``requested`` with ``K * member_bytes <= fraction * available``.

    Returns at least 1 (a single member runs sequentially, as without
    stacking) and ``requested`` when ``available`` is None (unknown).

    Raises:
      ValueError: ``requested`` < 1, ``member_bytes`` <= 0 or ``fraction``
        outside (0, 1].
    """
    if int(requested) < 1:
        raise ValueError(f"requested stack size {requested} must be >= 1")
    if member_bytes <= 0:
        raise ValueError(f"member_bytes={member_bytes} must be > 0")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    if available is None:
        return int(requested)
    return max(1, min(int(requested), int(fraction * available // member_bytes)))
