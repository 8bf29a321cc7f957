"""Small heads placed on top of the representation.

* ``ProjectionHead``: SimCLR's g(h), Chen et al. ICML 2020 Section 2.1
  (512 -> 512 -> 128 in the ICML 2022 stealing paper's victims).
* ``Predictor``: SimSiam predictor (Chen & He, CVPR 2021) used by the
  symmetrized stealing loss.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
    """Dense(hidden) -> ReLU -> Dense(out).

    Call: ``h`` float32 ``(B, D)``. Returns float32 ``(B, out_dim)``.
    """

    hidden_dim: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="dense1")(h)
        x = nn.relu(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense2")(x).astype(jnp.float32)


ProjectionHead = MLPHead
Predictor = MLPHead
