"""The legitimate user: what a defense costs an honest customer of the API.

A legitimate user has one downstream task: it sends its own labelled training
images through the (defended) API, trains a linear probe on the answers, and
classifies its test images from their answers, which also go through the API
under the same account (same defense state, same secret transform). Its test
accuracy is reported next to the attacker's stolen-encoder accuracy for every
defense setting (docs/science.md section 3 "Utility for legitimate users"; Dziedzic et
al., ICML 2022, Section 5: defenses that hurt the attacker hurt legitimate
users too; Dubinski et al., NeurIPS 2023, Section 4: a B4B user with one task
covers little of the representation space).
"""
from __future__ import annotations

import numpy as np

from sslsteal_jax.evaluation.probe import linear_probe


def task_subset(x: np.ndarray, y: np.ndarray, classes=None, n: int | None = None):
    """A single-task user's data: the first ``n`` examples whose label is in ``classes``.

    Args:
      x: uint8 ``(N, H, W, C)``; y: int ``(N,)``; classes: None (all labels) or
      a list of labels; n: None (all) or the number of examples.
    Returns:
      ``(x_task, y_task int32)`` with labels renumbered to ``0..len(classes)-1``
      in the order of ``sorted(classes)``.
    Raises:
      ValueError: a class absent from ``y``, or fewer than ``n`` examples.
    """
    labels = np.unique(y) if classes is None else np.array(sorted(set(int(c) for c in classes)))
    missing = [int(c) for c in labels if not np.any(y == c)]
    if missing:
        raise ValueError(f"classes {missing} do not occur; labels present: {np.unique(y).tolist()}")
    idx = np.flatnonzero(np.isin(y, labels))
    if n is not None:
        if len(idx) < n:
            raise ValueError(f"only {len(idx)} examples of classes {labels.tolist()}, asked for {n}")
        idx = idx[:n]
    remap = {int(c): i for i, c in enumerate(labels)}
    return x[idx], np.array([remap[int(v)] for v in y[idx]], np.int32)


def legit_user_accuracy(api, user: str, train_x, train_y, test_x, test_y, key,
                        epochs: int = 100, chunk: int = 1000) -> dict:
    """Linear-probe accuracy of a legitimate user working only through the API.

    Args:
      api: ``VictimAPI`` (possibly defended); user: the user's account.
      train_x / test_x: uint8 images; train_y / test_y: int labels.
      key: PRNG key of the probe; epochs: probe epochs (Adam, lr 2e-3, wd 1e-4).
    Returns:
      ``{"accuracy": percent, "queries": charged, "defense": api.defense_summary(user)}``.
    """
    def answers(x):
        return np.concatenate([api.query(user, x[i:i + chunk]) for i in range(0, len(x), chunk)])

    tr, te = answers(train_x), answers(test_x)
    acc = linear_probe(tr, train_y, te, test_y, key, epochs=epochs)
    return {"accuracy": acc, "queries": api.queries_used(user),
            "defense": api.defense_summary(user)}


def coverage_curve(api, user: str, images: np.ndarray, step: int) -> list[dict]:
    """B4B coverage and noise of ``user`` as it sends ``images`` in calls of ``step``.

    Returns a list of ``{"queries", "coverage" (percent), "sigma"}`` after each
    call (read from ``api.defense_summary``; the API must have a ``b4b`` link).
    Raises:
      ValueError: the API has no ``b4b`` defense.
    """
    out = []
    for i in range(0, len(images), step):
        api.query(user, images[i:i + step])
        s = api.defense_summary(user)
        cov = [v for k, v in s.items() if k.endswith("b4b.coverage")]
        sig = [v for k, v in s.items() if k.endswith("b4b.sigma")]
        if not cov:
            raise ValueError(f"API defenses {api.defenses!r} have no b4b link")
        out.append({"queries": api.queries_used(user), "coverage": cov[0], "sigma": sig[0]})
    return out
