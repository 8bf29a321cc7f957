"""K surrogates of equal shapes trained by one compiled step with ``jax.vmap``.

A budget scan (budgets x seeds, or losses whose parameter shapes agree)
trains many small surrogates. On an accelerator K sequential steps of a small
ResNet leave the chip mostly idle; ``jax.vmap`` over a leading K axis of the
train states and batches turns them into one program with K-times larger
(grouped) convolutions and matmuls. XLA:CPU has no fast grouped
convolution (a vmapped step measured ~2-3x slower than K sequential steps,
``benchmarks/results/cpu.json``), so on CPU the same interface traces the K
member steps one after another into one program instead ("unroll"). The per-member computation is unchanged (each
member keeps its own parameters, optimizer state, BatchNorm statistics,
step counter and PRNG key), so member k of the vmapped step equals the
sequential step of member k up to float reassociation
(``tests/test_sharding.py`` checks this).

The optimizer (``tx``) and apply function are static fields of the
TrainState, so all K members share one optimizer *definition*: members that
need different learning-rate schedules (e.g. budgets with different step
counts) must express the difference through arrays in the state, not
through ``tx``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


MODES = ("auto", "vmap", "unroll")


def make_vmapped_steal_step(step_fn: Callable, mode: str = "auto") -> Callable:
    """Run a training step for K stacked members in one program.

    Args:
      step_fn: ``step(state, *batch, key) -> (state, metrics)`` as returned by
        ``trainers.surrogate.make_steal_step`` (batch = images uint8 ``(B,H,W,C)``,
        answers float32 ``(B,D)``) or ``trainers.simclr.make_simclr_step``.
      mode: "vmap" (``jax.vmap``: the K members' convolutions become one
        grouped convolution; the accelerator choice), "unroll" (the K member
        steps traced one after another into the same compiled program, which
        XLA may overlap; the CPU choice, because XLA:CPU runs grouped
        convolutions ~3x slower than K separate ones and a ``lax.map`` loop
        ~15x slower), or "auto" ("unroll" when the default backend is CPU,
        else "vmap").
    Returns:
      ``vstep(states, *batches, keys) -> (states, metrics)`` where every leaf
      of ``states`` has a leading axis K (see :func:`stack_trees`), each batch
      array has shape ``(K, B, ...)``, ``keys`` is a key array ``(K,)`` and
      each metric has shape ``(K,)``. Not jitted: compile it with
      ``training.mesh.compile_step(vstep, mesh, n, leading_axes=1)`` (batch
      axis 1 split over devices) or ``jax.jit``.
    Raises:
      ValueError: unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {list(MODES)}")
    if mode == "auto":
        mode = "unroll" if jax.default_backend() == "cpu" else "vmap"
    if mode == "vmap":
        return jax.vmap(step_fn)

    def unrolled(states, *rest):
        k = jax.tree.leaves(states)[0].shape[0]
        outs = [step_fn(*jax.tree.map(lambda x, i=i: x[i], (states, *rest))) for i in range(k)]
        return (jax.tree.map(lambda *xs: jnp.stack(xs), *[o[0] for o in outs]),
                jax.tree.map(lambda *xs: jnp.stack(xs), *[o[1] for o in outs]))

    return unrolled


def stack_trees(trees: Sequence):
    """Stack K pytrees of identical structure and shapes along a new leading axis.

    Works on TrainStates: static fields (``apply_fn``, ``tx``) are taken from
    the first tree. Stacks on the host (numpy arrays ``(K, ...)``; place them
    with ``training.mesh.replicate``): eager ``jnp.stack`` would compile one
    small program per distinct leaf shape, minutes on a busy CPU. Raises
    ValueError for an empty sequence or trees whose leaves differ in number,
    shape or dtype.
    """
    if not len(trees):
        raise ValueError("stack_trees needs at least one tree")
    leaves = [jax.tree.leaves(t) for t in trees]
    shapes = [[(jnp.shape(x), jnp.result_type(x)) for x in ls] for ls in leaves]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("cannot stack trees whose leaves differ in number, shape or dtype "
                         "(members of a vmapped scan need equal architectures and output sizes)")
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [np.stack([np.asarray(x) for x in xs]) for xs in zip(*leaves)])


def unstack_tree(tree, k: int | None = None) -> list:
    """Inverse of :func:`stack_trees`: the K member trees (``k`` defaults to the
    leading size), as host numpy arrays (one device-to-host copy of the tree,
    then numpy slicing; no per-leaf device programs)."""
    host = jax.device_get(tree)
    leaves = jax.tree.leaves(host)
    k = int(leaves[0].shape[0]) if k is None else int(k)
    return [jax.tree.map(lambda x, i=i: x[i], host) for i in range(k)]
