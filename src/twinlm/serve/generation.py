"""Continuous batching: concurrent completions share one ``twinlm.decoding.Decoder`` per model.

The Engine is a scheduler; the decoding itself (prefill, KV cache, padding, processors, the choice of each token) is
the library's one Decoder. Between two decoding steps the Engine

1. drops the rows of requests whose client went away (``Decoder.drop``, which also frees the key columns only they
   used);
2. admits waiting requests (up to ``max_streams`` rows): each prompt is prefilled alone in its own Decoder, exactly
   as ``twinlm.generate.generate`` does for one prompt, and joined onto the live batch (``Decoder.join``);
3. runs one ``Decoder.step`` for every live row, turns each row's token into text pieces and events, and drops the
   rows that finished (stop token, stop string, token budget).

The per-step Python work is kept small, as it is paid once per token: the requests that join in one round are
joined to each other first (so the live batch's KV cache is copied once per round, not once per request), a step's
events for every row reach the event loop in one call, and a request that is not streamed gets no per-token events:
its text is decoded once at the end (as ``generate`` does), through a TextStream only when it has stop strings.

A joined request keeps its own config, processors and seeded generator (its Decoder lane), so its text does not
depend on what else is being decoded (up to float rounding in the batched step).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..decoding import Decoder, stop_ids_for
from ..textstream import TextStream
from .limits import queue_full
from .metrics import Metrics


@dataclass(eq=False)
class Request:
    """One prompt's decoding state and the channel back to its caller."""

    prompt_ids: list[int]
    config: Any  # twinlm GenerationConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    incremental: bool = True  # streamed: a ("piece", text) event as soon as text is safe to show
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    stream: Any = None  # its TextStream (streamed, or with stop strings), set in the loop thread
    parts: list[str] = field(default_factory=list)  # text pieces held for a request that is not streamed

    def cancel(self) -> None:
        """Called from the request side: the loop drops the row before its next step."""
        self.cancelled = True


def _deliver(outbox: list[tuple[Request, tuple]]) -> None:
    """Runs in the event loop: hand a step's events to their requests."""
    for req, event in outbox:
        req.events.put_nowait(event)


class Engine:
    """The decoding loop of one causal model, in its own thread. ``submit`` returns a Request whose ``events``
    queue receives ("piece", text), then ("done", finish_reason, n_tokens) or ("error", exception)."""

    def __init__(self, name: str, model: Any, tokenizer: Any, max_streams: int, max_queue: int,
                 metrics: Metrics, retry_after: int = 1) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.max_streams, self.max_queue, self.retry_after = max_streams, max_queue, retry_after
        self.metrics = metrics
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []  # row i of the decoder is rows[i]
        self.steps = 0  # batched decoding steps run (tests read it)
        self.max_rows_seen = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._decoder: Decoder | None = None  # None while no row is live
        self._outbox: list[tuple[Request, tuple]] = []  # events of this step, sent to the loop(s) in one call
        self._tokens = metrics.tokens.labels(name)
        self._depth = metrics.queue_depth.labels(name, "completions")
        self._active = metrics.active_streams.labels(name)

    # ------------------------------------------------------------------ request side

    def submit(self, prompt_ids: Sequence[int], config: Any, incremental: bool = True) -> Request:
        """Queue a prompt. ``incremental``: text pieces as they come (streaming); otherwise one piece at the end."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if len(self.waiting) >= self.max_queue:
                self.metrics.rejected.labels(self.name, "completions").inc()
                raise queue_full(f"{self.name} generation", len(self.waiting), self.retry_after)
            req = Request(list(prompt_ids), config, loop, asyncio.Queue(), incremental)
            self.waiting.append(req)
            self._depth.set(len(self.waiting))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"twinlm-decode-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return req

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    @property
    def active(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stop and not self.waiting and not self.rows:
                        self._cond.wait()
                    if self._stop:
                        return
                    joining = []
                    while self.waiting and len(self.rows) + len(joining) < self.max_streams:
                        joining.append(self.waiting.popleft())
                    self._depth.set(len(self.waiting))
                try:
                    self._drop([i for i, r in enumerate(self.rows) if r.cancelled])
                    self._admit([req for req in joining if not req.cancelled])
                    self._active.set(len(self.rows))
                    if self.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - fail the live requests, keep serving later ones
                    for req in dict.fromkeys([*self.rows, *joining]):  # an admitted joiner is in both
                        self._emit(req, "error", exc)
                    self.rows, self._decoder = [], None
                self._flush()

    def _emit(self, req: Request, *event: Any) -> None:
        self._outbox.append((req, event))

    def _flush(self) -> None:
        """Send this step's events: one wake-up of each event loop per step, not one per token."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, event in self._outbox:
            by_loop.setdefault(req.loop, []).append((req, event))
        self._outbox = []
        for loop, outbox in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop that closed (its server stopped): nobody to tell
                loop.call_soon_threadsafe(_deliver, outbox)

    def _admit(self, reqs: list[Request]) -> None:
        """Prefill each request alone (its own Decoder: config, processors, seeded generator), join the new rows
        to each other, then onto the live batch: the live rows' cache is copied once per round of joins."""
        fresh: Decoder | None = None
        for req in reqs:
            cfg = req.config
            dec = Decoder(self.model, [req.prompt_ids], cfg, self.tokenizer.pad_id,
                          stop_ids_for(self.tokenizer, cfg))
            dec.prefill()
            if req.incremental or cfg.stop_strings:
                req.stream = TextStream(self.tokenizer, cfg.stop_strings)
            if fresh is None:
                fresh = dec
            else:
                fresh.join(dec)
            self.rows.append(req)
        if fresh is None:
            return
        if self._decoder is None:
            self._decoder = fresh
        else:
            self._decoder.join(fresh)
        self.max_rows_seen = max(self.max_rows_seen, len(self.rows))

    def _drop(self, gone: list[int]) -> None:
        """Remove rows ``gone`` (indices into self.rows) from the batch."""
        if not gone:
            return
        drop = set(gone)
        self.rows = [r for i, r in enumerate(self.rows) if i not in drop]
        if self.rows:
            self._decoder.drop(drop)  # type: ignore[union-attr]
        else:
            self._decoder = None

    def _step(self) -> None:
        dec = self._decoder
        tokens = dec.step().tolist()  # type: ignore[union-attr]
        stopped = dec.stopped.tolist()  # type: ignore[union-attr]
        self.steps += 1
        before = sum(len(r.tokens) for r in self.rows)
        done = [i for i, req in enumerate(self.rows) if self._record(req, tokens[i], stopped[i])]
        self._tokens.inc(sum(len(r.tokens) for r in self.rows) - before)
        self._drop(done)

    def _record(self, req: Request, token: int, stop_token: bool) -> bool:
        """Add ``token`` to the request; True when the request has finished (and was told so)."""
        if req.cancelled:
            return True
        if stop_token:  # the decoder saw one of the request's stop ids: not part of the text
            return self._finish(req, "stop")
        req.tokens.append(token)
        if req.stream is not None:
            self._piece(req, req.stream.push([token]))
            if req.stream.stopped:
                return self._finish(req, "stop")
        if len(req.tokens) >= req.config.max_new_tokens:
            return self._finish(req, "length")
        return False

    def _piece(self, req: Request, piece: str) -> None:
        if not piece:
            return
        if req.incremental:
            self._emit(req, "piece", piece)
        else:
            req.parts.append(piece)

    def _finish(self, req: Request, reason: str) -> bool:
        if req.stream is not None:
            self._piece(req, req.stream.finish())
        else:  # not streamed, no stop strings: the text of all its tokens, decoded once (as generate does)
            req.parts.append(self.tokenizer.decode(req.tokens))
        text = "".join(req.parts)
        if text:
            self._emit(req, "piece", text)
        self._emit(req, "done", reason, len(req.tokens))
        return True
