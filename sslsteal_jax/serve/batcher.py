"""Dynamic batching: concurrent requests share one compiled forward pass.

Requests (image batches) are queued; a single worker takes the oldest one,
waits up to ``max_wait_s`` for more to arrive (until ``max_batch`` rows are
queued, or no other request is on its way: the service announces requests it
is admitting with :meth:`DynamicBatcher.expect`, so a lone client never
waits), and answers all of them with one forward pass run on one inference
thread. Rows of several requests are concatenated and padded to a *bucket*
size (a power of two times the device count, at most ``max_batch``), so the
number of compiled programs stays small whatever the traffic.

A request that is alone when its wait ends is answered exactly as the
in-process ``VictimAPI.query`` answers it (same chunking into compiled calls),
so a sequential client gets bit-identical answers; requests that share a pass
differ from their in-process answers only by float rounding (XLA's results
depend on the compiled batch shape in the last bits, ~1e-6 here).
Requests larger than ``max_batch`` rows are never merged, nor are requests
of different *kinds* (forward programs: with or without the head output).

Source: the dynamic batching of model servers such as TensorFlow Serving's
batching scheduler and NVIDIA Triton (max batch size, max queue delay).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import time
from typing import Callable

import numpy as np


def bucket_size(rows: int, max_batch: int, multiple: int = 1) -> int:
    """Compiled batch size for ``rows`` merged rows: the smallest power of two
    times ``multiple`` that is >= ``rows``, capped at ``max_batch`` rounded up to
    a multiple of ``multiple`` (int)."""
    cap = -(-int(max_batch) // multiple) * multiple
    b = multiple
    while b < rows:
        b *= 2
    return min(b, max(cap, -(-rows // multiple) * multiple))


@dataclasses.dataclass
class _Item:
    x: np.ndarray
    kind: str
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """Batch concurrent forward passes.

    Args:
      forward: ``(x float32 (B, H, W, C), batch_size int | None, kind str) -> float32 (B, D)``
        (``VictimAPI.forward``); ``batch_size`` None = the in-process chunking;
        ``kind`` as given to :meth:`submit`.
      max_batch: most rows merged into one pass (>= 1).
      max_wait_s: longest a request waits for others (>= 0).
      multiple: the device count (buckets are multiples of it).
      on_batch: optional callback ``(rows, requests, seconds)`` after every pass (metrics).
    Raises:
      ValueError: ``max_batch`` < 1 or ``max_wait_s`` < 0.
    Use from one asyncio event loop: ``start()``, ``await submit(x)``, ``await stop()``.
    """

    def __init__(self, forward: Callable, max_batch: int = 128, max_wait_s: float = 0.002,
                 multiple: int = 1, on_batch: Callable | None = None):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        if not float(max_wait_s) >= 0:
            raise ValueError(f"max_wait_ms={1e3 * max_wait_s} must be >= 0")
        self._forward, self.max_batch, self.max_wait_s = forward, int(max_batch), float(max_wait_s)
        self.multiple, self._on_batch = int(multiple), on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._expected = 0  # requests being admitted: about to be submitted
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; queued requests fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("service stopping"))
        self._pool.shutdown(wait=True)

    def expect(self, delta: int) -> None:
        """Announce (+1) a request on its way to :meth:`submit`, or withdraw it (-1)
        once submitted or refused (event loop thread)."""
        self._expected += int(delta)
        if self._wake is not None:
            self._wake.set()

    async def submit(self, x: np.ndarray, kind: str = "") -> np.ndarray:
        """Queue validated images float32 ``(B, H, W, C)`` for the forward program
        ``kind``; returns their forward output float32 ``(B, D)`` once computed
        (exceptions of the pass propagate)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(x, kind, fut, time.monotonic()))
        self._wake.set()
        return await fut

    def _take(self) -> list[_Item]:
        """Pop the oldest request and as many later ones of its kind as fit in ``max_batch``."""
        first = self._queue.popleft()
        items, rows, rest = [first], len(first.x), collections.deque()
        while self._queue and rows < self.max_batch:
            item = self._queue.popleft()
            if item.kind == first.kind and rows + len(item.x) <= self.max_batch:
                items.append(item)
                rows += len(item.x)
            else:
                rest.append(item)
        self._queue.extendleft(reversed(rest))
        return items

    def _queued_rows(self) -> int:
        return sum(len(i.x) for i in self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._queue[0].arrived + self.max_wait_s
            # wait for companions only while some are on their way (one wake-up per change)
            while self._expected > 0 and self._queued_rows() < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            items = [i for i in self._take() if not i.future.cancelled()]
            if not items:
                continue
            t = time.monotonic()
            try:
                outs = await loop.run_in_executor(self._pool, self._compute, [i.x for i in items],
                                                  items[0].kind)
            except Exception as e:  # noqa: BLE001 -- handed to every waiting request
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            for i, o in zip(items, outs):
                if not i.future.done():
                    i.future.set_result(o)
            if self._on_batch is not None:
                self._on_batch(sum(len(i.x) for i in items), len(items), time.monotonic() - t)

    def _compute(self, xs: list[np.ndarray], kind: str) -> list[np.ndarray]:
        """One pass over the requests ``xs`` (inference thread)."""
        if len(xs) == 1:
            return [self._forward(xs[0], None, kind)]  # alone: exactly the in-process chunking
        x = np.concatenate(xs)
        n = len(x)
        b = bucket_size(n, self.max_batch, self.multiple)
        if b > n:
            x = np.concatenate([x, np.zeros((b - n, *x.shape[1:]), x.dtype)])
        out = self._forward(x, b, kind)[:n]
        return np.split(out, np.cumsum([len(a) for a in xs])[:-1])
