"""RemoteVictimAPI: the attacker's side of a served representation API.

Same interface as the in-process ``VictimAPI`` (``query``, ``register``,
``queries_used``, ``remaining``, ``defense_summary``, ``output_dim``,
``image_shape``, ``defenses``), so attacks and experiments run unchanged
against a victim served by ``python -m sslsteal_jax.serve`` or any HTTP
embedding endpoint that takes an image batch and returns vectors (wire format:
``api.wire`` and docs/serving.md).

Each call is one or more ``POST /v1/embed`` requests (at most the server's
``max_images`` images each), every request with its own idempotency key
(``Idempotency-Key`` header). Connection failures, timeouts, 5xx, 409 (the
same request still in progress) and 429 (rate limited) are retried with the
*same* idempotency key after an exponential back-off with jitter (honouring
``Retry-After``), so a request the server already charged is never charged
again: a retry after a lost answer gets the stored answer back.

Accounts: ``register(user, budget)`` sets a client-side cap on what this
object sends for ``user`` (the server's budget is the key's, set by the
provider); each account uses the key given for it in ``keys`` or the default
``key``. The server keeps defense state per key, so accounts that must look
like different users to the provider's defenses (sybil accounts, legitimate
users) need keys of their own.

Against a server in research mode (``--research``), ``check_compatible``
makes every request carry the experiment's defense chain, the account name
and this client's session (a random id, renewed per account by ``register``),
so the server keeps one defense state per (key, chain, session, account) and
answers as a fresh in-process API would: experiments that compare defenses
and users (the defense matrix) run against one server with one key.

Standard library only (``http.client``): the client needs no web framework.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
import uuid

import numpy as np

from sslsteal_jax.api.victim_api import (BudgetExceededError, QueryValidationError,
                                         victim_fingerprint)
from sslsteal_jax.api.wire import WireFormatError, decode_embeddings, encode_array
from sslsteal_jax.defenses.chain import format_spec, parse_spec
from sslsteal_jax.errors import ConfigError

#: Environment variable holding the default API key.
KEY_ENV = "SSLSTEAL_API_KEY"
DEFAULT_MAX_IMAGES = 4096
_RETRY_STATUS = (409, 429, 500, 502, 503, 504)


class RemoteAPIError(RuntimeError):
    """The service refused or failed a request (after retries); ``status`` is the
    HTTP status (0: no answer), ``code`` the service's error code."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class AuthenticationError(RemoteAPIError):
    """401: unknown or revoked API key."""


@dataclasses.dataclass
class _Account:
    budget: int | None
    used: int = 0


class RemoteVictimAPI:
    """Client of a served representation API.

    Args:
      url: the service's base URL (``http://127.0.0.1:8000``: queries go to
        ``/v1/embed``, ``/v1/info`` is read) or the full URL of any embedding
        endpoint (a URL with a path: queries are POSTed there, nothing else is read).
      key: default API key (None: ``$SSLSTEAL_API_KEY``; an endpoint without
        authentication needs none).
      keys: ``{account: key}`` for accounts with keys of their own.
      timeout_s: seconds to wait for one answer.
      retries: retries of one request after the first attempt.
      backoff_s: first back-off (doubled per retry, capped at ``max_backoff_s``,
        times a random factor in [0.5, 1]).
      encoding: wire encoding of the images ("base64" or "list").
      check: read ``/v1/info`` now and check the default key (``/v1/usage``).
    Raises:
      ConfigError: bad URL, service unreachable, key rejected (with ``check``).
    """

    def __init__(self, url: str, key: str | None = None, keys: dict | None = None,
                 timeout_s: float = 120.0, retries: int = 8, backoff_s: float = 0.25,
                 max_backoff_s: float = 8.0, encoding: str = "base64", check: bool = True):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"API url {url!r} must be http://HOST[:PORT][/PATH] or https://...")
        self.url = url
        self._scheme, self._host = u.scheme, u.hostname
        self._port = u.port or (443 if u.scheme == "https" else 80)
        self._service = u.path in ("", "/")
        prefix = u.path.rstrip("/") if self._service else ""
        self._embed_path = prefix + "/v1/embed" if self._service else u.path + (
            "?" + u.query if u.query else "")
        self._info_path, self._usage_path = prefix + "/v1/info", prefix + "/v1/usage"
        self.key = key if key is not None else os.environ.get(KEY_ENV) or None
        self.keys = dict(keys or {})
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.encoding = encoding
        self._local = threading.local()
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self.info: dict = {}
        self.image_shape: tuple | None = None
        self.output = "representation"
        self._output_dim: int | None = None
        self.max_images = DEFAULT_MAX_IMAGES
        self.batch_size = None
        self.request_defenses: str | None = None  # research mode: chain sent with each request
        self._session = uuid.uuid4().hex[:16]
        self._generation: dict[str, int] = {}  # research mode: register() starts a new state
        if check and self._service:
            self.refresh_info()
            if self.key is not None:
                self.usage(None)

    # ----- service metadata --------------------------------------------------------------
    def refresh_info(self) -> dict:
        """Read ``/v1/info`` (input shape, output, output dimension, defense names, limits).

        Raises:
          ConfigError: the service cannot be reached or does not answer with its info.
        """
        try:
            status, body, _ = self._request("GET", self._info_path, None, None, {})
        except OSError as e:
            raise ConfigError(f"cannot reach the served victim at {self.url} ({e}); start it "
                              f"with python -m sslsteal_jax.serve or fix the URL") from None
        if status != 200:
            raise ConfigError(f"{self.url}/v1/info answered HTTP {status}; is this an "
                              f"sslsteal_jax service? (a bare embedding endpoint: give its full "
                              f"URL with path)")
        self.info = json.loads(body)
        self.image_shape = tuple(self.info["input_shape"])
        self.output = self.info.get("output", "representation")
        self._output_dim = int(self.info["output_dim"])
        self.max_images = int(self.info.get("limits", {}).get("max_images", DEFAULT_MAX_IMAGES))
        return self.info

    @property
    def output_dim(self) -> int | None:
        """Width of the answers (from ``/v1/info``, or the first answer of a bare endpoint)."""
        return self._output_dim

    @property
    def defenses(self) -> str:
        """The served defense chain's link names joined by ``+`` ("none"; "unknown" for a
        bare endpoint). Parameters are the provider's secret: not reported."""
        if self.request_defenses is not None:
            return self.request_defenses
        if not self.info:
            return "unknown"
        return "+".join(self.info.get("defenses") or []) or "none"

    def check_compatible(self, image_shape, output: str = "representation",
                         defenses=None, variables=None) -> None:
        """Check that the served victim is what an experiment expects.

        Args:
          image_shape: ``(H, W, C)`` the experiment's images have.
          output: "representation" or "projection".
          defenses: the experiment's defense chain spec (None: none); compared by
            link names (the service does not reveal parameters). A research-mode
            server applies it instead: it is sent with every request from now on.
          variables: the victim's variables as the experiment knows them (None: not
            checked); compared by ``victim_fingerprint`` with the served victim's.
        Raises:
          ConfigError: a mismatch (names both values and how to fix it).
        """
        if not self.info:
            return  # a bare endpoint tells nothing; its answers are checked as they come
        if self.info.get("research"):
            try:
                self.request_defenses = format_spec(parse_spec(defenses))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        served = self.info.get("victim_fingerprint")
        if variables is not None and served and victim_fingerprint(variables) != served:
            raise ConfigError(f"the served victim at {self.url} ({self.info.get('victim')}, "
                              f"fingerprint {served}) is not the victim checkpoint this run "
                              f"evaluates (fingerprint {victim_fingerprint(variables)}); serve "
                              f"that checkpoint (--victim) or point the run at the served one")
        if tuple(image_shape) != self.image_shape:
            raise ConfigError(f"the served victim at {self.url} takes images of shape "
                              f"{list(self.image_shape)}, this run's images are "
                              f"{list(image_shape)}")
        if output != self.output:
            raise ConfigError(f"the served victim at {self.url} returns the {self.output!r}, this "
                              f"run asks for {output!r} (serve it with --output={output})")
        want = "+".join(name for name, _ in parse_spec(defenses)) or "none"
        if self.request_defenses is None and want != self.defenses:
            raise ConfigError(f"the served victim at {self.url} applies defenses {self.defenses!r}, "
                              f"this run asks for {want!r}; serve the victim with "
                              f"--defenses=<that chain> or run without api.url")

    # ----- accounts ----------------------------------------------------------------------
    def register(self, user: str, budget: int | None) -> None:
        """Set a client-side cap of ``budget`` queries for ``user`` (None: only the
        server's budget applies) and reset its count. The server's ledger is not
        changed (budgets are the provider's: ``serve.admin top-up``).

        Raises:
          ValueError: negative budget.
        """
        if budget is not None and int(budget) < 0:
            raise ValueError(f"budget must be >= 0 or None, got {budget}")
        with self._lock:
            self._accounts[user] = _Account(None if budget is None else int(budget))
            self._generation[user] = self._generation.get(user, 0) + 1

    def _session_of(self, user: str) -> str:
        """Research mode: the session id of ``user``'s current defense state."""
        with self._lock:
            return f"{self._session}.{self._generation.get(user, 0)}"

    def _account(self, user: str) -> _Account:
        with self._lock:
            return self._accounts.setdefault(user, _Account(None))

    def queries_used(self, user: str) -> int:
        """Queries this client was charged for ``user`` (answered images, counted here)."""
        return self._account(user).used

    def remaining(self, user: str) -> int | None:
        """What ``user`` may still send under the client-side cap (None: no cap)."""
        a = self._account(user)
        return None if a.budget is None else a.budget - a.used

    def key_for(self, user: str | None) -> str | None:
        """The API key ``user``'s requests carry."""
        return self.keys.get(user, self.key) if user is not None else self.key

    def usage(self, user: str | None) -> dict:
        """The server's ``/v1/usage`` for ``user``'s key (budget, used, remaining; the
        key's defense counters when the server exposes them).

        Raises:
          ConfigError: the key is rejected (401). RemoteAPIError: other failures.
        """
        path = self._usage_path
        if self.request_defenses is not None and user is not None:
            path += "?" + urllib.parse.urlencode({"account": user,
                                                  "defenses": self.request_defenses,
                                                  "session": self._session_of(user)})
        status, body, _ = self._send("GET", path, None, user, None)
        return json.loads(body)

    def defense_summary(self, user: str) -> dict:
        """The server-side defense counters of ``user``'s key (``{}`` when the server
        does not expose them or for a bare endpoint)."""
        if not self._service:
            return {}
        return self.usage(user).get("defense", {})

    # ----- queries -----------------------------------------------------------------------
    def query(self, user: str, images, request_id: str | None = None) -> np.ndarray:
        """Answer a batch through the service, one charged query per image.

        Args:
          user: account name (selects the key; capped by ``register``).
          images: uint8 ``(B, H, W, C)`` in [0, 255] or float32/float64 in [0, 1].
          request_id: None (each request gets a fresh idempotency key) or a caller's id
            that is the same for the same images on every attempt (the chunked answer
            cache's, ``pipeline.queries``): request ``j`` of the call is sent with the
            idempotency key ``<request_id>.<j>``, so a call repeated after a crash is
            answered from the server's ledger without a new charge. At most 100
            characters of ``[A-Za-z0-9_.:-]``.
        Returns:
          float32 numpy ``(B, output_dim)``.
        Raises:
          BudgetExceededError: the client-side cap (nothing sent) or the key's budget
            (HTTP 402; nothing charged for that request).
          QueryValidationError: the service refused the images (HTTP 422 / 413).
          AuthenticationError: 401. RemoteAPIError: other failures after the retries.
        """
        x = np.asarray(images)
        if x.dtype == np.float64:
            x = x.astype(np.float32)
        if x.ndim < 1 or len(x) == 0:
            raise QueryValidationError(f"query images must be a non-empty batch (B, H, W, C), "
                                       f"got shape {x.shape}")
        if request_id is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", request_id):
            raise ConfigError(f"request_id {request_id!r} must be 1-100 characters of "
                              "letters, digits and _.:-")
        out = []
        for j, i in enumerate(range(0, len(x), self.max_images)):
            idem = "req-" + uuid.uuid4().hex if request_id is None else f"{request_id}.{j}"
            out.append(self._query_chunk(user, x[i:i + self.max_images], idem))
        return np.concatenate(out, axis=0)

    def _query_chunk(self, user: str, x: np.ndarray, idem: str) -> np.ndarray:
        n = len(x)
        with self._lock:
            acct = self._accounts.setdefault(user, _Account(None))
            if acct.budget is not None and acct.used + n > acct.budget:
                raise BudgetExceededError(
                    f"user {user!r} asked for {n} queries but has {acct.budget - acct.used} left "
                    f"of a client-side budget of {acct.budget}; nothing was sent")
            acct.used += n
        try:
            try:
                req = {"images": encode_array(x, self.encoding), "encoding": self.encoding}
                if self.request_defenses is not None:  # research-mode server
                    req.update(defenses=self.request_defenses, account=user,
                               session=self._session_of(user))
                payload = json.dumps(req).encode()
            except WireFormatError as e:
                raise QueryValidationError(str(e)) from None
            _, body, _ = self._send("POST", self._embed_path, payload, user, idem)
            try:
                emb = decode_embeddings(json.loads(body))
            except (WireFormatError, json.JSONDecodeError) as e:
                raise RemoteAPIError(f"{self.url}: unreadable answer ({e})") from None
            if len(emb) != n:
                raise RemoteAPIError(f"{self.url} answered {len(emb)} vectors for {n} images")
            if self._output_dim is None:
                self._output_dim = int(emb.shape[1])
            return emb
        except BaseException:
            with self._lock:
                acct.used -= n
            raise

    # ----- HTTP --------------------------------------------------------------------------
    def _connection(self, fresh: bool = False):
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _request(self, method, path, payload, key, headers):
        """One HTTP exchange on this thread's connection; returns ``(status, body,
        headers)``. Raises OSError / http.client.HTTPException on transport failures."""
        h = {"Accept": "application/json", **headers}
        if payload is not None:
            h["Content-Type"] = "application/json"
        if key:
            h["Authorization"] = f"Bearer {key}"
        reused = getattr(self._local, "conn", None) is not None
        conn = self._connection()
        try:
            try:
                conn.request(method, path, body=payload, headers=h)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: resend once on a new one
                # (safe: the request carries its idempotency key)
                conn = self._connection(fresh=True)
                conn.request(method, path, body=payload, headers=h)
                resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            raise
        if resp.getheader("connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        return resp.status, body, resp

    def _send(self, method, path, payload, user, idem):
        """Send with retries (same idempotency key every attempt); returns the
        successful ``(status, body, response)`` or raises the mapped error."""
        headers = {"Idempotency-Key": idem} if idem else {}
        key = self.key_for(user)
        last = None
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                status, body, resp = self._request(method, path, payload, key, headers)
            except (OSError, http.client.HTTPException, socket.timeout) as e:
                last = RemoteAPIError(f"{self.url}: no answer ({type(e).__name__}: {e})")
            else:
                if status == 200:
                    return status, body, resp
                last = self._error(status, body, user)
                if status not in _RETRY_STATUS:
                    raise last
                ra = resp.getheader("retry-after")
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            if attempt == self.retries:
                break
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1)
            time.sleep(max(wait, retry_after or 0.0))
        raise last

    def _error(self, status: int, body: bytes, user):
        try:
            err = json.loads(body).get("error", {})
            code, message = err.get("code", ""), err.get("message", body[:200].decode(errors="replace"))
        except (ValueError, AttributeError):
            code, message = "", body[:200].decode(errors="replace")
        text = f"{self.url} (HTTP {status}): {message}"
        if status == 402:
            return BudgetExceededError(text)
        if status in (413, 422):
            return QueryValidationError(text)
        if status == 401 and user is None:
            return ConfigError(f"the API key was rejected by {self.url}: {message} (give the key "
                               f"in ${KEY_ENV} or api.keys_file)")
        if status == 401:
            return AuthenticationError(text, status, code)
        return RemoteAPIError(text, status, code)
