"""Label-free fidelity between a surrogate and the victim (ICML 2022, Section 4).

Both functions take float32 ``(N, D)`` surrogate representations ``s`` and
victim representations ``v`` of the same N held-out inputs.
"""
from __future__ import annotations

import numpy as np


def _check(s, v):
    s, v = np.asarray(s, np.float64), np.asarray(v, np.float64)
    if s.shape != v.shape or s.ndim != 2:
        raise ValueError(f"fidelity needs equal (N,D) shapes, got {s.shape} and {v.shape}")
    return s, v


def cosine_fidelity(s, v) -> float:
    """Mean over rows of cos(s_i, v_i), in [-1, 1] (1 = same direction)."""
    s, v = _check(s, v)
    num = np.sum(s * v, axis=1)
    den = np.linalg.norm(s, axis=1) * np.linalg.norm(v, axis=1) + 1e-12
    return float(np.mean(num / den))


def l2_fidelity(s, v) -> float:
    """Mean over rows of ||s_i/|s_i| - v_i/|v_i|||_2, in [0, 2] (0 = identical directions)."""
    s, v = _check(s, v)
    sn = s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-12)
    vn = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)
    return float(np.mean(np.linalg.norm(sn - vn, axis=1)))
