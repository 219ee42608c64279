"""Masked-model inference: fill [MASK] blanks independently (fill_mask) or together (fill_mask_joint), and generate
text by mask-predict.

A masked model cannot be decoded left to right. Both joint filling and mask-predict (Ghazvininejad et al. 2019)
are iterative unmasking: predict every blank still masked given the rest of the text, then decide which blanks stay
masked for the next round. fill_mask_joint fixes the single most confident blank per round; mask-predict starts
from N blanks after the prompt, predicts them all, then re-masks and re-predicts the least confident ones.
Special tokens ([MASK], [CLS], end tokens) are never predicted for a blank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import require
from .decoding import Generation
from .errors import ConfigError
from .model import LanguageModel, device_of
from .processors import NEG_INF
from .tokenizer import Tokenizer


@dataclass
class MaskPrediction:
    """One candidate for one [MASK]: the token, its probability and the text with it filled in."""

    token: str
    token_id: int
    score: float
    sequence: str


@dataclass
class JointFill:
    """A text with every [MASK] filled together: the ids, the tokens chosen per mask (in text order) and their
    probabilities when they were chosen."""

    sequence: str
    tokens: list[str]
    token_ids: list[int]
    scores: list[float]


# ---------------------------------------------------------------------------------------------- shared steps


def blank_probs(model: LanguageModel, tokenizer: Tokenizer, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token probabilities (len(positions), vocab) at ``positions`` of the one row x (1, T); specials get 0.

    Bidirectional attention; a blank is filled with text, never with [MASK], [CLS] or an end token.
    """
    logits = model.head(model.hidden(x, attention="bidirectional")[0, positions]).float()
    special = [i for i in tokenizer.special_ids if i < logits.size(-1)]
    logits[:, special] = NEG_INF
    return logits.softmax(-1)


# Which blanks stay masked for the next round, from the round number, every blank's current probability and the
# blanks that were masked in this round (whose tokens and probabilities were just predicted).
Remask = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def iterative_unmask(model: LanguageModel, tokenizer: Tokenizer, x: torch.Tensor, positions: torch.Tensor,
                     remask: Remask) -> torch.Tensor:
    """Fill the blanks at ``positions`` of x (1, T) in place, round by round, until ``remask`` masks none.

    Each round predicts the masked blanks given everything else, writes the most likely token and its probability,
    then puts [MASK] back at the blanks ``remask`` chooses. Returns each blank's probability when last predicted.
    """
    masked = torch.ones(len(positions), dtype=torch.bool, device=x.device)
    probs = torch.zeros(len(positions), device=x.device)
    t = 0
    while bool(masked.any()):
        p, tok = blank_probs(model, tokenizer, x, positions[masked]).max(-1)
        x[0, positions[masked]] = tok
        probs[masked] = p
        masked = remask(t, probs, masked)
        x[0, positions[masked]] = tokenizer.mask_id
        t += 1
    return probs


def _most_confident_first(t: int, probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    # Joint filling: of the blanks just predicted, fix only the most confident; the rest are predicted again.
    keep = masked.clone()
    keep[masked.nonzero().squeeze(1)[probs[masked].argmax()]] = False
    return keep


def _mask_predict_schedule(steps: int) -> Remask:
    def remask(t: int, probs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        # Mask-predict: after round t of T, the N * (T - 1 - t) / T least confident blanks are predicted again.
        n_mask = int(len(probs) * (steps - 1 - t) / steps)
        again = torch.zeros_like(masked)
        if n_mask > 0:
            again[probs.topk(n_mask, largest=False).indices] = True
        return again

    return remask


# ---------------------------------------------------------------------------------------------- fill-mask


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
    if top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k}")
    device = device_of(model)
    x = torch.tensor([ids], device=device)
    probs = blank_probs(model, tokenizer, x, torch.tensor(mask_positions, device=device))
    hidden_specials = set(tokenizer.special_ids) - {tokenizer.mask_id}
    results = []
    for row, pos in zip(probs, mask_positions, strict=True):
        scores, top = row.topk(min(top_k, row.numel()))
        preds = []
        for score, tid in zip(scores.tolist(), top.tolist(), strict=True):
            filled = [t for t in ids if t not in hidden_specials]  # drop [CLS]/[SEP]/EOS, keep the other masks
            filled[_nth_mask(ids, pos, hidden_specials)] = tid
            preds.append(MaskPrediction(tokenizer.decode([tid]), tid, score,
                                        tokenizer.decode(filled, skip_special=False)))
        results.append(preds)
    return results


@torch.no_grad()
def fill_mask_joint(model: LanguageModel, tokenizer: Tokenizer, text: str) -> JointFill:
    """The most likely joint filling of every [MASK] by iterative unmasking.

    Each round predicts all remaining blanks given the text and the blanks filled so far, and fixes only the single
    most confident one, so later choices see earlier ones (independent per-mask argmaxes can disagree with each
    other, e.g. "New [MASK] [MASK]" -> "New York York").
    """
    ids, positions = _mask_positions(model, tokenizer, text)
    device = device_of(model)
    x = torch.tensor([ids], device=device)
    pos = torch.tensor(positions, device=device)
    probs = iterative_unmask(model, tokenizer, x, pos, _most_confident_first)
    token_ids = x[0, pos].tolist()
    return JointFill(tokenizer.decode(x[0].tolist(), skip_special=True), [tokenizer.decode([t]) for t in token_ids],
                     token_ids, probs.tolist())


# ---------------------------------------------------------------------------------------------- mask-predict


def _mlm_frame(tokenizer: Tokenizer, prompt: str, n_new: int) -> tuple[list[int], list[int]]:
    """Ids laid out as the masked model was trained (specials included) with n_new [MASK]s after the prompt."""
    wrapped = tokenizer.encode(prompt, add_special=True)
    # add_special appends one closing special token (SEP or EOS); the blanks go right before it.
    head, tail = wrapped[:-1], wrapped[-1:]
    start = len(head)
    return head + [tokenizer.mask_id] * n_new + tail, list(range(start, start + n_new))


def mask_predict_frame(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                       steps: int) -> tuple[list[int], list[int]]:
    """The checked input of mask-predict: (ids of [CLS] prompt + blanks [SEP], the blanks' positions)."""
    require(model, "masked", "mask-predict", "use `twinlm generate` without --mask-predict")
    if max_new_tokens < 1 or steps < 1:
        raise ConfigError(f"mask-predict needs max_new_tokens >= 1 and steps >= 1, got {max_new_tokens}, {steps}")
    ids, blanks = _mlm_frame(tokenizer, prompt, max_new_tokens)
    if len(ids) > model.config.max_positions:
        raise ConfigError(f"prompt + {max_new_tokens} blanks is {len(ids)} tokens; the model takes at most "
                          f"max_positions={model.config.max_positions}")
    return ids, blanks


@torch.inference_mode()
def mask_predict(model: LanguageModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 20,
                 steps: int = 10) -> Generation:
    """Generate ``max_new_tokens`` tokens after ``prompt`` with a masked model by iterative unmasking.

    Mask-Predict (Ghazvininejad et al., 2019): predict every blank, keep each position's most likely token and
    its probability; at iteration t of T re-mask the N * (T - t) / T least confident positions and predict them
    again given the rest. Special tokens are never predicted.
    """
    ids, blanks = mask_predict_frame(model, tokenizer, prompt, max_new_tokens, steps)
    device = device_of(model)
    x = torch.tensor([ids], device=device)
    pos = torch.tensor(blanks, device=device)
    iterative_unmask(model, tokenizer, x, pos, _mask_predict_schedule(steps))
    new = x[0, pos].tolist()
    return Generation(prompt, tokenizer.decode(new), new, "length", blanks[0])
