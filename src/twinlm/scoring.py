"""Scoring text: per-token log-probabilities, perplexity with a sliding window, bits per byte, MLM pseudo-likelihood.

Causal:  log P(x_t | x_<t) from one causal pass. A text longer than the model's positions is scored in windows of
    ``window`` tokens whose targets advance by ``stride`` tokens, so every token after the first window is predicted
    with at least window - stride tokens of context and each token is scored exactly once. The text is preceded by
    the tokenizer's BOS (or EOS) token so that its first token is predicted too.
    loss = -(1/N) sum_t log P(x_t | ...), perplexity = exp(loss), bits per byte = -sum_t log2 P(x_t | ...) / bytes,
    the last being comparable across tokenizers because it divides by the UTF-8 size of the text, not a token count.
Masked:  pseudo-log-likelihood (Salazar et al. 2020) PLL = sum_t log P(x_t | x without x_t), each position masked
    in turn (many masked copies per batch); pseudo-perplexity = exp(-PLL / N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .config import require
from .errors import ConfigError
from .model import LanguageModel, device_of
from .tokenizer import Tokenizer


@dataclass
class TokenScores:
    """Per-token natural-log probabilities of a text under one paradigm."""

    paradigm: str
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]

    @property
    def total(self) -> float:
        """Sum of the log-probabilities (the log-likelihood, or the PLL for a masked model)."""
        return float(sum(self.logprobs))

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-probability (pseudo-perplexity for a masked model)."""
        return math.exp(-self.total / max(len(self.logprobs), 1))


@dataclass
class PerplexityResult:
    """Corpus-level causal scores."""

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    window: int
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_paradigm(model: LanguageModel) -> str:
    """The paradigm of the model's default mask: 'causal' for causal attention, else 'masked' (a hybrid does both)."""
    return "causal" if model.config.attention == "causal" else "masked"


def _check_paradigm(model: LanguageModel, paradigm: str) -> None:
    if paradigm == "causal":
        require(model, "causal", "causal scoring (perplexity)", "score it with the pseudo-log-likelihood "
                "(paradigm='masked')")
    else:
        require(model, paradigm, "pseudo-log-likelihood", "score it with perplexity (paradigm='causal')")


def _windowing(model: LanguageModel, window: int | None, stride: int | None) -> tuple[int, int]:
    limit = model.config.max_positions
    window = limit if window is None else window
    if not 2 <= window <= limit:
        raise ConfigError(f"window must be between 2 and max_positions={limit}, got {window}")
    stride = max(window // 2, 1) if stride is None else stride
    if not 1 <= stride < window:
        # Each window needs at least one token of context before its first target.
        raise ConfigError(f"stride must be between 1 and window - 1 = {window - 1}, got {stride}")
    return window, stride


@torch.inference_mode()
def causal_logprobs(model: LanguageModel, ids: list[int], start_id: int, window: int | None = None,
                    stride: int | None = None, batch_size: int = 8) -> torch.Tensor:
    """log P(ids[i] | start, ids[:i]) for every i (float64, shape (len(ids),)), in sliding windows."""
    window, stride = _windowing(model, window, stride)
    seq = [start_id, *ids]
    device = device_of(model)
    out = torch.empty(len(ids), dtype=torch.float64)
    # Target chunk [a, b) of seq (a >= 1) is predicted by the window seq[max(0, b - window):b].
    chunks = [(a, min(a + stride, len(seq))) for a in range(1, len(seq), stride)]
    for i in range(0, len(chunks), batch_size):
        group = chunks[i:i + batch_size]
        starts = [max(0, b - window) for _, b in group]
        length = max(b - s for (_, b), s in zip(group, starts, strict=True))
        x = torch.zeros(len(group), length, dtype=torch.long, device=device)
        mask = torch.zeros_like(x)
        for r, ((_, b), s) in enumerate(zip(group, starts, strict=True)):
            x[r, :b - s] = torch.tensor(seq[s:b], device=device)
            mask[r, :b - s] = 1  # right padding: a causal query never sees the padded keys after it
        hidden = model.hidden(x, mask, attention="causal")
        for r, ((a, b), s) in enumerate(zip(group, starts, strict=True)):
            logits = model.head(hidden[r, a - 1 - s:b - 1 - s]).double()
            targets = torch.tensor(seq[a:b], device=device)
            out[a - 1:b - 1] = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1).cpu()
    return out


def _frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] ... [SEP], or ... EOS)."""
    inner = tokenizer.encode("a")
    wrapped = tokenizer.encode("a", add_special=True)
    for i in range(len(wrapped) - len(inner) + 1):
        if wrapped[i:i + len(inner)] == inner:
            return wrapped[:i], wrapped[i + len(inner):]
    return [], []


@torch.inference_mode()
def pseudo_logprobs(model: LanguageModel, tokenizer: Tokenizer, ids: list[int], batch_size: int = 64) -> torch.Tensor:
    """log P(ids[i] | ids without ids[i]) for every i (float64), each token masked in turn under the MLM framing.

    Texts longer than the model's positions are scored in consecutive chunks, each framed with the special tokens
    the model was trained with.
    """
    prefix, suffix = _frame(tokenizer)
    room = model.config.max_positions - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(f"max_positions={model.config.max_positions} leaves no room for text between the specials")
    device = device_of(model)
    out = torch.empty(len(ids), dtype=torch.float64)
    for c in range(0, len(ids), room):
        chunk = ids[c:c + room]
        row = torch.tensor(prefix + chunk + suffix, device=device)
        positions = torch.arange(len(prefix), len(prefix) + len(chunk), device=device)
        for i in range(0, len(positions), batch_size):
            pos = positions[i:i + batch_size]
            x = row.repeat(len(pos), 1)
            r = torch.arange(len(pos), device=device)
            x[r, pos] = tokenizer.mask_id  # row r hides exactly one token
            hidden = model.hidden(x, attention="bidirectional")[r, pos]
            logprobs = model.head(hidden).double().log_softmax(-1)
            picked = logprobs.gather(1, row[pos][:, None]).squeeze(1)
            out[c + i:c + i + len(pos)] = picked.cpu()
    return out


def start_id(tokenizer: Tokenizer) -> int:
    """The token a causal model predicts the first token from: BOS, else EOS."""
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if start is None:
        raise ConfigError("causal scoring needs a BOS or EOS token to predict the first token from")
    return start


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("the text to score is empty")
    return ids


def score(model: LanguageModel, tokenizer: Tokenizer, text: str, paradigm: str | None = None,
          window: int | None = None, stride: int | None = None, batch_size: int = 32) -> TokenScores:
    """Per-token log-probabilities of ``text``: causal log P(x_t | x_<t) or masked log P(x_t | rest)."""
    paradigm = paradigm or default_paradigm(model)
    _check_paradigm(model, paradigm)
    ids = _encode(tokenizer, text)
    if paradigm == "causal":
        lp = causal_logprobs(model, ids, start_id(tokenizer), window, stride, batch_size)
    else:
        lp = pseudo_logprobs(model, tokenizer, ids, batch_size)
    tokens = [tokenizer.id_to_token(i) or "" for i in ids]
    return TokenScores(paradigm, tokens, ids, lp.tolist())


def perplexity(model: LanguageModel, tokenizer: Tokenizer, text: str, window: int | None = None,
               stride: int | None = None, batch_size: int = 8) -> PerplexityResult:
    """Causal loss, perplexity and bits per byte of ``text`` with a sliding window (default: max_positions, half)."""
    _check_paradigm(model, "causal")
    window, stride = _windowing(model, window, stride)
    ids = _encode(tokenizer, text)
    lp = causal_logprobs(model, ids, start_id(tokenizer), window, stride, batch_size)
    nll = -float(lp.sum())
    n_bytes = len(text.encode("utf-8"))
    loss = nll / len(ids)
    return PerplexityResult(loss=loss, perplexity=math.exp(loss), bits_per_byte=nll / math.log(2) / n_bytes,
                            tokens=len(ids), bytes=n_bytes, window=window, stride=stride)


def pseudo_perplexity(model: LanguageModel, tokenizer: Tokenizer, text: str, batch_size: int = 64) -> dict[str, float]:
    """MLM pseudo-log-likelihood of ``text``, its mean per token and the pseudo-perplexity."""
    _check_paradigm(model, "masked")
    ids = _encode(tokenizer, text)
    lp = pseudo_logprobs(model, tokenizer, ids, batch_size)
    pll = float(lp.sum())
    n_bytes = len(text.encode("utf-8"))
    return {"pll": pll, "pseudo_loss": -pll / len(ids), "pseudo_perplexity": math.exp(-pll / len(ids)),
            "pseudo_bits_per_byte": -pll / math.log(2) / n_bytes, "tokens": len(ids), "bytes": n_bytes}
