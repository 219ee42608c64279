"""Task metrics: accuracy and macro-F1, SQuAD and CMRC 2018 exact match / F1, entity-level NER precision / recall / F1.

The SQuAD normalisation and the IOB2 entity rules follow the official SQuAD v1.1 script and seqeval's default
(conlleval-style) IOB2 scheme; the CMRC 2018 metric follows the official ``cmrc2018_evaluate.py``. Tests check them
against hand-computed values and the entity rules against seqeval itself.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence


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


def _best_over_references(predictions: dict[str, str], golds: dict[str, list[str]],
                          exact: Callable[[str, str], float], f1: Callable[[str, str], float]) -> tuple[float, float]:
    """(EM, F1) in percent: each question's best over its references, averaged over every question of ``golds``
    (a question without a prediction scores 0)."""
    em_sum = f1_sum = 0.0
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        answers = answers or [""]
        em_sum += max(exact(pred, a) for a in answers)
        f1_sum += max(f1(pred, a) for a in answers)
    n = max(len(golds), 1)
    return 100.0 * em_sum / n, 100.0 * f1_sum / n


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """exact_match and f1 in percent, each the max over the gold answers, averaged over questions."""
    em, f1 = _best_over_references(predictions, golds, squad_exact, squad_f1)
    return {"exact_match": em, "f1": f1}


# -- CMRC 2018 ------------------------------------------------------------------------------------------------
# The official script's punctuation list: a few ASCII marks and the common full-width ones. Its entry '……' is two
# characters, so it never equals the one character compared against it: '…' is not removed there, nor here.
# ASCII , . ? ! ( ) " are not in the list either, so they count, as in the official scores.
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_CMRC_HAN = re.compile(r"[\u4e00-\u9fa5]")  # the official script's range: each such character is one token
# A run of other characters is split the way nltk.word_tokenize splits English (the official script calls it):
# words and numbers whole (3.5 and 1,000 included), any other mark its own token. nltk itself is not a dependency;
# the rare differences (U.S., can't) change a token count inside an English run, never a Chinese character.
_CMRC_WORD = re.compile(r"\w+(?:(?<=\d)[.,](?=\d)\w+)*|\S")


def cmrc_segments(text: str, drop_punctuation: bool = False) -> list[str]:
    """The official "mixed segmentation": lower-cased, each Chinese character and each listed punctuation mark
    its own token, English words and numbers whole, white space dropped.

    With drop_punctuation (as the F1 uses it) listed marks are skipped without ending the run they sit in, so
    "abc-def" is the one token "abcdef", as in the official script.
    """
    out: list[str] = []
    run: list[str] = []
    for ch in text.lower().strip():
        if ch in CMRC_PUNCTUATION and drop_punctuation:
            continue
        if ch in CMRC_PUNCTUATION or _CMRC_HAN.match(ch):
            out.extend(_CMRC_WORD.findall("".join(run)))
            run.clear()
            out.append(ch)
        else:
            run.append(ch)
    out.extend(_CMRC_WORD.findall("".join(run)))
    return out


def cmrc_exact(prediction: str, gold: str) -> float:
    """1.0 when both are equal once lower-cased, stripped at the ends and cleared of the listed punctuation.

    As in the official script, white space inside the answers is kept: "10 秒" does not equal "10秒".
    """
    def clean(text: str) -> str:
        return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)
    return float(clean(prediction) == clean(gold))


def cmrc_f1(prediction: str, gold: str) -> float:
    """F1 from the longest common *contiguous* run of tokens (cmrc_segments without punctuation):
    precision = run / prediction tokens, recall = run / reference tokens; 0 when nothing is shared.

    An empty reference (never in CMRC's files, which have no unanswerable questions) matches only an empty
    prediction, as in squad_f1."""
    pred, ref = cmrc_segments(prediction, True), cmrc_segments(gold, True)
    if not ref:
        return float(not pred)
    # difflib without its junk heuristic finds the exact longest common substring of two token lists.
    common = difflib.SequenceMatcher(None, pred, ref, autojunk=False).find_longest_match(
        0, len(pred), 0, len(ref)).size
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def cmrc_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """cmrc_exact_match and cmrc_f1 in percent, each the best over the reference answers, averaged over every
    question of ``golds`` (one without a prediction scores 0, as the official script counts it)."""
    em, f1 = _best_over_references(predictions, golds, cmrc_exact, cmrc_f1)
    return {"cmrc_exact_match": em, "cmrc_f1": f1}


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
