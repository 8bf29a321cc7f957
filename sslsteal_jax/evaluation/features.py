"""Batched, jitted feature extraction with BatchNorm in inference mode.

Fixes the reference quirk of updating BatchNorm statistics during linear
evaluation (docs/science.md section 4): encoders are always applied with ``train=False``.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sslsteal_jax import watchdog
from sslsteal_jax.evaluation.parallel import raise_if_cancelled
from sslsteal_jax.training import mesh as mesh_lib


def make_apply(module, variables, output_index: int | None = None, mesh=None):
    """Jitted ``images uint8|float32 (B,H,W,C) -> float32 (B,D)`` for a frozen module.

    ``output_index`` selects one element when the module returns a tuple (e.g.
    0 = representation, 1 = projection head / adapter output of the SimCLR and
    surrogate wrappers); a tuple of indices returns those elements
    concatenated along the feature axis (one forward pass for several
    outputs); None returns the module's output as is.

    The function is compiled for the ("data",) mesh (``training.mesh``; default
    all devices): variables replicated and passed as an argument (not baked
    into the program as constants), images and output split over devices (no
    collective in the program: ``training.mesh.compile_apply``; read the output
    with ``training.mesh.to_host``). B must be a multiple of the device count
    (:func:`extract_features` pads for you).

    The compiled program is kept for the life of the process per (module,
    ``output_index``, mesh) (flax modules compare and hash by their fields, like
    ``models.init_variables``): evaluating another encoder of the same architecture
    (the cells of a budget scan, the surrogates of a defense matrix, the independent
    encoder beside a surrogate) passes its variables to the program already compiled
    instead of tracing, lowering and compiling it again.
    """
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    index = tuple(output_index) if isinstance(output_index, (tuple, list)) else output_index
    try:
        jitted = _compiled_apply(module, index, mesh)
    except TypeError:  # an unhashable module (a field holding a list, a dict or an array)
        jitted = _compiled_apply.__wrapped__(module, index, mesh)
    variables = mesh_lib.replicate(variables, mesh)

    def apply(x):
        return jitted(variables, x)

    apply.mesh = mesh
    apply.jitted = jitted
    apply.variables = variables
    return apply


@functools.lru_cache(maxsize=32)
def _compiled_apply(module, output_index, mesh):
    """The jitted ``(variables, images) -> outputs`` of :func:`make_apply` (``output_index``
    None, an int or a tuple of ints)."""

    def _apply(v, x):
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        out = module.apply(v, x, train=False)
        if isinstance(output_index, tuple):
            return jnp.concatenate([out[i] for i in output_index], axis=-1)
        return out if output_index is None else out[output_index]

    return mesh_lib.compile_apply(_apply, mesh)


# Images per inference call on CPU (whole batch, all devices together). Measured
# on the 2-core dev machine, ResNet-10 width 16 on 28x28 Fashion-MNIST, one
# device: 96-128 images per call run at 3,500-3,800 img/s, 1,000 at 2,700-2,800
# (the activations of a small batch stay in cache). Accelerators want large
# calls: 1,024 images per device.
CPU_INFERENCE_BATCH = 128
ACCELERATOR_INFERENCE_BATCH_PER_DEVICE = 1024


def default_batch_size(mesh=None) -> int:
    """Default images per :func:`extract_features` call for ``mesh`` (default all devices).

    ``CPU_INFERENCE_BATCH`` on CPU, ``ACCELERATOR_INFERENCE_BATCH_PER_DEVICE`` x
    devices on GPU / TPU; always a multiple of the mesh's device count.
    """
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    if mesh.devices.flat[0].platform == "cpu":
        return mesh_lib.padded_size(CPU_INFERENCE_BATCH, mesh)
    return ACCELERATOR_INFERENCE_BATCH_PER_DEVICE * mesh_lib.num_devices(mesh)


def _placed_batches(images, size: int, mesh):
    """``(global batch of `size` rows on the mesh, rows that are real)`` over ``images``.

    An array (or a lazy array-like with one process) is sliced ``size`` rows at a time
    and padded with zeros; every process passes the global batch and keeps its rows
    (``mesh.shard_batch``). A lazy array-like (``data.stream.StreamSource``,
    ``pipeline.queries.ChunkedArray``) on a multi-process run is read only at this
    process's rows of each batch (``mesh.process_rows``), so each host reads its shard.
    A ``StreamSource`` with one process is read ahead on grain worker threads
    (``StreamSource.batches``). An iterable yields batches (arrays or ``(images,
    labels)`` pairs), each cut to ``size`` rows.
    """
    import jax

    lazy = not isinstance(images, np.ndarray) and hasattr(images, "__getitem__")
    if lazy and jax.process_count() > 1:
        rows, n = mesh_lib.process_rows(size, mesh), len(images)
        for i in range(0, n, size):
            b = np.asarray(images[min(i + rows.start, n):min(i + rows.stop, n)])
            b = _padded(b, rows.stop - rows.start, images.shape[1:], images.dtype)
            yield mesh_lib.place_local_rows([b], size, mesh)[0], min(size, n - i)
        return
    if hasattr(images, "batches"):  # a StreamSource: read ahead on worker threads
        pieces = (b for b, _ in images.batches(size))
    elif hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        pieces = (np.asarray(images[i:i + size]) for i in range(0, len(images), size))
    else:
        pieces = (piece for b in images
                  for piece in _cut(np.asarray(b[0] if isinstance(b, tuple) else b), size))
    for b in pieces:
        yield mesh_lib.shard_batch([_padded(b, size, b.shape[1:], b.dtype)], mesh)[0], len(b)


def _cut(b: np.ndarray, size: int):
    """``b`` in pieces of at most ``size`` rows."""
    return (b[i:i + size] for i in range(0, len(b), size))


def _padded(b: np.ndarray, rows: int, shape, dtype) -> np.ndarray:
    """``b`` with zero rows appended up to ``rows`` rows (of ``shape`` and ``dtype``)."""
    if len(b) == rows:
        return b
    return np.concatenate([b.reshape(-1, *shape).astype(dtype, copy=False),
                           np.zeros((rows - len(b), *shape), dtype)])


def extract_features(apply_fn, images, batch_size: int | None = None,
                     desc: str | None = None) -> np.ndarray:
    """Apply ``apply_fn`` over ``images`` in batches, data-parallel over all devices.

    Each batch is padded (zeros) to one compiled shape that splits evenly over
    the ("data",) mesh (``apply_fn.mesh`` if set, else all devices) and
    placed with its rows split over the devices; padded rows are dropped.

    Args:
      apply_fn: jitted function ``(B,H,W,C) -> (B,D)`` (e.g. from ``make_apply``).
      images: uint8 ``(N,H,W,C)`` in [0,255] or float32 in [0,1]: an array, a lazy
        array-like that is sliced a batch at a time (``data.stream.StreamSource``,
        ``pipeline.queries.ChunkedArray``), or an iterable of such batches (or of
        ``(images, labels)`` pairs: ``data.stream.sequential_batches``, read ahead on
        worker threads). Only one batch of images is in memory at a time; the
        features are returned whole. On a multi-process run each process reads only
        its rows of a lazy array-like's batches (:func:`_placed_batches`).
      batch_size: images per call (rounded up to a multiple of the device
        count); None: :func:`default_batch_size` of the mesh. Outputs do not
        depend on it beyond float rounding, nor on how an iterable cuts its batches.
      desc: progress-bar label (None: no bar).
    Returns:
      float32 numpy ``(N, D)``.
    Raises:
      ValueError: ``batch_size`` < 1.

    Safe to call from several threads at once: each batch's program is
    dispatched and completed under ``training.mesh.COLLECTIVES`` when the mesh
    spans several devices, so two threads' programs never wait for each other
    at a collective.
    """
    mesh = getattr(apply_fn, "mesh", None) or mesh_lib.data_mesh()
    batch_size = default_batch_size(mesh) if batch_size is None else batch_size
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    n = len(images) if hasattr(images, "__len__") else None
    size = mesh_lib.padded_size(min(int(batch_size), max(n, 1) if n is not None
                                    else int(batch_size)), mesh)
    out = []
    for xb, m in tqdm(_placed_batches(images, size, mesh), desc=desc, leave=False,
                      total=None if n is None else -(-n // size),
                      disable=desc is None or not mesh_lib.is_writer()):  # one bar on a pod
        # under the collective guard: never in flight with another thread's
        # multi-device program (training.mesh, concurrency rule)
        # (a multi-host gather of a batch-sharded output is a collective too: same section)
        out.append(mesh_lib.run_collective(lambda x: mesh_lib.to_host(apply_fn(x)), xb,
                                           mesh=mesh)[:m])
        watchdog.progress("feature extraction")
        raise_if_cancelled()  # a concurrent evaluation that was stopped (Ctrl-C) ends here
    if not out:
        raise ValueError("extract_features got no images")
    return np.concatenate(out, axis=0).astype(np.float32)


def raw_pixels(images) -> np.ndarray:
    """Baseline 'encoder': flattened pixels in [0,1], float32 ``(N, H*W*C)``.

    ``images``: uint8 (N,H,W,C) in [0,255] or float in [0,1]; an array, or a lazy
    array-like (``data.stream.StreamSource``) read 4,096 rows at a time."""
    if not isinstance(images, np.ndarray):
        return np.concatenate([raw_pixels(np.asarray(images[i:i + 4096]))
                               for i in range(0, len(images), 4096)])
    return images.reshape(len(images), -1).astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
