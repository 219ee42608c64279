"""Continuous batching: concurrent completions share one KV-cached decoding loop per model.

The library's ``Decoder`` decodes a fixed batch from start to end, so a new request would wait for the whole batch.
This loop keeps a live batch instead. Between two decoding steps it

1. drops rows that finished or whose client went away (their slot is free at once) and trims the key columns no
   remaining row uses;
2. admits waiting requests (up to ``max_streams`` rows): each prompt is prefilled alone (batch of 1, no padding,
   exactly as ``twinlm.generate.generate`` does for one prompt) and its cache is left-padded onto the batch's;
3. runs one forward step for every live row together: the new tokens (B, 1), each row's own position id, an
   attention mask that hides each row's padding columns.

Every row has its own processors (temperature, top-k, top-p) and its own seeded generator, drawn exactly as the
library's decoder draws for a single prompt, so a request's text does not depend on what else is being decoded
(up to float rounding in the batched step). Limit: the batched cache grows by concatenation (one copy of the live
cache per step) rather than in a paged buffer; fine for the small models this serves on CPU.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .limits import queue_full
from .metrics import Metrics


@dataclass
class Request:
    """One prompt's decoding state and the channel back to its caller."""

    prompt_ids: list[int]
    config: Any  # twinlm GenerationConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    # set in the loop thread
    procs: list = field(default_factory=list)
    generator: torch.Generator | None = None
    stream: Any = None
    logits: torch.Tensor | None = None
    stop_ids: set = field(default_factory=set)

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
        self.rows: list[Request] = []
        self.steps = 0  # batched decoding steps run (tests read it)
        self.max_rows_seen = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._cache: list | None = None  # per layer (k, v): (B, H, L, d), rows right-aligned
        self._mask: torch.Tensor | None = None  # (B, L) 1 on real key columns

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
                    self._drop([r for r in self.rows if r.cancelled])
                    for req in joining:
                        if not req.cancelled:
                            self._admit(req)
                    self.metrics.active_streams.labels(self.name).set(len(self.rows))
                    if self.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - fail the live requests, keep serving later ones
                    for req in [*self.rows, *joining]:
                        req.emit("error", exc)
                    self.rows, self._cache, self._mask = [], None, None

    def _admit(self, req: Request) -> None:
        from ..generate import TextStream, build_processors, head_logits

        cfg = req.config
        req.procs = build_processors(cfg)
        if cfg.do_sample:
            req.generator = torch.Generator(device=_device(self.model))
            req.generator.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        req.stream = TextStream(self.tokenizer, cfg.stop_strings)
        req.stop_ids = set(cfg.stop_token_ids)
        if cfg.stop_at_eos and self.tokenizer.eos_id is not None:
            req.stop_ids.add(self.tokenizer.eos_id)
        x = torch.tensor([req.prompt_ids], device=_device(self.model))
        hidden, cache = self.model.backbone(x, attention="causal")
        req.logits = head_logits(self.model, hidden[:, -1]).float()
        self._join(req, [(k, v) for k, v in cache])

    def _join(self, req: Request, cache: list) -> None:
        n = cache[0][0].size(2)
        mask = torch.ones(1, n, dtype=torch.long, device=cache[0][0].device)
        if self._cache is None:
            self._cache, self._mask, self.rows = cache, mask, [req]
            self.max_rows_seen = max(self.max_rows_seen, 1)
            return
        L = max(self._mask.size(1), n)  # type: ignore[union-attr]
        old = [(_left_pad(k, L), _left_pad(v, L)) for k, v in self._cache]
        new = [(_left_pad(k, L), _left_pad(v, L)) for k, v in cache]
        self._cache = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(old, new, strict=True)]
        self._mask = torch.cat([_left_pad(self._mask, L), _left_pad(mask, L)])  # type: ignore[arg-type]
        self.rows.append(req)
        self.max_rows_seen = max(self.max_rows_seen, len(self.rows))

    def _drop(self, gone: list[Request]) -> None:
        if not gone:
            return
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)  # type: ignore[union-attr]
        mask = self._mask.index_select(0, index)  # type: ignore[union-attr]
        first = int(mask.any(0).nonzero()[0])  # leading columns that only the dropped rows used
        self._mask = mask[:, first:]
        self._cache = [(k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                       for k, v in self._cache]  # type: ignore[union-attr]

    def _step(self) -> None:
        from ..generate import head_logits

        chosen, finished = [], []
        for req in self.rows:
            token = self._choose(req)
            done = self._record(req, token)
            chosen.append(token)
            if done:
                finished.append(req)
        live = [i for i, r in enumerate(self.rows) if r not in finished]
        self._drop(finished)
        if not live:
            return
        tokens = torch.tensor([[chosen[i]] for i in live], device=self._mask.device)  # type: ignore[union-attr]
        positions = self._mask.sum(1, keepdim=True)  # type: ignore[union-attr]
        self._mask = torch.cat([self._mask, torch.ones_like(positions)], dim=1)  # type: ignore[list-item]
        hidden, cache = self.model.backbone(tokens, attention_mask=self._mask, position_ids=positions,
                                            attention="causal", past=self._cache)
        self._cache = list(cache)
        logits = head_logits(self.model, hidden[:, -1]).float()
        for row, req in enumerate(self.rows):
            req.logits = logits[row:row + 1]
        self.steps += 1

    def _choose(self, req: Request) -> int:
        from ..generate import apply_processors

        ids = torch.tensor([req.prompt_ids + req.tokens], device=req.logits.device)  # type: ignore[union-attr]
        logits = apply_processors(req.procs, ids, torch.ones_like(ids), req.logits)
        if req.config.do_sample:
            return int(torch.multinomial(logits.softmax(-1), 1, generator=req.generator).squeeze(1)[0])
        return int(logits.argmax(-1)[0])

    def _record(self, req: Request, token: int) -> bool:
        """Add ``token`` to the request; True when the request has finished (and was told so)."""
        if req.cancelled:
            return True
        if token in req.stop_ids:
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


def _left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 2 (a cache) or dim 1 (a mask) on the left with zeros to ``length``."""
    dim = 2 if x.dim() == 4 else 1
    extra = length - x.size(dim)
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
