"""Device mesh, shardings and compiled data-parallel steps over a ("data",) axis.

One code path for every machine: a 1-D mesh named ``"data"`` over all devices
(1 CPU device, N forced host devices, one or more GPUs, or every chip of a
multi-host pod after ``jax.distributed.initialize()``). The batch axis is
split over ``"data"``, parameters / optimizer state / PRNG keys are
replicated, and each step is one ``jax.jit`` with explicit ``in_shardings``,
``out_shardings`` and the train state donated. Nothing in a step function is
device-aware: XLA's SPMD partitioner inserts the cross-device reductions, so
BatchNorm batch statistics, the NT-Xent / InfoNCE similarity matrix (negatives
from the *global* batch) and gradient averages are computed over the global
batch exactly as on one device (``tests/test_sharding.py`` checks this).

Multi-host: every process runs the same program and computes the same global
batch indices; :func:`shard_batch` keeps only the rows owned by this process's
devices and assembles the global array with
``jax.make_array_from_process_local_data``. Outputs that come back to the
host (losses, features) are replicated, so every process can read them.

Concurrency rule: a program that spans several devices may contain collectives
(all-reduce, all-gather, all-to-all), and such programs must never be in
flight from two threads at once. When two threads dispatch multi-device
programs A and B concurrently, device 0 can start A while device 1 starts B;
each then waits at its collective for a partner that is busy in the other
program, and XLA:CPU hangs at the rendezvous (seen in the main job's
concurrent evaluation: ``rendezvous.cc ... Expected 2 threads to join the
rendezvous``). So every multi-device program runs under :data:`COLLECTIVES`
(dispatch *and* completion): :func:`run_collective` for one call (used by
``evaluation.features.extract_features``, hence by every inference path and
the API), :meth:`CollectiveGuard.hold` around a sequence of calls (the
training loop holds it for the whole run and blocks on the final state before
letting go). Single-device programs (the linear probes and kNN that
``evaluation.parallel.run_concurrently`` runs side by side) have no
collectives and run freely, so they still overlap with one thread's feature
extraction.

Source: the data-parallel recipe of big_vision / the flax ImageNet example
(``jax.sharding.Mesh`` + ``NamedSharding``, jit with shardings and donation).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class CollectiveGuard:
    """Process-wide lock under which multi-device programs are dispatched and completed.

    Re-entrant: a thread that holds it (e.g. the training loop) may call
    :meth:`call` again without blocking itself. See the module docstring for
    why (cross-thread collective deadlock) and who uses it.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._local = threading.local()

    @contextlib.contextmanager
    def hold(self):
        """Hold the guard for a sequence of multi-device calls from this thread.

        The caller must block on the outputs of its last call
        (``jax.block_until_ready``) before the block ends, so no program of
        this thread is still running on a device when another thread may
        dispatch (``training.loop.run_training`` does).
        """
        with self._lock:
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                yield self
            finally:
                self._local.depth -= 1

    def held(self) -> bool:
        """Whether the calling thread holds the guard."""
        return getattr(self._local, "depth", 0) > 0

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` dispatched and completed under the guard.

        Returns:
          ``fn``'s output, ready (``jax.block_until_ready``) when this call
          is not nested in an outer :meth:`hold` of the same thread (nested
          calls leave the wait to the outer holder).
        """
        with self.hold():
            out = fn(*args, **kwargs)
            if self._local.depth == 1:
                jax.block_until_ready(out)
        return out


# The one guard of this process (see the module docstring's concurrency rule).
COLLECTIVES = CollectiveGuard()


def collective_section(mesh: Mesh):
    """Context manager holding :data:`COLLECTIVES` for a sequence of calls on ``mesh``
    (nothing on a one-device mesh: no collectives). The holder blocks on its last
    outputs before the block ends (see :meth:`CollectiveGuard.hold`)."""
    return COLLECTIVES.hold() if num_devices(mesh) > 1 else contextlib.nullcontext()


def run_collective(fn: Callable, *args, mesh: Mesh | None = None, **kwargs):
    """Call a compiled program: under :data:`COLLECTIVES` when it spans several devices.

    Args:
      fn: a jitted function (e.g. from :func:`compile_apply`).
      mesh: the mesh ``fn`` runs on (default :func:`data_mesh`); with one
        device there are no collectives and ``fn`` runs without the lock.
    Returns:
      ``fn(*args, **kwargs)``; ready (blocked on) when the lock was taken here.
    """
    mesh = data_mesh() if mesh is None else mesh
    if num_devices(mesh) == 1:
        return fn(*args, **kwargs)
    return COLLECTIVES.call(fn, *args, **kwargs)


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ("data",) over ``devices`` (default: all devices of all processes).

    Raises:
      ValueError: ``devices`` is empty.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not len(devices):
        raise ValueError("data_mesh needs at least one device, got an empty list")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis over "data".

    Args:
      mesh: a mesh from :func:`data_mesh`.
      leading_axes: replicated axes before the batch axis (1 for arrays
        stacked over K vmapped surrogates, shape ``(K, B, ...)``).
    """
    return NamedSharding(mesh, P(*([None] * int(leading_axes)), DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (parameters, optimizer state, keys, metrics)."""
    return NamedSharding(mesh, P())


def num_devices(mesh: Mesh) -> int:
    """Number of devices (all processes) in ``mesh``."""
    return int(mesh.devices.size)


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
    n = num_devices(mesh)
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of the "
                         f"data mesh; use a multiple of {n}")


def padded_size(n: int, mesh: Mesh) -> int:
    """Smallest multiple of the mesh's device count that is >= ``n`` (int)."""
    d = num_devices(mesh)
    return -(-int(n) // d) * d


def process_rows(global_batch: int, mesh: Mesh) -> slice:
    """Rows ``[start, stop)`` of a global batch held by this process's devices.

    With the 1-D mesh of :func:`data_mesh` each process owns a contiguous block
    of ``global_batch / process_count`` rows (its devices are contiguous in
    ``jax.devices()``); one process owns everything.

    Raises:
      ValueError: ``global_batch`` not divisible by the device count, or the
        process's devices are not contiguous in the mesh.
    """
    check_batch_divisible(global_batch, mesh)
    flat = list(mesh.devices.flat)
    mine = [i for i, d in enumerate(flat) if d.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[0] + len(mine))):
        raise ValueError("this process's devices are not contiguous in the data mesh; build it "
                         "with data_mesh() (devices ordered by process)")
    per_dev = global_batch // len(flat)
    return slice(mine[0] * per_dev, (mine[-1] + 1) * per_dev)


def shard_batch(arrays: Sequence[np.ndarray], mesh: Mesh, leading_axes: int = 0) -> list[jax.Array]:
    """Place host arrays holding the *global* batch on the mesh, batch axis split over "data".

    Every process passes the same global arrays (the loop computes the same
    indices everywhere); each keeps only its own rows, so no host ever sends
    another host's data to a device.

    Args:
      arrays: numpy arrays with equal size along the batch axis (axis
        ``leading_axes``), e.g. uint8 images ``(B, H, W, C)`` and float32
        answers ``(B, D)``, or ``(K, B, ...)`` with ``leading_axes=1``.
      mesh: the data mesh.
      leading_axes: replicated axes before the batch axis.
    Returns:
      list of global ``jax.Array`` with the arrays' shapes and dtypes.
    Raises:
      ValueError: batch size not divisible by the device count.
    """
    sharding = batch_sharding(mesh, leading_axes)
    out = []
    for a in arrays:
        a = np.asarray(a)
        rows = process_rows(a.shape[leading_axes], mesh)
        local = a[(slice(None),) * leading_axes + (rows,)]
        out.append(jax.make_array_from_process_local_data(sharding, local, a.shape))
    return out


def replicate(tree, mesh: Mesh):
    """``jax.device_put`` every leaf of ``tree`` replicated over the mesh."""
    return jax.device_put(tree, replicated(mesh))


def compile_step(step_fn: Callable, mesh: Mesh, num_batch_args: int, leading_axes: int = 0,
                 donate_state: bool = True):
    """Jit a training step ``step_fn(state, *batch, key) -> (state, metrics)`` for the mesh.

    ``state`` (params, optimizer state, BatchNorm statistics, step), ``key``
    and the outputs are replicated; the ``num_batch_args`` batch arguments are
    split over "data" along axis ``leading_axes``. The input state's buffers
    are donated (updated in place) unless ``donate_state`` is False.

    Returns:
      the jitted function (call it with arrays from :func:`replicate` and
      :func:`shard_batch`; ``.lower(...)`` works for cost analysis).
    """
    repl, bshard = replicated(mesh), batch_sharding(mesh, leading_axes)
    return jax.jit(step_fn,
                   in_shardings=(repl, *([bshard] * int(num_batch_args)), repl),
                   out_shardings=(repl, repl),
                   donate_argnums=(0,) if donate_state else ())


def compile_apply(apply_fn: Callable, mesh: Mesh):
    """Jit an inference function ``apply_fn(variables, images (B,...)) -> (B, D)``.

    Variables are replicated, the images split over "data"; the output is
    replicated so every process can read it (``np.asarray``).
    """
    repl = replicated(mesh)
    return jax.jit(apply_fn, in_shardings=(repl, batch_sharding(mesh)), out_shardings=repl)


def compile_fold_in(mesh: Mesh, batched: bool = False):
    """Jitted ``(key, step int) -> fold_in(key, step)`` whose output is replicated on the mesh.

    ``batched``: ``key`` is a key array ``(K,)`` (one per stacked member) and
    each is folded with the same ``step``; the result ``(K,)`` equals K
    separate ``fold_in(key[k], step)`` calls.
    """
    fn = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if batched else jax.random.fold_in
    return jax.jit(fn, out_shardings=replicated(mesh))


def initialize_distributed(env: dict | None = None) -> bool:
    """Join a multi-host run when ``$SSLSTEAL_DISTRIBUTED`` is 1/true; return whether it did.

    Calls ``jax.distributed.initialize()`` with no arguments, so JAX detects
    the cluster itself (SLURM: one process per GPU, ``SLURM_*`` variables;
    Cloud TPU VM pods: the TPU metadata server; Open MPI) or reads
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``-style
    arguments passed by the launcher. Must run before any other JAX call;
    afterwards ``jax.devices()`` lists every device of every process and
    :func:`data_mesh` spans the whole pod. See ``launch/`` and BUILD.md.

    Raises:
      ValueError: ``$SSLSTEAL_DISTRIBUTED`` holds something other than
        0/1/true/false/empty.
    """
    import os

    env = os.environ if env is None else env
    val = str(env.get("SSLSTEAL_DISTRIBUTED", "")).strip().lower()
    if val in ("", "0", "false"):
        return False
    if val not in ("1", "true"):
        raise ValueError(f"SSLSTEAL_DISTRIBUTED={val!r}; allowed: 0, 1, true, false or unset")
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True
