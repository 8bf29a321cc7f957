"""ResNet family in Flax (linen) used for victim and surrogate encoders.

Source: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016);
the CIFAR stem (3x3 conv, stride 1, no max-pool) follows the SimCLR CIFAR
setting used by Dziedzic et al. (ICML 2022, Section 4 / Appendix) for the
victim encoders.

The encoder's output is the *representation*: the globally average-pooled
output of the last stage, shape ``(B, width * 8 * expansion)`` float32.

The ImageNet stem's 3x3 max-pool pads one pixel of -inf on each side, as
torchvision's ``MaxPool2d(3, 2, padding=1)``, so a torchvision-layout
checkpoint imported with ``models.convert`` computes the same function.
Normalisation happens inside the model: inputs are float images in [0, 1];
``(x - mean) / std`` per channel (``mean``/``std`` attributes; the defaults
0.5 / 0.25 are this toolkit's own victims', imported ImageNet encoders carry
ImageNet's statistics).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sslsteal_jax.errors import ConfigError

# Default input normalisation of this toolkit's encoders: images enter as float in [0, 1].
PIXEL_MEAN = (0.5,)
PIXEL_STD = (0.25,)


def normalize(x, mean, std, dtype):
    """``(x - mean) / std`` per channel, cast to ``dtype``.

    Args:
      x: float32 ``(B, H, W, C)`` images in [0, 1].
      mean, std: tuples of length 1 (every channel) or C.
      dtype: compute dtype of the result.
    Raises:
      ConfigError: ``mean``/``std`` length neither 1 nor C.
    """
    c = x.shape[-1]
    for name, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, c):
            raise ConfigError(f"normalisation {name}={list(v)} has {len(v)} values for "
                              f"{c}-channel images; allowed: 1 or {c} values")
    m = jnp.asarray(mean, jnp.float32)
    s = jnp.asarray(std, jnp.float32)
    return ((x - m) / s).astype(dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity / 1x1 projection shortcut."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        residual = x
        y = conv(self.filters, (3, 3), (self.strides, self.strides), padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.filters, (3, 3), padding=1)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = conv(self.filters, (1, 1), (self.strides, self.strides))(residual)
            residual = norm()(residual)
        return nn.relu(residual + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) bottleneck block of ResNet-50."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        residual = x
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = conv(self.filters, (3, 3), (self.strides, self.strides), padding=1)(y)
        y = nn.relu(norm()(y))
        y = conv(self.filters * 4, (1, 1))(y)
        y = norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = conv(self.filters * 4, (1, 1), (self.strides, self.strides))(residual)
            residual = norm()(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet backbone returning pooled representations.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_cls: ``BasicBlock`` or ``Bottleneck``.
      width: channels of the first stage (64 in the standard ResNet); stage i
        has ``width * 2**i`` channels (times 4 for bottlenecks).
      stem: ``"cifar"`` (3x3 conv stride 1, no max-pool; for 28-64 px images)
        or ``"imagenet"`` (7x7 conv stride 2 + 3x3 max-pool stride 2, padding 1).
      dtype: compute dtype (parameters stay float32).
      mean, std: per-channel input normalisation (tuples of 1 or C floats),
        applied inside the model to the [0, 1] input.

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1] (any C), ``train`` bool.
    Returns float32 ``(B, representation_dim)``.
    """

    stage_sizes: Sequence[int]
    block_cls: Callable[..., nn.Module] = BasicBlock
    width: int = 64
    stem: str = "cifar"
    dtype: Any = jnp.float32
    mean: tuple = PIXEL_MEAN
    std: tuple = PIXEL_STD

    @property
    def representation_dim(self) -> int:
        """Size D of the pooled representation (int)."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = normalize(x, self.mean, self.std, self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=0.9, epsilon=1e-5, dtype=self.dtype)
        if self.stem == "cifar":
            x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                        name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        elif self.stem == "imagenet":
            x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False,
                        dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"stem={self.stem!r} is not one of 'cifar', 'imagenet'")
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.width * 2 ** i, strides, dtype=self.dtype,
                                   name=f"stage{i + 1}_block{j + 1}")(x, train)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


# name -> (stage sizes, block)
ARCHITECTURES = {
    "resnet10": ((1, 1, 1, 1), BasicBlock),   # one block per stage: CPU-scale default
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
}
