"""The ``Encoder`` value: a frozen model plus which of its outputs means what.

Every model of the toolkit returns a tuple: a SimCLR victim ``(representation
h, projection-head output g(h))``, a surrogate ``(representation, output in
the victim API's answer space)`` (the adapter output, or the representation
itself when the sizes match). Evaluation (linear probe, kNN, fidelity),
verification (watermark, dataset inference) and the reports need to know
which output to read; an :class:`Encoder` carries that next to the module, so
no caller passes bare output indices.

Source: the evaluation protocol of Dziedzic et al., ICML 2022, Section 4
(linear probe on the frozen representation, fidelity in the victim's answer
space).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sslsteal_jax.evaluation.features import extract_features, make_apply

#: The two roles an output can play (argument of :meth:`Encoder.apply`).
OUTPUTS = ("representation", "victim_space")


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A frozen encoder under evaluation.

    Attributes:
      name: row label in reports (e.g. ``"surrogate (infonce)"``).
      module: flax module whose call ``module.apply(variables, x, train=False)``
        returns a tuple of float32 ``(B, D_i)`` arrays for images ``(B, H, W, C)``
        in [0, 1].
      variables: ``{'params', 'batch_stats'}`` of ``module``.
      representation: index of the output that is the representation (probes,
        kNN, dataset inference); 0 for every model of the toolkit.
      victim_space: index of the output that lives in the victim API's answer
        space (fidelity, watermark test), or None when the encoder has no such
        output (e.g. an encoder of another output size).
      kind: ``"victim"``, ``"surrogate"``, ``"independent"``, ``"knockoff"``,
        ``"checkpoint"``, ... (free text, reported).
    """

    name: str
    module: Any
    variables: Any
    representation: int = 0
    victim_space: int | None = None
    kind: str = "encoder"

    @classmethod
    def victim(cls, module, variables, api_output: str = "representation",
               name: str = "victim") -> "Encoder":
        """The victim as its API serves it: the representation (output 0) is
        probed; its answer space is output 0 (``api_output="representation"``)
        or the projection head's output 1 (``"projection"``).

        Raises:
          ValueError: ``api_output`` not one of "representation", "projection".
        """
        if api_output not in ("representation", "projection"):
            raise ValueError(f"api_output={api_output!r}; allowed: 'representation', "
                             "'projection'")
        return cls(name, module, variables, 0, 0 if api_output == "representation" else 1,
                   "victim")

    @classmethod
    def surrogate(cls, name: str, module, variables, kind: str = "surrogate") -> "Encoder":
        """A surrogate (``models.SurrogateModel``): representation output 0, output
        in the victim's answer space 1 (its adapter, or the representation)."""
        return cls(name, module, variables, 0, 1, kind)

    def with_name(self, name: str) -> "Encoder":
        """The same encoder under another report label."""
        return dataclasses.replace(self, name=name)

    def index(self, output: str) -> int:
        """Output index of role ``output`` (:data:`OUTPUTS`).

        Raises:
          ValueError: unknown role, or ``"victim_space"`` on an encoder without one.
        """
        if output == "representation":
            return self.representation
        if output == "victim_space":
            if self.victim_space is None:
                raise ValueError(f"encoder {self.name!r} has no output in the victim's space")
            return self.victim_space
        raise ValueError(f"output={output!r}; allowed: {list(OUTPUTS)}")

    def apply(self, output: str | tuple = "representation"):
        """Jitted ``uint8|float32 (B,H,W,C) -> float32 (B, D)`` of one role, or of
        several roles concatenated along the feature axis (one forward pass) when
        ``output`` is a tuple (``evaluation.features.make_apply``)."""
        if isinstance(output, tuple):
            return make_apply(self.module, self.variables, tuple(self.index(o) for o in output))
        return make_apply(self.module, self.variables, self.index(output))

    def features(self, images: np.ndarray, output: str = "representation",
                 desc: str | None = None) -> np.ndarray:
        """float32 ``(N, D)`` outputs of role ``output`` on uint8 images ``(N,H,W,C)``
        (batched, data-parallel: ``extract_features``).

        Raises:
          ValueError: images whose shape the encoder's parameters do not fit (e.g. a
            colour image for a greyscale encoder), naming the shape, instead of flax's
            parameter-shape error.
        """
        import flax.errors
        try:
            return extract_features(self.apply(output), images, desc=desc)
        except flax.errors.ScopeParamShapeError as e:
            raise ValueError(f"images of shape {tuple(np.shape(images))} do not fit encoder "
                             f"{self.name!r} (its parameters expect other input channels or "
                             f"size; flax: {str(e).splitlines()[0]})") from None
