"""Compose defenses into one chain, built from a config spec.

A chain is an ordered list of links; each link is a registered defense with
validated parameters. The API applies the whole chain to every answer with
the asking user's state:

    reps_0 = victim answers; reps_{i+1}, state_i' = link_i(reps_i, state_i, key_i, params_i)

where ``key_0, ..., key_{n-1} = jax.random.split(call_key, n)`` (deterministic:
same call key -> same answers).

Spec formats (``parse_spec``):
* ``None``, ``""`` or ``"none"``: no defense;
* a string: links separated by ``+``, each ``name`` or ``name:param=value,param=value``,
  e.g. ``"gaussian:scale=0.1+round:decimals=2"`` or ``"b4b:beta=40,transform=affine"``;
* a list of dicts ``[{"name": "gaussian", "scale": 0.1}, {"name": "round", "decimals": 2}]``.
Unknown defense names or parameters, wrong types and out-of-range values raise
``ValueError`` naming the bad value and the allowed ones.

Registered defenses: the keys of ``DEFENSES`` (below), each with its function,
default parameters and checks; the functions and their sources are in the other
modules of this package. List them with
``python -c "from sslsteal_jax.defenses import DEFENSES; print(sorted(DEFENSES))"``
(an unknown name's error lists them too).
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax.defenses import b4b, perturb, similarity, transforms


@dataclasses.dataclass(frozen=True)
class DefenseType:
    """A registered defense.

    fn: ``(reps, state, key, params[, head]) -> (reps, state)``; defaults:
    parameter names -> default values (their types are enforced); check:
    ``(params, rep_dim) -> error message or None``; init: ``(params, user_key,
    rep_dim, head_dim) -> state``; setup: ``(params, key, rep_dim, reference)
    -> extra provider-side constants added to params`` (shared by all users;
    ``reference`` is None or float32 ``(N, rep_dim)`` victim answers on the
    provider's own images); needs_reference: ``params -> bool``, the setup
    needs ``reference``;
    out_dim: ``(params, rep_dim) -> answer width``; needs_head: the link also
    receives the victim's projection-head outputs; summary: ``state -> dict``
    of scalars for reports.
    """

    fn: Callable
    defaults: dict
    check: Callable = lambda p, d: None
    init: Callable = lambda p, k, d, hd: {}
    setup: Callable = lambda p, k, d, r: {}
    needs_reference: Callable = lambda p: False
    out_dim: Callable = lambda p, d: d
    needs_head: bool = False
    summary: Callable = lambda s: {}


def _finite(*names):
    def check(p, d):
        for n in names:
            if not math.isfinite(p[n]):
                return f"{n}={p[n]} must be finite"
        return None
    return check


def _noise_check(p, d):
    return _finite("mean", "scale")(p, d) or (
        f"scale={p['scale']} must be >= 0" if p["scale"] < 0 else None)


def _quantize_check(p, d):
    if not (math.isfinite(p["low"]) and math.isfinite(p["high"]) and p["high"] > p["low"]):
        return f"need finite low < high, got low={p['low']}, high={p['high']}"
    if not 0 <= p["bits"] <= 16:
        return f"bits={p['bits']} must be in [0, 16] (0 = use levels)"
    if p["bits"] == 0 and not 2 <= p["levels"] <= 2 ** 16:
        return f"levels={p['levels']} must be in [2, 65536]"
    return None


def _similarity_check(p, d):
    if not 0.0 <= p["threshold"] <= 1.0:
        return f"threshold={p['threshold']} must be in [0, 1] (rescaled cosine)"
    if p["memory"] < 1:
        return f"memory={p['memory']} must be >= 1"
    return _finite("garbage_mean", "garbage_scale")(p, d) or (
        f"garbage_scale={p['garbage_scale']} must be >= 0" if p["garbage_scale"] < 0 else None)


def _transform_check(p, d):
    if p["transform"] not in transforms.KINDS:
        return f"transform={p['transform']!r}; allowed: {list(transforms.KINDS)}"
    if p["pad"] < 0 or p["binary_dim"] < 0:
        return f"pad={p['pad']} and binary_dim={p['binary_dim']} must be >= 0"
    return None


def _b4b_check(p, d):
    if not (1 <= p["tables"] <= 1024 and 1 <= p["bits"] <= 20):
        return f"tables={p['tables']} must be in [1, 1024] and bits={p['bits']} in [1, 20]"
    for n in ("lam", "alpha", "beta", "max_scale"):
        if not (math.isfinite(p[n]) and p[n] > 0):
            return f"{n}={p[n]} must be finite and > 0"
    return _transform_check(p, d)


_TRANSFORM_DEFAULTS = {"transform": "affine", "pad": 32, "binary_dim": 0}


def _transform_out(p, d):
    return transforms.output_dim(p["transform"], d, p["pad"], p["binary_dim"])


def _transform_link(reps, state, key, params):
    return transforms.apply_transform(params["transform"], reps, state["secret"], key), state


DEFENSES: dict[str, DefenseType] = {
    "gaussian": DefenseType(perturb.gaussian_noise, {"mean": 0.0, "scale": 0.1}, _noise_check),
    "laplace": DefenseType(perturb.laplace_noise, {"mean": 0.0, "scale": 0.1}, _noise_check),
    "round": DefenseType(perturb.round_decimals, {"decimals": 2},
                         lambda p, d: None if -3 <= p["decimals"] <= 8
                         else f"decimals={p['decimals']} must be in [-3, 8]"),
    "topk": DefenseType(perturb.top_k, {"k": 16},
                        lambda p, d: None if 1 <= p["k"] <= d
                        else f"k={p['k']} must be in [1, {d}] (the answer width)"),
    "quantize": DefenseType(perturb.quantize, {"low": 0.0, "high": 2.0, "levels": 16, "bits": 0},
                            _quantize_check),
    "similarity": DefenseType(
        similarity.similarity_defense,
        {"threshold": 0.8, "memory": 2048, "garbage_mean": 1000.0, "garbage_scale": 1.0},
        _similarity_check, init=lambda p, k, d, hd: similarity.init_history(p["memory"], hd),
        needs_head=True,
        summary=lambda s: {"flagged": int(s["flagged"]), "seen": int(s["seen"])}),
    "b4b": DefenseType(
        b4b.b4b_defense,
        {"tables": 20, "bits": 12, "lam": 1e-6, "alpha": 0.8, "beta": 80.0, "max_scale": 1e4,
         "center": True, **_TRANSFORM_DEFAULTS},
        _b4b_check, init=lambda p, k, d, hd: b4b.init_state(p, k, d),
        setup=b4b.provider_constants, needs_reference=lambda p: bool(p["center"]),
        out_dim=_transform_out,
        summary=lambda s: {"coverage": float(s["coverage"]), "sigma": float(s["sigma"])}),
    "transform": DefenseType(
        _transform_link, dict(_TRANSFORM_DEFAULTS), _transform_check,
        init=lambda p, k, d, hd: {"secret": transforms.init_transform(
            p["transform"], k, d, p["pad"], p["binary_dim"])},
        out_dim=_transform_out),
}


def _coerce(name: str, param: str, value: Any, default: Any):
    """Cast ``value`` to the type of ``default``; raise ValueError naming both."""
    want = type(default)
    try:
        if want is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if want is int:
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if want is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"defense {name!r}: parameter {param}={value!r} must be "
                         f"{want.__name__}") from None


def make_link(name: str, params: dict | None = None) -> tuple[str, dict]:
    """Validate one link: known name, known parameters, right types; defaults filled.

    Returns ``(name, params)``. Range checks that need the answer width happen
    in ``DefenseChain``.
    Raises:
      ValueError: unknown defense or parameter (lists the allowed ones), bad type.
    """
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; allowed: {sorted(DEFENSES)}")
    d = DEFENSES[name].defaults
    out = dict(d)
    for k, v in (params or {}).items():
        if k not in d:
            raise ValueError(f"unknown parameter {k!r} of defense {name!r}; allowed: {sorted(d)}")
        out[k] = _coerce(name, k, v, d[k])
    return name, out


def parse_spec(spec) -> list[tuple[str, dict]]:
    """Parse a chain spec (see module docstring) into validated ``(name, params)`` links.

    Raises:
      ValueError: malformed spec, unknown defense / parameter, bad value type.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return []
    if isinstance(spec, str):
        links = []
        for part in filter(None, (p.strip() for p in spec.split("+"))):
            name, _, rest = part.partition(":")
            params = {}
            for kv in filter(None, (s.strip() for s in rest.split(","))):
                if "=" not in kv:
                    raise ValueError(f"defense parameter {kv!r} in {part!r} is not param=value")
                k, v = (s.strip() for s in kv.split("=", 1))
                params[k] = v
            links.append(make_link(name.strip(), params))
        return links
    links = []
    for item in spec:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            links.append(make_link(item[0], dict(item[1])))
        elif hasattr(item, "get") and "name" in item:
            item = dict(item)
            links.append(make_link(item.pop("name"), item))
        else:
            raise ValueError(f"defense spec item {item!r} must be a dict with 'name' or a "
                             f"(name, params) pair")
    return links


def format_spec(links) -> str:
    """Canonical string of parsed links (parameters that differ from the defaults only)."""
    parts = []
    for name, p in links:
        extra = ",".join(f"{k}={v}" for k, v in p.items() if DEFENSES[name].defaults.get(k) != v)
        parts.append(f"{name}:{extra}" if extra else name)
    return "+".join(parts) or "none"


def needs_reference(spec) -> bool:
    """Whether a chain spec has a link that needs the provider's reference answers
    (``b4b`` with ``center=True``, the default).

    Raises:
      ValueError: bad spec (as ``parse_spec``).
    """
    return any(DEFENSES[n].needs_reference(p) for n, p in parse_spec(spec))


def user_key(key, user: str):
    """Per-user PRNG key: ``fold_in(key, crc32(user))`` (stable across processes)."""
    return jax.random.fold_in(key, zlib.crc32(user.encode()) & 0x7FFFFFFF)


class DefenseChain:
    """A validated, jitted chain of defenses for answers of width ``rep_dim``.

    Args:
      spec: chain spec (string, list of dicts, or parsed links).
      rep_dim: width D of the victim's answers; head_dim: width of its head output.
      key: the provider's PRNG key (LSH hyperplanes come from ``fold_in(key, i)``).
      reference: None or float32 ``(N, rep_dim)``: the victim's answers on the
        provider's own images (B4B's LSH centre, ``center=True``). Links that
        need it must see the victim's coordinates: no secret transform before them.
    Attributes:
      links: ``[(name, params)]``; output_dim: width of the defended answers;
      needs_head: some link needs the victim's head outputs.
    Raises:
      ValueError: bad spec or a parameter out of range (names it and the allowed range);
        a link needs ``reference`` but none was given, or comes after a secret transform.
    """

    def __init__(self, spec, rep_dim: int, head_dim: int, key, reference=None):
        self.links = parse_spec(spec)
        self.rep_dim, self.head_dim = int(rep_dim), int(head_dim)
        self._params = []
        d, transformed = self.rep_dim, None
        for i, (name, p) in enumerate(self.links):
            t = DEFENSES[name]
            where = f"defense {name!r} (link {i} of '{format_spec(self.links)}')"
            err = t.check(p, d)
            if err:
                raise ValueError(f"{where}: {err}")
            if t.needs_reference(p) and transformed is not None:
                raise ValueError(f"{where} needs the victim's coordinates (reference centre) but "
                                 f"comes after the secret transform of link {transformed}; put it "
                                 f"first or set center=false")
            try:
                full = dict(p, **t.setup(p, jax.random.fold_in(key, i), d,
                                         reference if t.needs_reference(p) else None))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            self._params.append(full)
            if p.get("transform", "none") != "none":
                transformed = i
            d = t.out_dim(p, d)
        self.output_dim = d
        self.needs_head = any(DEFENSES[n].needs_head for n, _ in self.links)
        self._apply = jax.jit(self._apply_impl)

    def describe(self) -> str:
        """Canonical spec string of the chain."""
        return format_spec(self.links)

    def init_state(self, key) -> tuple:
        """Fresh per-user state (tuple, one entry per link) from the user's key."""
        d, states = self.rep_dim, []
        for i, (name, p) in enumerate(self.links):
            t = DEFENSES[name]
            states.append(t.init(self._params[i], jax.random.fold_in(key, i), d, self.head_dim))
            d = t.out_dim(p, d)
        return tuple(states)

    def _apply_impl(self, reps, head, states, key):
        keys = jax.random.split(key, max(len(self.links), 1))
        new = []
        for i, (name, _) in enumerate(self.links):
            t = DEFENSES[name]
            if t.needs_head:
                reps, s = t.fn(reps, states[i], keys[i], self._params[i], head=head)
            else:
                reps, s = t.fn(reps, states[i], keys[i], self._params[i])
            new.append(s)
        return reps.astype(jnp.float32), tuple(new)

    def apply(self, reps, states, key, head=None):
        """Defend one batch of answers.

        Args:
          reps: float32 ``(B, rep_dim)`` victim answers, in query order.
          states: the user's state (``init_state``).
          key: the call's PRNG key (same key and state -> same answers).
          head: float32 ``(B, head_dim)`` head outputs (required if ``needs_head``).
        Returns:
          ``(float32 (B, output_dim), new_states)``.
        Raises:
          ValueError: ``head`` missing but needed, or shape mismatch.
        """
        reps = jnp.asarray(reps, jnp.float32)
        if reps.ndim != 2 or reps.shape[1] != self.rep_dim:
            raise ValueError(f"answers must be (B, {self.rep_dim}), got {reps.shape}")
        if self.needs_head:
            if head is None or np.shape(head) != (reps.shape[0], self.head_dim):
                raise ValueError(f"this chain needs head outputs of shape ({reps.shape[0]}, "
                                 f"{self.head_dim}), got {None if head is None else np.shape(head)}")
            head = jnp.asarray(head, jnp.float32)
        else:
            head = jnp.zeros((reps.shape[0], 0), jnp.float32)
        return self._apply(reps, head, states, key)

    def summary(self, states) -> dict:
        """Scalars for reports: ``{"<i>:<name>.<field>": value}`` over links."""
        out = {}
        for i, (name, _) in enumerate(self.links):
            for k, v in DEFENSES[name].summary(states[i]).items():
                out[f"{i}:{name}.{k}"] = v
        return out
