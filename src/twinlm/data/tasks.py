"""Readers and featurisers for the understanding tasks: classification, extractive QA (SQuAD) and NER (CoNLL).

Readers give clear errors (file:line and what is wrong). Featurisers turn examples into token ids with the labels
the heads need: QA contexts longer than the window are split into overlapping windows whose answers are mapped to
token spans through the tokenizer's character offsets; NER labels sit on the first sub-token of each word.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cjk import ALL_SUPPLEMENTARY, IDEOGRAPHS
from ..errors import ConfigError, DataError

IGNORE = -100


# -- classification -------------------------------------------------------------------------------------------
@dataclass
class ClassExample:
    text: str
    pair: str | None
    label: Any  # str for single/multi-label, float for regression, None when unlabelled
    line: int
    source: str = ""  # the file, for error messages


def _rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a TSV/CSV (header required) or JSONL file, with their 1-based line numbers."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    rows, lines = [], []
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the data
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                        if not isinstance(row, dict):
                            raise DataError(f"{path}:{n}: expected a JSON object per line")
                        rows.append(row)
                        lines.append(n)
        elif suffix in (".tsv", ".csv"):
            with path.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE
                                        if suffix == ".tsv" else csv.QUOTE_MINIMAL)
                for row in reader:
                    rows.append(row)
                    lines.append(reader.line_num)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .tsv, .csv or .jsonl")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}; re-encode the file as UTF-8") from None
    except csv.Error as exc:  # a field over csv's size limit: usually a quote that is never closed
        raise DataError(f"{path}:{reader.line_num}: {exc}; check the quoting of this line") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, lines


def read_classification(path: str | Path, text_column: str | None = None, label_column: str = "label",
                        pair_column: str | None = None, problem: str = "single_label",
                        max_rows: int | None = None) -> list[ClassExample]:
    """Examples from a TSV/CSV with a header, or JSONL. text_column None: 'text' or 'sentence', whichever exists."""
    path = Path(path)
    rows, lines = _rows(path)
    columns = [c for c in rows[0] if isinstance(c, str)]  # csv puts cells beyond the header under None
    shown = ", ".join(c if c.isprintable() else repr(c) for c in columns)  # a name with a line break stays one line
    if text_column is None:
        text_column = next((c for c in ("text", "sentence") if c in columns), None)
        if text_column is None:
            raise DataError(f"{path}: no 'text' or 'sentence' column (columns: {shown}); "
                            f"pass --text-column")
    for needed in (text_column, pair_column):
        if needed and needed not in columns:
            raise DataError(f"{path}: no column {needed!r} (columns: {shown})")
    out = []
    for row, n in zip(rows[:max_rows] if max_rows else rows, lines, strict=False):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{n}: empty text in column {text_column!r}")
        pair = row.get(pair_column) if pair_column else None
        if pair_column and (not isinstance(pair, str) or not pair.strip()):
            raise DataError(f"{path}:{n}: empty text in column {pair_column!r}")
        label = row.get(label_column)
        if label is not None and problem == "regression":
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise DataError(f"{path}:{n}: label {label!r} is not a number (regression)") from None
        elif label is not None:
            label = str(label).strip()
        out.append(ClassExample(text.strip(), pair.strip() if pair else None, label, n, str(path)))
    return out


def label_list(examples: list[ClassExample], problem: str) -> list[str]:
    """The sorted label vocabulary of a training set (multi-label: comma-separated labels)."""
    if problem == "regression":
        return ["score"]
    labels: set[str] = set()
    for ex in examples:
        if ex.label is None or ex.label == "":
            raise DataError(f"{ex.source}:{ex.line}: no label" if ex.source else f"line {ex.line}: no label")
        labels.update(ex.label.split(",") if problem == "multi_label" else [ex.label])
    return sorted(labels, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))


TRUNCATION = ("head", "head-tail")
HEAD_SHARE = 0.25  # head-tail keeps the first quarter of the room and the last three quarters (Sun et al., 2019,
# "How to Fine-Tune BERT for Text Classification?": 128 head + 382 tail tokens of 510 was best on long reviews)


def cut_tokens(ids: list[int], n: int, how: str = "head") -> list[int]:
    """At most ``n`` of ``ids``: the first n (head), or the first quarter and the last three quarters (head-tail)."""
    if len(ids) <= n:
        return ids
    if how not in TRUNCATION:
        raise ConfigError(f"--truncation {how!r} is unknown; choose one of {', '.join(TRUNCATION)}")
    if how == "head":
        return ids[:n]
    head = int(n * HEAD_SHARE)
    return ids[:head] + ids[len(ids) - (n - head):]


def encode_pair(tokenizer: Any, text: str, pair: str | None, max_len: int,
                truncation: str = "head") -> tuple[list[int], list[int]]:
    """[CLS] text [SEP] (pair [SEP]) cut longest-first to max_len; returns (ids, token type ids).

    ``truncation`` says which tokens an over-long segment keeps (see cut_tokens)."""
    a = tokenizer.hf.encode(text, add_special_tokens=False).ids
    b = tokenizer.hf.encode(pair, add_special_tokens=False).ids if pair else []
    budget = max_len - (3 if pair else 2)
    la, lb = len(a), len(b)
    while la + lb > budget:  # longest first: shorten whichever segment is longer, one token at a time
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    a, b = cut_tokens(a, la, truncation), cut_tokens(b, lb, truncation)
    ids = [tokenizer.cls_id, *a, tokenizer.sep_id]
    types = [0] * len(ids)
    if pair:
        ids += [*b, tokenizer.sep_id]
        types += [1] * (len(b) + 1)
    return ids, types


def featurize_classification(examples: list[ClassExample], tokenizer: Any, labels: list[str], problem: str,
                             max_len: int, source: str = "", truncation: str = "head") -> list[dict[str, Any]]:
    """Token ids and label targets; an eval label not seen in training is an error naming it and its line."""
    index = {label: i for i, label in enumerate(labels)}
    feats = []
    for ex in examples:
        ids, types = encode_pair(tokenizer, ex.text, ex.pair, max_len, truncation)
        feat: dict[str, Any] = {"input_ids": ids, "token_type_ids": types}
        if ex.label is not None and ex.label != "":
            if problem == "regression":
                feat["labels"] = float(ex.label)
            else:
                names = ex.label.split(",") if problem == "multi_label" else [ex.label]
                unknown = [x for x in names if x not in index]
                if unknown:
                    raise DataError(f"{source}:{ex.line}: label {unknown[0]!r} was not in the training labels "
                                    f"({', '.join(labels)})")
                if problem == "multi_label":
                    feat["labels"] = [1.0 if x in names else 0.0 for x in labels]
                else:
                    feat["labels"] = index[ex.label]
        feats.append(feat)
    return feats


# -- SQuAD ----------------------------------------------------------------------------------------------------
@dataclass
class QAExample:
    qid: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)  # every reference answer (all of them are scored against)
    starts: list[int] = field(default_factory=list)  # character offset of each in context; -1: not in it
    impossible: bool = False


def _nearest(context: str, text: str, start: int) -> int:
    """The occurrence of text in context closest to start, or -1 when there is none."""
    found, i = [], context.find(text)
    while i >= 0:
        found.append(i)
        i = context.find(text, i + 1)
    return min(found, key=lambda j: abs(j - start)) if found else -1


# Han ideographs (with extension A, compatibility ideographs and the supplementary planes), kana, CJK symbols
# and punctuation, full-width forms, and general punctuation such as “ ” … —: text written without spaces between
# words, where each character is one word (BERT's Chinese handling; MSRA NER has one character a line).
_CJK = ("\u2010-\u2027\u2030-\u205e\u3001-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
        "\U00020000-\U0002fa1f")
_HAN = re.compile(f"[{IDEOGRAPHS}{ALL_SUPPLEMENTARY}]")
_WORDS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_WORDS_CJK = re.compile(f"[{_CJK}]")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of raw text: each CJK character or full-width mark alone, any other run of
    non-space characters whole ("在Nexon公司。" -> 在, Nexon, 公, 司, 。; English splits on white space)."""
    return [m.span() for m in _WORDS.finditer(text)]


def han_fraction(texts: list[str]) -> float:
    """Share of Han characters among the non-space characters of texts (0.0 when there are none)."""
    total = han = 0
    for text in texts:
        total += sum(not ch.isspace() for ch in text)
        han += len(_HAN.findall(text))
    return han / total if total else 0.0


def _check_squad_types(data: dict, path: Path) -> None:
    """Raise DataError naming the first part of a SQuAD file whose JSON type is wrong (a list where an object
    belongs, a number for a question...), so the reader below only meets the layout it expects."""
    def need(value: Any, kind: type | tuple, where: str, what: str) -> None:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise DataError(f"{path}: {where} is {type(value).__name__}, expected {what} (the SQuAD layout)")

    need(data["data"], list, "data", "a list of articles")
    for a, article in enumerate(data["data"]):
        need(article, dict, f"data[{a}]", "an object")
        need(article.get("paragraphs", []), list, f"data[{a}].paragraphs", "a list")
        for p, para in enumerate(article.get("paragraphs", [])):
            need(para, dict, f"data[{a}].paragraphs[{p}]", "an object")
            need(para.get("qas", []), list, f"data[{a}].paragraphs[{p}].qas", "a list")
            for q, qa in enumerate(para.get("qas", [])):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                need(qa, dict, where, "an object")
                need(qa.get("question", ""), str, f"{where}.question", "text")
                need(qa.get("id", ""), (str, int), f"{where}.id", "text")
                need(qa.get("answers", []), list, f"{where}.answers", "a list")
                for i, ans in enumerate(qa.get("answers", [])):
                    need(ans, dict, f"{where}.answers[{i}]", "an object")
                    need(ans.get("text", ""), str, f"{where}.answers[{i}].text", "text")
                    need(ans.get("answer_start", -1), int, f"{where}.answers[{i}].answer_start", "a whole number")


def read_squad(path: str | Path) -> list[QAExample]:
    """SQuAD v1.1 / v2.0 JSON (CMRC 2018's SQuAD-style files too).

    An answer whose text is not at its answer_start (CMRC's trial file has some one character off) moves to the
    nearest occurrence of its text; one whose text is nowhere in the context (a few free-form CMRC dev references,
    answer_start -1) keeps start -1: scored against, never trained on. Each case is one counted warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: tolerate a byte-order mark
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid SQuAD JSON ({exc})") from None
    if not isinstance(data, dict) or "data" not in data:
        raise DataError(f"{path}: no top-level 'data' list; expected the SQuAD layout {{version, data}}")
    _check_squad_types(data, path)
    out: list[QAExample] = []
    moved = absent = 0
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' text")
            for qa in para.get("qas", []):
                if "question" not in qa or "id" not in qa:
                    raise DataError(f"{path}: data[{a}].paragraphs[{p}] has a question without 'question' or 'id'")
                ex = QAExample(str(qa["id"]), qa["question"], context, impossible=bool(qa.get("is_impossible")))
                for ans in qa.get("answers", []):
                    text, start = ans.get("text", ""), int(ans.get("answer_start", -1))
                    if not text:
                        continue
                    if start < 0 or context[start:start + len(text)] != text:
                        start = _nearest(context, text, start)
                        moved += start >= 0
                        absent += start < 0
                    ex.answers.append(text)
                    ex.starts.append(start)
                out.append(ex)
    if moved:
        warnings.warn(f"{path}: {moved} answer(s) are not at their answer_start; the nearest occurrence of their "
                      "text in the context is used", stacklevel=2)
    if absent:
        warnings.warn(f"{path}: {absent} answer(s) do not occur in their context; they count as reference "
                      "answers when scoring, never as training spans", stacklevel=2)
    if not out:
        raise DataError(f"{path}: no questions found")
    return out


def featurize_qa(examples: list[QAExample], tokenizer: Any, max_len: int = 384, doc_stride: int = 128,
                 max_question_len: int = 64, train: bool = True) -> list[dict[str, Any]]:
    """Overlapping windows [CLS] question [SEP] context-window [SEP] with answer token spans.

    Windows whose context does not contain the answer point at position 0 ([CLS]): "no answer here".
    Each feature keeps ``example`` (its index) and ``offsets`` (char span per token, None outside the context).
    """
    feats = []
    for e_idx, ex in enumerate(examples):
        q = tokenizer.hf.encode(ex.question, add_special_tokens=False).ids[:max_question_len]
        enc = tokenizer.hf.encode(ex.context, add_special_tokens=False)
        ctx_ids, ctx_offsets = enc.ids, enc.offsets
        room = max_len - len(q) - 3
        if room < 8:
            raise DataError(f"--max-seq-len {max_len} leaves no room for the context after the question")
        stride = min(doc_stride, room)
        starts = list(range(0, max(len(ctx_ids) - room, 0) + 1, stride))
        if starts[-1] + room < len(ctx_ids):
            starts.append(len(ctx_ids) - room)
        for w in starts:
            window = ctx_ids[w:w + room]
            ids = [tokenizer.cls_id, *q, tokenizer.sep_id, *window, tokenizer.sep_id]
            first = len(q) + 2
            offsets = [None] * first + [tuple(o) for o in ctx_offsets[w:w + room]] + [None]
            feat: dict[str, Any] = {
                "input_ids": ids, "token_type_ids": [0] * first + [1] * (len(window) + 1),
                "example": e_idx, "offsets": offsets,
            }
            if train:
                s_tok = e_tok = 0
                located = [(a, st) for a, st in zip(ex.answers, ex.starts, strict=True) if st >= 0]
                if located:  # the first reference found in the context is the training span
                    text, a_start = located[0]
                    # white space at an answer's ends (CMRC has some) is in no token: the span is the text inside
                    a_end = a_start + len(text.rstrip())
                    a_start += len(text) - len(text.lstrip())
                    inside = [i for i in range(first, first + len(window))
                              if offsets[i][0] < a_end and offsets[i][1] > a_start]
                    if inside and offsets[inside[0]][0] <= a_start and offsets[inside[-1]][1] >= a_end:
                        s_tok, e_tok = inside[0], inside[-1]
                feat["start_positions"], feat["end_positions"] = s_tok, e_tok
            feats.append(feat)
    return feats


def best_spans(features: list[dict[str, Any]], start_logits: torch.Tensor, end_logits: torch.Tensor,
               examples: list[QAExample], max_answer_len: int = 30, n_best: int = 20,
               allow_impossible: bool = False) -> dict[str, dict[str, Any]]:
    """Per question id: the best valid span over all its windows, mapped back to the context by char offsets.

    Valid: start <= end, length <= max_answer_len tokens, both inside the context. With allow_impossible (SQuAD
    v2) the empty answer wins when the [CLS] score beats every span.
    """
    best: dict[int, dict[str, Any]] = {}
    null: dict[int, float] = {}
    for f_idx, feat in enumerate(features):
        e_idx, offsets = feat["example"], feat["offsets"]
        s, e = start_logits[f_idx], end_logits[f_idx]
        n = len(feat["input_ids"])
        null_score = float(s[0] + e[0])
        null[e_idx] = min(null.get(e_idx, null_score), null_score)
        top_s = torch.topk(s[:n], min(n_best, n)).indices.tolist()
        top_e = torch.topk(e[:n], min(n_best, n)).indices.tolist()
        for i in top_s:
            for j in top_e:
                if offsets[i] is None or offsets[j] is None or j < i or j - i + 1 > max_answer_len:
                    continue
                score = float(s[i] + e[j])
                if e_idx not in best or score > best[e_idx]["score"]:
                    ctx = examples[e_idx].context
                    start, end = offsets[i][0], offsets[j][1]
                    best[e_idx] = {"answer": ctx[start:end], "start": start, "end": end, "score": score}
    out = {}
    for e_idx, ex in enumerate(examples):
        pick = best.get(e_idx, {"answer": "", "start": -1, "end": -1, "score": float("-inf")})
        if allow_impossible and null.get(e_idx, float("-inf")) > pick["score"]:
            pick = {"answer": "", "start": -1, "end": -1, "score": null[e_idx]}
        out[ex.qid] = pick
    return out


# -- NER ------------------------------------------------------------------------------------------------------
@dataclass
class NERExample:
    words: list[str]
    tags: list[str]
    line: int


def read_conll(path: str | Path, max_rows: int | None = None) -> list[NERExample]:
    """CoNLL columns (whitespace or tab), the tag in the last column, a blank line between sentences."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out: list[NERExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 1
    try:
        with path.open(encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first word
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if line.startswith("-DOCSTART-"):
                    continue
                if not line:
                    if words:
                        out.append(NERExample(words, tags, start))
                        words, tags = [], []
                        if max_rows and len(out) >= max_rows:
                            return out
                    start = n + 1
                    continue
                cols = line.split()
                if len(cols) < 2:
                    raise DataError(f"{path}:{n}: expected 'word ... TAG' columns, got {line!r}")
                tag = cols[-1]
                if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                    raise DataError(f"{path}:{n}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
                if not words:
                    start = n
                words.append(cols[0])
                tags.append(tag)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}") from None
    if words:
        out.append(NERExample(words, tags, start))
    if not out:
        raise DataError(f"{path}: no sentences found")
    return out


def ner_labels(examples: list[NERExample]) -> list[str]:
    """'O' first, then B-/I- tags sorted by type."""
    tags = {t for ex in examples for t in ex.tags} - {"O"}
    return ["O", *sorted(tags, key=lambda t: (t[2:], t[:1]))]


def ner_words(tokenizer: Any, words: list[str]) -> list[str]:
    """The words as the tokenizer should see them one at a time: a BPE vocabulary marks a word start by its leading
    space (byte-level 'Ġ', SentencePiece '▁'), so every word after the first gets one back; without it each word is
    encoded as if it began the text, into word-internal pieces ('G' 'er' 'man' for 'ĠGerman') that pretraining
    rarely saw. The pieces then match the running text ``' '.join(words)``. Chinese is written without spaces:
    a word that is a CJK character, or follows one, gets none."""
    if getattr(tokenizer, "kind", None) != "bpe" or not words:
        return words
    cjk = [bool(_WORDS_CJK.match(w)) for w in words]
    return [words[0], *((w if cjk[i] or cjk[i - 1] else " " + w) for i, w in enumerate(words) if i > 0)]


def featurize_ner(examples: list[NERExample], tokenizer: Any, labels: list[str], max_len: int,
                  source: str = "") -> list[dict[str, Any]]:
    """Sub-tokens of each word; the word's tag on its first sub-token, -100 on the others and on specials."""
    index = {t: i for i, t in enumerate(labels)}
    feats = []
    for ex in examples:
        enc = tokenizer.hf.encode(ner_words(tokenizer, ex.words), is_pretokenized=True, add_special_tokens=False)
        ids, word_ids = enc.ids[:max_len - 2], enc.word_ids[:max_len - 2]
        tag_ids = []
        previous = None
        for w in word_ids:
            if w is None or w == previous:
                tag_ids.append(IGNORE)
            else:
                tag = ex.tags[w]
                if tag not in index:
                    raise DataError(f"{source}:{ex.line}: tag {tag!r} was not in the training tags")
                tag_ids.append(index[tag])
            previous = w
        feats.append({
            "input_ids": [tokenizer.cls_id, *ids, tokenizer.sep_id],
            "labels": [IGNORE, *tag_ids, IGNORE],
            "word_ids": [None, *word_ids, None],
            "n_words": len(ex.words),
        })
    return feats


# -- batching -------------------------------------------------------------------------------------------------
TENSOR_KEYS = ("input_ids", "token_type_ids", "labels", "start_positions", "end_positions")


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of features into tensors (input_ids, attention_mask, token_type_ids, labels, ...)."""
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, :len(f["input_ids"])] = 1
    batch["input_ids"], batch["attention_mask"] = ids, mask
    if "token_type_ids" in features[0]:
        types = torch.zeros_like(ids)
        for i, f in enumerate(features):
            types[i, :len(f["token_type_ids"])] = torch.tensor(f["token_type_ids"])
        batch["token_type_ids"] = types
    if "labels" in features[0]:
        first = features[0]["labels"]
        if isinstance(first, list) and "word_ids" in features[0]:  # token labels
            labels = torch.full_like(ids, IGNORE)
            for i, f in enumerate(features):
                labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
        elif isinstance(first, list):  # multi-label targets
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.float)
        elif isinstance(first, float):
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.float)
        else:
            labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["labels"] = labels
    for key in ("start_positions", "end_positions"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch
