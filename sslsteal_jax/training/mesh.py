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
import itertools
import json
import threading
import time
from typing import Any, Callable, Sequence

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

    Every process passes the same global arrays (e.g. the same images to
    embed); each keeps only its own rows (:func:`process_rows`), so no host
    ever sends another host's data to a device. The training loop, which can
    compute its own rows' indices, reads only those and calls
    :func:`place_local_rows` directly.

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
    out = []
    for a in arrays:
        a = np.asarray(a)
        rows = process_rows(a.shape[leading_axes], mesh)
        out += place_local_rows([a[(slice(None),) * leading_axes + (rows,)]],
                                a.shape[leading_axes], mesh, leading_axes)
    return out


def place_local_rows(local: Sequence[np.ndarray], global_batch: int, mesh: Mesh,
                     leading_axes: int = 0) -> list[jax.Array]:
    """Assemble global arrays from this process's rows of a global batch.

    Args:
      local: numpy arrays holding rows ``process_rows(global_batch, mesh)`` of
        the global batch along axis ``leading_axes`` (all rows with one process).
      global_batch: size of the global batch axis.
      mesh: the data mesh.
      leading_axes: replicated axes before the batch axis.
    Returns:
      list of global ``jax.Array`` of shape ``local.shape`` with the batch axis
      ``global_batch``, split over "data"
      (``jax.make_array_from_process_local_data``).
    Raises:
      ValueError: ``global_batch`` not divisible by the device count, or a local
        array without ``global_batch / process_count`` rows.
    """
    sharding = batch_sharding(mesh, leading_axes)
    rows = process_rows(global_batch, mesh)
    out = []
    for a in local:
        a = np.asarray(a)
        if a.shape[leading_axes] != rows.stop - rows.start:
            raise ValueError(f"this process holds rows [{rows.start}, {rows.stop}) of a global "
                             f"batch of {global_batch}, got {a.shape[leading_axes]} rows")
        shape = a.shape[:leading_axes] + (int(global_batch),) + a.shape[leading_axes + 1:]
        out.append(jax.make_array_from_process_local_data(sharding, a, shape))
    return out


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` replicated over the mesh (``jax.device_put`` with one process).

    With several processes every process must pass the same values (all
    compute them identically); each leaf (numpy, a local or a global replicated
    ``jax.Array``, a typed PRNG key array) is rebuilt as a global array from this
    process's copy, since ``jax.device_put`` cannot target other hosts' devices.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda x: _replicate_leaf(x, sharding), tree)


def to_host(x) -> np.ndarray:
    """A numpy copy of the whole of ``x``: ``np.asarray`` when this process holds
    all of it (one process, or a replicated output); an array split across
    hosts (e.g. the batch-sharded output of a jit without ``out_shardings``) is
    gathered from every process first (``multihost_utils.process_allgather``,
    a collective: every process must call it)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_copy(tree):
    """Numpy copies of every array leaf of ``tree`` (this process's copy of a fully
    replicated global array on a multi-host run; local arrays as they are).

    Raises:
      RuntimeError: (from JAX) a leaf sharded across hosts, of which no process
        holds a whole copy.
    """
    return jax.tree_util.tree_map(np.asarray, tree)


def _replicate_leaf(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _replicate_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)  # local array, or a fully replicated global one: this process's copy
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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

    Variables are replicated; the images and the output are split over "data",
    so the program has no collective: each device computes its rows and
    :func:`to_host` assembles them (on one process a copy from each device; on a
    multi-host run ``process_allgather``, under :data:`COLLECTIVES`). An output
    replicated by the program itself would end in an all-gather, and a
    collective in flight beside another thread's single-device programs (the
    probes of concurrent evaluation) can deadlock XLA:CPU: one device's part
    waits at the rendezvous while the other device's part cannot start behind
    that device's queue of in-flight programs (reproduced with
    ``benchmarks/eval_stress.py --threads``; ``tests/test_parallel_eval.py``).
    """
    batch = batch_sharding(mesh)
    return jax.jit(apply_fn, in_shardings=(replicated(mesh), batch), out_shardings=batch)


def compile_fold_in(mesh: Mesh, batched: bool = False):
    """Jitted ``(key, step int) -> fold_in(key, step)`` whose output is replicated on the mesh.

    ``batched``: ``key`` is a key array ``(K,)`` (one per stacked member) and
    each is folded with the same ``step``; the result ``(K,)`` equals K
    separate ``fold_in(key[k], step)`` calls.
    """
    fn = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if batched else jax.random.fold_in
    return jax.jit(fn, out_shardings=replicated(mesh))


def initialize_distributed(env: dict | None = None) -> bool:
    """Join a multi-host run when ``$SSLSTEAL_DISTRIBUTED`` asks for one; return whether it did.

    The coordinator address, process count, process id and local device ids come
    from ``sslsteal_jax.cluster.resolve`` (``env``: explicit ``JAX_*`` variables,
    SLURM's, a Cloud TPU pod's; see that module) and are passed to
    ``jax.distributed.initialize`` as arguments; fields it cannot work out are left
    to JAX's own detection. CPU collectives across processes use gloo (set here
    unless ``$JAX_CPU_COLLECTIVES_IMPLEMENTATION`` chooses another), so a
    multi-process run also works on CPU-only hosts (``launch/local.sh
    --processes=N``). Must run before any other JAX computation; afterwards
    ``jax.devices()`` lists every device of every process and :func:`data_mesh`
    spans the whole pod. See ``launch/`` and BUILD.md.

    Raises:
      ConfigError (a ValueError): a bad ``$SSLSTEAL_DISTRIBUTED`` or missing /
        malformed cluster variables (``cluster.resolve``).
    """
    import os

    from sslsteal_jax import cluster

    env = os.environ if env is None else env
    spec = cluster.resolve(env)
    if spec is None:
        return False
    if not env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**spec.initialize_kwargs())
    return True


def is_writer() -> bool:
    """True in the one process that writes result files, logs and caches (process 0).

    Every process of a multi-host run computes the same replicated numbers; only
    process 0 writes them, so no two processes race on one file of a shared
    work directory. Checkpoints are the exception: orbax writes them from all
    processes together (``training.checkpoint``).
    """
    return jax.process_index() == 0


#: Sequence number of :func:`writer_computes` calls in this process (the key of each answer).
_WRITER_CALLS = itertools.count()
#: How long the other processes wait for process 0's answer (milliseconds).
WRITER_WAIT_MS = 24 * 3600 * 1000


#: Longest single blocking call on the coordination service (milliseconds): Python runs a
#: signal handler only between calls, so a Ctrl-C reaches a waiting process this soon.
WAIT_SLICE_MS = 500


def wait_for_key(client, key: str, timeout_ms: int, slice_ms: int = WAIT_SLICE_MS) -> str:
    """``client.blocking_key_value_get(key, timeout_ms)`` made of waits of at most
    ``slice_ms``, so that SIGINT / SIGTERM are handled while a process waits for another.

    One blocking call cannot be interrupted: a process waiting for process 0's probe
    results ignored the Ctrl-C that stopped process 0, held process 0's exit in its
    15 s leave bound, then died with a "Socket closed" traceback (2026-12-02, toy
    2-process run interrupted during evaluation).

    Args:
      client: the ``jax.distributed`` coordination client (or a test fake).
      key: the key-value store key; timeout_ms: total wait in milliseconds.
    Returns:
      the stored value (str).
    Raises:
      the client's error (``JaxRuntimeError``, "DEADLINE_EXCEEDED") once ``timeout_ms``
      has passed, or any other error of the client at once.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        left_ms = round((deadline - time.monotonic()) * 1000)
        try:
            return client.blocking_key_value_get(key, max(1, min(slice_ms, left_ms)))
        except Exception as e:  # noqa: BLE001  (the client raises JaxRuntimeError)
            if "DEADLINE_EXCEEDED" not in str(e) or left_ms <= slice_ms:
                raise


def writer_computes(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed by process 0 alone; every process returns that same value.

    For work whose result every process needs but whose cost only one should
    pay: single-device programs (the linear probes and kNN of an evaluation row)
    that every process would otherwise run redundantly on a pod. Process 0 runs
    ``fn`` and publishes its result, JSON-encoded, in the ``jax.distributed``
    coordination service's key-value store; the other processes block until it is
    there and decode it. No XLA program is involved (nothing to compile on the
    other processes, no collective). With one process it is just ``fn()``.

    ``fn`` must return a JSON-able value (dicts, lists, str, int, float, bool,
    None); floats come back bit for bit (``json`` writes the shortest repr that
    round-trips), dict key order is kept, tuples come back as lists. ``fn`` must
    not run multi-device programs (the other processes would not join them).
    Every process must make the same sequence of ``writer_computes`` calls: the
    n-th call of each process receives the n-th result of process 0.

    Raises:
      whatever ``fn`` raises, on process 0; on the others the wait for the
      answer ends with an error after ``WRITER_WAIT_MS`` (the run's watchdog
      normally ends a pod whose process 0 died first). TypeError on process 0
      when the result is not JSON-able.
    """
    if jax.process_count() == 1:
        return fn()
    from jax._src import distributed  # the coordination service's client (no public handle)

    client = distributed.global_state.client
    key = f"sslsteal_jax/writer_computes/{next(_WRITER_CALLS)}"
    if is_writer():
        value = fn()
        client.key_value_set(key, json.dumps(value))
        return value
    return json.loads(wait_for_key(client, key, WRITER_WAIT_MS))


def sync(name: str) -> None:
    """Barrier: return once every process has called ``sync(name)`` (no-op with one process).

    Use it where one process acts for all (e.g. process 0 writes a file the others
    then read) and the others must not run ahead.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
