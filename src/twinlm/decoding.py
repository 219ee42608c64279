"""Left-to-right decoding machinery: prompt encoding and fitting, the output-matrix cache, the KV-cached Decoder,
stop strings and streaming text.

Causal decoding is a prefill pass over the (left-padded) prompts followed by one position per step that reuses the
keys and values of all earlier positions, held in pre-allocated ``attention.KVBuffer``s. Every step the raw
next-token logits go through the logits processors (twinlm.processors) and the next token is the argmax (greedy)
or a draw from the softmax with a seeded generator. Beam search (twinlm.beam) drives the same Decoder, reordering
its rows between steps, and so does the server's continuous batching (twinlm.serve.generation), dropping and
joining rows between steps. The entry points generate / generate_ids / stream are in twinlm.generate.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .attention import KVBuffer
from .config import require
from .errors import ConfigError
from .model import LanguageModel, device_of
from .processors import GenerationConfig, LogitsProcessor, apply_processors, build_processors
from .tokenizer import Tokenizer


class TruncationWarning(UserWarning):
    """A prompt was cut from the left to fit the model's positions."""


@dataclass
class Generation:
    """One prompt's continuation: its text, new token ids and why decoding ended ('stop', 'length')."""

    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    score: float | None = None  # beam search: the length-penalised log-probability of the chosen sequence


# ---------------------------------------------------------------------------------------------- prompts


def check_causal(model: LanguageModel) -> None:
    """Raise ConfigError unless the model can decode left to right (causal or hybrid)."""
    require(model, "causal", "left-to-right decoding", "generate with mask-predict (`twinlm generate "
            "--mask-predict`, generate.mask_predict) or use `twinlm fill-mask`")


def fit_prompts(prompts: list[list[int]], max_new_tokens: int, max_positions: int, truncate: str) -> list[list[int]]:
    """Check prompt + max_new_tokens against max_positions; cut prompts from the left when truncate='left'."""
    room = max_positions - max_new_tokens
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if truncate != "left" or room < 1:
        hint = " (or pass --truncate left to keep the end of the prompt)" if room >= 1 else ""
        raise ConfigError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                          f"max_positions={max_positions}; shorten the prompt or max_new_tokens{hint}")
    warnings.warn(f"prompt of {longest} tokens cut from the left to {room} tokens so that {max_new_tokens} new "
                  f"tokens fit in max_positions={max_positions}", TruncationWarning, stacklevel=3)
    return [p[-room:] for p in prompts]


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt; an empty prompt starts from the tokenizer's BOS (or EOS) token."""
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt) if prompt else []
        if prompt and not ids:
            raise ConfigError(f"prompt {prompt!r} encodes to no tokens")
        if ids and tokenizer.unk_id is not None and all(i == tokenizer.unk_id for i in ids):
            raise ConfigError(f"prompt {prompt!r} has only characters the tokenizer does not know (all unknown "
                              "tokens); use text in the tokenizer's alphabet")
        if not ids:
            start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
            if start is None:
                raise ConfigError("empty prompt: this tokenizer has no BOS/EOS token to start from; give a prompt")
            ids = [start]
        out.append(ids)
    return out


def stop_ids_for(tokenizer: Tokenizer | None, config: GenerationConfig) -> list[int]:
    """The token ids that end a row: config.stop_token_ids, plus the tokenizer's EOS when stop_at_eos."""
    ids = list(config.stop_token_ids)
    if config.stop_at_eos and tokenizer is not None and tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    return ids


# ---------------------------------------------------------------------------------------------- the decoder

# model -> (weight storage pointer, weight version, transposed copy); dropped with the model.
_HEAD_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def head_logits(model: LanguageModel, hidden: torch.Tensor) -> torch.Tensor:
    """model.head(hidden) for (N, d_model) rows, in the layout that is fastest for N.

    The vocabulary projection is most of a small model's decoding step. One row is a matrix-vector product bound by
    memory, and CPU GEMM kernels stream a (d_model, vocab) right-hand side faster than the tied embedding's
    (vocab, d_model) layout, so a transposed copy is kept (refreshed whenever the weight's version counter moves).
    Several rows go through W @ h^T instead.
    """
    head = model.head
    hidden = head.transform(hidden)
    weight = head.weight
    if hidden.size(0) > 1 or weight.device.type != "cpu":
        # Several rows: W @ h^T streams the (vocab, d_model) matrix once for all rows, which beats h @ W^T on CPU;
        # the result is a transposed view.
        logits = (weight @ hidden.t()).t()
        return logits + head.bias if head.bias is not None else logits
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    hit = _HEAD_CACHE.get(model)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            hit = (key, weight.detach().t().contiguous())
        _HEAD_CACHE[model] = hit
    logits = hidden @ hit[1]
    if head.bias is not None:
        logits += head.bias  # separately: addmm with a broadcast bias is slower here than the product itself
    return logits


_NEVER = 2**62  # a column no batch reaches: no row's token budget runs out before the batch's end


@dataclass(eq=False)
class _Lane:
    """The rows of one original Decoder: its GenerationConfig, processors, stop ids and one shared generator."""

    config: GenerationConfig
    procs: list[LogitsProcessor]
    stop_ids: torch.Tensor
    generator: torch.Generator | None
    rows: torch.Tensor | None = None  # the lane's row indices; None while it is the only lane (every row)

    def key(self) -> tuple | None:
        """Greedy lanes with equal keys choose tokens alike and may merge; a sampling lane owns its generator."""
        c = self.config
        return None if c.do_sample else (c.repetition_penalty, c.no_repeat_ngram_size, tuple(self.stop_ids.tolist()))


class Decoder:
    """Batched, KV-cached left-to-right decoding of token-id prompts, one step at a time.

    Prompts are left-padded to a common length; each row's position ids start at 0 at its first real token and
    the attention mask covers every key (prompt padding included). Finished rows keep receiving the pad token,
    whose outputs are ignored, so the batch stays rectangular. Beam search chooses the tokens itself and moves
    rows around with reorder() before feed().

    Continuous batching (twinlm.serve) changes the batch between steps: drop() removes rows, join() appends those
    of a separately prefilled Decoder. So each row has its own start column and token budget (``starts``,
    ``limits``) and belongs to a lane, the rows of one original Decoder with its config, processors and generator:
    every row gets the tokens its own Decoder would give it (up to float rounding in the batched forward). A lane's
    sampled rows share its generator, so drop whole lanes (one request each in the server) to keep seeded draws
    reproducible. With one lane, the usual case, a step does the same work as a Decoder that never joins.
    """

    def __init__(self, model: LanguageModel, prompts: Sequence[Sequence[int]], config: GenerationConfig,
                 pad_id: int, stop_ids: Sequence[int] = (),
                 on_logits: Callable[[int, torch.Tensor], None] | None = None) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token (an empty prompt starts from BOS/EOS)")
        self.model = model
        self.config = config
        self.pad_id = pad_id
        self.on_logits = on_logits  # sees the raw logits of every step (tests compare them to full passes)
        device = device_of(model)
        self.device = device
        B, P = len(prompts), max(len(p) for p in prompts)
        total = P + config.max_new_tokens
        # Pre-allocated id and mask buffers: the live part is [:, :self.length].
        self.ids = torch.full((B, total), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros(B, total, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            self.ids[b, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
            self.mask[b, P - len(p):P] = 1
        self.prompt_len = P  # the column where the first batch's new tokens start
        self.length = P
        # Per row: the column of its first new token and the column at which its token budget is spent.
        self.starts = torch.full((B,), P, dtype=torch.long, device=device)
        self.limits = self.starts + config.max_new_tokens
        self.end = total  # max(limits): the batch is done at this length
        self._soonest = total  # min(limits) still ahead: step() finishes rows whose budget is spent from here on
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(B, dtype=torch.bool, device=device)  # finished by a stop token or string
        self.new_counts = torch.zeros(B, dtype=torch.long, device=device)
        generator = None
        if config.do_sample and config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        stops = torch.as_tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
        self.lanes = [_Lane(config, build_processors(config), stops, generator)]
        self._lane_of: list[int] | None = None  # each row's lane; kept only while there are several lanes
        c = model.config
        dtype = next(model.parameters()).dtype
        # Pre-allocated for the whole generation: each step writes its keys in place instead of torch.cat-copying.
        self.cache: list = [KVBuffer(B, c.kv_heads, total, c.head_dim, dtype, device) for _ in range(c.n_layers)]
        self.next_logits: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """The number of rows now in the batch."""
        return self.ids.size(0)

    @property
    def done(self) -> bool:
        """True when every row has finished or every row's token budget is spent."""
        return bool(self.finished.all()) or self.length >= self.end

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mask = self.mask[:, :self.length]
        hidden, self.cache = self.model.backbone(ids, attention_mask=mask, position_ids=positions,
                                                 attention="causal", past=self.cache)
        # Only the last position's logits are needed: the vocabulary projection is the costliest matmul.
        return head_logits(self.model, hidden[:, -1]).float()

    def prefill(self) -> None:
        """Run the prompts through the model, filling the cache and the first step's logits."""
        mask = self.mask[:, :self.length]
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        self.next_logits = self._forward(self.ids[:, :self.length], positions)

    def processed_logits(self) -> torch.Tensor:
        """The next-token logits of every row after its lane's logits processors (prefilling on first use)."""
        if self.next_logits is None:
            self.prefill()
        logits = self.next_logits
        if self.on_logits is not None:
            self.on_logits(self.length - self.prompt_len, logits)
        ids, mask = self.ids[:, :self.length], self.mask[:, :self.length]
        if len(self.lanes) == 1:
            return apply_processors(self.lanes[0].procs, ids, mask, logits)
        out = logits.clone() if any(lane.procs for lane in self.lanes) else logits
        for lane in self.lanes:
            if lane.procs:
                out[lane.rows] = apply_processors(lane.procs, ids[lane.rows], mask[lane.rows], logits[lane.rows])
        return out

    def step(self) -> torch.Tensor:
        """Choose, record and feed one token per row; returns the (B,) chosen tokens (pad for finished rows)."""
        logits = self.processed_logits()
        if len(self.lanes) == 1:
            nxt = _choose(self.lanes[0], logits)
        else:
            nxt = logits.argmax(-1)  # every greedy lane at once; sampling lanes overwrite their rows
            for lane in self.lanes:
                if lane.config.do_sample:
                    nxt[lane.rows] = _choose(lane, logits[lane.rows])
        nxt = torch.where(self.finished, torch.full_like(nxt, self.pad_id), nxt)
        hit = self._stop_hits(nxt)
        if hit is not None:
            hit &= ~self.finished
            self.stopped |= hit
            self.finished |= hit
        self.new_counts += (~self.finished).long()  # a stop token is not part of the output
        self.feed(nxt)
        if self.length >= self._soonest:
            self._expire()
        return nxt

    def _stop_hits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Which rows' tokens are stop tokens of their lane (None when no lane has any)."""
        if len(self.lanes) == 1:
            stops = self.lanes[0].stop_ids
            return torch.isin(tokens, stops) if stops.numel() else None
        hit = torch.zeros_like(self.finished)
        for lane in self.lanes:
            if lane.stop_ids.numel():
                hit[lane.rows] = torch.isin(tokens[lane.rows], lane.stop_ids)
        return hit

    def _expire(self) -> None:
        """Finish the rows whose token budget is spent and note the next column where one runs out."""
        self.finished |= self.limits <= self.length
        ahead = self.limits[self.limits > self.length]
        self._soonest = int(ahead.min()) if ahead.numel() else _NEVER

    def feed(self, tokens: torch.Tensor) -> None:
        """Append one token per row and compute the next step's logits (unless the token budget is spent)."""
        t = self.length
        self.ids[:, t] = tokens
        self.mask[:, t] = 1
        self.length += 1
        if not self.done:
            # The position of the new token is the count of real tokens before it.
            positions = self.mask[:, :t].sum(1, keepdim=True)
            self.next_logits = self._forward(tokens[:, None], positions)

    def reorder(self, index: torch.Tensor) -> None:
        """Make row i a copy of row ``index[i]`` (tokens, mask, KV cache, pending logits); may change the row count."""
        self.ids = self.ids.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        for layer in self.cache:
            layer.reorder(index)
        self.finished = self.finished.index_select(0, index)
        self.stopped = self.stopped.index_select(0, index)
        self.new_counts = self.new_counts.index_select(0, index)
        self.starts = self.starts.index_select(0, index)
        self.limits = self.limits.index_select(0, index)
        if self.next_logits is not None:
            self.next_logits = self.next_logits.index_select(0, index)
        if self._lane_of is not None:
            self._set_lanes([self._lane_of[i] for i in index.tolist()])

    def drop(self, rows: Iterable[int]) -> None:
        """Remove ``rows`` (finished or cancelled) between steps; the others keep their order, tokens, cache and
        pending logits, and the leading key columns that only the removed rows used are released."""
        gone = set(rows)
        if not gone:
            return
        keep = [i for i in range(self.batch_size) if i not in gone]
        self.reorder(torch.tensor(keep, dtype=torch.long, device=self.device))
        # argmax finds the first column some remaining row uses (every row has at least one prompt token).
        first = int(self.mask[:, :self.length].any(0).int().argmax()) if keep else self.length
        if first:
            self._release(first)

    def join(self, other: Decoder) -> None:
        """Append the rows of ``other`` (prefilled separately, e.g. a new request) to this batch between steps.

        The two batches are right-aligned on a common column count, the shorter one getting left padding that its
        mask hides, so every row keeps its positions, cached keys and pending logits; ``other``'s lanes (config,
        processors, generator) come along. ``other`` must not be used afterwards.
        """
        if other.model is not self.model:
            raise ValueError("join() needs two Decoders of the same model")
        for dec in (self, other):
            if dec.next_logits is None and dec.batch_size:
                dec.prefill()
            if dec.batch_size and dec.cache[0].length != dec.length:
                raise ValueError("cannot join a batch whose rows have all finished; drop() them first")
        if not self.batch_size:  # nothing left to align with: continue as ``other``
            self.__dict__.update(other.__dict__)
            return
        B1, L, n = self.batch_size, self.length, other.length
        width = max(L, n)
        a, b = width - L, width - n  # columns of left padding for self's and other's rows
        self.starts = torch.cat([self.starts + a, other.starts + b])
        self.limits = torch.cat([self.limits + a, other.limits + b])
        capacity = max(int(self.limits.max()), width)
        ids = torch.full((B1 + other.batch_size, capacity), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        ids[:B1, a:width], mask[:B1, a:width] = self.ids[:, :L], self.mask[:, :L]
        ids[B1:, b:width], mask[B1:, b:width] = other.ids[:, :n], other.mask[:, :n]
        self.ids, self.mask = ids, mask
        self.cache = [KVBuffer.stacked([(mine, a), (theirs, b)], capacity)
                      for mine, theirs in zip(self.cache, other.cache, strict=True)]
        for name in ("finished", "stopped", "new_counts", "next_logits"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self.length, self.prompt_len = width, self.prompt_len + a
        self.end = capacity
        self._expire()
        theirs = [len(self.lanes) + k for k in (other._lane_of or [0] * other.batch_size)]
        lane_of = (self._lane_of or [0] * B1) + theirs
        self.lanes = self.lanes + other.lanes
        # Greedy lanes with equal processors and stop ids merge, so all-greedy traffic keeps the one-lane step.
        first_of: dict[tuple, int] = {}
        target = []
        for k, lane in enumerate(self.lanes):
            key = lane.key()
            target.append(k if key is None else first_of.setdefault(key, k))
        self._set_lanes([target[k] for k in lane_of])

    def _set_lanes(self, lane_of: list[int]) -> None:
        """Give each lane its row indices (``lane_of[i]`` is row i's lane in self.lanes); lanes without rows go."""
        used = sorted(set(lane_of))
        if len(used) <= 1:
            self.lanes = [self.lanes[used[0] if used else 0]]
            self.lanes[0].rows, self._lane_of = None, None
            return
        self.lanes = [self.lanes[k] for k in used]
        renumber = {k: i for i, k in enumerate(used)}
        self._lane_of = [renumber[k] for k in lane_of]
        for i, lane in enumerate(self.lanes):
            rows = [r for r, k in enumerate(self._lane_of) if k == i]
            lane.rows = torch.tensor(rows, dtype=torch.long, device=self.device)

    def _release(self, n: int) -> None:
        """Forget the first ``n`` columns, which no row uses any more: views, nothing is copied."""
        self.ids, self.mask = self.ids[:, n:], self.mask[:, n:]
        for layer in self.cache:
            layer.trim(n)
        self.starts, self.limits = self.starts - n, self.limits - n
        self.length -= n
        self.prompt_len -= n
        self.end -= n
        self._soonest -= n

    def finish(self, row: int) -> None:
        """Mark a row finished from outside (a stop string)."""
        self.finished[row] = True
        self.stopped[row] = True

    def new_tokens(self, row: int) -> list[int]:
        """The tokens generated for ``row`` so far, without the stop token and the padding after it."""
        start, n = int(self.starts[row]), int(self.new_counts[row])
        return self.ids[row, start:start + n].tolist()


def _choose(lane: _Lane, logits: torch.Tensor) -> torch.Tensor:
    """The lane's next tokens from its processed logits: a draw with its generator, or the argmax."""
    if lane.config.do_sample:
        return torch.multinomial(logits.softmax(-1), 1, generator=lane.generator).squeeze(1)
    return logits.argmax(-1)
