"""The representation service: API keys, ledger, limits, dynamic batching and
per-key defenses around one ``VictimAPI`` (HTTP-free; ``serve.app`` maps it to HTTP).

One query request (``Service.embed``), in order:

1. size limits (413), key lookup (401 unknown / revoked), JSON and wire
   decoding, shape / dtype / range / NaN checks (422), the key's rate limit
   (429): nothing is charged for a rejected request;
2. the ledger charges the request's queries in one transaction, once per
   idempotency key (402 when the budget does not cover it; a repeated
   idempotency key gets the stored answer back, or is answered without a new
   charge when its first attempt died with the server);
3. the victim's forward pass, shared with concurrent requests (``batcher``);
4. under the key's lock: the defense chain with the key's persisted state and
   call counter, then the answer, new state and counter committed in one
   transaction (so a restart resumes each key's defense state, and one key's
   answers equal some sequential order of its requests);
5. any failure in 3-4 refunds the charge (500).

A defense's user identity is the key's name: a served victim answers key
``alice`` exactly as ``VictimAPI(..., defenses, seed).query("alice", ...)``
would answer the same sequence of calls.

Research mode (``chain_api`` given; ``--research`` on the command line): a
request may choose its defense chain (``"defenses": CHAIN``), name a simulated
user (``"account": NAME``, the defenses' user identity) and a ``"session"``
(the client object's: a fresh client, or a re-registered account, starts a
fresh state, as a fresh in-process ``VictimAPI`` does); each (key, chain,
session, account) has its own persisted state. One server
then runs experiments that compare defenses and users (the defense matrix)
exactly as in-process; the key's budget still caps everything. For providers
studying their own defenses, not for selling: a client picks its defense.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import io
import json
import re
import threading
import time
import uuid

import jax
import numpy as np

from sslsteal_jax.api.victim_api import QueryValidationError, VictimAPI
from sslsteal_jax.api.wire import ENCODINGS, WireFormatError, decode_array, encode_array
from sslsteal_jax.defenses.chain import format_spec, parse_spec
from sslsteal_jax.serve.batcher import DynamicBatcher
from sslsteal_jax.serve.ledger import Ledger
from sslsteal_jax.serve.metrics import Metrics
from sslsteal_jax.training import mesh as mesh_lib

IDEMPOTENCY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.@:\[\]-]{1,64}$")


class ServiceError(Exception):
    """A request refused with an HTTP ``status``, an error ``code`` and a one-line
    ``message`` naming the bad value and what is allowed; ``headers`` to add."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request limits: ``max_request_bytes`` (413), ``max_images`` per request
    (413), ``max_wait_ms`` / ``max_batch`` (dynamic batching), ``idempotency_ttl_s``
    (how long answered requests stay replayable), ``expose_defense_state``
    (``/v1/usage`` shows the key's own defense counters, e.g. B4B coverage)."""

    max_request_bytes: int = 64 * 2 ** 20
    max_images: int = 8192
    max_batch: int = 128
    max_wait_ms: float = 2.0
    idempotency_ttl_s: float = 86400.0
    expose_defense_state: bool = False


class _RateLimiter:
    """Token bucket per key: ``rate`` queries per second, bursts of up to one second's
    worth (at least one request); a request may overdraw the bucket, later ones wait."""

    def __init__(self):
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int, rate: float | None, n: int) -> float:
        """Take ``n`` tokens; returns 0 when admitted, else the seconds to wait."""
        if rate is None:
            return 0.0
        with self._lock:
            return self._take(key_id, float(rate), n)

    def _take(self, key_id, rate, n):
        cap, now = max(float(rate), 1.0), time.monotonic()
        tokens, last = self._buckets.get(key_id, (cap, now))
        tokens = min(cap, tokens + (now - last) * rate)
        need = min(float(n), cap)
        if tokens < need:
            self._buckets[key_id] = (tokens, now)
            return (need - tokens) / rate
        self._buckets[key_id] = (tokens - n, now)
        return 0.0

    def give_back(self, key_id: int, n: int) -> None:
        """Return ``n`` tokens (a replayed request costs nothing)."""
        with self._lock:
            self._give_back(key_id, n)

    def _give_back(self, key_id, n):
        if key_id in self._buckets:
            tokens, last = self._buckets[key_id]
            self._buckets[key_id] = (tokens + n, last)


def dump_state(state) -> bytes | None:
    """Serialize a defense state pytree (its leaves, ``np.savez_compressed``)."""
    if state is None:
        return None
    buf = io.BytesIO()
    leaves = jax.tree_util.tree_leaves(state)
    np.savez_compressed(buf, *[np.asarray(x) for x in leaves])
    return buf.getvalue()


def load_state(blob: bytes, template):
    """Inverse of :func:`dump_state`, shaped like ``template`` (a fresh state).

    Raises:
      ValueError: the blob does not fit the template (the service's defenses changed).
    """
    leaves, treedef = jax.tree_util.tree_flatten(template)
    with np.load(io.BytesIO(blob)) as z:
        stored = [z[f"arr_{i}"] for i in range(len(z.files))]
    if len(stored) != len(leaves) or any(a.shape != np.shape(t) for a, t in zip(stored, leaves)):
        raise ValueError("stored defense state does not match this service's defense chain")
    return jax.tree_util.tree_unflatten(treedef, [a.astype(np.asarray(t).dtype)
                                                  for a, t in zip(stored, leaves)])


def payload_digest(x: np.ndarray) -> str:
    """SHA-256 of an image batch (dtype, shape and bytes): ties an idempotency key to
    its images."""
    h = hashlib.sha256(f"{x.dtype.name}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


class Service:
    """The served representation API.

    Args:
      api: the ``VictimAPI`` (its own accounts are not used; budgets live in ``ledger``).
      ledger: the SQLite ledger.
      limits: :class:`Limits`.
      description: what ``/v1/info`` says about the victim (e.g. its checkpoint name).
    """

    def __init__(self, api: VictimAPI, ledger: Ledger, limits: Limits = Limits(),
                 description: str = "", chain_api=None):
        self.api, self.ledger, self.limits, self.description = api, ledger, limits, description
        self.boot = uuid.uuid4().hex
        self.metrics = Metrics()
        self.research = chain_api is not None
        self._make_chain_api = chain_api
        self._chain_apis: dict[str, VictimAPI] = {api.defenses: api}
        self._chain_lock = threading.Lock()
        self._defense_names = [name for name, _ in parse_spec(api.defenses)]
        self._rate = _RateLimiter()
        # one lock and one cached (calls, state) per (key id, chain, account)
        self._state_locks: dict[tuple, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._states: dict[tuple, tuple[int, object]] = {}
        self._finished = 0
        self.batcher = DynamicBatcher(
            lambda x, bs, kind: api.forward(x, bs, with_head=kind == "head"), limits.max_batch,
            limits.max_wait_ms / 1e3, mesh_lib.num_devices(mesh_lib.data_mesh()),
            on_batch=self.metrics.observe_batch)

    # ----- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start batching; forget answered requests older than the idempotency TTL."""
        self.batcher.start()
        await asyncio.to_thread(self.ledger.prune, self.limits.idempotency_ttl_s)

    async def stop(self) -> None:
        """Stop batching (queued requests fail and are refunded)."""
        await self.batcher.stop()

    def warmup(self) -> None:
        """Compile the forward pass for every bucket size and the in-process chunk size
        (the first requests then answer without compiling)."""
        x = np.zeros((1, *self.api.image_shape), np.float32)
        b = self.batcher.multiple
        sizes = set()
        while True:
            sizes.add(min(b, self.limits.max_batch))
            if b >= self.limits.max_batch:
                break
            b *= 2
        kinds = [True, False] if self.research else [self.api.defenses != "none"]
        for with_head in kinds:
            for s in sorted(sizes):
                self.api.forward(np.repeat(x, s, 0), s, with_head)
            self.api.forward(x, None, with_head)

    # ----- public endpoints --------------------------------------------------------------
    def info(self) -> dict:
        """``/v1/info``: what a client needs to query (no secrets: defense names only)."""
        return {"service": "sslsteal_jax representation API", "wire_format": 1,
                "victim": self.description, "victim_fingerprint": self.api.fingerprint,
                "input_shape": list(self.api.image_shape),
                "input_dtypes": {"uint8": "[0, 255]", "float32": "[0, 1]"},
                "output": self.api.output, "output_dim": int(self.api.output_dim),
                "defenses": self._defense_names, "research": self.research,
                "limits": {"max_images": self.limits.max_images,
                           "max_request_bytes": self.limits.max_request_bytes},
                "encodings": list(ENCODINGS)}

    def authenticate(self, authorization: str | None):
        """The key record of an ``Authorization: Bearer <key>`` header.

        Raises:
          ServiceError: 401 when the header is missing or malformed, the key unknown or revoked.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise self._reject(401, "unauthorized", "missing 'Authorization: Bearer <API key>' "
                                                    "header")
        rec = self.ledger.authenticate(authorization[len("Bearer "):].strip())
        if rec is None:
            raise self._reject(401, "unauthorized", "unknown API key")
        if rec.revoked:
            raise self._reject(401, "unauthorized", f"API key {rec.name!r} has been revoked")
        return rec

    def usage(self, rec, account: str | None = None, defenses: str | None = None,
              session: str | None = None) -> dict:
        """``/v1/usage``: the calling key's budget and use, and its defense counters
        (``defense``) when the service exposes them (``--expose_defense_state``, or
        research mode: those of ``account`` under chain ``defenses``).

        Raises:
          ServiceError: 422 for ``account`` / ``defenses`` outside research mode or invalid.
        """
        out = self.ledger.key_usage(rec.id).public()
        api, identity, slot = self._chain_and_identity(rec, defenses, account, session)
        if (self.limits.expose_defense_state or self.research) and api.defenses != "none":
            sk = (rec.id, api.defenses, slot)
            if sk in self._states:
                state = self._states[sk][1]
            else:
                _, blob = self.ledger.defense_state(*sk)
                state = None if blob is None else load_state(
                    blob, api.initial_defense_state(identity))
            out["defense"] = api.summarize_defense_state(state)
        return out

    def _chain_and_identity(self, rec, defenses, account, session=None
                            ) -> tuple[VictimAPI, str, str]:
        """The API object holding the request's defense chain, the defenses' user, and
        the state slot (``[session|]user``) under the key and chain."""
        if not self.research:
            if defenses is not None or account is not None or session is not None:
                raise self._reject(422, "invalid_request", "this service applies its own defenses "
                                   "to each key: 'defenses', 'account' and 'session' are only "
                                   "accepted by a server started with --research")
            return self.api, rec.name, rec.name
        for name, v in (("account", account), ("session", session)):
            if v is not None and not (isinstance(v, str) and ACCOUNT_RE.match(v)):
                raise self._reject(422, "invalid_request", f"{name}={str(v)[:40]!r} must be "
                                   f"1-64 characters of A-Z a-z 0-9 _ . @ : [ ] -")
        identity = account or rec.name
        slot = f"{session}|{identity}" if session else identity
        if defenses is None:
            return self.api, identity, slot
        try:
            canonical = format_spec(parse_spec(defenses))
        except ValueError as e:
            raise self._reject(422, "invalid_defenses", str(e)) from None
        with self._chain_lock:
            if canonical not in self._chain_apis:
                try:
                    self._chain_apis[canonical] = self._make_chain_api(canonical)
                except ValueError as e:
                    raise self._reject(422, "invalid_defenses", str(e)) from None
            return self._chain_apis[canonical], identity, slot

    async def embed(self, authorization: str | None, idempotency_key: str | None,
                    body: bytes) -> tuple[bytes, dict]:
        """Answer one ``POST /v1/embed``; returns ``(JSON body bytes, headers)``.

        Raises:
          ServiceError: 401, 402, 409 (same idempotency key in progress), 413, 422,
            429, 500 (the answer failed; the charge was refunded).
        """
        t0 = time.monotonic()
        if len(body) > self.limits.max_request_bytes:
            raise self._reject(413, "payload_too_large",
                               f"request body of {len(body)} bytes exceeds the limit of "
                               f"{self.limits.max_request_bytes} bytes; send fewer images "
                               f"per request")
        # admission in one worker-thread hop (key lookup, decoding, checks, rate limit,
        # the charge): large bodies take milliseconds to decode, SQLite commits too
        self.batcher.expect(+1)  # companions for the batcher to wait for
        try:
            rec, idem, n, x, encoding, chain_api, identity, slot, begin = await asyncio.to_thread(
                self._admit, authorization, idempotency_key, body)
        except BaseException:
            self.batcher.expect(-1)
            raise
        if begin.kind == "replay":
            self.batcher.expect(-1)
            self.metrics.replays.inc()
            return begin.response, {"Idempotent-Replayed": "true"}
        try:
            defended = chain_api.defenses != "none"
            self.batcher.expect(-1)
            raw = await self.batcher.submit(x, "head" if defended else "plain")
            body_out = await self._defend_and_finish(rec, idem, raw, encoding, n, begin,
                                                     chain_api, identity, slot)
        except BaseException as e:
            await asyncio.shield(asyncio.to_thread(self.ledger.refund_request, rec.id, idem))
            if isinstance(e, Exception):
                self.metrics.rejections.labels("error").inc()
                raise ServiceError(500, "internal_error", f"answering failed ({type(e).__name__}: "
                                   f"{e}); nothing was charged") from e
            raise
        self.metrics.answered.inc(n)
        self.metrics.note_answered(n)
        self.metrics.latency.observe(time.monotonic() - t0)
        self._finished += 1
        if self._finished % 1000 == 0:
            await asyncio.to_thread(self.ledger.prune, self.limits.idempotency_ttl_s)
        return body_out, {}

    # ----- steps -------------------------------------------------------------------------
    def _admit(self, authorization, idempotency_key, body):
        """Steps 1-2 of a request (module docstring), in a worker thread. Returns
        ``(key record, idempotency key, n, validated images, encoding, chain API,
        defenses' user, state slot, Begin)``; Begin is "new", "resume" or "replay".

        Raises:
          ServiceError: 401, 402, 409, 413, 422, 429 (nothing charged).
        """
        rec = self.authenticate(authorization)
        idem = idempotency_key or ("auto-" + uuid.uuid4().hex)
        if not IDEMPOTENCY_RE.match(idem):
            raise self._reject(422, "invalid_idempotency_key",
                               f"Idempotency-Key {idem[:40]!r} must be 1-128 characters of "
                               f"A-Z a-z 0-9 _ . : -")
        images, encoding, fields, x, digest = self._decode_and_check(body)
        n = len(images)
        chain_api, identity, slot = self._chain_and_identity(
            rec, fields.get("defenses"), fields.get("account"), fields.get("session"))
        wait = self._rate.take(rec.id, rec.rate, n)
        if wait > 0:
            raise self._reject(429, "rate_limited",
                               f"key {rec.name!r} is limited to {rec.rate:g} queries per second; "
                               f"retry in {wait:.2f} s", {"Retry-After": f"{max(1, round(wait))}"})
        begin = self.ledger.begin_request(rec.id, idem, n, digest, self.boot)
        if begin.kind == "replay":
            self._rate.give_back(rec.id, n)
        elif begin.kind == "in_progress":
            raise self._reject(409, "in_progress", f"a request with Idempotency-Key {idem!r} is "
                               f"being answered; retry later", {"Retry-After": "1"})
        elif begin.kind == "mismatch":
            raise self._reject(422, "idempotency_key_reused", begin.detail)
        elif begin.kind == "revoked":
            raise self._reject(401, "unauthorized", f"API key {rec.name!r} has been revoked")
        elif begin.kind == "budget":
            raise self._reject(402, "budget_exceeded",
                               f"key {rec.name!r} asked for {n} queries but has {begin.remaining} "
                               f"left of a budget of {begin.budget}; nothing was charged")
        return rec, idem, n, x, encoding, chain_api, identity, slot, begin

    def _reject(self, status: int, code: str, message: str, headers: dict | None = None):
        self.metrics.rejections.labels(code).inc()
        return ServiceError(status, code, message, headers)

    def _decode(self, body: bytes) -> tuple[np.ndarray, str, dict]:
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._reject(422, "invalid_json", f"request body is not valid JSON ({e})") from None
        if not isinstance(obj, dict) or "images" not in obj:
            raise self._reject(422, "invalid_request", "request body must be a JSON object with "
                               "an 'images' field (base64 array or nested lists; docs/serving.md)")
        encoding = obj.get("encoding", "list" if isinstance(obj["images"], list) else "base64")
        if encoding not in ENCODINGS:
            raise self._reject(422, "invalid_request",
                               f"encoding={encoding!r}; allowed: {list(ENCODINGS)}")
        per_image = int(np.prod(self.api.image_shape))
        try:
            images = decode_array(obj["images"], "images",
                                  max_elements=(self.limits.max_images + 1) * per_image)
        except WireFormatError as e:
            if "exceed the limit" in str(e):
                raise self._reject(413, "payload_too_large",
                                   f"more than {self.limits.max_images} images in one request; "
                                   f"the limit is {self.limits.max_images}") from None
            raise self._reject(422, "invalid_images", str(e)) from None
        if images.ndim >= 1 and len(images) > self.limits.max_images:
            raise self._reject(413, "payload_too_large",
                               f"{len(images)} images in one request; the limit is "
                               f"{self.limits.max_images}")
        return images, encoding, {k: obj[k] for k in ("defenses", "account", "session")
                                  if k in obj}

    def _decode_and_check(self, body: bytes):
        """``(images as sent, encoding, extra fields, validated float32 images, digest)``.
        Raises ServiceError 413 / 422."""
        images, encoding, fields = self._decode(body)
        try:
            x = self.api.validate(images)
        except QueryValidationError as e:
            raise self._reject(422, "invalid_images", str(e)) from None
        return images, encoding, fields, x, payload_digest(images)

    async def _defend_and_finish(self, rec, idem, raw, encoding, n, begin, api, identity,
                                 slot) -> bytes:
        def body(out):
            return json.dumps({"embeddings": encode_array(out, encoding), "queries_charged": n,
                               "queries_used": begin.used, "budget": begin.budget}).encode()

        if api.defenses == "none":
            def record():
                out = body(raw)
                self.ledger.finish_request(rec.id, idem, out)
                return out

            return await asyncio.to_thread(record)
        sk = (rec.id, api.defenses, slot)
        async with self._state_locks[sk]:  # one state's updates in a sequential order
            if sk not in self._states:
                calls, blob = await asyncio.to_thread(self.ledger.defense_state, *sk)
                fresh = api.initial_defense_state(identity)
                self._states[sk] = (calls, fresh if blob is None else load_state(blob, fresh))
            calls, state = self._states[sk]

            def defend_and_record():
                answer, new_state = api.apply_defenses(identity, raw, state, calls)
                out = body(answer)
                self.ledger.finish_request(rec.id, idem, out, (api.defenses, slot, calls + 1,
                                                               dump_state(new_state)))
                return out, new_state

            out, new_state = await asyncio.to_thread(defend_and_record)
            self._states[sk] = (calls + 1, new_state)
        return out
