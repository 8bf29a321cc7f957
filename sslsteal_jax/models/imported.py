"""The model of an imported victim checkpoint: an encoder and an optional head.

``models.convert`` turns a PyTorch checkpoint (torchvision-layout ResNet or
timm-layout ViT, with its projection head when asked for) into the variables
of an :class:`ImportedModel`; ``models.build_model("simclr", cfg)`` rebuilds it
from a checkpoint's model config when the config has ``head_layers``. It
returns ``(h, z)`` like the toolkit's own SimCLR victims, so the API, the
attacks, the evaluation and every experiment use it unchanged.
"""
from __future__ import annotations

import flax.linen as nn

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.models.heads import SequentialHead


class ImportedModel(nn.Module):
    """Encoder ``f`` plus an optional imported projection head ``g``.

    Attributes:
      encoder: a ``models.resnet.ResNet`` or ``models.vit.VisionTransformer``.
      head_layers: ``SequentialHead`` layer specs; ``()`` = no head (then ``z = h``,
        and the API refuses ``output="projection"``).
      image_shape: ``(H, W, C)`` the checkpoint was imported for (``()``: unchecked).
        The channel count is checked at call time (ResNets accept other spatial
        sizes; a ViT checks its own).

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1]; returns ``(h, z)``: ``h`` the
    representation ``(B, D)``, ``z = g(h)`` ``(B, D_z)`` (or ``h``).
    Raises:
      ConfigError: images with another channel count than ``image_shape``.
    """

    encoder: nn.Module
    head_layers: tuple = ()
    image_shape: tuple = ()

    @property
    def has_head(self) -> bool:
        """True when a projection head was imported."""
        return bool(self.head_layers)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.image_shape and x.shape[-1] != self.image_shape[-1]:
            h, w, c = self.image_shape
            raise ConfigError(
                f"the imported victim takes {c}-channel images ({h}x{w}x{c}), got "
                f"{tuple(x.shape[1:])}: resize the data, e.g. dataset=fashion_mnist@{h}x{w}x{c}")
        h = self.encoder(x, train)
        if not self.head_layers:
            return h, h
        return h, SequentialHead(self.head_layers, dtype=self.encoder.dtype, name="head")(h, train)
