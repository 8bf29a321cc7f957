"""Batched, jitted feature extraction with BatchNorm in inference mode.

Fixes the reference quirk of updating BatchNorm statistics during linear
evaluation (SPEC section 4): encoders are always applied with ``train=False``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm


def make_apply(module, variables, output_index: int | None = None):
    """Jitted ``images uint8|float32 (B,H,W,C) -> float32 (B,D)`` for a frozen module.

    ``output_index`` selects one element when the module returns a tuple (e.g.
    0 = representation, 1 = projection head / adapter output of the SimCLR and
    surrogate wrappers); None returns the module's output as is.
    """

    @jax.jit
    def apply(x):
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        out = module.apply(variables, x, train=False)
        return out if output_index is None else out[output_index]

    return apply


def extract_features(apply_fn, images: np.ndarray, batch_size: int = 1000,
                     desc: str | None = None) -> np.ndarray:
    """Apply ``apply_fn`` over ``images`` in batches.

    Args:
      apply_fn: jitted function ``(B,H,W,C) -> (B,D)`` (e.g. from ``make_apply``).
      images: uint8 ``(N,H,W,C)`` in [0,255] or float32 in [0,1].
      batch_size: images per call; the last batch is padded to keep one compiled shape.
      desc: progress-bar label (None: no bar).
    Returns:
      float32 numpy ``(N, D)``.
    """
    n = len(images)
    out = []
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, leave=False):
        b = images[i:i + batch_size]
        pad = batch_size - len(b)
        if pad and n > batch_size:
            b = np.concatenate([b, np.zeros((pad, *b.shape[1:]), b.dtype)])
        out.append(np.asarray(apply_fn(jnp.asarray(b)))[:len(images[i:i + batch_size])])
    return np.concatenate(out, axis=0).astype(np.float32)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """Baseline 'encoder': flattened pixels in [0,1], float32 ``(N, H*W*C)``."""
    return images.reshape(len(images), -1).astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
