"""Inference API: fill masks (masked models), sample continuations (causal models); load_pretrained from loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import require
from .errors import ConfigError
from .loading import load_pretrained
from .model import LanguageModel
from .tokenizer import Tokenizer

__all__ = ["load_pretrained", "fill_mask", "fill_mask_joint", "sample", "MaskPrediction", "JointFill", "describe"]


@dataclass
class MaskPrediction:
    token: str
    token_id: int
    score: float
    sequence: str


def _special_ids(tokenizer: Tokenizer, vocab: int) -> list[int]:
    """The tokenizer's special ids that exist among the model's ``vocab`` logits."""
    return [i for i in tokenizer.special_ids if i < vocab]


def _nth_mask(ids: list[int], pos: int, dropped: set[int]) -> int:
    """Index of position ``pos`` of ``ids`` once the ``dropped`` tokens are removed."""
    return sum(1 for t in ids[:pos] if t not in dropped)


def _mask_positions(model: LanguageModel, tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The framed ids of ``text`` and the positions of its [MASK] tokens, after the fill-mask input checks."""
    require(model, "masked", "fill-mask", "use `twinlm sample` or `twinlm generate` with it")
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    if mask_token not in text:
        raise ConfigError(f"the text has no {mask_token} token to fill: {text!r}")
    ids = tokenizer.encode(text, add_special=True)
    if len(ids) > model.config.max_positions:
        raise ConfigError(f"the text is {len(ids)} tokens; the model takes at most {model.config.max_positions}")
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise ConfigError(f"the text has no {mask_token} token to fill after tokenization: {text!r}")
    return ids, positions


@torch.no_grad()
def fill_mask(model: LanguageModel, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[MaskPrediction]]:
    """Top-k predictions for each [MASK] in ``text`` (bidirectional attention), each with the filled sentence.

    Every mask is predicted independently given the text with all masks in place; fill_mask_joint fills them
    together. In a prediction's sequence the other masks stay as the mask token.
    """
    ids, mask_positions = _mask_positions(model, tokenizer, text)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    positions = torch.tensor(mask_positions, device=device)
    logits = model.head(model.hidden(x, attention="bidirectional")[0, positions]).float()
    logits[:, _special_ids(tokenizer, logits.size(-1))] = float("-inf")  # a blank is filled with text, never [MASK]
    probs = logits.softmax(-1)
    if top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k}")
    hidden_specials = set(tokenizer.special_ids) - {tokenizer.mask_id}
    results = []
    for row, pos in zip(probs, positions.tolist(), strict=True):
        scores, top = row.topk(min(top_k, row.numel()))
        preds = []
        for score, tid in zip(scores.tolist(), top.tolist(), strict=True):
            filled = [t for t in ids if t not in hidden_specials]  # drop [CLS]/[SEP]/EOS, keep the other masks
            filled[_nth_mask(ids, pos, hidden_specials)] = tid
            preds.append(MaskPrediction(tokenizer.decode([tid]), tid, score,
                                        tokenizer.decode(filled, skip_special=False)))
        results.append(preds)
    return results


def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 50,
           temperature: float = 0.0, top_k: int | None = None, seed: int = 0, stop_at_eos: bool = True) -> str:
    """A continuation of ``prompt`` under the causal mask: greedy at temperature 0, else seeded sampling.

    A thin wrapper over twinlm.generate.generate, which has every other decoding option.
    """
    from .generate import generate

    require(model, "causal", "sample", "use `twinlm fill-mask`, or mask-predict generation: "
            "`twinlm generate --mask-predict`")
    out = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   seed=seed, stop_at_eos=stop_at_eos)
    return out.text  # type: ignore[union-attr]


@dataclass
class JointFill:
    """A text with every [MASK] filled together: the ids, the tokens chosen per mask (in text order) and their
    probabilities when they were chosen."""

    sequence: str
    tokens: list[str]
    token_ids: list[int]
    scores: list[float]


@torch.no_grad()
def fill_mask_joint(model: LanguageModel, tokenizer: Tokenizer, text: str) -> JointFill:
    """The most likely joint filling of every [MASK] by iterative unmasking.

    Each round predicts all remaining blanks given the text and the blanks filled so far, and fixes only the single
    most confident one, so later choices see earlier ones (independent per-mask argmaxes can disagree with each
    other, e.g. "New [MASK] [MASK]" -> "New York York").
    """
    ids, positions = _mask_positions(model, tokenizer, text)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    remaining = list(positions)
    chosen: dict[int, tuple[int, float]] = {}
    while remaining:
        pos = torch.tensor(remaining, device=device)
        logits = model.head(model.hidden(x, attention="bidirectional")[0, pos]).float()
        logits[:, _special_ids(tokenizer, logits.size(-1))] = float("-inf")
        p, tok = logits.softmax(-1).max(-1)
        best = int(p.argmax())
        x[0, remaining[best]] = tok[best]
        chosen[remaining[best]] = (int(tok[best]), float(p[best]))
        remaining.pop(best)
    token_ids = [chosen[q][0] for q in positions]
    return JointFill(tokenizer.decode(x[0].tolist(), skip_special=True), [tokenizer.decode([t]) for t in token_ids],
                     token_ids, [chosen[q][1] for q in positions])


def describe(model: LanguageModel) -> dict[str, Any]:
    """A one-line summary of a model for tables."""
    c = model.config
    return {"attention": c.attention, "layers": c.n_layers, "d_model": c.d_model, "parameters": model.num_parameters()}
