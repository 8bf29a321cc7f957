"""Tests of the served representation API (sslsteal_jax/serve, api/wire.py,
api/remote.py, api/factory.py): wire format, ledger, and the service over real
HTTP (uvicorn on 127.0.0.1 in a thread of this process, a real SQLite file).

The victim is test_api's tiny SimCLR model (ResNet-10 width 4); the load and
kill -9 tests against a server subprocess on the shipped victim are in
tests/test_serve_load.py.
"""
import base64
import contextlib
import http.server
import json
import os
import re
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import uvicorn  # noqa: E402

import test_api  # noqa: E402  (the tiny victim fixture)
from sslsteal_jax.api import BudgetExceededError, QueryValidationError, VictimAPI  # noqa: E402
from sslsteal_jax.api.factory import make_api, read_keys_file  # noqa: E402
from sslsteal_jax.api.remote import RemoteVictimAPI  # noqa: E402
from sslsteal_jax.api.wire import (WireFormatError, decode_array, decode_embeddings,  # noqa: E402
                                   encode_array)
from sslsteal_jax.errors import ConfigError  # noqa: E402
from sslsteal_jax.serve import admin  # noqa: E402
from sslsteal_jax.serve.app import create_app  # noqa: E402
from sslsteal_jax.serve.batcher import bucket_size  # noqa: E402
from sslsteal_jax.serve.ledger import Ledger  # noqa: E402
from sslsteal_jax.serve.service import Limits, Service  # noqa: E402

victim = test_api.victim
SHAPE, REP_DIM = test_api.SHAPE, test_api.REP_DIM


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).integers(0, 256, (48, *SHAPE), dtype=np.uint8)


@contextlib.contextmanager
def live_server(service):
    """Serve ``service`` with uvicorn on a free 127.0.0.1 port in a daemon thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="error",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def post(url, key, payload, idem=None, raw=None):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if idem:
        headers["Idempotency-Key"] = idem
    content = raw if raw is not None else json.dumps(payload).encode()
    return httpx.post(url + "/v1/embed", content=content, headers=headers, timeout=60)


def b64(x):
    return {"images": encode_array(x)}


# ----- wire format -------------------------------------------------------------------------

def test_wire_roundtrip_both_forms(images):
    f = images[:2].astype(np.float32) / 255
    for a in (images[:2], f):
        for enc in ("base64", "list"):
            back = decode_array(json.loads(json.dumps(encode_array(a, enc))))
            assert back.dtype == a.dtype and back.shape == a.shape
            np.testing.assert_array_equal(back, a)
    # the base64 form is little-endian C-order bytes, readable by any client
    obj = encode_array(np.array([[1, 2], [3, 255]], np.uint8))
    assert obj == {"dtype": "uint8", "shape": [2, 2], "data": base64.b64encode(b"\x01\x02\x03\xff").decode()}
    assert encode_array(np.zeros(1, np.float64))["dtype"] == "float32"
    np.testing.assert_array_equal(decode_embeddings([[1.0, 2.0]]), [[1.0, 2.0]])


@pytest.mark.parametrize("obj, pattern", [
    ({"dtype": "int32", "shape": [1], "data": ""}, r"images\.dtype='int32'.*uint8.*float32"),
    ({"dtype": "uint8", "shape": [2, 2], "data": base64.b64encode(b"abc").decode()},
     r"shape \[2, 2\] of uint8 needs 4 bytes, data holds 3"),
    ({"dtype": "uint8", "shape": [1], "data": "!!"}, r"not valid base64"),
    ({"dtype": "uint8", "shape": [-1], "data": ""}, r"non-negative integers"),
    ({"dtype": "uint8", "data": ""}, r"missing \['shape'\]"),
    ([[1, 2], [3]], r"ragged"),
    ([[1, 256]], r"\[0, 255\].*\[1, 256\]"),
    ([[True, False]], r"numbers"),
    ("abc", r"base64 array object or nested lists, got str"),
])
def test_wire_errors_name_the_value(obj, pattern):
    with pytest.raises(WireFormatError, match=pattern):
        decode_array(obj)


def test_bucket_sizes():
    assert [bucket_size(n, 128, 2) for n in (1, 2, 3, 5, 33, 100, 128)] == [2, 2, 4, 8, 64, 128, 128]
    assert bucket_size(7, 10, 8) == 8 and bucket_size(9, 10, 8) == 16  # cap: 10 rounded up to 16


# ----- ledger ------------------------------------------------------------------------------

def test_ledger_stores_hashed_keys_and_admin_commands(tmp_path):
    db = str(tmp_path / "l.sqlite")
    rec, secret = Ledger(db).create_key("alice", 100, rate=50.0)
    assert secret.startswith("ssk_") and len(secret) == 47 and rec.budget == 100
    lg = Ledger(db)
    assert lg.authenticate(secret).name == "alice" and lg.authenticate(secret + "x") is None
    lg.close()
    for f in os.listdir(tmp_path):  # the key itself is in no file, only its SHA-256
        assert secret.encode() not in (tmp_path / f).read_bytes(), f
    out = admin.run(["--db", db, "top-up", "alice", "50"])
    assert out["budget"] == 150 and out["remaining"] == 150
    out = admin.run(["--db", db, "create", "bob"])
    assert out["budget"] is None and out["key"].startswith("ssk_")
    assert [k["name"] for k in admin.run(["--db", db, "list"])] == ["alice", "bob"]
    assert admin.run(["--db", db, "revoke", "bob"])["revoked"] is True
    for argv, pattern in [(["create", "alice"], "already exists"),
                          (["create", "a b"], r"key name 'a b' must be"),
                          (["create", "c", "--budget", "-1"], "budget -1 must be >= 0"),
                          (["top-up", "bob", "5"], "no budget limit"),
                          (["top-up", "alice", "0"], "must be >= 1"),
                          (["revoke", "carol"], r"no key named 'carol'; existing keys: \['alice', 'bob'\]"),
                          (["frob"], "invalid choice")]:
        with pytest.raises(ConfigError, match=pattern):
            admin.run(["--db", db] + argv)
    with pytest.raises(ConfigError, match="no ledger at"):
        admin.run(["--db", str(tmp_path / "none.sqlite"), "list"])


def test_admin_text_output_of_every_command(tmp_path, capsys):
    """revoke / top-up / totals print a sentence (they printed raw JSON); --json stays JSON."""
    import json
    db = str(tmp_path / "l.sqlite")
    assert admin.main(["--db", db, "create", "alice", "--budget", "100"]) == 0
    assert admin.main(["--db", db, "create", "bob"]) == 0
    capsys.readouterr()
    want = [(["top-up", "alice", "50"],
             "topped up key 'alice': budget 150, 0 queries used, 150 remaining"),
            (["revoke", "bob"], "revoked key 'bob': budget unlimited, 0 queries used, no limit "
             "(revoked)"),
            (["totals"], "queries charged 0, pending 0, answered and stored 0 (all keys)")]
    for argv, line in want:
        assert admin.main(["--db", db, *argv]) == 0
        assert capsys.readouterr().out == line + "\n"
    assert admin.main(["--db", db, "--json", "totals"]) == 0
    assert json.loads(capsys.readouterr().out) == {"charged": 0, "pending": 0, "answered": 0}


def test_admin_prints_the_command_the_parser_read(tmp_path, monkeypatch, capsys):
    """A ledger path spelt like a command (``--db list create x``) once made main() print
    the created key as a 'list' table: a traceback after the key was stored, its secret lost."""
    monkeypatch.chdir(tmp_path)
    assert admin.main(["--db", "list", "create", "x", "--budget=5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("created key 'x' (budget 5") and "ssk_" in out, out
    assert admin.main(["--db", "list", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["x", "5"]


def test_ledger_charges_once_per_idempotency_key(tmp_path):
    lg = Ledger(str(tmp_path / "l.sqlite"))
    rec, _ = lg.create_key("k", 10)
    assert lg.begin_request(rec.id, "r1", 4, "d1", "boot1").kind == "new"
    assert lg.key_usage(rec.id).used == 4
    assert lg.begin_request(rec.id, "r1", 4, "d1", "boot1").kind == "in_progress"
    assert lg.begin_request(rec.id, "r1", 4, "other", "boot1").kind == "mismatch"
    # the server died before answering: a new server instance resumes without a new charge
    assert lg.begin_request(rec.id, "r1", 4, "d1", "boot2").kind == "resume"
    assert lg.key_usage(rec.id).used == 4
    lg.finish_request(rec.id, "r1", b'{"x": 1}')
    b = lg.begin_request(rec.id, "r1", 4, "d1", "boot3")
    assert b.kind == "replay" and b.response == b'{"x": 1}'
    b = lg.begin_request(rec.id, "r2", 7, "d2", "boot3")
    assert b.kind == "budget" and b.remaining == 6 and lg.key_usage(rec.id).used == 4
    assert lg.begin_request(rec.id, "r3", 6, "d3", "boot3").kind == "new"
    lg.refund_request(rec.id, "r3")  # answering failed
    assert lg.key_usage(rec.id).used == 4
    assert lg.totals() == {"charged": 4, "pending": 0, "answered": 4}


# ----- the service over HTTP ---------------------------------------------------------------

@pytest.fixture(scope="module")
def plain(victim, tmp_path_factory):
    """An undefended service (small limits) with keys alice (budget 40), bob (revoked),
    slow (rate 4 queries/s), tight (budget 3), and a reference in-process API."""
    model, variables = victim
    db = str(tmp_path_factory.mktemp("plain") / "ledger.sqlite")
    lg = Ledger(db)
    keys = {n: lg.create_key(n, b, rate=r)[1] for n, b, r in
            [("alice", 40, None), ("bob", 10, None), ("slow", 100, 4.0), ("tight", 3, None)]}
    lg.revoke("bob")
    api = VictimAPI(model, variables, SHAPE, batch_size=16)
    service = Service(api, lg, Limits(max_images=32, max_request_bytes=200_000, max_batch=16,
                                      max_wait_ms=5))
    with live_server(service) as url:
        yield url, keys, lg, VictimAPI(model, variables, SHAPE, batch_size=16)


def test_info_health_and_answers_equal_in_process(plain, images):
    url, keys, lg, ref = plain
    info = httpx.get(url + "/v1/info").json()
    assert info["input_shape"] == list(SHAPE) and info["output_dim"] == REP_DIM
    assert info["defenses"] == [] and info["limits"]["max_images"] == 32
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    r = post(url, keys["alice"], b64(images[:5]), idem="a-1")
    assert r.status_code == 200, r.text
    body = r.json()
    emb = decode_embeddings(body)
    # a request alone in its batching window is answered exactly as VictimAPI.query
    np.testing.assert_array_equal(emb, ref.query("ref", images[:5]))
    assert body["queries_charged"] == 5 and body["queries_used"] == 5 and body["budget"] == 40
    # the list form (what a hand-written client sends) gets lists back
    r = post(url, keys["alice"], {"images": images[:1].tolist()}, idem="a-2")
    np.testing.assert_allclose(np.asarray(r.json()["embeddings"], np.float32), emb[:1], atol=1e-5)
    # a retry with the same idempotency key gets the stored answer, charged once
    again = post(url, keys["alice"], b64(images[:5]), idem="a-1")
    assert again.json() == body
    assert again.headers["idempotent-replayed"] == "true"
    assert lg.key_by_name("alice").used == 6


@pytest.mark.parametrize("case", ["no header", "unknown", "revoked", "bad json", "no images",
                                  "shape", "dtype", "nan", "range", "empty", "too many",
                                  "too large", "budget", "idem reuse", "bad idem"])
def test_rejected_requests_are_never_charged(plain, images, case):
    url, keys, lg, _ = plain
    alice = keys["alice"]
    nan = np.full((1, *SHAPE), 0.5, np.float32)
    nan[0, 3, 4, 0] = np.nan
    status, pattern, send = {
        "no header": (401, "missing 'Authorization: Bearer", lambda: post(url, None, b64(images[:1]))),
        "unknown": (401, "unknown API key", lambda: post(url, "ssk_" + "x" * 43, b64(images[:1]))),
        "revoked": (401, "'bob' has been revoked", lambda: post(url, keys["bob"], b64(images[:1]))),
        "bad json": (422, "not valid JSON", lambda: post(url, alice, None, raw=b"{images")),
        "no images": (422, "'images' field", lambda: post(url, alice, {"pixels": []})),
        "shape": (422, r"shape \(B, 28, 28, 1\), got \(2, 28, 28, 3\)",
                  lambda: post(url, alice, b64(np.zeros((2, 28, 28, 3), np.uint8)))),
        "dtype": (422, r"images.dtype='int32'; allowed: \['uint8', 'float32'\]",
                  lambda: post(url, alice, {"images": {"dtype": "int32", "shape": [1], "data": "AAAAAA=="}})),
        "nan": (422, "NaN or inf", lambda: post(url, alice, b64(nan))),
        "range": (422, r"\[0, 1\], got values in \[0, 255\]",
                  lambda: post(url, alice, b64(images[:1].astype(np.float32)))),
        "empty": (422, "empty query batch", lambda: post(url, alice, b64(images[:0]))),
        "too many": (413, "the limit is 32", lambda: post(url, alice, {"images": images[:33].tolist()})),
        "too large": (413, "exceeds the limit of 200000 bytes",
                      lambda: post(url, alice, None, raw=b" " * 200_001)),
        "budget": (402, r"'tight' asked for 4 queries but has 3 left of a budget of 3; nothing",
                   lambda: post(url, keys["tight"], b64(images[:4]))),
        "idem reuse": (422, "was already used for another request",
                       lambda: post(url, alice, b64(images[1:6]), idem="a-1")),
        "bad idem": (422, "Idempotency-Key 'has space' must be",
                     lambda: post(url, alice, b64(images[:1]), idem="has space")),
    }[case]
    if case == "idem reuse":
        post(url, alice, b64(images[:5]), idem="a-1")  # make sure a-1 exists
    before = {k.name: k.used for k in lg.list_keys()}
    r = send()
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and re.search(pattern, err["message"]), err
    assert {k.name: k.used for k in lg.list_keys()} == before  # nothing charged
    assert httpx.get(url + "/healthz").status_code == 200  # and the server is fine


def test_rate_limit_429_with_retry_after(plain, images):
    url, keys, lg, _ = plain
    assert post(url, keys["slow"], b64(images[:4])).status_code == 200
    r = post(url, keys["slow"], b64(images[:4]))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "limited to 4 queries per second" in r.json()["error"]["message"]
    assert lg.key_by_name("slow").used == 4


def test_metrics_usage_and_unknown_route(plain, images):
    url, keys, lg, _ = plain
    post(url, None, b64(images[:1]))
    text = httpx.get(url + "/metrics").text
    assert 'sslsteal_rejections_total{reason="unauthorized"}' in text
    assert "sslsteal_queries_answered_total" in text and "sslsteal_request_latency_seconds_bucket" in text
    assert "sslsteal_queries_per_second" in text
    u = httpx.get(url + "/v1/usage", headers={"Authorization": f"Bearer {keys['alice']}"}).json()
    assert u["name"] == "alice" and u["used"] == lg.key_by_name("alice").used and "defense" not in u
    r = httpx.get(url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ----- client ------------------------------------------------------------------------------

def test_remote_client_same_interface(plain, victim, images, tmp_path, monkeypatch):
    url, keys, lg, ref = plain
    secret = lg.create_key("dave", 30)[1]
    api = RemoteVictimAPI(url, secret)
    assert api.image_shape == SHAPE and api.output_dim == REP_DIM and api.defenses == "none"
    api.register("attacker", 12)
    out = api.query("attacker", images[:10])
    np.testing.assert_array_equal(out, ref.query("ref2", images[:10]))
    assert api.queries_used("attacker") == 10 and api.remaining("attacker") == 2
    with pytest.raises(BudgetExceededError, match="client-side budget of 12"):
        api.query("attacker", images[:3])
    api.register("big", None)
    api.query("big", images[:16])
    with pytest.raises(BudgetExceededError, match=r"HTTP 402.*'dave' asked for 16 queries but has 4"):
        api.query("big", images[:16])
    with pytest.raises(QueryValidationError, match=r"HTTP 422.*\[0, 1\]"):
        api.query("big", images[:1].astype(np.float32) * 2)
    assert lg.key_by_name("dave").used == 26 == api.queries_used("attacker") + api.queries_used("big")
    # a bigger batch than the server's max_images is sent as several requests
    api2 = RemoteVictimAPI(url, keys["alice"])
    assert api2.max_images == 32
    # key problems are user errors, found when the client is made
    with pytest.raises(ConfigError, match="API key was rejected.*unknown API key"):
        RemoteVictimAPI(url, "ssk_nope")
    with pytest.raises(ConfigError, match="cannot reach the served victim at http://127.0.0.1:9"):
        RemoteVictimAPI("http://127.0.0.1:9", secret, retries=0)
    with pytest.raises(ConfigError, match="must be http"):
        RemoteVictimAPI("ftp://x", secret)
    # the factory: in-process without a URL; a served victim with one (key from the environment)
    cfg = ml_collections.ConfigDict(dict(url="", key_env="MY_KEY", keys_file="", timeout_s=30.0,
                                         retries=2))
    assert isinstance(make_api(cfg, *victim, SHAPE), VictimAPI)
    monkeypatch.setenv("MY_KEY", secret)
    cfg.url = url
    remote = make_api(cfg, *victim, SHAPE, output="representation")  # same victim: accepted
    assert isinstance(remote, RemoteVictimAPI) and remote.key == secret
    other = jax.tree_util.tree_map(lambda v: v + 1, victim[1])
    with pytest.raises(ConfigError, match=r"is not the victim checkpoint this run evaluates"):
        make_api(cfg, victim[0], other, SHAPE)
    with pytest.raises(ConfigError, match=r"applies defenses 'none', this run asks for 'gaussian'"):
        make_api(cfg, None, None, SHAPE, defenses="gaussian:scale=0.1")
    with pytest.raises(ConfigError, match=r"returns the 'representation', this run asks for 'projection'"):
        make_api(cfg, None, None, SHAPE, output="projection")
    with pytest.raises(ConfigError, match=r"takes images of shape \[28, 28, 1\], this run's images are \[32, 32, 3\]"):
        make_api(cfg, None, None, (32, 32, 3))
    kf = tmp_path / "keys.txt"
    kf.write_text(f"# accounts\n*={secret}\nsybil0={keys['alice']}\n")
    cfg.keys_file = str(kf)
    remote = make_api(cfg, None, None, SHAPE)
    assert remote.key_for("sybil0") == keys["alice"] and remote.key_for("attacker") == secret
    kf.write_text("a=1\na=2\n")
    with pytest.raises(ConfigError, match="account 'a' given twice"):
        read_keys_file(str(kf))



class _FlakyEndpoint(http.server.BaseHTTPRequestHandler):
    """A bare embedding endpoint: fails the first two attempts with 503, then answers
    with a nested list of vectors (the first pixel of every image, twice)."""

    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Idempotency-Key"),
                          self.headers.get("Authorization")))
        if len(self.seen) <= 2:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        x = decode_array(body["images"])
        out = json.dumps([[float(v), float(v)] for v in x.reshape(len(x), -1)[:, 0]]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_remote_request_id_is_charged_once_across_clients(plain, images):
    """The chunked answer cache's request ids (pipeline.queries): a chunk asked again
    under its id by a new client (a restarted process) is answered from the ledger,
    not charged again; other ids are charged."""
    url, keys, lg, ref = plain
    secret = lg.create_key("erin", 20)[1]
    first = RemoteVictimAPI(url, secret).query("attacker", images[:6], request_id="c0ffee:0-6.0")
    again = RemoteVictimAPI(url, secret).query("attacker", images[:6], request_id="c0ffee:0-6.0")
    np.testing.assert_array_equal(again, first)
    assert lg.key_by_name("erin").used == 6
    RemoteVictimAPI(url, secret).query("attacker", images[:6], request_id="c0ffee:6-12.0")
    assert lg.key_by_name("erin").used == 12
    with pytest.raises(ConfigError, match="request_id 'a b' must be 1-100 characters"):
        RemoteVictimAPI(url, secret).query("attacker", images[:1], request_id="a b")


def test_remote_client_retries_with_one_idempotency_key_on_any_endpoint(images):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/embed/v3"
        api = RemoteVictimAPI(url, "secret-token", retries=3, backoff_s=0.01, encoding="list")
        assert api.defenses == "unknown" and api.output_dim is None
        out = api.query("u", images[:3])
        np.testing.assert_array_equal(out, np.repeat(images[:3, 0, 0, :], 2, 1).astype(np.float32))
        assert api.output_dim == 2 and api.queries_used("u") == 3
        paths, idems, auths = zip(*_FlakyEndpoint.seen)
        assert paths == ("/embed/v3",) * 3 and len(set(idems)) == 1 and idems[0].startswith("req-")
        assert set(auths) == {"Bearer secret-token"}
        _FlakyEndpoint.seen.clear()
        api.retries = 1  # two 503s, one retry: the client gives up, nothing counted
        with pytest.raises(RuntimeError, match="HTTP 503"):
            api.query("u", images[:1])
        assert api.queries_used("u") == 3
    finally:
        server.shutdown()


# ----- defenses: per-key state persisted across restarts -----------------------------------

@pytest.mark.slow
def test_defense_state_per_key_survives_restart(victim, images, tmp_path):
    """Key 'alice' of a defended service gets exactly the answers the in-process API
    gives user 'alice' (same chain, same seed), also across a service restart: the
    key's defense state (similarity history, call counter) is persisted in the ledger."""
    model, variables = victim
    spec = "gaussian:scale=0.05+similarity:threshold=0.9"
    db = str(tmp_path / "l.sqlite")
    secret = Ledger(db).create_key("alice", None)[1]
    ref = VictimAPI(model, variables, SHAPE, defenses=spec, seed=3)
    want = [ref.query("alice", images[i * 6:(i + 1) * 6]) for i in range(3)]
    got = []
    for restart in range(2):
        api = VictimAPI(model, variables, SHAPE, defenses=spec, seed=3)
        service = Service(api, Ledger(db), Limits(expose_defense_state=True))
        with live_server(service) as url:
            client = RemoteVictimAPI(url, secret)
            assert client.defenses == "gaussian+similarity"
            for i in ([0, 1] if restart == 0 else [2]):
                got.append(client.query("alice", images[i * 6:(i + 1) * 6]))
            summary = client.defense_summary("alice")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert summary == ref.defense_summary("alice") and summary["1:similarity.seen"] == 18
    lg = Ledger(db)
    assert lg.defense_state(lg.key_by_name("alice").id, ref.defenses, "alice")[0] == 3
    assert lg.key_by_name("alice").used == 18


@pytest.mark.slow
def test_research_mode_matches_in_process_per_chain_and_account(victim, images, tmp_path,
                                                               monkeypatch):
    """A --research server answers each (chain, account) like the in-process API with
    that chain answers that user, through the experiments' factory; one key."""
    model, variables = victim
    db = str(tmp_path / "l.sqlite")
    lg = Ledger(db)
    secret = lg.create_key("lab", 200)[1]
    base = VictimAPI(model, variables, SHAPE, seed=2)
    service = Service(base, lg, Limits(), chain_api=lambda spec: VictimAPI(
        model, variables, SHAPE, defenses=spec, seed=2))
    spec = "gaussian:scale=0.05+similarity:threshold=0.9"
    cfg = ml_collections.ConfigDict(dict(url="", key_env="LAB_KEY", keys_file="",
                                         timeout_s=60.0, retries=2))
    monkeypatch.setenv("LAB_KEY", secret)
    with live_server(service) as url:
        cfg.url = url
        client = make_api(cfg, None, None, SHAPE, defenses=spec)
        plain = make_api(cfg, None, None, SHAPE)
        assert client.defenses == "gaussian:scale=0.05+similarity:threshold=0.9"
        got = {u: [client.query(u, images[i * 6:(i + 1) * 6]) for i in range(2)]
               for u in ("attacker", "legit")}
        got_plain = plain.query("attacker", images[:6])
        summary = client.defense_summary("attacker")
        # register() (and a new client) start a fresh defense state, as in-process
        client.register("attacker", None)
        again = client.query("attacker", images[:6])
        r = post(url, secret, dict(b64(images[:1]), defenses="nonsense"))
        assert r.status_code == 422 and "unknown defense 'nonsense'" in r.text
    ref = VictimAPI(model, variables, SHAPE, defenses=spec, seed=2)
    for u in ("attacker", "legit"):
        for i, g in enumerate(got[u]):
            np.testing.assert_array_equal(g, ref.query(u, images[i * 6:(i + 1) * 6]))
    np.testing.assert_array_equal(got_plain, VictimAPI(model, variables, SHAPE).query("x", images[:6]))
    assert summary == ref.defense_summary("attacker") and lg.key_by_name("lab").used == 36
    np.testing.assert_array_equal(again, got["attacker"][0])


def test_defense_fields_refused_outside_research_mode(plain, images):
    url, keys, lg, _ = plain
    before = lg.key_by_name("alice").used
    r = post(url, keys["alice"], dict(b64(images[:1]), defenses="gaussian"))
    assert r.status_code == 422 and "only accepted by a server started with --research" in r.text
    assert lg.key_by_name("alice").used == before


def test_server_cli_user_errors_are_one_line(tmp_path, capsys):
    from sslsteal_jax.serve import __main__ as cli

    db = str(tmp_path / "l.sqlite")
    for argv, pattern in [
        ([f"--db={db}"], "the following arguments are required: --victim"),
        (["--victim=/no/such/dir", f"--db={db}"], "--victim='/no/such/dir' is not a directory"),
        ([f"--victim={tmp_path}", f"--db={db}", "--max_batch=0"], "--max_batch=0 must be >= 1"),
        ([f"--victim={tmp_path}", f"--db={db}", "--port=x"], "invalid int value: 'x'"),
        # uvicorn would bind 70000 % 65536 = 4464 under a banner saying 70000
        ([f"--victim={tmp_path}", f"--db={db}", "--port=70000"],
         "--port=70000; allowed: an integer in [1, 65535]"),
        ([f"--victim={tmp_path}", f"--db={db}", "--port=0"], "--port=0; allowed"),
        ([f"--victim={tmp_path}", f"--db={db}", "--max_wait_ms=-1"],
         "--max_wait_ms=-1; allowed: a number >= 0"),
        ([f"--victim={tmp_path}", f"--db={db}", "--idempotency_ttl_h=0"],
         "--idempotency_ttl_h=0; allowed: a number > 0"),
    ]:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and pattern in err, err
    # a port another process listens on: one line before anything is loaded (uvicorn printed
    # its own error after the banner and exited with status 3, the "stalled" status)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main([f"--victim={tmp_path}", f"--db={db}", f"--port={port}"]) == 1
        err = capsys.readouterr().err
        assert err == (f"error: cannot serve on 127.0.0.1:{port}: Address already in use; stop "
                       "the process that uses it or pick another --port\n"), err
    assert not os.path.exists(db)  # nothing was created for a refused start
    held = cli._lock_ledger(db)  # one server per ledger
    with pytest.raises(ConfigError, match="in use by another server"):
        cli._lock_ledger(db)
    held.close()
    cli._lock_ledger(db).close()  # free again once the holder is gone
