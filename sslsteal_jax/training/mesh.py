"""Device mesh and shardings for data-parallel training over a ("data",) axis.

The same code runs on one CPU, N forced host devices, one GPU, or a pod: the
batch axis is sharded over ``"data"``, parameters are replicated, and jit's
GSPMD partitioner inserts the cross-device reductions (so BatchNorm statistics
and NT-Xent negatives cover the global batch).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ("data",) over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data"."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of the "
                         f"data mesh; use a multiple of {n}")
