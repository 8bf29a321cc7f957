"""The service's persistent ledger: API keys, budgets, charges, idempotent requests
and each key's defense state, in one SQLite file.

Guarantees (docs/serving.md, "Ledger"):

* **Keys are stored hashed.** A key is ``ssk_`` + 43 random URL-safe characters
  (256 bits from ``secrets``); the file keeps only its SHA-256. A fast hash is
  enough for random keys of that length (nobody can brute-force 2^256); slow
  password hashes are for low-entropy secrets.
* **One transaction per charge.** :meth:`Ledger.begin_request` checks the budget
  and charges the request's queries in one ``BEGIN IMMEDIATE`` transaction
  (``UPDATE ... WHERE used + n <= budget``), recording the request as
  ``pending`` under its idempotency key. :meth:`Ledger.finish_request` stores the
  answer and the key's new defense state in a second transaction, before the
  answer is sent. So at any instant, also right after ``kill -9``, the ledger
  has charged at least every answer that was delivered (WAL journal; charges
  are committed with ``synchronous=FULL``, i.e. fsynced: they survive a crash
  of the process and of the machine. Answer records and defense states are
  committed with ``synchronous=NORMAL`` by default: they survive a process
  crash; a power cut may lose the last ones, whose requests then count as
  charged but unanswered and are answered without a new charge when retried).
* **Nothing is charged twice for one request.** A request repeated with the
  same idempotency key gets the stored answer back (``replay``) or, if the
  first attempt was charged but never answered because the server died,
  is answered now without a new charge (``resume``).
* **Defense state per key** (per key, chain and research account): stored with
  every answer, so a restart resumes it.

Admin commands (``python -m sslsteal_jax.serve.admin``) and the server may use
the file at the same time (SQLite WAL: one writer at a time, readers never
blocked; writers wait up to ``busy_timeout``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time

from sslsteal_jax.errors import ConfigError

SCHEMA_VERSION = "1"
KEY_PREFIX = "ssk_"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  id INTEGER PRIMARY KEY,
  name TEXT UNIQUE NOT NULL,
  hash TEXT UNIQUE NOT NULL,
  budget INTEGER,                      -- NULL: unlimited
  used INTEGER NOT NULL DEFAULT 0,     -- queries charged (one per image)
  rate REAL,                           -- queries per second, NULL: no limit
  revoked INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS defense_states (
  key_id INTEGER NOT NULL,
  chain TEXT NOT NULL,                 -- canonical defense chain spec
  account TEXT NOT NULL,               -- the key's name, or a research "[session|]account"
  calls INTEGER NOT NULL,              -- answered calls: the next call's PRNG index
  state BLOB,                          -- serialized defense state
  PRIMARY KEY (key_id, chain, account)
);
CREATE TABLE IF NOT EXISTS requests (
  key_id INTEGER NOT NULL,
  idem TEXT NOT NULL,                  -- idempotency key
  n INTEGER NOT NULL,                  -- queries charged
  digest TEXT NOT NULL,                -- SHA-256 of the images sent
  status TEXT NOT NULL,                -- 'pending' (charged) | 'done' (answered)
  boot TEXT NOT NULL,                  -- server instance that holds a pending request
  created REAL NOT NULL,
  finished REAL,
  response BLOB,                       -- the exact answer body, for replays
  PRIMARY KEY (key_id, idem)
);
CREATE TABLE IF NOT EXISTS audit (
  time REAL NOT NULL, key_id INTEGER, action TEXT NOT NULL, amount INTEGER
);
"""


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """One API key's row (never the key itself): ``budget`` None = unlimited,
    ``rate`` queries per second (None = no limit)."""

    id: int
    name: str
    budget: int | None
    used: int
    rate: float | None
    revoked: bool
    created: float

    @property
    def remaining(self) -> int | None:
        """Queries left (None = unlimited)."""
        return None if self.budget is None else self.budget - self.used

    def public(self) -> dict:
        """JSON-safe summary (admin listing, ``/v1/usage``)."""
        return {"name": self.name, "budget": self.budget, "used": self.used,
                "remaining": self.remaining, "rate_limit": self.rate, "revoked": self.revoked,
                "created": self.created}


@dataclasses.dataclass(frozen=True)
class Begin:
    """Outcome of :meth:`Ledger.begin_request`.

    ``kind``: "new" (charged now), "resume" (charged by an earlier attempt that
    was never answered: answer without a new charge), "replay" (answered before:
    ``response`` holds the stored body), "in_progress" (an attempt of this
    server instance is being answered), "budget" (refused: ``remaining``
    queries left), "revoked", "mismatch" (the idempotency key was used for other
    images: ``detail``). ``used`` / ``budget``: the key's charged queries and
    budget after this step ("new", "resume", "budget").
    """

    kind: str
    response: bytes | None = None
    remaining: int | None = None
    detail: str = ""
    used: int | None = None
    budget: int | None = None


def hash_key(secret: str) -> str:
    """SHA-256 hex digest of an API key (what the ledger stores)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh API key: ``ssk_`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Ledger:
    """SQLite ledger (file ``path``; created with the schema when missing).

    Args:
      path: the database file.
      synchronous: SQLite ``synchronous`` pragma of the charge transactions (and
        admin changes): "FULL" (default: a committed charge survives a machine
        crash too) or "NORMAL" (survives a process crash, ``kill -9``; no fsync).
      answers_synchronous: the same for the transactions that record answers and
        defense states (default "NORMAL": one fsync per request, not two).
    Raises:
      ConfigError: the file is not a ledger of this schema version, or a bad
        ``synchronous`` value.
    Thread-safe: one connection guarded by a lock; every method is one short
    transaction.
    """

    def __init__(self, path: str, synchronous: str = "FULL", answers_synchronous: str = "NORMAL"):
        for name, v in (("synchronous", synchronous), ("answers_synchronous", answers_synchronous)):
            if v not in ("FULL", "NORMAL"):
                raise ConfigError(f"{name}={v!r}; allowed: 'FULL' or 'NORMAL'")
        self.path = path
        self._sync = {True: synchronous, False: answers_synchronous}
        self._sync_now = synchronous
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)  # CREATE ... IF NOT EXISTS: idempotent
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"--db={path!r} is not a usable SQLite ledger ({e})") from None
        version = self.get_meta("schema")
        if version is None:
            self.set_meta("schema", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise ConfigError(f"ledger {path!r} has schema version {version}, this code reads "
                              f"version {SCHEMA_VERSION}")

    # ----- plumbing -----------------------------------------------------------------------
    class _Tx:
        def __init__(self, ledger, durable):
            self.ledger, self.durable = ledger, durable

        def __enter__(self):
            self.ledger._lock.acquire()
            try:
                sync = self.ledger._sync[self.durable]
                if sync != self.ledger._sync_now:  # per transaction: charges fsynced, answers not
                    self.ledger._db.execute(f"PRAGMA synchronous={sync}")
                    self.ledger._sync_now = sync
                self.ledger._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.ledger._lock.release()
                raise
            return self.ledger._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.ledger._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.ledger._lock.release()
            return False

    def _tx(self, durable: bool = True):
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error),
        committed with ``synchronous`` (durable) or ``answers_synchronous``."""
        return Ledger._Tx(self, durable)

    def _read(self, sql: str, args=()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def get_meta(self, k: str) -> str | None:
        """A metadata value (schema version, service fingerprint) or None."""
        rows = self._read("SELECT v FROM meta WHERE k = ?", (k,))
        return rows[0][0] if rows else None

    def set_meta(self, k: str, v: str) -> None:
        """Set a metadata value."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (k, v))

    @staticmethod
    def _record(row) -> KeyRecord:
        i, name, budget, used, rate, revoked, created = row
        return KeyRecord(i, name, budget, used, rate, bool(revoked), created)

    _COLS = "id, name, budget, used, rate, revoked, created"

    # ----- admin ----------------------------------------------------------------------------
    def create_key(self, name: str, budget: int | None, rate: float | None = None
                   ) -> tuple[KeyRecord, str]:
        """Create a key; returns ``(record, secret)``: the secret is shown once, only
        its hash is stored.

        Raises:
          ConfigError: bad name (allowed: 1-64 of ``A-Za-z0-9_.@:-``), a name in use,
            negative budget, non-positive rate.
        """
        if not NAME_RE.match(name or ""):
            raise ConfigError(f"key name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ : -")
        if budget is not None and int(budget) < 0:
            raise ConfigError(f"budget {budget} must be >= 0 (or omitted: unlimited)")
        if rate is not None and not float(rate) > 0:
            raise ConfigError(f"rate {rate} must be > 0 queries per second (or omitted: no limit)")
        secret = new_secret()
        try:
            with self._tx() as db:
                cur = db.execute("INSERT INTO keys (name, hash, budget, rate, created) VALUES "
                                 "(?, ?, ?, ?, ?)", (name, hash_key(secret), budget, rate,
                                                     time.time()))
                db.execute("INSERT INTO audit VALUES (?, ?, 'create', ?)",
                           (time.time(), cur.lastrowid, budget))
        except sqlite3.IntegrityError:
            raise ConfigError(f"a key named {name!r} already exists (names are unique; see "
                              f"'list')") from None
        return self.key_by_name(name), secret

    def key_by_name(self, name: str) -> KeyRecord:
        """The key named ``name``.

        Raises:
          ConfigError: no such key (lists the existing names).
        """
        rows = self._read(f"SELECT {self._COLS} FROM keys WHERE name = ?", (name,))
        if not rows:
            names = [k.name for k in self.list_keys()]
            raise ConfigError(f"no key named {name!r}; existing keys: {names}")
        return self._record(rows[0])

    def list_keys(self) -> list[KeyRecord]:
        """All keys, oldest first."""
        return [self._record(r) for r in self._read(f"SELECT {self._COLS} FROM keys ORDER BY id")]

    def revoke(self, name: str) -> KeyRecord:
        """Revoke a key (its requests get 401 from now on; usage is kept).

        Raises:
          ConfigError: no such key.
        """
        rec = self.key_by_name(name)
        with self._tx() as db:
            db.execute("UPDATE keys SET revoked = 1 WHERE id = ?", (rec.id,))
            db.execute("INSERT INTO audit VALUES (?, ?, 'revoke', NULL)", (time.time(), rec.id))
        return self.key_by_name(name)

    def top_up(self, name: str, amount: int) -> KeyRecord:
        """Add ``amount`` queries to a key's budget.

        Raises:
          ConfigError: no such key, ``amount`` < 1, or an unlimited key.
        """
        if int(amount) < 1:
            raise ConfigError(f"top-up amount {amount} must be >= 1")
        rec = self.key_by_name(name)
        if rec.budget is None:
            raise ConfigError(f"key {name!r} has no budget limit; nothing to top up")
        with self._tx() as db:
            db.execute("UPDATE keys SET budget = budget + ? WHERE id = ?", (int(amount), rec.id))
            db.execute("INSERT INTO audit VALUES (?, ?, 'top_up', ?)",
                       (time.time(), rec.id, int(amount)))
        return self.key_by_name(name)

    def reset_defense_states(self) -> int:
        """Forget every defense state and call counter (after the service's defenses
        changed); returns how many were forgotten."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM defense_states")
            db.execute("INSERT INTO audit VALUES (?, NULL, 'reset_defense_states', ?)",
                       (time.time(), cur.rowcount))
            return cur.rowcount

    def has_defense_states(self) -> bool:
        """Whether any defense state is stored."""
        return bool(self._read("SELECT COUNT(*) FROM defense_states")[0][0])

    # ----- service --------------------------------------------------------------------------
    def authenticate(self, secret: str) -> KeyRecord | None:
        """The key record of an API key (revoked ones included), None if unknown."""
        if not secret or not secret.startswith(KEY_PREFIX):
            return None
        rows = self._read(f"SELECT {self._COLS} FROM keys WHERE hash = ?", (hash_key(secret),))
        return self._record(rows[0]) if rows else None

    def begin_request(self, key_id: int, idem: str, n: int, digest: str, boot: str) -> Begin:
        """Charge a request of ``n`` queries, once per idempotency key ``idem``.

        One transaction: an earlier request with the same ``(key, idem)`` is
        replayed / resumed / reported in progress (see :class:`Begin`); otherwise
        the budget is checked and ``n`` queries are charged, and the request is
        recorded as ``pending`` by server instance ``boot``.
        """
        with self._tx() as db:
            row = db.execute("SELECT n, digest, status, boot, response FROM requests "
                             "WHERE key_id = ? AND idem = ?", (key_id, idem)).fetchone()
            if row is not None:
                rn, rdigest, status, rboot, response = row
                if rdigest != digest or rn != n:
                    return Begin("mismatch", detail=f"Idempotency-Key {idem!r} was already used "
                                 f"for another request ({rn} images); use a new key per request")
                if status == "done":
                    return Begin("replay", response=bytes(response))
                if rboot == boot:
                    return Begin("in_progress")
                db.execute("UPDATE requests SET boot = ? WHERE key_id = ? AND idem = ?",
                           (boot, key_id, idem))
                budget, used = db.execute("SELECT budget, used FROM keys WHERE id = ?",
                                          (key_id,)).fetchone()
                return Begin("resume", used=used, budget=budget)
            revoked, budget, used = db.execute(
                "SELECT revoked, budget, used FROM keys WHERE id = ?", (key_id,)).fetchone()
            if revoked:
                return Begin("revoked")
            if budget is not None and used + n > budget:
                return Begin("budget", remaining=budget - used, used=used, budget=budget)
            db.execute("UPDATE keys SET used = used + ? WHERE id = ?", (n, key_id))
            db.execute("INSERT INTO requests (key_id, idem, n, digest, status, boot, created) "
                       "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                       (key_id, idem, n, digest, boot, time.time()))
            return Begin("new", used=used + n, budget=budget)

    def finish_request(self, key_id: int, idem: str, response: bytes,
                       defense: tuple[str, str, int, bytes] | None = None) -> None:
        """Record a request as answered (its body stored for replays) together with
        the new defense state ``(chain, account, calls, state blob)`` (None: the
        service has no defenses), in one transaction (``answers_synchronous``)."""
        with self._tx(durable=False) as db:
            db.execute("UPDATE requests SET status = 'done', finished = ?, response = ? "
                       "WHERE key_id = ? AND idem = ?", (time.time(), response, key_id, idem))
            if defense is not None:
                db.execute("INSERT OR REPLACE INTO defense_states (key_id, chain, account, calls, "
                           "state) VALUES (?, ?, ?, ?, ?)", (key_id, *defense))

    def refund_request(self, key_id: int, idem: str) -> None:
        """Undo the charge of a pending request that could not be answered."""
        with self._tx() as db:
            row = db.execute("SELECT n FROM requests WHERE key_id = ? AND idem = ? AND "
                             "status = 'pending'", (key_id, idem)).fetchone()
            if row is not None:
                db.execute("UPDATE keys SET used = used - ? WHERE id = ?", (row[0], key_id))
                db.execute("DELETE FROM requests WHERE key_id = ? AND idem = ?", (key_id, idem))

    def defense_state(self, key_id: int, chain: str, account: str) -> tuple[int, bytes | None]:
        """``(calls, serialized state)`` of one defense state; ``(0, None)`` when fresh."""
        rows = self._read("SELECT calls, state FROM defense_states WHERE key_id = ? AND chain = ? "
                          "AND account = ?", (key_id, chain, account))
        if not rows:
            return 0, None
        return int(rows[0][0]), (None if rows[0][1] is None else bytes(rows[0][1]))

    def key_usage(self, key_id: int) -> KeyRecord:
        """Fresh record of a key."""
        return self._record(self._read(f"SELECT {self._COLS} FROM keys WHERE id = ?",
                                       (key_id,))[0])

    def prune(self, older_than_s: float) -> int:
        """Forget answered requests finished more than ``older_than_s`` seconds ago
        (their idempotency keys can no longer be replayed); returns how many."""
        with self._tx() as db:
            return db.execute("DELETE FROM requests WHERE status = 'done' AND finished < ?",
                              (time.time() - float(older_than_s),)).rowcount

    def totals(self) -> dict:
        """``{"charged": sum of used, "pending": queries of unanswered requests,
        "answered": queries of answered requests still stored}``, over all keys."""
        charged = self._read("SELECT COALESCE(SUM(used), 0) FROM keys")[0][0]
        rows = dict(self._read("SELECT status, COALESCE(SUM(n), 0) FROM requests GROUP BY status"))
        return {"charged": int(charged), "pending": int(rows.get("pending", 0)),
                "answered": int(rows.get("done", 0))}


def fingerprint(victim: str, output: str, defenses: str, seed: int) -> str:
    """The service settings that per-key defense states depend on, as JSON."""
    return json.dumps({"victim": victim, "output": output, "defenses": defenses,
                       "seed": int(seed)}, sort_keys=True)
