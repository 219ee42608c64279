"""Gathers concurrent requests to one model and operation into batches.

A request submits a list of inputs and awaits their outputs. One worker per batcher waits for the first request,
then up to ``max_wait_ms`` for more while the batch holds fewer than ``max_batch_size`` inputs, runs the batch in
a worker thread (one forward pass for the whole batch where the operation batches) and hands each request its
slice of the outputs. A request larger than the batch size runs alone. When more than ``max_queue`` requests
wait, submit raises a 503 with Retry-After. A request whose caller gave up (timeout, disconnect) before its batch
started is dropped from the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .limits import Limits, queue_full
from .metrics import Metrics

BatchFn = Callable[[list[Any]], list[Any]]


class Batcher:
    def __init__(self, model: str, op: str, fn: BatchFn, limits: Limits, metrics: Metrics,
                 executor: Executor | None = None) -> None:
        self.model, self.op, self.fn = model, op, fn
        self.limits, self.metrics, self.executor = limits, metrics, executor
        self.queue: deque[tuple[list[Any], asyncio.Future]] = deque()
        self.batches = 0  # batches run (tests and the benchmark read it)
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

    async def submit(self, inputs: list[Any]) -> list[Any]:
        """The outputs for ``inputs`` (same order), computed in a batch with whatever else is waiting."""
        self._ensure_worker()
        if len(self.queue) >= self.limits.max_queue:
            self.metrics.rejected.labels(self.model, self.op).inc()
            raise queue_full(f"{self.model} {self.op}", len(self.queue), self.limits.retry_after_s)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.append((list(inputs), future))
        self._gauge()
        self._wake.set()  # type: ignore[union-attr]
        return await future

    def _gauge(self) -> None:
        self.metrics.queue_depth.labels(self.model, self.op).set(len(self.queue))

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

    def _waiting_inputs(self) -> int:
        return sum(len(i) for i, f in self.queue if not f.done())

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            if not self.queue:
                wake.clear()  # type: ignore[union-attr]
                await wake.wait()  # type: ignore[union-attr]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while self._waiting_inputs() < self.limits.max_batch_size and loop.time() < deadline:
                wake.clear()  # type: ignore[union-attr]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), deadline - loop.time())  # type: ignore[union-attr]
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[list[Any], asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        flat = [x for inputs, _ in batch for x in inputs]
        self.batches += 1
        self.metrics.batch_size.labels(self.model, self.op).observe(len(flat))
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
            _settle(future, outputs[start:start + len(inputs)])
            start += len(inputs)


def _settle(future: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
