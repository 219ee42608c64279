"""Task metrics: accuracy and macro-F1, SQuAD exact match / F1, entity-level NER precision / recall / F1.

The SQuAD normalisation and the IOB2 entity rules follow the official SQuAD v1.1 script and seqeval's default
(conlleval-style) IOB2 scheme; tests check both against hand-computed values and against seqeval itself.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of exact matches."""
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def macro_f1(predictions: Sequence, references: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean over labels of the per-label F1 (a label absent from both sides is skipped)."""
    labels = sorted(set(references) | set(predictions)) if labels is None else list(labels)
    scores = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
        fp = sum(p == label and r != label for p, r in zip(predictions, references, strict=True))
        fn = sum(p != label and r == label for p, r in zip(predictions, references, strict=True))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def classification_metrics(predictions: Sequence, references: Sequence) -> dict[str, float]:
    return {"accuracy": accuracy(predictions, references), "f1": macro_f1(predictions, references)}


# -- SQuAD ----------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, collapse white space (the official SQuAD rules)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 between normalised answers (both empty counts as a match, as for SQuAD v2)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """exact_match and f1 in percent, each the max over the gold answers, averaged over questions."""
    em = f1 = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        answers = answers or [""]
        em += max(squad_exact(pred, a) for a in answers)
        f1 += max(squad_f1(pred, a) for a in answers)
    n = max(len(golds), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# -- NER ------------------------------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end-inclusive) chunks of an IOB2 sequence, with seqeval's default (lenient) rules.

    A chunk starts at B-X, or at I-X that does not continue a chunk of type X; it ends before O, B-, or a change
    of type.
    """
    chunks, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = _split_tag(tag)
        ends = kind is not None and (prefix in ("O", "B") or t != kind)
        if ends:
            chunks.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = t, i
    return chunks


def entity_metrics(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exact entity matches (type and span), across all sentences."""
    tp = n_pred = n_gold = 0
    for pred, gold in zip(predictions, references, strict=True):
        p, g = entities(pred), entities(gold)
        tp += len(p & g)
        n_pred += len(p)
        n_gold += len(g)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
