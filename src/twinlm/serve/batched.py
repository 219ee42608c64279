"""Fill-mask, scoring and mask-predict for many texts at once: the forward passes of several requests share batches.

twinlm's Python API answers one text per call (twinlm.masked.fill_mask, twinlm.masked.mask_predict,
twinlm.scoring.perplexity / pseudo_perplexity). These functions give the same answers for a list of inputs, with
the same checks, framing, windows and arithmetic, but put the rows of every input into common forward passes: rows
are right-padded and the padding is masked out of attention, so each row's numbers equal its own pass up to float
rounding (tests/test_serve.py compares them). An input that fails its checks gets its exception in its place in the
returned list, so the other inputs of the batch still get their answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..decoding import Generation
from ..errors import ConfigError, TwinLMError
from ..masked import MaskPrediction, _mask_positions, _mask_predict_schedule, _nth_mask, mask_predict_frame
from ..model import LanguageModel, device_of
from ..processors import NEG_INF
from ..scoring import PerplexityResult, _check_paradigm, _encode, _frame, _windowing, start_id
from ..tokenizer import Tokenizer

MAX_ROWS = 64  # rows per forward pass (the Python API's pseudo-perplexity batch): bounds the activations' memory


def _padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, Any]:
    """Right-padded ids (B, T) and the key mask, or None for the mask when every row has the same length (then
    the pass is exactly the one-text call's)."""
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long, device=device)
        mask[i, :len(r)] = 1
    return x, (None if all(len(r) == width for r in rows) else mask)


def _blank_probs(model: LanguageModel, tokenizer: Tokenizer, hidden: torch.Tensor) -> torch.Tensor:
    """twinlm.masked.blank_probs for gathered hidden rows (N, d_model): probabilities, specials at 0."""
    logits = model.head(hidden).float()
    special = [i for i in tokenizer.special_ids if i < logits.size(-1)]
    logits[:, special] = NEG_INF
    return logits.softmax(-1)


def _each(items: Sequence[Any], check: Callable[[Any], Any]) -> list[Any]:
    """check(item) per item; a TwinLMError (the input's fault) takes the item's place instead of failing the batch."""
    out = []
    for item in items:
        try:
            out.append(check(item))
        except TwinLMError as exc:
            out.append(exc)
    return out


def _groups(n: int, size: int = MAX_ROWS) -> Iterator[slice]:
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


# ----------------------------------------------------------------------------------------------- fill-mask


@torch.inference_mode()
def fill_mask_many(model: LanguageModel, tokenizer: Tokenizer, items: Sequence[tuple[str, int]]) -> list[Any]:
    """twinlm.masked.fill_mask(model, tokenizer, text, top_k) for each (text, top_k), one forward pass per
    MAX_ROWS texts."""

    def check(item: tuple[str, int]) -> tuple[list[int], list[int], int]:
        text, top_k = item
        ids, positions = _mask_positions(model, tokenizer, text)
        if top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k}")
        return ids, positions, top_k

    prepared = _each(items, check)
    ok = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
    device = device_of(model)
    hidden_specials = set(tokenizer.special_ids) - {tokenizer.mask_id}
    for group in _groups(len(ok)):
        members = ok[group]
        x, mask = _padded([prepared[i][0] for i in members], tokenizer.pad_id, device)
        hidden = model.hidden(x, mask, attention="bidirectional")
        rows = torch.tensor([r for r, i in enumerate(members) for _ in prepared[i][1]], device=device)
        cols = torch.tensor([p for i in members for p in prepared[i][1]], device=device)
        probs = _blank_probs(model, tokenizer, hidden[rows, cols])
        start = 0
        for i in members:
            ids, positions, top_k = prepared[i]
            results = []
            for row, pos in zip(probs[start:start + len(positions)], positions, strict=True):
                scores, top = row.topk(min(top_k, row.numel()))
                preds = []
                for score, tid in zip(scores.tolist(), top.tolist(), strict=True):
                    filled = [t for t in ids if t not in hidden_specials]  # as fill_mask: the other masks stay
                    filled[_nth_mask(ids, pos, hidden_specials)] = tid
                    preds.append(MaskPrediction(tokenizer.decode([tid]), tid, score,
                                                tokenizer.decode(filled, skip_special=False)))
                results.append(preds)
            start += len(positions)
            prepared[i] = results
    return prepared


# ----------------------------------------------------------------------------------------------- mask-predict


@torch.inference_mode()
def mask_predict_many(model: LanguageModel, tokenizer: Tokenizer, items: Sequence[tuple[str, int, int]]) -> list[Any]:
    """twinlm.masked.mask_predict(model, tokenizer, prompt, max_new_tokens, steps) for each item: every round
    predicts the still-masked blanks of all the prompts that have some in one forward pass."""

    def check(item: tuple[str, int, int]) -> tuple[list[int], list[int], int]:
        prompt, n_new, steps = item
        ids, blanks = mask_predict_frame(model, tokenizer, prompt, n_new, steps)
        return ids, blanks, steps

    prepared = _each(items, check)
    ok = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
    if not ok:
        return prepared
    device = device_of(model)
    x, mask = _padded([prepared[i][0] for i in ok], tokenizer.pad_id, device)
    blanks = [torch.tensor(prepared[i][1], device=device) for i in ok]
    remask = [_mask_predict_schedule(prepared[i][2]) for i in ok]
    masked = [torch.ones(len(b), dtype=torch.bool, device=device) for b in blanks]
    probs = [torch.zeros(len(b), device=device) for b in blanks]
    active, t = list(range(len(ok))), 0
    # twinlm.masked.iterative_unmask, row by row, with one forward pass per round for every row still masked.
    while active:
        for group in _groups(len(active)):
            rows = active[group]
            sub_mask = None if mask is None else mask[rows]
            if sub_mask is not None and bool(sub_mask.all()):
                sub_mask = None
            hidden = model.hidden(x[rows], sub_mask, attention="bidirectional")
            where = [blanks[r][masked[r]] for r in rows]
            picked = torch.cat([hidden[j, w] for j, w in enumerate(where)])
            p, tok = _blank_probs(model, tokenizer, picked).max(-1)
            start = 0
            for r, w in zip(rows, where, strict=True):
                n = len(w)
                x[r, w] = tok[start:start + n]
                probs[r][masked[r]] = p[start:start + n]
                masked[r] = remask[r](t, probs[r], masked[r])
                x[r, blanks[r][masked[r]]] = tokenizer.mask_id
                start += n
        active = [r for r in active if bool(masked[r].any())]
        t += 1
    for r, i in enumerate(ok):
        prompt = items[i][0]
        new = x[r, blanks[r]].tolist()
        prepared[i] = Generation(prompt, tokenizer.decode(new), new, "length", int(blanks[r][0]))
    return prepared


# ----------------------------------------------------------------------------------------------- scores


@torch.inference_mode()
def score_many(model: LanguageModel, tokenizer: Tokenizer, items: Sequence[tuple[str, str]]) -> list[Any]:
    """For each (text, paradigm): twinlm.scoring.perplexity(...).to_dict() for 'causal', pseudo_perplexity(...)
    for 'masked'. The windows (causal) and one-token-masked copies (masked) of all texts share forward passes."""

    def check(item: tuple[str, str]) -> list[int]:
        text, paradigm = item
        _check_paradigm(model, paradigm)
        return _encode(tokenizer, text)

    prepared = _each(items, check)
    causal = [i for i, p in enumerate(prepared) if not isinstance(p, Exception) and items[i][1] == "causal"]
    masked = [i for i, p in enumerate(prepared) if not isinstance(p, Exception) and items[i][1] != "causal"]
    logprobs: dict[int, torch.Tensor] = {}
    if causal:
        logprobs.update(_causal_logprobs(model, tokenizer, {i: prepared[i] for i in causal}))
    if masked:
        logprobs.update(_pseudo_logprobs(model, tokenizer, {i: prepared[i] for i in masked}))
    for i, lp in logprobs.items():
        text, ids = items[i][0], prepared[i]
        n_bytes = len(text.encode("utf-8"))
        if i in causal:  # twinlm.scoring.perplexity's arithmetic
            window, stride = _windowing(model, None, None)
            nll = -float(lp.sum())
            loss = nll / len(ids)
            prepared[i] = PerplexityResult(loss=loss, perplexity=math.exp(loss),
                                           bits_per_byte=nll / math.log(2) / n_bytes, tokens=len(ids),
                                           bytes=n_bytes, window=window, stride=stride).to_dict()
        else:  # twinlm.scoring.pseudo_perplexity's
            pll = float(lp.sum())
            prepared[i] = {"pll": pll, "pseudo_loss": -pll / len(ids), "pseudo_perplexity": math.exp(-pll / len(ids)),
                           "pseudo_bits_per_byte": -pll / math.log(2) / n_bytes, "tokens": len(ids),
                           "bytes": n_bytes}
    return prepared


def _causal_logprobs(model: LanguageModel, tokenizer: Tokenizer, texts: dict[int, list[int]]
                     ) -> dict[int, torch.Tensor]:
    """twinlm.scoring.causal_logprobs (default window and stride) for several texts: the windows of all of them
    go through common right-padded passes (right padding: a causal query never sees the padded keys after it)."""
    window, stride = _windowing(model, None, None)
    start = start_id(tokenizer)
    device = device_of(model)
    out = {i: torch.empty(len(ids), dtype=torch.float64) for i, ids in texts.items()}
    seqs = {i: [start, *ids] for i, ids in texts.items()}
    # One row per window: target chunk [a, b) of seq (a >= 1), predicted from seq[max(0, b - window):b].
    rows = [(i, a, min(a + stride, len(seq)), max(0, min(a + stride, len(seq)) - window))
            for i, seq in seqs.items() for a in range(1, len(seq), stride)]
    for group in _groups(len(rows)):
        part = rows[group]
        x, _ = _padded([seqs[i][s:b] for i, _a, b, s in part], 0, device)
        mask = torch.zeros_like(x)
        for r, (_i, _a, b, s) in enumerate(part):
            mask[r, :b - s] = 1
        hidden = model.hidden(x, mask, attention="causal")
        for r, (i, a, b, s) in enumerate(part):
            logits = model.head(hidden[r, a - 1 - s:b - 1 - s]).double()
            targets = torch.tensor(seqs[i][a:b], device=device)
            out[i][a - 1:b - 1] = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1).cpu()
    return out


def _pseudo_logprobs(model: LanguageModel, tokenizer: Tokenizer, texts: dict[int, list[int]]
                     ) -> dict[int, torch.Tensor]:
    """twinlm.scoring.pseudo_logprobs for several texts: the one-token-masked copies of all of them go through
    common passes of at most MAX_ROWS rows."""
    prefix, suffix = _frame(tokenizer)
    room = model.config.max_positions - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(f"max_positions={model.config.max_positions} leaves no room for text between the specials")
    device = device_of(model)
    out = {i: torch.empty(len(ids), dtype=torch.float64) for i, ids in texts.items()}
    # One row per scored token: (text, index of the token, the framed chunk, the position masked in it).
    rows = []
    for i, ids in texts.items():
        for c in range(0, len(ids), room):
            chunk = prefix + ids[c:c + room] + suffix
            rows += [(i, c + k, chunk, len(prefix) + k) for k in range(min(room, len(ids) - c))]
    for group in _groups(len(rows)):
        part = rows[group]
        x, mask = _padded([chunk for _, _, chunk, _ in part], tokenizer.pad_id, device)
        r = torch.arange(len(part), device=device)
        pos = torch.tensor([p for *_, p in part], device=device)
        truth = x[r, pos].clone()
        x[r, pos] = tokenizer.mask_id  # row r hides exactly one token
        hidden = model.hidden(x, mask, attention="bidirectional")[r, pos]
        picked = model.head(hidden).double().log_softmax(-1).gather(1, truth[:, None]).squeeze(1).cpu()
        for k, (i, index, _, _) in enumerate(part):
            out[i][index] = picked[k]
    return out
