"""SimCLR victim carrying a secret watermark MLP on its representation.

Source: Dziedzic et al. (ICML 2022), Section 5 (watermarking defense: a small
MLP on the representation ``h`` solves a secret rotation task and is trained
jointly with the encoder, so the task's signal is entangled with the
representation the API sells).

The call signature is the one of ``SimCLRModel`` (returns ``(h, g(h))``), so a
watermarked checkpoint is served by ``VictimAPI`` and stolen by the attacks
exactly like an ordinary victim; the watermark MLP is reached only through
``watermark_logits`` (the owner's secret).
"""
from __future__ import annotations

import flax.linen as nn

from sslsteal_jax.models.heads import MLPHead
from sslsteal_jax.models.resnet import ResNet


class WatermarkedSimCLR(nn.Module):
    """Encoder f, projection head g, and watermark MLP w.

    Call: ``x`` float32 ``(B, H, W, C)`` in [0, 1] -> ``(h (B, D), z (B, head_out))``.
    ``watermark_logits(h)``: float32 ``(B, D)`` -> ``(B, watermark_classes)``
    logits of ``w(sqrt(D) h / ||h||)`` (scale-free input, see
    ``verification.watermark.watermark_input``).
    Parameters: ``params['encoder']``, ``params['head']`` (same layout as
    ``SimCLRModel``) and ``params['watermark']``.
    """

    encoder: ResNet
    head_hidden: int
    head_out: int
    watermark_hidden: int = 256
    watermark_classes: int = 4

    def setup(self):
        self.head = MLPHead(self.head_hidden, self.head_out, dtype=self.encoder.dtype)
        self.watermark = MLPHead(self.watermark_hidden, self.watermark_classes)

    def __call__(self, x, train: bool = False):
        h = self.encoder(x, train)
        if self.is_initializing():
            self.watermark_logits(h)  # create the watermark parameters at init
        return h, self.head(h)

    def watermark_logits(self, h):
        from sslsteal_jax.verification.watermark import watermark_input
        return self.watermark(watermark_input(h))
