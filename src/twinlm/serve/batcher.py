"""Gathers concurrent requests to one model and operation into batches.

A request submits a list of inputs and awaits their outputs. One worker per batcher waits for the first request,
then up to ``max_wait_ms`` for more while the batch holds fewer than ``max_batch_size`` inputs and other HTTP
requests are in progress in the server (``Metrics.in_flight``: requests that may be about to join; with none, as
for a lone client, waiting would only add latency), runs the batch in a worker thread (one forward pass for the
whole batch) and hands each request its slice of the outputs. A request larger than the batch size runs alone.
When more than ``max_queue`` requests wait, submit raises a 503 with Retry-After. A request whose caller gave up
(timeout, disconnect) before its batch started is dropped from the batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .limits import Limits, queue_full
from .metrics import Metrics

# The outputs for a list of inputs, in order; an output that is an exception fails the request of its input only.
BatchFn = Callable[[list[Any]], list[Any]]


class Batcher:
    def __init__(self, model: str, op: str, fn: BatchFn, limits: Limits, metrics: Metrics,
                 executor: Executor | None = None) -> None:
        self.model, self.op, self.fn = model, op, fn
        self.limits, self.metrics, self.executor = limits, metrics, executor
        self.queue: deque[tuple[list[Any], asyncio.Future]] = deque()
        self.batches = 0  # batches run (tests and the benchmark read it)
        self._depth = metrics.queue_depth.labels(model, op)
        self._sizes = metrics.batch_size.labels(model, op)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self.queue)

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._wake = loop, asyncio.Event()
            self._worker = loop.create_task(self._run_forever())

    async def submit(self, inputs: list[Any], timeout: float | None = None) -> list[Any]:
        """The outputs for ``inputs`` (same order), computed in a batch with whatever else is waiting;
        asyncio.TimeoutError after ``timeout`` seconds (the request is then dropped from the queue)."""
        self._ensure_worker()
        if len(self.queue) >= self.limits.max_queue:
            self.metrics.rejected.labels(self.model, self.op).inc()
            raise queue_full(f"{self.model} {self.op}", len(self.queue), self.limits.retry_after_s)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.append((list(inputs), future))
        self._gauge()
        self._wake.set()  # type: ignore[union-attr]
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout)  # on a future: a timer, no task per request

    def _gauge(self) -> None:
        self._depth.set(len(self.queue))

    def _take(self) -> list[tuple[list[Any], asyncio.Future]]:
        batch, size = [], 0
        while self.queue:
            inputs, future = self.queue[0]
            if future.done():  # the caller gave up while waiting
                self.queue.popleft()
                continue
            if batch and size + len(inputs) > self.limits.max_batch_size:
                break
            self.queue.popleft()
            batch.append((inputs, future))
            size += len(inputs)
        self._gauge()
        return batch

    def _worth_waiting(self) -> bool:
        """More inputs may come soon: the batch has room and some HTTP request in progress is not in the queue."""
        waiting = [i for i, f in self.queue if not f.done()]
        return (sum(len(i) for i in waiting) < self.limits.max_batch_size
                and self.metrics.in_flight > len(waiting))

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        while True:
            if not self.queue:
                wake.clear()
                await wake.wait()
            if self.limits.max_wait_ms > 0 and self._worth_waiting():
                # One timer for the whole wait; every submit wakes the worker to look again.
                timer = loop.call_later(self.limits.max_wait_ms / 1000, wake.set)
                deadline = loop.time() + self.limits.max_wait_ms / 1000
                try:
                    while loop.time() < deadline and self._worth_waiting():
                        wake.clear()
                        await wake.wait()
                finally:
                    timer.cancel()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[list[Any], asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        flat = [x for inputs, _ in batch for x in inputs]
        self.batches += 1
        self._sizes.observe(len(flat))
        try:
            outputs = await loop.run_in_executor(self.executor, self.fn, flat)
        except Exception as exc:  # noqa: BLE001 - attribute the failure: rerun each request alone
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            for inputs, future in batch:
                try:
                    _settle(future, await loop.run_in_executor(self.executor, self.fn, inputs))
                except Exception as one:  # noqa: BLE001
                    _settle(future, exc=one)
            return
        start = 0
        for inputs, future in batch:
            mine = outputs[start:start + len(inputs)]
            failed = next((o for o in mine if isinstance(o, BaseException)), None)
            _settle(future, mine, failed)  # an input the batch function refused fails its own request only
            start += len(inputs)


def _settle(future: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
