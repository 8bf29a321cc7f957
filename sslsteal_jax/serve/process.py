"""Run the service as a local subprocess (tests, benchmarks, scripted experiments).

``LocalServer`` starts ``python -m sslsteal_jax.serve`` bound to 127.0.0.1 on a
free port, waits (bounded) until ``/healthz`` answers, and can kill it
(``kill -9``) and start it again on the same port and ledger. Standard library
only.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from sslsteal_jax.host_devices import DEVICE_COUNT_FLAG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(devices: int | None = None) -> dict:
    """This process's environment for a server subprocess: a device count forced in
    ``XLA_FLAGS`` (e.g. by the test suite) is removed, so the server picks its CPU
    devices as the command line does, or ``devices`` (``$SSLSTEAL_CPU_DEVICES``)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags)
    if devices is not None:
        env["SSLSTEAL_CPU_DEVICES"] = str(int(devices))
    return env


class LocalServer:
    """A ``python -m sslsteal_jax.serve`` subprocess on 127.0.0.1.

    Args:
      victim: checkpoint directory; db: ledger file; args: extra server flags.
      port: None = a free port (kept across restarts).
      devices: CPU devices of the server (None: the command line's default).
      log: file the server's stdout and stderr are appended to (None: discarded).
      start_timeout_s: longest wait for ``/healthz`` at each start.
    Raises:
      RuntimeError: the server exits or does not answer within ``start_timeout_s``
        (its log tail is in the message).
    """

    def __init__(self, victim: str, db: str, args=(), port: int | None = None,
                 devices: int | None = None, log: str | None = None,
                 start_timeout_s: float = 180.0, cwd: str | None = None):
        self.victim, self.db, self.args = victim, db, list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env, self.log, self.cwd = server_env(devices), log, cwd
        self.start_timeout_s = float(start_timeout_s)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        """Start the server and wait until it answers ``/healthz``."""
        cmd = [sys.executable, "-m", "sslsteal_jax.serve", f"--victim={self.victim}",
               f"--db={self.db}", "--host=127.0.0.1", f"--port={self.port}", *self.args]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode}: "
                                   f"{self._tail()}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not answer /healthz within {self.start_timeout_s:.0f} s: "
                           f"{self._tail()}")

    def healthy(self) -> bool:
        """Whether ``/healthz`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return r.status == 200 and json.load(r)["status"] == "ok"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL, i.e. ``kill -9``) and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after 30 s."""
        self.kill(signal.SIGTERM)

    def _tail(self) -> str:
        if not self.log or not os.path.exists(self.log):
            return "(no log)"
        with open(self.log, "rb") as f:
            return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-5:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
