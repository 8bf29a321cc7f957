"""VictimAPI: the encoder behind a paid representation API.

Setting of Dziedzic et al. (ICML 2022, Section 2): the provider sells
``x -> f_v(x)``; by default the API returns the backbone representation ``h``,
optionally the projection-head output ``g(h)``. The attacker pays per query
(one image = one query). The victim's parameters are private to this object:
callers only ever receive numpy arrays of answers.

With ``defenses`` configured (a ``defenses.DefenseChain`` spec), every answer
goes through the chain with the asking user's own defense state (e.g. its
query-similarity history or B4B coverage). The API owns a PRNG key
(``seed``): the provider's constants (LSH hyperplanes) come from one half of
it, each user's secrets (transforms) and call keys from ``fold_in(other half,
crc32(user))``, call ``n`` of a user folding in ``n``; so the same sequence of
queries gets the same answers, independent of other users' traffic.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax.errors import ConfigError
from sslsteal_jax.defenses.chain import DefenseChain, needs_reference, parse_spec, user_key
from sslsteal_jax.evaluation.features import extract_features
from sslsteal_jax.training import mesh as mesh_lib
from sslsteal_jax.training.checkpoint import load_model

OUTPUTS = ("representation", "projection")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _answer_and_head(model, index, variables, x):
    """``[answer | head output]`` concatenated along features, float32 ``(B, D + Dz)``.
    Compiled once per (model, output, shape), shared by every defended API instance."""
    h, z = model.apply(variables, x, train=False)
    return jnp.concatenate([(h, z)[index], z], axis=1)


class BudgetExceededError(RuntimeError):
    """A query would exceed the user's query budget; nothing was answered."""


class QueryValidationError(ValueError):
    """Query images have the wrong shape, dtype or range, or contain NaN/inf."""


@dataclasses.dataclass
class Account:
    """Per-user state: ``budget`` (queries allowed, None = unlimited) and
    ``used`` (queries charged so far)."""

    budget: int | None
    used: int = 0
    calls: int = 0


class VictimAPI:
    """Representation API over a trained SimCLR victim.

    Args:
      model: ``SimCLRModel`` (call returns ``(h, g(h))``).
      variables: its ``{'params', 'batch_stats'}``.
      image_shape: ``(H, W, C)`` accepted per query image.
      output: "representation" (backbone ``h``, default) or "projection" (``g(h)``).
      default_budget: budget of users not registered explicitly (None = unlimited).
      batch_size: images per forward pass (None: ``evaluation.features.default_batch_size``,
        128 on CPU; answers do not depend on it beyond float rounding).
      defenses: None (answers returned as computed) or a defense-chain spec
        (``defenses.chain.parse_spec``: e.g. ``"gaussian:scale=0.1+round:decimals=2"``,
        ``"similarity:threshold=0.8"``, ``"b4b"``, or a list of dicts).
      seed: seed of the API's PRNG key (defense noise, per-user secrets).
      defense_reference: None or the provider's own images, uint8 ``(N, H, W, C)``
        or float32 in [0, 1]; the API answers them once (undefended, nobody is
        charged) and gives the answers to the chain as its ``reference`` (B4B's
        LSH centre). Required when the chain needs it (``b4b`` with its default
        ``center=True``); ignored otherwise.
    Raises:
      ValueError: unknown ``output``, a bad defense spec, or a chain that needs
        ``defense_reference`` without one (the message says which link).
    """

    def __init__(self, model, variables, image_shape, output: str = "representation",
                 default_budget: int | None = None, batch_size: int | None = None, defenses=None,
                 seed: int = 0, defense_reference=None):
        if output not in OUTPUTS:
            raise ConfigError(f"unknown API output {output!r}; allowed: {list(OUTPUTS)}")
        self._variables = variables
        self.image_shape = tuple(image_shape)
        self.output = output
        self.default_budget = default_budget
        self.batch_size = None if batch_size is None else int(batch_size)
        self._accounts: dict[str, Account] = {}
        index = 0 if output == "representation" else 1
        # Multi-host: host copies of the parameters, baked into the program as constants (a
        # program may not close over arrays that span other hosts' devices; the numbers are
        # the same as closing over the device arrays, checked bit for bit on CPU).
        host_variables = mesh_lib.host_copy(variables) if jax.process_count() > 1 else variables

        @jax.jit
        def answer(x):
            return model.apply(host_variables, x, train=False)[index]

        self._answer = answer
        self.output_dim = int(jax.eval_shape(answer, jax.ShapeDtypeStruct((1, *self.image_shape),
                                                                         jnp.float32)).shape[1])
        self._key = jax.random.key(int(seed))
        self._chain = None
        self._defense_states: dict[str, tuple] = {}
        if defenses is not None and parse_spec(defenses):
            # Variables replicated over the data mesh: extract_features splits each batch
            # over all devices, and committed single-device variables would clash with it.
            self._answer_and_head = functools.partial(
                _answer_and_head, model, index, mesh_lib.replicate(variables, mesh_lib.data_mesh()))
            head_dim = int(jax.eval_shape(lambda x: model.apply(variables, x, train=False)[1],
                                          jax.ShapeDtypeStruct((1, *self.image_shape),
                                                               jnp.float32)).shape[1])
            k_provider, self._users_key = jax.random.split(self._key)
            reference = None
            if defense_reference is not None and needs_reference(defenses):
                reference = extract_features(self._answer, self._validate(defense_reference),
                                             self.batch_size)
            self._chain = DefenseChain(defenses, self.output_dim, head_dim, k_provider,
                                       reference=reference)
            self.raw_dim = self.output_dim
            self.output_dim = self._chain.output_dim

    @property
    def defenses(self) -> str:
        """Canonical spec of the configured defense chain ("none" without one)."""
        return self._chain.describe() if self._chain is not None else "none"

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, model_override: dict | None = None, **kwargs):
        """Build the API from a SimCLR victim checkpoint directory.

        Raises:
          FileNotFoundError / CheckpointMismatchError / CheckpointCorruptError: see
            ``training.checkpoint.load_model``.
          ConfigError (a ValueError): the checkpoint is not a SimCLR victim.
        """
        loaded = load_model(ckpt_dir, model_override)
        if loaded.kind != "simclr":
            raise ConfigError(f"{ckpt_dir} holds a {loaded.kind!r} checkpoint, the API needs a "
                             f"'simclr' victim")
        return cls(loaded.module, loaded.variables, loaded.image_shape, **kwargs)

    # ----- accounts -------------------------------------------------------
    def register(self, user: str, budget: int | None) -> None:
        """Open (or reset) an account for ``user`` with ``budget`` queries.

        Raises:
          ValueError: negative budget.
        """
        if budget is not None and int(budget) < 0:
            raise ValueError(f"budget must be >= 0 or None, got {budget}")
        self._accounts[user] = Account(None if budget is None else int(budget))
        self._defense_states.pop(user, None)

    def _account(self, user: str) -> Account:
        if user not in self._accounts:
            self._accounts[user] = Account(self.default_budget)
        return self._accounts[user]

    def queries_used(self, user: str) -> int:
        """Queries charged to ``user`` so far."""
        return self._account(user).used

    def remaining(self, user: str) -> int | None:
        """Queries ``user`` may still make (None = unlimited)."""
        a = self._account(user)
        return None if a.budget is None else a.budget - a.used

    def defense_summary(self, user: str) -> dict:
        """Defense counters of ``user`` (e.g. flagged queries, B4B coverage in percent
        and the last noise sigma); ``{}`` without defenses or before the first query."""
        if self._chain is None or user not in self._defense_states:
            return {}
        return self._chain.summary(self._defense_states[user])

    # ----- queries --------------------------------------------------------
    def _validate(self, images) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise QueryValidationError(
                f"query images must have shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {x.shape}")
        if x.shape[0] == 0:
            raise QueryValidationError("empty query batch")
        if x.dtype == np.uint8:
            return x.astype(np.float32) / 255.0
        if x.dtype not in (np.float32, np.float64):
            raise QueryValidationError(
                f"query images must be uint8 in [0, 255] or float32 in [0, 1], got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise QueryValidationError("query images contain NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise QueryValidationError(
                f"float query images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        return x.astype(np.float32)

    def query(self, user: str, images) -> np.ndarray:
        """Answer a batch of queries for ``user`` and charge one query per image.

        Args:
          user: account name.
          images: uint8 ``(B, H, W, C)`` in [0, 255] or float32 in [0, 1].
        Returns:
          float32 numpy ``(B, output_dim)`` (defended when the API has defenses).
        Raises:
          QueryValidationError: bad shape, dtype, range, NaN/inf.
          BudgetExceededError: ``used + B`` exceeds the budget (nothing answered,
            nothing charged).
        """
        x = self._validate(images)
        acct = self._account(user)
        if acct.budget is not None and acct.used + len(x) > acct.budget:
            raise BudgetExceededError(
                f"user {user!r} asked for {len(x)} queries but has {acct.budget - acct.used} left "
                f"of a budget of {acct.budget}; nothing was answered")
        if self._chain is None:
            out = extract_features(self._answer, x, self.batch_size)
        else:
            both = extract_features(self._answer_and_head, x, self.batch_size)
            k_secret, k_calls = jax.random.split(user_key(self._users_key, user))
            if user not in self._defense_states:
                self._defense_states[user] = self._chain.init_state(k_secret)
            out, state = self._chain.apply(both[:, :self.raw_dim], self._defense_states[user],
                                           jax.random.fold_in(k_calls, acct.calls),
                                           head=both[:, self.raw_dim:])
            self._defense_states[user] = state
            out = np.asarray(out, np.float32)
        acct.used += len(x)
        acct.calls += 1
        return out
