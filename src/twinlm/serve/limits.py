"""Serving limits and the input checks that enforce them (each failure names the field and the limit)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..data.tasks import HEAD_SHARE
from .errors import ApiError


@dataclass
class Limits:
    """What one server accepts. Every field is settable from `twinlm serve` flags.

    max_input_tokens: tokens per input text (also capped by what the model takes, where it has to fit at once);
    max_tokens_cap: the most new tokens one completion may ask for; max_body_bytes: request body size;
    timeout_s: per-request time limit (504 after it; 408 when the body itself has not arrived by then, so a client
    trickling bytes cannot hold a connection); max_queue: requests waiting per model and operation before
    503 + Retry-After; max_batch_size / max_wait_ms: how requests are gathered into batches (batch size 1 turns
    batching off); max_streams: generation sequences decoded together per model (more wait in the queue).
    """

    max_input_tokens: int = 512
    max_tokens_cap: int = 256
    max_body_bytes: int = 1 << 20
    timeout_s: float = 60.0
    max_queue: int = 64
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_streams: int = 8
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_input_tokens", "max_tokens_cap", "max_body_bytes", "max_queue", "max_batch_size",
                     "max_streams"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.max_wait_ms < 0:
            raise ValueError("timeout_s must be positive and max_wait_ms >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_text(tokenizer: Any, text: str, limit: int, field: str, truncate: bool,
             keep: str = "head") -> tuple[str, int]:
    """(text, its token count) when it has at most ``limit`` tokens; cut to ``limit`` tokens when ``truncate``,
    else a 413 naming the field and the limit.

    ``keep`` is the served model's own truncation (twinlm.data.tasks.cut_tokens): "head" keeps the first tokens,
    "head-tail" the first quarter and the last three quarters, so a cut here keeps what the model was trained to read.
    """
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    n = len(enc.ids)
    if n <= limit:
        return text, n
    if not truncate:
        what = "the first tokens" if keep == "head" else "its first quarter and last three quarters"
        raise ApiError(413, f"{field} has {n} tokens; the limit is {limit} tokens (send a shorter text, or "
                            f"\"truncate\": true to keep {what})", field)
    if limit <= 0:
        return "", 0
    head = limit if keep == "head" else int(limit * HEAD_SHARE)
    cut = text[:enc.offsets[head - 1][1]] if head > 0 else ""
    if head < limit:
        tail_start = enc.offsets[n - (limit - head)][0]
        # Keep the word break the text had at the tail's first token ("… end" stays two words, 中文 stays joined).
        joiner = " " if cut and tail_start > 0 and text[tail_start - 1].isspace() else ""
        cut = cut + joiner + text[tail_start:]
    return cut, limit


def check_max_tokens(max_tokens: int, cap: int) -> None:
    if max_tokens > cap:
        raise ApiError(422, f"max_tokens is {max_tokens}; this server allows at most {cap}", "max_tokens")


def queue_full(what: str, depth: int, retry_after: int) -> ApiError:
    return ApiError(503, f"the {what} queue is full ({depth} requests waiting); retry after {retry_after} s",
                    None, headers={"Retry-After": str(retry_after)})
