"""One process of tests/test_stream.py's two-process check: streamed feature extraction
on a pod reads only this host's rows (``evaluation.features._placed_batches``).

Usage (through the local pod launcher, which sets the ``JAX_*`` variables):
``python -m sslsteal_jax.cluster launch 2 0 python tests/multihost/stream_features.py OUT``.
Writes ``OUT/process_<i>.json``: the row ranges this process read and its features.
"""
import json
import os
import sys

from sslsteal_jax.training import mesh as mesh_lib

mesh_lib.initialize_distributed()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sslsteal_jax.data.stream import StreamSource  # noqa: E402
from sslsteal_jax.evaluation.features import extract_features  # noqa: E402


class Spy:
    """A StreamSource view that records the rows each read asks for."""

    def __init__(self, src):
        self.src, self.reads = src, []
        self.shape, self.dtype = src.shape, src.dtype

    def __len__(self):
        return len(self.src)

    def __getitem__(self, key):
        self.reads.append([key.start, key.stop])
        return self.src[key]


pool = Spy(StreamSource("fashion_mnist", "test").subset(0, 1000))
feats = extract_features(jax.jit(lambda x: jnp.stack(
    [x.astype(jnp.float32).mean((1, 2, 3)), x[:, 3, 5, 0].astype(jnp.float32)], 1)),
    pool, batch_size=64)
with open(os.path.join(sys.argv[1], f"process_{jax.process_index()}.json"), "w") as f:
    json.dump({"devices": jax.device_count(), "reads": pool.reads,
               "features": np.asarray(feats).tolist()}, f)
