"""Continuous batching: concurrent completions share one ``twinlm.decoding.Decoder`` per model.

The Engine is a scheduler; the decoding itself (prefill, KV cache, padding, processors, the choice of each token) is
the library's one Decoder. Between two decoding steps the Engine

1. drops the rows of requests whose client went away (``Decoder.drop``, which also frees the key columns only they
   used);
2. admits waiting requests (up to ``max_streams`` rows): each prompt is prefilled alone in its own Decoder, exactly
   as ``twinlm.generate.generate`` does for one prompt, and joined onto the live batch (``Decoder.join``);
3. runs one ``Decoder.step`` for every live row, turns each row's token into text pieces and events, and drops the
   rows that finished (stop token, stop string, token budget).

A joined request keeps its own config, processors and seeded generator (its Decoder lane), so its text does not
depend on what else is being decoded (up to float rounding in the batched step).
"""

from __future__ import annotations

import asyncio
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
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    stream: Any = None  # its TextStream, set in the loop thread

    def cancel(self) -> None:
        """Called from the request side: the loop drops the row before its next step."""
        self.cancelled = True

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


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

    # ------------------------------------------------------------------ request side

    def submit(self, prompt_ids: Sequence[int], config: Any) -> Request:
        loop = asyncio.get_running_loop()
        with self._cond:
            if len(self.waiting) >= self.max_queue:
                self.metrics.rejected.labels(self.name, "completions").inc()
                raise queue_full(f"{self.name} generation", len(self.waiting), self.retry_after)
            req = Request(list(prompt_ids), config, loop, asyncio.Queue())
            self.waiting.append(req)
            self.metrics.queue_depth.labels(self.name, "completions").set(len(self.waiting))
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
                    self.metrics.queue_depth.labels(self.name, "completions").set(len(self.waiting))
                try:
                    self._drop([i for i, r in enumerate(self.rows) if r.cancelled])
                    for req in joining:
                        if not req.cancelled:
                            self._admit(req)
                    self.metrics.active_streams.labels(self.name).set(len(self.rows))
                    if self.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - fail the live requests, keep serving later ones
                    for req in dict.fromkeys([*self.rows, *joining]):  # an admitted joiner is in both
                        req.emit("error", exc)
                    self.rows, self._decoder = [], None

    def _admit(self, req: Request) -> None:
        """Prefill the request alone and join its row onto the live batch."""
        cfg = req.config
        dec = Decoder(self.model, [req.prompt_ids], cfg, self.tokenizer.pad_id, stop_ids_for(self.tokenizer, cfg))
        dec.prefill()
        req.stream = TextStream(self.tokenizer, cfg.stop_strings)
        if self._decoder is None:
            self._decoder = dec
        else:
            self._decoder.join(dec)
        self.rows.append(req)
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
        self._drop([i for i, req in enumerate(self.rows) if self._record(req, tokens[i], stopped[i])])

    def _record(self, req: Request, token: int, stop_token: bool) -> bool:
        """Add ``token`` to the request; True when the request has finished (and was told so)."""
        if req.cancelled:
            return True
        if stop_token:  # the decoder saw one of the request's stop ids: not part of the text
            return self._finish(req, "stop")
        req.tokens.append(token)
        self.metrics.tokens.labels(self.name).inc()
        piece = req.stream.push([token])
        if piece:
            req.emit("piece", piece)
        if req.stream.stopped:
            return self._finish(req, "stop")
        if len(req.tokens) >= req.config.max_new_tokens:
            return self._finish(req, "length")
        return False

    def _finish(self, req: Request, reason: str) -> bool:
        piece = req.stream.finish()
        if piece:
            req.emit("piece", piece)
        req.emit("done", reason, len(req.tokens))
        return True
