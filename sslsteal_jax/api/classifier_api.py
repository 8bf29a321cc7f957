"""The provider's downstream classifier behind an API (label-based baselines).

Besides representations, the provider of Dziedzic et al. (ICML 2022, Section 4
"stealing from labels", and the Knockoff Nets setting of Orekondy et al.,
CVPR 2019) can sell a downstream classifier: the victim encoder with a linear
head trained on the provider's labelled data (here: the probe-train split).
``ClassifierAPI`` answers with the top-1 label or with the probability vector;
each image is one charged query, counted by an inner ``VictimAPI`` account.
"""
from __future__ import annotations

import jax
import numpy as np

from sslsteal_jax.api.victim_api import VictimAPI
from sslsteal_jax.evaluation.features import extract_features, make_apply
from sslsteal_jax.evaluation.probe import fit_linear_probe, probe_logits

CLASSIFIER_OUTPUTS = ("labels", "probabilities")


class ClassifierAPI:
    """Victim encoder + linear classifier, sold per query.

    Args:
      representation_api: a ``VictimAPI`` with ``output="representation"``
        (it counts the queries and enforces budgets; accounts are its accounts).
      probe: the linear head, a ``evaluation.probe.fit_linear_probe`` dict
        (``mean``, ``std`` (D,), ``w`` (D, K), ``b`` (K,)).
    Raises:
      ValueError: the inner API does not return representations, or the head
        does not fit its output dimension.
    """

    def __init__(self, representation_api: VictimAPI, probe: dict):
        if representation_api.output != "representation":
            raise ValueError(f"the classifier sits on the representation, got an API with "
                             f"output={representation_api.output!r}")
        if probe["w"].shape[0] != representation_api.output_dim:
            raise ValueError(f"linear head expects {probe['w'].shape[0]}-d features, the API "
                             f"returns {representation_api.output_dim}-d")
        self._api = representation_api
        self._probe = probe
        self.num_classes = int(probe["w"].shape[1])

    @classmethod
    def from_victim(cls, model, variables, image_shape, train_x: np.ndarray,
                    train_y: np.ndarray, key: jax.Array, epochs: int = 60, **api_kwargs):
        """Provider side: train the linear head on the victim's (BatchNorm
        inference-mode) representations of ``train_x`` uint8 ``(N,H,W,C)`` with
        labels ``train_y`` int ``(N,)`` (Adam lr 2e-3, wd 1e-4, ``epochs``
        epochs; ``fit_linear_probe``) and wrap it in an API.
        """
        feats = extract_features(make_apply(model, variables, 0), train_x,
                                 desc="features victim (downstream classifier)")
        probe = fit_linear_probe(feats, train_y, key, epochs=int(epochs))
        return cls(VictimAPI(model, variables, image_shape, **api_kwargs), probe)

    def register(self, user: str, budget: int | None) -> None:
        """Open (or reset) ``user``'s account with ``budget`` queries."""
        self._api.register(user, budget)

    def queries_used(self, user: str) -> int:
        """Queries charged to ``user`` so far."""
        return self._api.queries_used(user)

    def query(self, user: str, images, output: str = "labels") -> np.ndarray:
        """Classify a batch, charging one query per image.

        Args:
          user: account name.
          images: uint8 ``(B,H,W,C)`` or float32 in [0, 1] (validated by the inner API).
          output: "labels" (top-1 class, int32 ``(B,)``) or "probabilities"
            (softmax of the logits, float32 ``(B, K)``).
        Raises:
          ValueError: unknown ``output`` (nothing charged).
          QueryValidationError, BudgetExceededError: from the inner API.
        """
        if output not in CLASSIFIER_OUTPUTS:
            raise ValueError(f"unknown classifier output {output!r}; allowed: "
                             f"{list(CLASSIFIER_OUTPUTS)}")
        logits = probe_logits(self._probe, self._api.query(user, images))
        if output == "labels":
            return np.argmax(logits, axis=1).astype(np.int32)
        return np.asarray(jax.nn.softmax(logits, axis=1), np.float32)
