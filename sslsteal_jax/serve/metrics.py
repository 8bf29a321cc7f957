"""Prometheus metrics of the service (``GET /metrics``, text exposition format).

Built on ``prometheus_client`` with one registry per service instance:

* ``sslsteal_queries_answered_total``: images answered (replays not counted);
* ``sslsteal_queries_per_second``: images answered per second over the last 10 s;
* ``sslsteal_request_latency_seconds``: histogram of answered ``/v1/embed`` requests;
* ``sslsteal_rejections_total{reason}``: refused requests by error code
  (``unauthorized``, ``budget_exceeded``, ``rate_limited``, ``invalid_images``,
  ``payload_too_large``, ``in_progress``, ...);
* ``sslsteal_replays_total``: requests answered from the ledger (repeated idempotency key);
* ``sslsteal_batch_rows`` / ``sslsteal_batch_requests`` / ``sslsteal_forward_seconds``:
  histograms of the dynamic batcher's forward passes.
"""
from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

WINDOW_S = 10.0


class Metrics:
    """The service's metrics (one ``prometheus_client.CollectorRegistry``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.answered = Counter("sslsteal_queries_answered", "Images answered", registry=r)
        self.replays = Counter("sslsteal_replays", "Requests answered again from the ledger "
                               "(repeated idempotency key)", registry=r)
        self.rejections = Counter("sslsteal_rejections", "Refused requests by reason",
                                  ["reason"], registry=r)
        self.latency = Histogram("sslsteal_request_latency_seconds",
                                 "Latency of answered /v1/embed requests", registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                          5, 10, 30))
        self.batch_rows = Histogram("sslsteal_batch_rows", "Images per forward pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.batch_requests = Histogram("sslsteal_batch_requests", "Requests per forward pass",
                                        registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.forward_seconds = Histogram("sslsteal_forward_seconds", "Forward pass time",
                                         registry=r, buckets=(.001, .005, .01, .025, .05, .1,
                                                              .25, .5, 1, 2.5, 10))
        self._recent: collections.deque = collections.deque()
        self._lock = threading.Lock()
        Gauge("sslsteal_queries_per_second", f"Images answered per second over the last "
              f"{WINDOW_S:g} s", registry=r).set_function(self.queries_per_second)

    def note_answered(self, n: int) -> None:
        """Record ``n`` images answered now (for the queries/s gauge)."""
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - WINDOW_S:
                self._recent.popleft()

    def queries_per_second(self) -> float:
        """Images answered per second over the last ``WINDOW_S`` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if t >= now - WINDOW_S) / WINDOW_S

    def observe_batch(self, rows: int, requests: int, seconds: float) -> None:
        """Record one forward pass of the batcher."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.forward_seconds.observe(seconds)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
