"""Self-supervised and stealing objectives: pure functions, arrays in, scalar out.

Notation (Dziedzic et al., ICML 2022, Section 3 "Stealing encoders"): a batch
of B queries, ``s`` float32 ``(B, D)`` = surrogate representations f_s(x),
``v`` float32 ``(B, D)`` = representations returned by the victim API
(treated as constants: every stealing loss applies ``stop_gradient`` to ``v``).

Every function returns a float32 scalar. ``LOSSES`` (bottom) registers each
stealing objective with its reference hyper-parameters and the extra inputs it
needs; the trainers and configs read per-loss defaults from it only.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from sslsteal_jax.errors import ConfigError

_EPS = 1e-8


def _l2_normalize(x, axis=-1):
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


def nt_xent(a, b, temperature: float):
    """NT-Xent / InfoNCE over two aligned batches (SimCLR, Chen et al. 2020, Eq. 1).

    Rows ``a[i]`` and ``b[i]`` are positives; the other 2B-2 rows of
    ``u = [a; b]`` are negatives. Rows are L2-normalised, logits are
    ``u u^T / temperature`` with the diagonal removed, and the loss is the mean
    cross-entropy of each row against its partner (i <-> i + B).

    Args:
      a, b: float32 ``(B, D)``.
      temperature: tau > 0 (0.07 in the stealing paper's reference, 0.1-0.5 common).
    Returns:
      scalar float32, mean over the 2B rows.
    """
    n = a.shape[0]
    u = _l2_normalize(jnp.concatenate([a, b], axis=0).astype(jnp.float32))
    logits = u @ u.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(logp[jnp.arange(2 * n), partner])


def infonce_loss(s, v, temperature: float = 0.07):
    """InfoNCE stealing loss: ``nt_xent(s, stop_gradient(v), temperature)``.

    Source: Dziedzic et al. ICML 2022, Section 3 (contrastive stealing loss),
    reference temperature 0.07.
    """
    return nt_xent(s, jax.lax.stop_gradient(v), temperature)


def mse_loss(s, v):
    """Mean over batch and dimensions of ``(s - v)^2`` (ICML 2022, Section 3)."""
    return jnp.mean((s - jax.lax.stop_gradient(v)) ** 2)


def soft_nearest_neighbor(x, labels, temperature: float):
    """Soft nearest-neighbour loss (Frosst, Papernot, Hinton, ICML 2019, Eq. 1).

    For each row i: ``-log( sum_{j != i, y_j = y_i} exp(-|x_i - x_j|^2 / T)
    / sum_{k != i} exp(-|x_i - x_k|^2 / T) )``, averaged over rows.

    Args:
      x: float32 ``(N, D)``; labels: int ``(N,)``; temperature: T > 0.
    """
    x = x.astype(jnp.float32)
    sq = jnp.sum(x * x, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    logits = -d2 / temperature
    n = x.shape[0]
    not_self = ~jnp.eye(n, dtype=bool)
    same = (labels[:, None] == labels[None, :]) & not_self
    neg_inf = -jnp.inf
    log_num = jax.nn.logsumexp(jnp.where(same, logits, neg_inf), axis=1)
    log_den = jax.nn.logsumexp(jnp.where(not_self, logits, neg_inf), axis=1)
    return jnp.mean(log_den - log_num)


def softnn_loss(s, v, temperature: float = 100.0):
    """SoftNN stealing loss on ``u = [s; v]`` where rows with the same query
    index form a class (ICML 2022, Section 3; T = 100 for CIFAR-scale)."""
    n = s.shape[0]
    u = jnp.concatenate([s, jax.lax.stop_gradient(v)], axis=0)
    labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    return soft_nearest_neighbor(u, labels, temperature)


def wasserstein_loss(s, v):
    """1-D Wasserstein-1 distance between per-row histograms over dimensions.

    Each row of ``s`` and ``v`` (non-negative after ReLU + pooling; negative
    entries are clipped to 0) is normalised to sum 1; W1 = sum over dims of
    |CDF_s - CDF_v|; mean over rows (ICML 2022, Section 3).
    """
    p = jnp.maximum(s, 0.0) + _EPS
    q = jnp.maximum(jax.lax.stop_gradient(v), 0.0) + _EPS
    p = p / jnp.sum(p, axis=1, keepdims=True)
    q = q / jnp.sum(q, axis=1, keepdims=True)
    return jnp.mean(jnp.sum(jnp.abs(jnp.cumsum(p, axis=1) - jnp.cumsum(q, axis=1)), axis=1))


def cosine_loss(s, v):
    """Mean over rows of ``1 - cos(s_i, v_i)`` (StolenEncoder, Liu et al. CCS 2022, Eq. 2)."""
    sn, vn = _l2_normalize(s), _l2_normalize(jax.lax.stop_gradient(v))
    return jnp.mean(1.0 - jnp.sum(sn * vn, axis=1))


def barlow_loss(s, v, off_diagonal_weight: float = 0.0051):
    """Barlow Twins redundancy-reduction loss between surrogate and victim batches.

    Source: Zbontar et al., "Barlow Twins" (ICML 2021), Eq. 1. Each dimension is
    standardised over the batch; ``c = s_n^T v_n / B`` (D x D);
    loss = ``sum_i (1 - c_ii)^2 + off_diagonal_weight * sum_{i != j} c_ij^2``.
    """
    v = jax.lax.stop_gradient(v)
    b = s.shape[0]
    sn = (s - s.mean(0)) / (s.std(0) + 1e-5)
    vn = (v - v.mean(0)) / (v.std(0) + 1e-5)
    c = sn.T @ vn / b
    diag = jnp.diagonal(c)
    off = jnp.sum(c ** 2) - jnp.sum(diag ** 2)
    return jnp.sum((1.0 - diag) ** 2) + off_diagonal_weight * off


def probability_cross_entropy(logits, target_probs):
    """Cross-entropy ``-sum_c t_c log softmax(logits)_c`` against a target
    distribution, mean over rows.

    Used by the label-based baselines (Knockoff Nets, Orekondy et al., CVPR
    2019, Section 4): ``target_probs`` is the victim classifier's probability
    vector, or a one-hot top-1 label (then this is the ordinary cross-entropy).

    Args:
      logits: float32 ``(B, C)`` surrogate classifier logits.
      target_probs: float32 ``(B, C)``, rows non-negative and summing to 1
        (treated as constants: stop-gradient).
    Returns:
      scalar float32 (nats).
    """
    t = jax.lax.stop_gradient(target_probs)
    return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(logits.astype(jnp.float32), axis=1), axis=1))


def soft_cross_entropy_loss(s, v, temperature: float = 1.0):
    """Cross-entropy of ``softmax(s / T)`` against the soft target ``softmax(v / T)``,
    mean over rows (nats). A corrected version of the reference code's "softce"
    stealing loss, which compared the surrogate with its own softmax and never
    used the victim output (docs/science.md section 4; Dziedzic et al. ICML 2022 list a
    soft cross-entropy among the stealing losses, Section 3).

    Args:
      s, v: float32 ``(B, D)`` surrogate outputs and victim answers (D "classes").
      temperature: T > 0; smaller T sharpens both distributions.
    """
    return probability_cross_entropy(s / temperature,
                                     jax.nn.softmax(jax.lax.stop_gradient(v) / temperature, axis=1))


def symmetrized_loss(p1, p2, v1, v2):
    """SimSiam-style symmetrized negative-cosine stealing loss.

    Source: SimSiam (Chen & He, CVPR 2021, Eq. 1-2: ``L = D(p1, sg(z2))/2 +
    D(p2, sg(z1))/2`` with ``D(p, z) = -cos(p, z)``), used as a stealing loss by
    Dziedzic et al. (ICML 2022, Section 3 "symmetrized" loss) and again in the
    B4B evaluation (Dubinski et al., NeurIPS 2023). Here the online branch is
    the surrogate followed by a trainable predictor MLP ``q`` and the target
    branch is the victim API (stop-gradient, it is a constant anyway). For two
    views ``x1, x2`` of the same image:

        L = -1/2 [ cos(q(f_s(x1)), v(x2)) + cos(q(f_s(x2)), v(x1)) ]

    where ``v(x)`` is the API's answer for view ``x``: each view's prediction is
    matched with the victim's answer for the *other* view. When only one
    answer per image was bought (query once), ``v1 = v2`` is that answer and
    the second view is a surrogate-side augmentation.

    Args:
      p1, p2: float32 ``(B, D)`` predictor outputs for views 1 and 2.
      v1, v2: float32 ``(B, D)`` API answers for views 1 and 2.
    Returns:
      scalar float32 in [-1, 1] (-1 = perfect alignment).
    """
    def neg_cos(p, z):
        return -jnp.mean(jnp.sum(_l2_normalize(p) * _l2_normalize(jax.lax.stop_gradient(z)), axis=1))
    return 0.5 * (neg_cos(p1, v2) + neg_cos(p2, v1))


def supcon_loss(features, labels, temperature: float = 0.07):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, Eq. 2, L_out).

    Args:
      features: float32 ``(N, D)`` (L2-normalised inside); labels: int ``(N,)``.
    For each anchor i with at least one positive: ``-mean_{p in P(i)} log
    softmax_{a != i}(z_i . z_a / T)[p]``; averaged over such anchors.
    """
    z = _l2_normalize(features.astype(jnp.float32))
    n = z.shape[0]
    not_self = ~jnp.eye(n, dtype=bool)
    logits = jnp.where(not_self, z @ z.T / temperature, -jnp.inf)
    logp = jax.nn.log_softmax(logits, axis=1)
    pos = (labels[:, None] == labels[None, :]) & not_self
    npos = jnp.sum(pos, axis=1)
    per_anchor = -jnp.sum(jnp.where(pos, logp, 0.0), axis=1) / jnp.maximum(npos, 1)
    has = npos > 0
    return jnp.sum(jnp.where(has, per_anchor, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def supcon_stealing_loss(s, v, labels, temperature: float = 0.07):
    """Supervised-contrastive stealing baseline: ``supcon_loss`` on ``u = [s; v]``
    with labels ``[y; y]`` (as in the reference code of Dziedzic et al., ICML
    2022): every surrogate row is pulled towards the victim's answers (and the
    surrogate rows) of all queried images of the same class.

    The labels are *not* returned by the API: this is a baseline for an
    attacker who owns labels for its query images (in this toolkit, the
    ground-truth labels of the query pool, see ``attacks.strategies``).

    Args:
      s, v: float32 ``(B, D)``; labels: int ``(B,)``; temperature: T > 0.
    """
    u = jnp.concatenate([s, jax.lax.stop_gradient(v)], axis=0)
    return supcon_loss(u, jnp.concatenate([labels, labels]), temperature)


def symmetrized_stealing_loss(s, v, pair):
    """Registry form of :func:`symmetrized_loss`: ``symmetrized_loss(s, pair[0], v, pair[1])``.

    Args:
      s, v: float32 ``(B, D)`` predictor outputs and API answers of view 1.
      pair: ``(p2, v2)``, float32 ``(B, D)`` each: predictor outputs and API
        answers of view 2 (or of a surrogate-side view with ``v2 = v``).
    Returns:
      scalar float32 in [-1, 1].
    """
    return symmetrized_loss(s, pair[0], v, pair[1])


# ---- the loss registry ------------------------------------------------------------------

#: Extra inputs a loss can need beyond ``(s, v)`` (``LossSpec.needs``):
#: "labels": int ``(B,)`` class labels of the queried images (owned by the attacker,
#: not returned by the API), passed as ``labels=``; "pair": a second view of each
#: example and its target, ``pair=(p2, v2)`` (a second queried view when bought, else a
#: surrogate-side augmented view with the same answer); "predictor": the surrogate
#: ends in a SimSiam predictor MLP (``models.SurrogateModel(predictor_hidden=...)``);
#: "class_targets": the answers are class distributions ``(B, C)`` from the provider's
#: classifier API and the surrogate always gets a linear head with C outputs.
NEEDS = ("labels", "pair", "predictor", "class_targets")
#: ``LossSpec.group``: "paper" = the four losses of the ICML 2022 main results ("all" in
#: configs), "extra" = further objectives (docs/science.md section 2), "baseline" =
#: the label / probability baselines' cross-entropy (used by attack strategies, not
#: selectable as a stealing loss).
GROUPS = ("paper", "extra", "baseline")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One stealing objective and its reference hyper-parameters.

    Fields:
      fn: the loss, called ``fn(s, v, **kw)`` with ``s`` float32 ``(B, D)``
        surrogate outputs and ``v`` float32 ``(B, D)`` targets (API answers);
        ``kw`` holds ``temperature=`` when ``temperature`` is not None,
        ``labels=`` when "labels" is in ``needs`` and ``pair=`` when "pair" is
        in ``needs``. Returns a float32 scalar.
      batch_size: reference surrogate batch size (queried examples per
        optimizer step).
      learning_rate: reference Adam learning rate (peak of the warm-up +
        cosine schedule; weight decay 1e-4 is a steal-config setting).
      temperature: reference temperature (dimensionless; tau of the
        contrastive losses, T of soft nearest neighbours and soft
        cross-entropy), or None for losses without one.
      needs: subset of :data:`NEEDS` (inputs beyond ``(s, v)``).
      group: one of :data:`GROUPS`.
      scale_overrides: settings replacing the reference ones at this
        toolkit's CPU scale (Fashion-MNIST 28x28, ResNet-10 width 16,
        2,000-20,000 queries, 30 epochs; README "Main job"); configs read
        them through :func:`scale_overrides` into ``loss_overrides``.
      source: paper and section of the loss and of its reference settings.

    Sources of the reference settings: mse, wasserstein, infonce, softnn:
    Dziedzic et al., ICML 2022, Section 4 (Adam, weight decay 1e-4; mse /
    wasserstein batch 64 lr 1e-3; infonce batch 256 lr 3e-4 tau 0.07 (the
    authors' code); softnn batch 256 lr 1e-3 T 100 (the authors' code)).
    cosine: StolenEncoder's objective (Liu et al., CCS 2022) at the mse
    setting. barlow, symmetrized, supcon: batch-statistics losses at the
    contrastive batch size; supcon's tau is the reference code's 0.07.
    softce: T = 1 (soft targets ``softmax(v / T)``). xent: the label /
    probability baselines (Knockoff Nets, Orekondy et al., CVPR 2019),
    trained like the per-sample losses.

    Raises (on construction):
      ValueError: unknown ``needs`` entry or ``group``, or a non-positive
        batch size, learning rate or temperature.
    """

    fn: Callable
    batch_size: int
    learning_rate: float
    temperature: float | None
    needs: frozenset = frozenset()
    group: str = "extra"
    scale_overrides: Mapping[str, float] = dataclasses.field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        bad = sorted(set(self.needs) - set(NEEDS))
        if bad:
            raise ValueError(f"unknown LossSpec needs {bad}; allowed: {list(NEEDS)}")
        if self.group not in GROUPS:
            raise ValueError(f"unknown LossSpec group {self.group!r}; allowed: {list(GROUPS)}")
        if self.batch_size < 1 or self.learning_rate <= 0 or (
                self.temperature is not None and self.temperature <= 0):
            raise ValueError(f"LossSpec needs batch_size >= 1, learning_rate > 0 and temperature "
                             f"None or > 0, got {self.batch_size}, {self.learning_rate}, "
                             f"{self.temperature}")
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "scale_overrides", MappingProxyType(dict(self.scale_overrides)))

    def defaults(self) -> dict:
        """``{"batch_size", "learning_rate", "temperature"}``: the reference settings
        (what a steal config's None fields resolve to)."""
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "temperature": self.temperature}


_ICML22 = "Dziedzic et al., ICML 2022, Section 3 (loss) and Section 4 (settings)"

#: Every stealing objective by name: the single place of per-loss defaults.
#: Adding a loss = one function above + one entry here (at the end) + one hand-computed
#: test + its entry in ``_PER_LOSS_TEST`` of tests/test_losses.py (docs/extending.md).
LOSSES: dict[str, LossSpec] = {
    "mse": LossSpec(mse_loss, 64, 1e-3, None, group="paper", source=_ICML22),
    "infonce": LossSpec(infonce_loss, 256, 3e-4, 0.07, group="paper", source=_ICML22,
                        scale_overrides={"learning_rate": 1e-3, "temperature": 0.1}),
    "softnn": LossSpec(softnn_loss, 256, 1e-3, 100.0, group="paper", source=_ICML22,
                       scale_overrides={"temperature": 10.0}),
    "wasserstein": LossSpec(wasserstein_loss, 64, 1e-3, None, group="paper", source=_ICML22),
    "cosine": LossSpec(cosine_loss, 64, 1e-3, None,
                       source="StolenEncoder, Liu et al., CCS 2022, Eq. 2; mse settings"),
    "barlow": LossSpec(barlow_loss, 256, 1e-3, None,
                       source="Barlow Twins, Zbontar et al., ICML 2021, Eq. 1"),
    "symmetrized": LossSpec(symmetrized_stealing_loss, 256, 1e-3, None,
                            needs=frozenset({"pair", "predictor"}),
                            source="SimSiam, Chen & He, CVPR 2021, Eq. 1-2; ICML 2022 Section 3"),
    "supcon": LossSpec(supcon_stealing_loss, 256, 3e-4, 0.07, needs=frozenset({"labels"}),
                       source="SupCon, Khosla et al., NeurIPS 2020, Eq. 2; ICML 2022 code"),
    "softce": LossSpec(soft_cross_entropy_loss, 64, 1e-3, 1.0,
                       source="ICML 2022 Section 3, fixed as in docs/science.md section 4"),
    "xent": LossSpec(probability_cross_entropy, 64, 1e-3, None, group="baseline",
                     needs=frozenset({"class_targets"}),
                     source="Knockoff Nets, Orekondy et al., CVPR 2019, Section 4"),
}

# Derived name lists (registry order).
STEALING_LOSSES = tuple(n for n, s in LOSSES.items() if s.group == "paper")  # "all" in configs
EXTRA_LOSSES = tuple(n for n, s in LOSSES.items() if s.group == "extra")     # "extra"
ALL_LOSSES = STEALING_LOSSES + EXTRA_LOSSES                                  # "every"


def get_spec(name: str) -> LossSpec:
    """``LOSSES[name]``.

    Raises:
      ValueError: unknown ``name`` (lists the allowed names).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown stealing loss {name!r}; allowed: {list(LOSSES)}")
    return LOSSES[name]


#: Group names accepted by :func:`parse_losses`.
LOSS_GROUPS = {"all": STEALING_LOSSES, "extra": EXTRA_LOSSES, "every": ALL_LOSSES}


def parse_losses(spec) -> list[str]:
    """Loss names of a config field: ``"infonce"`` / ``"mse,softnn"`` (``+`` also
    separates) / a tuple of names / a group of :data:`LOSS_GROUPS`: ``"all"`` (the
    paper's four, ``STEALING_LOSSES``), ``"extra"`` (the rest, ``EXTRA_LOSSES``),
    ``"every"`` (both, ``ALL_LOSSES``); a group inside a list adds its losses
    (``"all+cosine"``). Repeats are dropped, first appearance kept. Baselines
    (group "baseline", e.g. "xent") are not selectable.

    Raises:
      ConfigError (a ValueError): empty, or an unknown loss name (lists the allowed ones).
    """
    items = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    names = [n for s in items if str(s).strip()
             for n in LOSS_GROUPS.get(str(s).strip(), (str(s).strip(),))]
    bad = [n for n in names if n not in ALL_LOSSES]
    if bad or not names:
        raise ConfigError(f"unknown stealing loss(es) {bad or spec!r}; allowed: "
                          f"{list(ALL_LOSSES)} or 'all' (the paper's four), 'extra', 'every'")
    return list(dict.fromkeys(names))


def scale_overrides() -> dict[str, dict]:
    """``{loss: {field: value}}`` of every loss with :attr:`LossSpec.scale_overrides`
    (registry order): the ``loss_overrides`` of the CPU-scale configs
    (``configs/quickstart.py``, ``configs/defense_matrix.py``)."""
    return {n: dict(s.scale_overrides) for n, s in LOSSES.items() if s.scale_overrides}


def stealing_loss(name: str, s, v, temperature: float | None = None, labels=None, pair=None):
    """Evaluate the registered loss ``LOSSES[name]`` on one batch.

    Args:
      name: a key of ``LOSSES`` (``ALL_LOSSES`` plus the "xent" baseline).
      s, v: float32 ``(B, D)`` surrogate outputs and victim answers (for
        "symmetrized": predictor outputs and answers of view 1; for "xent":
        logits and target class distributions).
      temperature: overrides the loss's reference temperature
        (``LossSpec.temperature``; None = the reference); ignored by losses
        without a temperature.
      labels: int ``(B,)`` class labels, required by losses that need "labels".
      pair: ``(p2, v2)`` predictor outputs and answers of view 2, required by
        losses that need "pair".
    Returns:
      scalar float32.
    Raises:
      ValueError: unknown ``name`` (lists the allowed names), or a missing
        ``labels`` / ``pair`` argument.
    """
    spec = get_spec(name)
    kw = {}
    if spec.temperature is not None:
        kw["temperature"] = spec.temperature if temperature is None else temperature
    if "labels" in spec.needs:
        if labels is None:
            raise ValueError(f"the {name!r} stealing loss needs labels=(B,) class labels")
        kw["labels"] = labels
    if "pair" in spec.needs:
        if pair is None:
            raise ValueError(f"the {name!r} stealing loss needs pair=(p2, v2), the predictor "
                             "outputs and answers of a second view")
        kw["pair"] = pair
    return spec.fn(s, v, **kw)
