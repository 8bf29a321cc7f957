"""Load and fault tests of the served victim: a real server subprocess
(``python -m sslsteal_jax.serve`` on the shipped victim, bound to 127.0.0.1), a
real SQLite ledger file, real HTTP. Every client loop is bounded in requests
and seconds and stops by itself.

* 32 concurrent clients across 4 keys exhaust their budgets: answered ==
  charged == budget for every key, and concurrent requests share forward passes;
* ``kill -9`` of the server under load, then a restart on the same ledger: right
  after the kill the ledger has charged at least every delivered answer; the
  clients retry with the same idempotency keys and finish; in the end charged ==
  delivered exactly (nothing charged twice);
* malformed payloads and wrong keys are refused, never charged, never crash it;
* the main job (configs/quickstart.py, tiny budget) runs against the served victim.
"""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from sslsteal_jax.api import BudgetExceededError, VictimAPI  # noqa: E402
from sslsteal_jax.api.remote import RemoteVictimAPI  # noqa: E402
from sslsteal_jax.api.wire import encode_array  # noqa: E402
from sslsteal_jax.defaults import DEFAULT_VICTIM_CHECKPOINT  # noqa: E402
from sslsteal_jax.serve.ledger import Ledger  # noqa: E402
from sslsteal_jax.serve.process import LocalServer, server_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VICTIM = os.path.join(ROOT, DEFAULT_VICTIM_CHECKPOINT)
SERVER_ARGS = ["--max_batch=32", "--max_wait_ms=5", "--max_images=256", "--max_request_mb=1"]
PER_REQUEST = 8
pytestmark = pytest.mark.slow


def _pool(n: int) -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def _run_clients(clients, deadline_s: float):
    """Run ``clients`` (callables) in threads; fail if one is still running after
    ``deadline_s`` seconds."""
    threads = [threading.Thread(target=c, daemon=True) for c in clients]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"clients still running after {deadline_s} s"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_load")
    db = str(d / "ledger.sqlite")
    lg = Ledger(db)
    keys = {f"k{i}": lg.create_key(f"k{i}", 200)[1] for i in range(4)}
    with LocalServer(VICTIM, db, SERVER_ARGS, log=str(d / "server.log")) as s:
        yield s, keys, lg


def test_32_clients_4_keys_budgets_exact(server):
    s, keys, lg = server
    x = _pool(64)
    names = sorted(keys)
    delivered = {k: 0 for k in names}
    refused, errors, lock = {k: 0 for k in names}, [], threading.Lock()
    start = threading.Barrier(32)

    def client(i):
        name = names[i % 4]
        api = RemoteVictimAPI(s.url, keys[name], check=False, retries=3, backoff_s=0.05)
        start.wait()
        t_end = time.monotonic() + 120
        for r in range(12):  # bounded: 12 requests or 120 s
            if time.monotonic() > t_end:
                break
            try:
                out = api.query("c", x[(i + r) % 8 * PER_REQUEST:][:PER_REQUEST])
            except BudgetExceededError:
                with lock:
                    refused[name] += 1
                break
            except Exception as e:  # noqa: BLE001 -- collected, asserted below
                with lock:
                    errors.append(repr(e))
                break
            assert out.shape == (PER_REQUEST, 128)
            with lock:
                delivered[name] += PER_REQUEST

    _run_clients([lambda i=i: client(i) for i in range(32)], 180)
    assert not errors, errors[:3]
    used = {k.name: k.used for k in lg.list_keys()}
    for name in names:
        assert delivered[name] == used[name] == 200, (delivered, used)
        assert refused[name] == 8  # every client of the key stopped at the budget
    metrics = httpx.get(s.url + "/metrics").text
    reqs = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("sslsteal_batch_requests_sum")))
    passes = float(next(line.split()[-1] for line in metrics.splitlines()
                        if line.startswith("sslsteal_batch_requests_count")))
    assert reqs == 100 and passes < reqs  # 100 answered requests shared forward passes
    assert 'sslsteal_rejections_total{reason="budget_exceeded"} 32.0' in metrics


def test_malformed_payloads_and_wrong_keys_never_charge_or_crash(server):
    s, keys, lg = server
    before = lg.totals()
    key = {"Authorization": f"Bearer {keys['k0']}"}
    x = _pool(2)
    cases = [
        ({}, json.dumps({"images": encode_array(x)}), 401),
        ({"Authorization": "Bearer ssk_forged"}, json.dumps({"images": encode_array(x)}), 401),
        ({"Authorization": "Basic abc"}, "{}", 401),
        (key, "\x00\xff garbage", 422),
        (key, json.dumps({"images": encode_array(x[:, :27])}), 422),
        (key, json.dumps({"images": {"dtype": "float32", "shape": [1, 28, 28, 1],
                                     "data": encode_array(np.full((1, 28, 28, 1), np.nan,
                                                                  np.float32))["data"]}}), 422),
        (key, json.dumps({"images": [[[["a"]]]]}), 422),
        (key, " " * (2 ** 20 + 1), 413),
        (key, json.dumps({"images": np.zeros((300, 1, 1, 1), np.uint8).tolist()}), 413),
    ]
    for headers, body, status in cases:
        r = httpx.post(s.url + "/v1/embed", content=body.encode("latin-1"), headers=headers,
                       timeout=60)
        assert r.status_code == status, (status, r.text)
        assert r.json()["error"]["status"] == status
    assert lg.totals() == before
    assert s.proc.poll() is None and s.healthy()


def test_kill_9_under_load_then_restart(tmp_path):
    db = str(tmp_path / "ledger.sqlite")
    lg = Ledger(db)
    names = [f"k{i}" for i in range(4)]
    keys = {n: lg.create_key(n, None)[1] for n in names}
    x = _pool(80)
    delivered = {n: 0 for n in names}
    done_requests, errors, lock = [0], [], threading.Lock()
    srv = LocalServer(VICTIM, db, SERVER_ARGS, log=str(tmp_path / "server.log")).start()

    def client(i):
        name = names[i % 4]
        api = RemoteVictimAPI(srv.url, keys[name], check=False, retries=200, backoff_s=0.05,
                              max_backoff_s=0.5, timeout_s=30)
        t_end = time.monotonic() + 240
        for r in range(10):  # bounded: 10 requests or 240 s
            if time.monotonic() > t_end:
                break
            try:
                out = api.query("c", x[(i + r) % 10 * PER_REQUEST:][:PER_REQUEST])
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
                return
            assert len(out) == PER_REQUEST
            with lock:
                delivered[name] += PER_REQUEST
                done_requests[0] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        t_kill = time.monotonic() + 120
        while done_requests[0] < 20 and time.monotonic() < t_kill:
            time.sleep(0.02)
        assert done_requests[0] >= 20, "load did not start"
        srv.kill()  # kill -9 mid-load
        with lock:
            at_kill = dict(delivered)
        charged = {k.name: k.used for k in Ledger(db).list_keys()}
        for n in names:  # never fewer charged than delivered
            assert charged[n] >= at_kill[n], (charged, at_kill)
        assert sum(at_kill.values()) < 8 * 10 * PER_REQUEST  # the kill came mid-load
        srv.start()  # same ledger, same port: the clients' retries resume
        end = time.monotonic() + 240
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "clients did not finish"
        assert not errors, errors[:3]
        final = Ledger(db)
        for n in names:  # every request charged exactly once
            assert delivered[n] == final.key_by_name(n).used == 2 * 10 * PER_REQUEST
        assert final.totals() == {"charged": 640, "pending": 0, "answered": 640}
    finally:
        srv.stop()


def test_main_job_against_served_victim(server, tmp_path):
    """configs/quickstart.py with api.url: the attacker's and the owner's queries go
    through the service (tiny budget), and are answered as in-process. (Probe train /
    test sets of 200 / 100 images, 500 / 300 before: the same paths, fewer owner queries
    and less evaluation.)"""
    s, keys, lg = server
    secret = Ledger(lg.path).create_key("steal2", 100 + 100)[1]
    env = dict(server_env(devices=1), SSLSTEAL_API_KEY=secret, PYTHONPATH=ROOT)  # 1 device: fewer compiles
    cmd = [sys.executable, "-m", "sslsteal_jax.main",
           "--config=configs/quickstart.py:budget=100,epochs=1",
           f"--config.api.url={s.url}", "--config.probe_test_size=100",
           "--config.probe_train_size=200", "--config.eval.probe_epochs=2",
           "--config.eval.select_probe=False", "--config.eval.per_class=10",
           f"--workdir={tmp_path / 'run'}"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(tmp_path / "run" / "results.json") as f:
        res = json.load(f)
    assert res["queries_charged"] == 100 and res["config"]["api"]["url"] == s.url
    assert secret not in json.dumps(res)  # keys never reach results files
    assert Ledger(lg.path).key_by_name("steal2").used == 200  # 100 attacker + 100 owner
    with np.load(tmp_path / "run" / "query_cache.npz") as z:
        ref = VictimAPI.from_checkpoint(VICTIM).query("ref", z["images"])
        np.testing.assert_allclose(z["answers"], ref, rtol=1e-5, atol=1e-5)
