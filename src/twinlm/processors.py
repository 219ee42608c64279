"""Decoding settings and logits processors: small functions ``(ids, mask, logits) -> logits`` applied in order.

Every decoding step (sampling, greedy or beam search) passes the raw next-token logits through the processors that
the GenerationConfig asks for, in this order:

    repetition penalty -> no-repeat-n-gram -> temperature -> top-k -> top-p -> min-p

``ids`` and ``mask`` are the (rows, length) tokens so far and their 1/0 padding mask; ``logits`` is (rows, vocab).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NEG_INF = float("-inf")
TRUNCATE_MODES = ("error", "left")


@dataclass
class GenerationConfig:
    """How to decode. ``temperature <= 0`` means greedy (argmax); any positive value samples.

    stop_token_ids are added to the tokenizer's end-of-text id when ``stop_at_eos``; stop_strings end the text
    exactly before the first occurrence of any of them. ``truncate='left'`` cuts over-long prompts from the left
    (with a TruncationWarning) instead of raising. ``seed=None`` uses torch's global random state.
    """

    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop_strings: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    stop_at_eos: bool = True
    seed: int | None = 0
    truncate: str = "error"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def do_sample(self) -> bool:
        """True when the next token is drawn rather than taken as the argmax."""
        return self.temperature > 0

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if 0.0 < self.temperature < 1e-6:
            # logits / 5e-324 overflow to inf and the softmax to NaN: refuse rather than sample garbage
            raise ConfigError(f"temperature must be 0 (greedy) or at least 1e-6, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be positive (1.0 = off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.truncate not in TRUNCATE_MODES:
            raise ConfigError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}, got {self.truncate!r}")
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop strings must be non-empty")
        if self.num_beams > 1:
            sampling = {"temperature": self.temperature if self.temperature > 0 else None, "top_k": self.top_k,
                        "top_p": self.top_p, "min_p": self.min_p}
            given = [name for name, value in sampling.items() if value is not None]
            if given:
                raise ConfigError(f"num_beams={self.num_beams} is deterministic beam search and conflicts with the "
                                  f"sampling setting(s) {', '.join(given)}; drop them or use num_beams=1")


def repetition_penalty(penalty: float) -> LogitsProcessor:
    """CTRL's penalty: logits of tokens already in the context are divided by ``penalty`` (multiplied if < 0)."""

    def apply(ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # Counting through scatter_add (not scatter) so duplicate ids and padding columns cannot overwrite a hit.
        seen = torch.zeros_like(logits).scatter_add_(1, ids, mask.to(logits.dtype)) > 0
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen, penalised, logits)

    return apply


def no_repeat_ngram(n: int) -> LogitsProcessor:
    """Ban every token that would complete an n-gram already present in the row (prompt included)."""

    def apply(ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        for b in range(ids.size(0)):
            toks = ids[b][mask[b].bool()].tolist()
            if len(toks) < n:
                continue
            prefix = tuple(toks[len(toks) - n + 1:]) if n > 1 else ()
            banned = [toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i:i + n - 1]) == prefix]
            logits[b, banned] = NEG_INF
        return logits

    return apply


def temperature(t: float) -> LogitsProcessor:
    """Divide the logits by t (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    return lambda ids, mask, logits: logits / t


def top_k(k: int) -> LogitsProcessor:
    """Keep exactly the k highest logits (ties broken by torch.topk), -inf elsewhere."""

    def apply(ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if k >= logits.size(-1):
            return logits
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(k, dim=-1).indices, True)
        return logits.masked_fill(~keep, NEG_INF)

    return apply


def top_p(p: float) -> LogitsProcessor:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass is >= p."""

    def apply(ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # A token stays if the mass of the tokens before it is still short of p; the first always stays.
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        return logits.masked_fill(drop, NEG_INF)

    return apply


def min_p(p: float) -> LogitsProcessor:
    """Keep tokens whose probability is at least p times the most likely token's."""

    def apply(ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(-1)
        floor = p * probs.max(dim=-1, keepdim=True).values
        return logits.masked_fill(probs < floor, NEG_INF)

    return apply


def build_processors(config: GenerationConfig) -> list[LogitsProcessor]:
    """The processors ``config`` asks for, in the order they apply."""
    procs: list[LogitsProcessor] = []
    if config.repetition_penalty != 1.0:
        procs.append(repetition_penalty(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        procs.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.do_sample:
        # Warpers only change which token is drawn; under greedy they could not change the argmax.
        if config.temperature != 1.0:
            procs.append(temperature(config.temperature))
        if config.top_k is not None:
            procs.append(top_k(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            procs.append(top_p(config.top_p))
        if config.min_p:
            procs.append(min_p(config.min_p))
    return procs


def apply_processors(procs: Sequence[LogitsProcessor], ids: torch.Tensor, mask: torch.Tensor,
                     logits: torch.Tensor) -> torch.Tensor:
    """Run ``logits`` through ``procs`` in order."""
    for proc in procs:
        logits = proc(ids, mask, logits)
    return logits
