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

Concurrency (exact accounting): ``query`` may be called from many threads at
once. A call first *reserves* its queries under one ledger lock (budget
checked and charged in one step, so concurrent callers can never overshoot a
budget), then answers, and *refunds* the reservation if answering fails; so
when all calls have returned, ``queries_used(user)`` equals the number of
images answered, exactly. Each user's defense state (and call counter) is
read and written under that user's own lock, so the answers of concurrent
calls equal those of the same calls made one after the other in some order.
The forward pass itself runs outside both locks (it goes through
``evaluation.features.extract_features``, which holds the process-wide
collective guard around every multi-device program).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading

import jax
import jax.numpy as jnp
import numpy as np

from sslsteal_jax.errors import ConfigError, check_int
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


def victim_fingerprint(variables) -> str:
    """A short public identifier of a victim's weights: the first 16 hex digits of the
    SHA-256 of every leaf of ``variables`` (tree order, float32 bytes). Lets a client
    check that a served victim is the checkpoint it evaluates, revealing nothing usable."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(variables):
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def _check_user(user) -> None:
    """Account names key the ledger and the per-user defense secrets.

    Raises:
      ValueError: ``user`` is not a non-empty string.
    """
    if not isinstance(user, str) or not user:
        raise ValueError(f"user={user!r}; allowed: a non-empty account name (str)")


class BudgetExceededError(RuntimeError):
    """A query would exceed the user's query budget; nothing was answered."""


class QueryValidationError(ValueError):
    """Query images have the wrong shape, dtype or range, or contain NaN/inf."""


@dataclasses.dataclass
class Account:
    """Per-user state: ``budget`` (queries allowed, None = unlimited), ``used``
    (queries charged so far, including reservations of calls still being
    answered) and ``calls`` (calls answered, the index of the next call's PRNG key)."""

    budget: int | None
    used: int = 0
    calls: int = 0


class VictimAPI:
    """Representation API over a trained SimCLR victim.

    Args:
      model: a victim module whose call returns ``(h, g(h))``: ``SimCLRModel``, or an
        imported PyTorch encoder (``models.imported.ImportedModel``; it normalises its
        [0, 1] input itself, with the mean/std recorded at import).
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
      ValueError: unknown ``output``, ``output="projection"`` on an imported victim
        without a head (``models.imported.ImportedModel``), ``default_budget`` not None
        or an integer >= 0, ``batch_size`` not None or an integer >= 1, ``seed`` not an
        integer, a bad defense spec, or a chain that needs ``defense_reference`` without
        one (the message says which link).
    """

    def __init__(self, model, variables, image_shape, output: str = "representation",
                 default_budget: int | None = None, batch_size: int | None = None, defenses=None,
                 seed: int = 0, defense_reference=None):
        if output not in OUTPUTS:
            raise ConfigError(f"unknown API output {output!r}; allowed: {list(OUTPUTS)}")
        if output == "projection" and getattr(model, "has_head", True) is False:
            raise ConfigError("API output 'projection' needs a projection head, and this victim "
                              "was imported without one; use output 'representation', or "
                              "import the checkpoint again with head=projection")
        check_int("default_budget", default_budget, minimum=0, optional=True)
        check_int("batch_size", batch_size, minimum=1, optional=True)
        check_int("seed", seed, minimum=None)
        self._variables = variables
        self.image_shape = tuple(image_shape)
        self.output = output
        self.default_budget = None if default_budget is None else int(default_budget)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._accounts: dict[str, Account] = {}
        self._ledger_lock = threading.Lock()  # accounts: reserve / refund / register
        self._user_locks: dict[str, threading.Lock] = {}  # per-user defense state and calls
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
        self.raw_dim = self.output_dim  # width of the undefended answer
        self._key = jax.random.key(int(seed))
        self._chain = None
        self._defense_states: dict[str, tuple] = {}
        # [answer | head] in one forward pass (the defenses may need the head output).
        # Variables replicated over the data mesh: extract_features splits each batch
        # over all devices, and committed single-device variables would clash with it.
        self._answer_and_head = functools.partial(
            _answer_and_head, model, index, mesh_lib.replicate(variables, mesh_lib.data_mesh()))
        self.head_dim = int(jax.eval_shape(lambda x: model.apply(variables, x, train=False)[1],
                                           jax.ShapeDtypeStruct((1, *self.image_shape),
                                                                jnp.float32)).shape[1])
        k_provider, self._users_key = jax.random.split(self._key)
        if defenses is not None and parse_spec(defenses):
            reference = None
            if defense_reference is not None and needs_reference(defenses):
                reference = extract_features(self._answer, self.validate(defense_reference),
                                             self.batch_size)
            self._chain = DefenseChain(defenses, self.output_dim, self.head_dim, k_provider,
                                       reference=reference)
            self.output_dim = self._chain.output_dim

    @functools.cached_property
    def fingerprint(self) -> str:
        """:func:`victim_fingerprint` of the victim's variables."""
        return victim_fingerprint(self._variables)

    @property
    def defenses(self) -> str:
        """Canonical spec of the configured defense chain ("none" without one)."""
        return self._chain.describe() if self._chain is not None else "none"

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, model_override: dict | None = None, **kwargs):
        """Build the API from a victim checkpoint directory (a SimCLR victim trained here
        or a PyTorch encoder imported with ``configs/import_checkpoint.py``).

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
        """Open (or reset) an account for ``user`` with ``budget`` queries (its
        defense state starts afresh). Calls of ``user`` still in flight keep
        charging the account they reserved on, not the new one.

        Raises:
          ValueError: ``budget`` not None or an integer >= 0 (a float, text or bool is
            refused, not truncated).
        """
        check_int("budget", budget, minimum=0, optional=True)
        _check_user(user)
        with self._ledger_lock:
            self._accounts[user] = Account(None if budget is None else int(budget))
            lock = self._user_locks.setdefault(user, threading.Lock())
        with lock:
            self._defense_states.pop(user, None)

    def _account_locked(self, user: str) -> Account:
        """``user``'s account (opened with the default budget); caller holds the ledger lock.

        Raises:
          ValueError: ``user`` is not a non-empty string (account names key the ledger
            and the per-user defense secrets).
        """
        if user not in self._accounts:
            _check_user(user)
            self._accounts[user] = Account(self.default_budget)
            self._user_locks.setdefault(user, threading.Lock())
        return self._accounts[user]

    def _account(self, user: str) -> Account:
        with self._ledger_lock:
            return self._account_locked(user)

    def queries_used(self, user: str) -> int:
        """Queries charged to ``user`` so far (including calls still being answered)."""
        return self._account(user).used

    def remaining(self, user: str) -> int | None:
        """Queries ``user`` may still make (None = unlimited)."""
        a = self._account(user)
        return None if a.budget is None else a.budget - a.used

    def defense_summary(self, user: str) -> dict:
        """Defense counters of ``user`` (e.g. flagged queries, B4B coverage in percent
        and the last noise sigma); ``{}`` without defenses or before the first query."""
        return self.summarize_defense_state(self._defense_states.get(user))

    def summarize_defense_state(self, state) -> dict:
        """Report counters of a defense state (``defenses.chain.DefenseChain.summary``:
        ``{"<link>:<name>.<field>": value}``); ``{}`` for None or without defenses."""
        if self._chain is None or state is None:
            return {}
        return self._chain.summary(state)

    def _reserve(self, user: str, n: int) -> Account:
        """Charge ``n`` queries to ``user`` now (check and charge in one step under the
        ledger lock); returns the account to refund on failure.

        Raises:
          BudgetExceededError: ``used + n`` exceeds the budget (nothing charged).
        """
        with self._ledger_lock:
            acct = self._account_locked(user)
            if acct.budget is not None and acct.used + n > acct.budget:
                raise BudgetExceededError(
                    f"user {user!r} asked for {n} queries but has {acct.budget - acct.used} left "
                    f"of a budget of {acct.budget}; nothing was answered")
            acct.used += n
            return acct

    def _refund(self, acct: Account, n: int) -> None:
        with self._ledger_lock:
            acct.used -= n

    # ----- queries --------------------------------------------------------
    def validate(self, images) -> np.ndarray:
        """Check a query batch and convert it to the model's input.

        Args:
          images: uint8 ``(B, H, W, C)`` in [0, 255] or float32/float64 in [0, 1],
            ``(H, W, C)`` = ``image_shape``, B >= 1.
        Returns:
          float32 numpy ``(B, H, W, C)`` in [0, 1].
        Raises:
          QueryValidationError: bad shape, dtype, range, NaN/inf (the message names
            the bad value and what is allowed).
        """
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

    def forward_dim(self, with_head: bool | None = None) -> int:
        """Width of :meth:`forward`'s output: the raw answer, plus the head output
        with ``with_head`` (None: when the API has defenses, which may need it)."""
        with_head = self._chain is not None if with_head is None else with_head
        return self.raw_dim + (self.head_dim if with_head else 0)

    def forward(self, x: np.ndarray, batch_size: int | None = None,
                with_head: bool | None = None) -> np.ndarray:
        """The victim's undefended forward pass on validated images (no charge).

        Args:
          x: float32 ``(B, H, W, C)`` in [0, 1] (from :meth:`validate`).
          batch_size: images per compiled call (None: the API's ``batch_size``).
            Answers depend on it only through float rounding; the same ``x`` and
            ``batch_size`` give bit-identical answers.
          with_head: also return the victim's head outputs (None: when the API has
            defenses; :meth:`apply_defenses` splits them off).
        Returns:
          float32 numpy ``(B, forward_dim(with_head))``.
        """
        with_head = self._chain is not None if with_head is None else with_head
        fn = self._answer_and_head if with_head else self._answer
        return extract_features(fn, x, self.batch_size if batch_size is None else batch_size)

    def initial_defense_state(self, user: str):
        """A fresh defense state for ``user`` (a pytree of arrays; None without defenses),
        drawn from the user's secret key (module docstring)."""
        if self._chain is None:
            return None
        k_secret, _ = jax.random.split(user_key(self._users_key, user))
        return self._chain.init_state(k_secret)

    def apply_defenses(self, user: str, raw: np.ndarray, state, call_index: int):
        """Defend one call's answers with ``user``'s state (pure: nothing is stored).

        Args:
          user: account name (selects the user's PRNG stream).
          raw: float32 ``(B, raw_dim)`` or ``(B, raw_dim + head_dim)`` from :meth:`forward`
            (the head part is required when a link needs it).
          state: the user's defense state (:meth:`initial_defense_state` or the
            state a previous call returned).
          call_index: the user's call number ``n`` (its key is ``fold_in(calls key, n)``).
        Returns:
          ``(answers float32 numpy (B, output_dim), new state)``; without defenses
          ``(raw answers, state)``.
        """
        if self._chain is None:
            return raw[:, :self.raw_dim], state
        _, k_calls = jax.random.split(user_key(self._users_key, user))
        out, new = self._chain.apply(raw[:, :self.raw_dim], state,
                                     jax.random.fold_in(k_calls, int(call_index)),
                                     head=raw[:, self.raw_dim:])
        return np.asarray(out, np.float32), new

    def query(self, user: str, images, request_id: str | None = None) -> np.ndarray:
        """Answer a batch of queries for ``user`` and charge one query per image.

        Thread-safe with exact accounting (module docstring): the queries are
        reserved before the forward pass and refunded if answering fails.

        Args:
          user: account name.
          images: uint8 ``(B, H, W, C)`` in [0, 255] or float32 in [0, 1].
          request_id: accepted for the interface of ``RemoteVictimAPI.query`` (whose
            served ledger never charges one id twice) and ignored: an in-process API
            keeps no ledger across processes, each call is charged.
        Returns:
          float32 numpy ``(B, output_dim)`` (defended when the API has defenses).
        Raises:
          QueryValidationError: bad shape, dtype, range, NaN/inf (nothing charged).
          BudgetExceededError: ``used + B`` exceeds the budget (nothing answered,
            nothing charged).
        """
        x = self.validate(images)
        acct = self._reserve(user, len(x))
        try:
            raw = self.forward(x)
            with self._user_locks[user]:
                state = self._defense_states.get(user)
                if state is None:
                    state = self.initial_defense_state(user)
                out, state = self.apply_defenses(user, raw, state, acct.calls)
                if self._chain is not None:
                    self._defense_states[user] = state
                acct.calls += 1
        except BaseException:
            self._refund(acct, len(x))
            raise
        return out
