"""Left-to-right decoding machinery: prompt encoding and fitting, the output-matrix cache, the KV-cached Decoder,
stop strings and streaming text.

Causal decoding is a prefill pass over the (left-padded) prompts followed by one position per step that reuses the
keys and values of all earlier positions, held in pre-allocated ``attention.KVBuffer``s. Every step the raw
next-token logits go through the logits processors (twinlm.processors) and the next token is the argmax (greedy)
or a draw from the softmax with a seeded generator. Beam search (twinlm.beam) drives the same Decoder, reordering
its rows between steps. The entry points generate / generate_ids / stream are in twinlm.generate.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .attention import KVBuffer
from .config import require
from .errors import ConfigError
from .model import LanguageModel
from .processors import GenerationConfig, apply_processors, build_processors
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


def model_device(model: LanguageModel) -> torch.device:
    """The device that holds the model's parameters (where its inputs must go)."""
    return next(model.parameters()).device


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


class Decoder:
    """Batched, KV-cached left-to-right decoding of token-id prompts, one step at a time.

    Prompts are left-padded to a common length; each row's position ids start at 0 at its first real token and
    the attention mask covers every key (prompt padding included). Finished rows keep receiving the pad token,
    whose outputs are ignored, so the batch stays rectangular. Beam search chooses the tokens itself and moves
    rows around with reorder() before feed().
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
        self.procs = build_processors(config)
        device = model_device(model)
        self.device = device
        B, P = len(prompts), max(len(p) for p in prompts)
        total = P + config.max_new_tokens
        # Pre-allocated id and mask buffers: the live part is [:, :self.length].
        self.ids = torch.full((B, total), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros(B, total, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            self.ids[b, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
            self.mask[b, P - len(p):P] = 1
        self.prompt_len = P
        self.length = P
        self.stop_ids = torch.as_tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(B, dtype=torch.bool, device=device)  # finished by a stop token or string
        self.new_counts = torch.zeros(B, dtype=torch.long, device=device)
        self.generator = None
        if config.do_sample and config.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)
        c = model.config
        dtype = next(model.parameters()).dtype
        # Pre-allocated for the whole generation: each step writes its keys in place instead of torch.cat-copying.
        self.cache: list = [KVBuffer(B, c.kv_heads, total, c.head_dim, dtype, device) for _ in range(c.n_layers)]
        self.next_logits: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        """True when every row has finished or the token budget is spent."""
        return bool(self.finished.all()) or self.length - self.prompt_len >= self.config.max_new_tokens

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
        """The next-token logits of every row after the logits processors (prefilling on first use)."""
        if self.next_logits is None:
            self.prefill()
        logits = self.next_logits
        if self.on_logits is not None:
            self.on_logits(self.length - self.prompt_len, logits)
        return apply_processors(self.procs, self.ids[:, :self.length], self.mask[:, :self.length], logits)

    def step(self) -> torch.Tensor:
        """Choose, record and feed one token per row; returns the (B,) chosen tokens (pad for finished rows)."""
        logits = self.processed_logits()
        if self.config.do_sample:
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=self.generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(self.finished, torch.full_like(nxt, self.pad_id), nxt)
        if self.stop_ids.numel():
            hit = torch.isin(nxt, self.stop_ids) & ~self.finished
            self.stopped |= hit
            self.finished |= hit
        self.new_counts += (~self.finished).long()  # a stop token is not part of the output
        self.feed(nxt)
        return nxt

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
        if self.next_logits is not None:
            self.next_logits = self.next_logits.index_select(0, index)

    def finish(self, row: int) -> None:
        """Mark a row finished from outside (a stop string)."""
        self.finished[row] = True
        self.stopped[row] = True

    def new_tokens(self, row: int) -> list[int]:
        """The tokens generated for ``row`` so far, without the stop token and the padding after it."""
        n = int(self.new_counts[row])
        return self.ids[row, self.prompt_len:self.prompt_len + n].tolist()


# ---------------------------------------------------------------------------------------------- text


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string."""
    hold = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class TextStream:
    """Turns a growing list of token ids into text pieces that are safe to show now.

    A byte-level BPE token can hold part of a multi-byte UTF-8 character; decoding such a prefix gives U+FFFD, so
    text is only released once it no longer ends in an incomplete character. Text that could be the start of a
    stop string is held back until it is known not to be one. The pieces join to the final text exactly.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def text(self) -> str:
        """The text so far, cut before a stop string (setting ``stopped`` when one is found)."""
        text, hit = cut_at_stop(self.tokenizer.decode(self.ids), self.stop_strings)
        self.stopped |= hit
        return text

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the newly showable text ('' when nothing is safe to show yet)."""
        self.ids.extend(int(i) for i in ids)
        text = self.text()
        if self.stopped:
            return self._release(text)
        safe = text.rstrip("\ufffd")
        return self._release(safe[:len(safe) - _held_back(safe, self.stop_strings)])

    def finish(self) -> str:
        """Whatever remains once no more tokens will come."""
        return self._release(self.text())

    def _release(self, safe: str) -> str:
        # Decoders that rewrite earlier text (e.g. WordPiece clean-up) could break the prefix; then wait.
        if len(safe) <= len(self.emitted) or not safe.startswith(self.emitted):
            return ""
        piece, self.emitted = safe[len(self.emitted):], safe
        return piece
