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


#: Layer kinds of a :class:`SequentialHead` spec.
HEAD_LAYERS = ("linear", "batchnorm", "relu")


class SequentialHead(nn.Module):
    """A PyTorch ``nn.Sequential`` MLP head imported with its encoder: the projection
    heads of SimSiam (Chen & He, CVPR 2021: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN),
    MoCo v2 (Linear-ReLU-Linear) and MoCo v3 (Chen, Xie & He, ICCV 2021: Linear-BN-ReLU
    ... -BN without affine), or a single classifier Linear.

    Attributes:
      layers: tuple of layer specs in the Sequential's order (index i of the tuple is
        the Sequential's index i; submodule ``layer<i>``): ``("linear", features,
        bias: bool)``, ``("batchnorm", affine: bool)`` (BatchNorm1d, eps 1e-5, running
        statistics in ``batch_stats``), ``("relu",)``.
      dtype: compute dtype.

    Call: ``h`` float32 ``(B, D)``, ``train`` (BatchNorm uses batch statistics when
    true). Returns float32 ``(B, features of the last linear layer)``.
    Raises:
      ValueError: an unknown layer kind (a bug: ``models.convert`` builds the spec).
    """

    layers: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, train: bool = False):
        x = h.astype(self.dtype)
        for i, spec in enumerate(self.layers):
            kind = spec[0]
            if kind == "linear":
                x = nn.Dense(int(spec[1]), use_bias=bool(spec[2]), dtype=self.dtype,
                             name=f"layer{i}")(x)
            elif kind == "batchnorm":
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 use_scale=bool(spec[1]), use_bias=bool(spec[1]),
                                 dtype=self.dtype, name=f"layer{i}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                raise ValueError(f"unknown head layer {spec!r}; allowed kinds: {HEAD_LAYERS}")
        return x.astype(jnp.float32)
