"""Fair measures for masked and causal language models: cloze and next-word accuracy on held-out lines, the unigram
baseline both must beat, and the diversity of generated samples.

Loss is not comparable across paradigms (an MLM is scored on 15% masked tokens seeing both sides, a CLM on every
next token seeing the left), so a comparison needs tasks both can do. Here both models answer the same question,
"which word goes here?", by ranking the same candidate words:

- cloze: one word in the middle of a held-out sentence is hidden; the model sees the words on both sides;
- next word: the model sees only the words to the left of the hidden word.

How each paradigm ranks a candidate word ``w`` (of k tokens in context):

- masked: the sentence with the word replaced by k [MASK] tokens, framed like the MLM's training blocks
  ([CLS] ... [SEP]); score(w) = sum_i log P(token_i of w | the masked sentence), each mask predicted from one pass
  (the usual independent-mask approximation of the joint). For next word, the masks end the input:
  [CLS] left [MASK]*k [SEP].
- causal: cloze ranks by the log-likelihood of the whole sentence with ``w`` in the blank (from the same first
  token the scorers of :mod:`twinlm.scoring` start from); next word by log P(tokens of w | left).

Every candidate takes the answer's place between the answer's own context tokens, as the tokens it has between
the characters that touch the answer (for byte-level BPE " king" -> [Ġking] wherever a space precedes it), so the
sentence a causal model scores is prefix + candidate + suffix, the answer's being the real tokenization.

A candidate set is the same for every item and every model: the given ``candidates`` (by default the items' own
answers, see :func:`candidate_words`), plus the item's answer where missing. The answer's rank counts the candidates
scoring at least as high, so ties count against it and a model that scores everything alike gets top-1 = 0.
:func:`unigram_baseline` ranks the same way by training frequency, the bar a model must clear to show that it
reads the context at all.

The log-likelihoods are the ones :func:`twinlm.scoring.score` computes, batched over candidates here (a test keeps
the two equal).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cjk import ALL_SUPPLEMENTARY, CJK_PUNCTUATION, FULL_WIDTH, IDEOGRAPHS, KANA
from .errors import ConfigError
from .model import device_of
from .scoring import start_id

BLANK = "[MASK]"
PARADIGMS = ("masked", "causal")
_WORD = re.compile(r"([^\W\d_]+)([^\w\s]*)")  # letters, then only punctuation up to the next whitespace
# Chinese (and Japanese kana) is written without spaces, so each ideograph is a word of its own here, as it is a token
# of Chinese BERT; every other word runs from whitespace (or an ideograph) to whitespace (or an ideograph).
_IDEOGRAPHS = KANA + IDEOGRAPHS + ALL_SUPPLEMENTARY
_CJK_PUNCT = CJK_PUNCTUATION + FULL_WIDTH  # 。，、「」 and the full-width forms: punctuation between ideographs
_UNIT = re.compile(f"[{_IDEOGRAPHS}]|[{_CJK_PUNCT}]+|[^\\s{_IDEOGRAPHS}{_CJK_PUNCT}]+")


@dataclass
class ClozeItem:
    """One held-out sentence with one word hidden: ``left + answer + right`` is the sentence."""

    text_with_blank: str  # left + "[MASK]" + right
    answer: str
    left: str  # everything before the answer, the whitespace before it included
    right: str  # everything after the answer (punctuation attached to the word included)

    @property
    def text(self) -> str:
        return self.left + self.answer + self.right


# ------------------------------------------------------------------------------------------------ words and items


def units(text: str) -> list[tuple[str, int]]:
    """(unit, start offset) of each word-like unit of ``text``: one ideograph, a run of Chinese punctuation, or a
    run of anything else up to whitespace, an ideograph or Chinese punctuation ("king," and "，" are units; "很好"
    is two)."""
    return [(m.group(), m.start()) for m in _UNIT.finditer(text)]


def first_units(text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th unit, as written (no spaces added between Chinese characters)."""
    found = units(text)[:n]
    return text[:found[-1][1] + len(found[-1][0])] if found else ""


def _words(line: str) -> list[tuple[str, int]]:
    """(word, start offset) of each unit of ``line`` that is letters (an ideograph counts), maybe followed by
    punctuation."""
    out = []
    for unit, start in units(line):
        w = _WORD.fullmatch(unit)
        if w:
            out.append((w.group(1), start))
    return out


def word_counts(lines: Sequence[str]) -> Counter:
    """How often each word (letters, case kept, trailing punctuation dropped) occurs in ``lines``."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(w for w, _ in _words(line))
    return counts


def cloze_items(lines: list[str], n: int, seed: int = 0, min_words: int = 6) -> list[ClozeItem]:
    """Up to ``n`` items from distinct lines: each hides one word of letters that is not the line's first word.

    Lines are stripped; a line needs at least ``min_words`` units (:func:`units`: whitespace words, and each Chinese
    character on its own, so Chinese items hide one character). Lines and words are drawn with
    ``random.Random(seed)``; items keep the order of ``lines``. Trailing punctuation stays in ``right``
    ("king," hides "king"); words with anything else in them ("king's", "o'er") are never hidden.
    """
    if n < 1:
        raise ConfigError(f"n must be a positive number of items, got {n}")
    eligible = []
    for line in lines:
        text = line.strip()
        if len(units(text)) < min_words:
            continue
        spots = [(w, s) for w, s in _words(text) if s > 0]
        if spots:
            eligible.append((text, spots))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(eligible)), min(n, len(eligible))))
    items = []
    for i in chosen:
        text, spots = eligible[i]
        word, start = spots[rng.randrange(len(spots))]
        left, right = text[:start], text[start + len(word):]
        items.append(ClozeItem(left + BLANK + right, word, left, right))
    return items


def candidate_words(items: Sequence[ClozeItem], train_lines: Sequence[str] | None = None, k: int = 100) -> list[str]:
    """The shared candidate set: every item's answer plus the ``k`` most frequent words of ``train_lines``.

    Ordered by training frequency (then by how often it answers an item), so the list reads most-common first.
    """
    train = word_counts(train_lines) if train_lines is not None else Counter()
    answers = Counter(item.answer for item in items)
    words = {w for w, _ in train.most_common(k)} | set(answers)
    return sorted(words, key=lambda w: (-train[w], -answers[w], w))


def _candidates_for(item: ClozeItem, candidates: Sequence[str]) -> list[str]:
    """The shared candidates, once each, with the item's answer first (it is kept where the set lacks it)."""
    return [item.answer, *dict.fromkeys(c for c in candidates if c != item.answer)]


def _rank(scores: Sequence[float]) -> int:
    """0-based rank of scores[0] (the answer): how many others score at least as high (ties count against it)."""
    return sum(1 for s in scores[1:] if s >= scores[0])


def _accuracy(ranks: list[int], top: tuple[int, ...], paradigm: str, n_candidates: int) -> dict[str, Any]:
    out: dict[str, Any] = {f"top{k}": (sum(r < k for r in ranks) / len(ranks) if ranks else 0.0) for k in top}
    out.update(n=len(ranks), paradigm=paradigm, candidates=n_candidates)
    return out


# ------------------------------------------------------------------------------------------------ model scoring


def _paradigm(model: Any, paradigm: str | None) -> str:
    from .config import require

    if paradigm is None:
        return "masked" if "masked" in model.config.paradigms else "causal"
    if paradigm not in PARADIGMS:
        raise ConfigError(f"paradigm must be one of {', '.join(PARADIGMS)}, got {paradigm!r}")
    require(model, paradigm, f"{paradigm} cloze / next-word scoring")
    return paradigm


def _encode_span(tokenizer: Any, left: str, word: str, right: str) -> tuple[list[int], int, int]:
    """Ids of left + word + right and the [start, end) token span of ``word`` (tokens overlapping its characters)."""
    enc = tokenizer.hf.encode(left + word + right, add_special_tokens=False)
    a, b = len(left), len(left) + len(word)
    inside = [i for i, (s, e) in enumerate(enc.offsets) if s < b and e > a]
    if not inside:
        raise ConfigError(f"the word {word!r} has no tokens of its own in {left + word + right!r}")
    return list(enc.ids), inside[0], inside[-1] + 1


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, device=device)
        mask[i, :len(r)] = 1
    return x, mask


@torch.inference_mode()
def _causal_scores(model: Any, prefix: list[int], continuations: list[list[int]],
                   batch_size: int = 256) -> list[float]:
    """log P(continuation | prefix) = sum_t log P(c_t | prefix, c_<t) for each continuation (prefix[0]: the start).

    The prefix runs once; its keys and values are shared by every continuation (a KV cache, expanded over the
    batch), so ranking a hundred candidates costs their own tokens only.
    """
    device = device_of(model)
    limit = model.config.max_positions
    longest = max(len(c) for c in continuations)
    if len(prefix) + longest > limit:  # drop the oldest context (after the start token) until it fits
        keep = max(limit - longest - 1, 0)
        prefix = [prefix[0], *(prefix[len(prefix) - keep:] if keep else [])]
        continuations = [c[:limit - len(prefix)] for c in continuations]
    hidden, past = model.backbone(torch.tensor([prefix], device=device), attention="causal")
    first = model.head(hidden[0, -1]).float().log_softmax(-1)  # the distribution of every continuation's 1st token
    out: list[float] = []
    for i in range(0, len(continuations), batch_size):
        chunk = continuations[i:i + batch_size]
        x, _ = _pad(chunk, 0, device)  # right padding: a causal query never sees the padded keys after it
        shared = [(k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1)) for k, v in past]
        logp = None
        if x.size(1) > 1:
            h, _ = model.backbone(x[:, :-1], attention="causal", past=shared)
            logits = model.head(h).float()
            logp = logits.gather(2, x[:, 1:, None]).squeeze(2) - logits.logsumexp(-1)
        for r, c in enumerate(chunk):
            total = float(first[c[0]])
            if logp is not None:
                total += float(logp[r, :len(c) - 1].double().sum())
            out.append(total)
    return out


@torch.inference_mode()
def _masked_scores(model: Any, tokenizer: Any, prefix: list[int], suffix: list[int],
                   words: list[list[int]]) -> list[float]:
    """sum_i log P(words[j][i] | [CLS] prefix [MASK]*k suffix [SEP]) per word j (k = its length), one pass per k."""
    device = device_of(model)
    lengths = sorted({len(w) for w in words})
    room = model.config.max_positions - 2 - max(lengths)
    if len(prefix) + len(suffix) > room:  # too long for the model: keep the context nearest the blank
        suffix = suffix[:max(room - len(prefix), room // 2)]
        keep = max(room - len(suffix), 0)
        prefix = prefix[len(prefix) - keep:] if keep else []
    rows = [[tokenizer.cls_id, *prefix, *[tokenizer.mask_id] * k, *suffix, tokenizer.sep_id] for k in lengths]
    x, mask = _pad(rows, tokenizer.pad_id, device)
    logits = model.head(model.hidden(x, mask, attention="bidirectional")[:, 1 + len(prefix):1 + len(prefix)
                                                                          + max(lengths)])
    logp = logits.float().log_softmax(-1)
    by_k = {k: logp[r] for r, k in enumerate(lengths)}
    return [float(by_k[len(w)][torch.arange(len(w)), torch.tensor(w)].double().sum()) for w in words]


class _WordTokens:
    """Token ids of a word as it reads between two given characters, cached: a candidate's tokens depend only on
    what touches it (byte-level BPE: " king" -> [Ġking]), so each (before, word, after) is encoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[tuple[str, str, str], list[int]] = {}

    def __call__(self, before: str, word: str, after: str) -> list[int]:
        key = (before, word, after)
        if key not in self.cache:
            ids, s, e = _encode_span(self.tokenizer, before, word, after)
            self.cache[key] = ids[s:e]
        return self.cache[key]


def _rank_item(model: Any, tokenizer: Any, item: ClozeItem, cands: list[str], paradigm: str, job: str,
               words: _WordTokens) -> int:
    """The answer's rank (cands[0]) among ``cands`` for one item; every candidate sits between the answer's own
    prefix and suffix tokens."""
    ids, s, e = _encode_span(tokenizer, item.left, item.answer, item.right)
    prefix, suffix = ids[:s], (ids[e:] if job == "cloze" else [])
    toks = [words(item.left[-1:], w, item.right[:1] if job == "cloze" else "") for w in cands]
    if paradigm == "masked":
        scores = _masked_scores(model, tokenizer, prefix, suffix, toks)
    else:
        scores = _causal_scores(model, [start_id(tokenizer), *prefix], [[*t, *suffix] for t in toks])
    return _rank(scores)


def cloze_accuracy(model: Any, tokenizer: Any, items: Sequence[ClozeItem], candidates: list[str] | None = None,
                   top: tuple[int, ...] = (1, 5), paradigm: str | None = None) -> dict[str, Any]:
    """Share of items whose hidden word ranks within the top k of the candidates, the words on both sides in view.

    paradigm: 'masked' (fill the blank, see the module notes) or 'causal' (rank by the whole sentence's
    log-likelihood); by default masked when the model can, so a hybrid is scored as a masked model unless asked.
    candidates: the shared set (default: every item's answer). Returns {"top1", "top5" (one per ``top``), "n",
    "paradigm", "candidates"}.
    """
    return _job_accuracy(model, tokenizer, items, candidates, top, _paradigm(model, paradigm), "cloze")


def next_word_accuracy(model: Any, tokenizer: Any, items_or_lines: Sequence[ClozeItem] | Sequence[str],
                       top: tuple[int, ...] = (1, 5), candidates: list[str] | None = None,
                       paradigm: str | None = None) -> dict[str, Any]:
    """Share of items whose hidden word ranks within the top k of the candidates given only the words to its left.

    causal: log P(the word's tokens | left); masked: [CLS] left [MASK]*k [SEP], the masks scored as in the cloze.
    Lines (strings) become items with ``cloze_items(lines, len(lines))``. paradigm defaults to 'causal' when the
    model can do it (a hybrid predicts the next word causally unless asked), else 'masked'. Same return keys as
    :func:`cloze_accuracy`.
    """
    if all(isinstance(x, str) for x in items_or_lines):
        items = cloze_items(list(items_or_lines), max(len(items_or_lines), 1))  # type: ignore[arg-type]
    else:
        items = list(items_or_lines)  # type: ignore[arg-type]
    if paradigm is None:
        paradigm = "causal" if "causal" in model.config.paradigms else "masked"
    return _job_accuracy(model, tokenizer, items, candidates, top, _paradigm(model, paradigm), "next")


def _job_accuracy(model: Any, tokenizer: Any, items: Sequence[ClozeItem], candidates: list[str] | None,
                  top: tuple[int, ...], paradigm: str, job: str) -> dict[str, Any]:
    """Rank every item's candidates for ``job`` ('cloze' or 'next') in eval mode and count the hits."""
    cands = list(dict.fromkeys(candidates if candidates is not None else candidate_words(items)))
    was_training = model.training
    model.eval()
    try:
        words = _WordTokens(tokenizer)
        ranks = [_rank_item(model, tokenizer, it, _candidates_for(it, cands), paradigm, job, words) for it in items]
    finally:
        model.train(was_training)
    return _accuracy(ranks, top, paradigm, len(cands))


def unigram_baseline(train_lines: list[str], items: Sequence[ClozeItem], top: tuple[int, ...] = (1, 5),
                     candidates: list[str] | None = None) -> dict[str, Any]:
    """Accuracy of always guessing the most frequent training words, whatever the context.

    top-k is the share of items whose answer is among the k most frequent words of ``train_lines`` (words as in
    :func:`word_counts`). With ``candidates`` the ranking is among those (plus each answer) as the models rank
    them, ties against the answer; that equals the plain version whenever the candidates hold the k most
    frequent training words. paradigm is "unigram".
    """
    counts = word_counts(train_lines)
    if candidates is None:
        ranked = [w for w, _ in counts.most_common()]
        ranks = [sum(1 for w in ranked if counts[w] >= counts[it.answer] and w != it.answer) if counts[it.answer]
                 else len(ranked) for it in items]
        return _accuracy(ranks, top, "unigram", len(ranked))
    cands = list(dict.fromkeys(candidates))
    ranks = [_rank([counts[w] for w in _candidates_for(it, cands)]) for it in items]
    return _accuracy(ranks, top, "unigram", len(cands))


# ------------------------------------------------------------------------------------------------ generated text


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = [u for u, _ in units(text)]
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams of :func:`units` over all n-grams, pooled over ``texts`` (0 if none).

    Units are whitespace words, and Chinese characters one by one (the usual character n-grams for Chinese)."""
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: list[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text (a sample looping on itself), pooled.

    sum_t (n-grams of t - distinct n-grams of t) / sum_t n-grams of t; 0 when no text has n words.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    total = repeated = 0
    for t in texts:
        grams = _ngrams(t, n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


# ------------------------------------------------------------------------------------------------ held-out text


def corpus_lines(data_dir: str | Path, split: str = "val", tokenizer: Any = None) -> list[str]:
    """The text lines of a prepared corpus split, decoded from its shard (the one reader of held-out text).

    Documents are cut at the separator token, so no line spans two documents; blank lines are dropped.
    """
    import numpy as np

    from .data.corpus import TokenShard
    from .tokenizer import load_tokenizer

    tokenizer = tokenizer or load_tokenizer(data_dir)
    tokens = np.asarray(TokenShard(data_dir, split).tokens)
    cuts = np.flatnonzero(tokens == tokenizer.sep_id)
    docs = np.split(tokens, cuts + 1)
    texts = tokenizer.decode_batch([d.tolist() for d in docs if len(d)])
    return [line for text in texts for line in text.splitlines() if line.strip()]
