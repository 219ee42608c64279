"""data/tasks.py: the classification / SQuAD / CoNLL readers and the featurisers behind fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from twinlm.data import tasks as T
from twinlm.errors import ConfigError, DataError
from twinlm.tokenizer import train_tokenizer

WORDS = ("alice visited paris in may and bob lives in london the city is big small old new where did go who "
         "what a of to").split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("tok") / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS) for _ in range(3)))
    return train_tokenizer([corpus], kind="wordpiece", vocab_size=150, min_frequency=1)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- classification reader


def test_read_tsv_with_line_numbers_and_quotes_kept(tmp_path):
    path = write(tmp_path / "a.tsv", 'sentence\tlabel\nit was "fine"\tpos\n  padded text  \tneg\n')
    ex = T.read_classification(path)
    assert [(e.text, e.pair, e.label, e.line) for e in ex] == [('it was "fine"', None, "pos", 2),
                                                                ("padded text", None, "neg", 3)]


def test_read_csv_with_quoted_commas_and_a_pair(tmp_path):
    path = write(tmp_path / "a.csv", 'premise,hypothesis,label\n"a, b",c,1\nd,"e, ""f""",0\n')
    ex = T.read_classification(path, text_column="premise", pair_column="hypothesis")
    assert [(e.text, e.pair, e.label) for e in ex] == [("a, b", "c", "1"), ("d", 'e, "f"', "0")]


def test_read_jsonl_skips_blank_lines_but_counts_them(tmp_path):
    rows = [{"text": "one", "label": 1}, {"text": "two", "label": 0}]
    path = write(tmp_path / "a.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    ex = T.read_classification(path)
    assert [(e.text, e.label, e.line) for e in ex] == [("one", "1", 1), ("two", "0", 3)]


def test_read_regression_labels_are_floats_and_max_rows(tmp_path):
    path = write(tmp_path / "a.tsv", "text\tlabel\na\t0.5\nb\t3\nc\t-1\n")
    ex = T.read_classification(path, problem="regression", max_rows=2)
    assert [e.label for e in ex] == [0.5, 3.0]


def test_unlabelled_rows_have_label_none(tmp_path):
    ex = T.read_classification(write(tmp_path / "a.jsonl", '{"sentence": "x"}\n'))
    assert ex[0].text == "x" and ex[0].label is None


@pytest.mark.parametrize("name, text, kw, match", [
    ("a.tsv", "body\tlabel\nx\t1\n", {}, r"a\.tsv: no 'text' or 'sentence' column \(columns: body, label\)"),
    ("a.tsv", "text\tlabel\nx\t1\n", {"pair_column": "other"}, "no column 'other'"),
    ("a.tsv", "text\tlabel\nx\t1\n \t0\n", {}, r"a\.tsv:3: empty text in column 'text'"),
    ("a.tsv", "text\tlabel\nx\tbig\n", {"problem": "regression"}, r"a\.tsv:2: label 'big' is not a number"),
    ("a.jsonl", '{"text": "x"}\n{oops\n', {}, r"a\.jsonl:2: not valid JSON"),
    ("a.jsonl", '["text"]\n', {}, r"a\.jsonl:1: expected a JSON object per line"),
    ("a.txt", "text\n", {}, "unsupported file type '.txt'"),
    ("a.tsv", "text\tlabel\n", {}, r"a\.tsv: no rows"),
])
def test_classification_reader_errors(tmp_path, name, text, kw, match):
    with pytest.raises(DataError, match=match):
        T.read_classification(write(tmp_path / name, text), **kw)


def test_reader_errors_for_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        T.read_classification(tmp_path / "none.tsv")
    (tmp_path / "latin.tsv").write_bytes(b"text\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(DataError, match="not valid UTF-8 at byte offset 14"):
        T.read_classification(tmp_path / "latin.tsv")


def test_label_list_orders_numbers_numerically_then_names():
    ex = [T.ClassExample("t", None, label, i) for i, label in enumerate(["10", "2", "-1", "neg", "2", "pos"])]
    assert T.label_list(ex, "single_label") == ["-1", "2", "10", "neg", "pos"]
    multi = [T.ClassExample("t", None, "b,a", 1), T.ClassExample("t", None, "c", 2)]
    assert T.label_list(multi, "multi_label") == ["a", "b", "c"]
    assert T.label_list(ex, "regression") == ["score"]
    with pytest.raises(DataError, match="line 7: no label"):
        T.label_list([T.ClassExample("t", None, None, 7)], "single_label")


# -------------------------------------------------------------------------------------- classification features


def test_encode_pair_frames_and_truncates_longest_first(tok):
    ids, types = T.encode_pair(tok, "alice visited paris", "bob", 32)
    a = tok.encode("alice visited paris")
    assert ids == [tok.cls_id, *a, tok.sep_id, *tok.encode("bob"), tok.sep_id]
    assert types == [0] * (len(a) + 2) + [1, 1]
    long_a, long_b = "alice visited paris in may and bob", "bob lives in london"
    ids, types = T.encode_pair(tok, long_a, long_b, 10)
    assert len(ids) == 10 and len(types) == 10
    # 7 + 4 tokens into a budget of 7: the longer side loses a token at a time, the first text on a tie
    assert ids == [tok.cls_id, *tok.encode(long_a)[:3], tok.sep_id, *tok.encode(long_b), tok.sep_id]
    ids, types = T.encode_pair(tok, long_a, None, 5)
    assert ids == [tok.cls_id, *tok.encode(long_a)[:3], tok.sep_id] and types == [0] * 5


def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters(tok):
    ids = list(range(100))
    assert T.cut_tokens(ids, 40, "head") == ids[:40]
    assert T.cut_tokens(ids, 40, "head-tail") == ids[:10] + ids[70:]
    assert T.cut_tokens(ids, 100, "head-tail") == ids and T.cut_tokens(ids, 0, "head-tail") == []
    text = " ".join(WORDS)  # 30 words, each one token
    a = tok.encode(text)
    ids, types = T.encode_pair(tok, text, None, 14, "head-tail")  # room for 12: 3 from the start, 9 from the end
    assert ids == [tok.cls_id, *a[:3], *a[-9:], tok.sep_id] and types == [0] * 14
    ids, _ = T.encode_pair(tok, text, "bob lives in london", 15, "head-tail")  # 30 + 4 into 12: the text keeps 8
    assert ids == [tok.cls_id, *a[:2], *a[-6:], tok.sep_id, *tok.encode("bob lives in london"), tok.sep_id]
    with pytest.raises(ConfigError, match="--truncation 'middle' is unknown"):
        T.cut_tokens(ids, 3, "middle")


def test_featurize_classification_labels(tok):
    labels = ["neg", "pos"]
    ex = [T.ClassExample("alice", None, "pos", 2), T.ClassExample("bob", None, "neg", 3),
          T.ClassExample("may", None, None, 4)]
    feats = T.featurize_classification(ex, tok, labels, "single_label", 16)
    assert [f.get("labels") for f in feats] == [1, 0, None]
    multi = T.featurize_classification([T.ClassExample("alice", None, "c,a", 2)], tok, ["a", "b", "c"],
                                       "multi_label", 16)
    assert multi[0]["labels"] == [1.0, 0.0, 1.0]
    reg = T.featurize_classification([T.ClassExample("alice", None, 2.5, 2)], tok, ["score"], "regression", 16)
    assert reg[0]["labels"] == 2.5


def test_an_unseen_label_names_itself_its_line_and_the_known_ones(tok):
    with pytest.raises(DataError, match=r"dev\.tsv:9: label 'maybe' was not in the training labels \(neg, pos\)"):
        T.featurize_classification([T.ClassExample("alice", None, "maybe", 9)], tok, ["neg", "pos"],
                                   "single_label", 16, source="dev.tsv")


# ------------------------------------------------------------------------------------------------------- SQuAD


def squad(path: Path, paragraphs: list[dict]) -> Path:
    return write(path, json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))


CONTEXT = "alice visited paris in may and bob lives in london"


def test_read_squad_moves_misplaced_answers_and_keeps_absent_ones_for_scoring(tmp_path):
    path = squad(tmp_path / "s.json", [{"context": CONTEXT, "qas": [
        {"id": "q1", "question": "where did alice go", "answers": [{"text": "paris", "answer_start": 14},
                                                                  {"text": "paris", "answer_start": 13}]},
        {"id": "q2", "question": "who", "answers": [{"text": "in", "answer_start": 36}]},  # 'in' at 20 and 41
        {"id": "q3", "question": "what", "answers": [], "is_impossible": True},
        {"id": "q4", "question": "why", "answers": [{"text": "a free-form answer", "answer_start": -1},
                                                    {"text": "london", "answer_start": 44}]},
    ]}])
    with pytest.warns(UserWarning) as caught:
        ex = T.read_squad(path)
    assert sorted(str(w.message).split(": ")[1] for w in caught) == [
        "1 answer(s) do not occur in their context; they count as reference answers when scoring, never as "
        "training spans",
        "2 answer(s) are not at their answer_start; the nearest occurrence of their text in the context is used"]
    assert [e.qid for e in ex] == ["q1", "q2", "q3", "q4"]
    assert ex[0].answers == ["paris", "paris"] and ex[0].starts == [14, 14] and ex[0].context == CONTEXT
    assert ex[1].starts == [41] and CONTEXT[41:43] == "in"  # the occurrence nearest to 36, not the first
    assert ex[2].impossible and ex[2].answers == []
    assert ex[3].answers == ["a free-form answer", "london"] and ex[3].starts == [-1, 44]


def test_featurize_qa_trains_on_the_first_reference_found_in_the_context(tok):
    ex = T.QAExample("q", "where", CONTEXT, ["not in the text", "london"], [-1, CONTEXT.index("london")])
    (feat,) = T.featurize_qa([ex], tok, max_len=64)
    s, e = feat["start_positions"], feat["end_positions"]
    assert s > 0 and CONTEXT[feat["offsets"][s][0]:feat["offsets"][e][1]] == "london"


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "no top-level 'data' list"),
    ("{oops", "not valid SQuAD JSON"),
    (json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), r"data\[0\]\.paragraphs\[0\] has no 'context'"),
    (json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}), "without 'question'"),
    (json.dumps({"data": []}), "no questions found"),
])
def test_read_squad_errors(tmp_path, content, match):
    with pytest.raises(DataError, match=match):
        T.read_squad(write(tmp_path / "s.json", content))


def qa_example(context: str, answer: str | None, occurrence: int = 0) -> T.QAExample:
    ex = T.QAExample("q", "where did alice go", context)
    if answer is not None:
        start = -1
        for _ in range(occurrence + 1):
            start = context.index(answer, start + 1)
        ex.answers, ex.starts = [answer], [start]
    return ex


def test_featurize_qa_one_window_offsets_and_answer(tok):
    ex = qa_example(CONTEXT, "bob lives")
    (feat,) = T.featurize_qa([ex], tok, max_len=64)
    q = tok.encode(ex.question)
    ids, offsets = feat["input_ids"], feat["offsets"]
    assert ids == [tok.cls_id, *q, tok.sep_id, *tok.encode(CONTEXT), tok.sep_id]
    assert feat["token_type_ids"] == [0] * (len(q) + 2) + [1] * (len(ids) - len(q) - 2)
    assert offsets[:len(q) + 2] == [None] * (len(q) + 2) and offsets[-1] is None
    for i in range(len(q) + 2, len(ids) - 1):  # every context token maps to its own characters
        start, end = offsets[i]
        assert tok.id_to_token(ids[i]).removeprefix("##") == CONTEXT[start:end]
    s, e = feat["start_positions"], feat["end_positions"]
    assert CONTEXT[offsets[s][0]:offsets[e][1]] == "bob lives"
    assert feat["example"] == 0


def test_featurize_qa_doc_stride_windows(tok):
    words = (WORDS * 3)[:40]
    context = " ".join(words)
    word_at = {sum(len(x) + 1 for x in words[:i]): i for i in range(len(words))}  # char offset -> word index
    ex = qa_example(context, "in may")  # words 3 and 4
    answer = (3, 4)
    q = tok.encode(ex.question)
    room, stride = 10, 4
    feats = T.featurize_qa([ex], tok, max_len=len(q) + 3 + room, doc_stride=stride)
    n_ctx = len(tok.encode(context))
    assert n_ctx == 40  # one token per word with this vocabulary
    first_words = [word_at[f["offsets"][len(q) + 2][0]] for f in feats]
    assert first_words == [0, 4, 8, 12, 16, 20, 24, 28, 30]  # stride 4, and a last window flush with the end
    covered = set()
    for f, w in zip(feats, first_words, strict=True):
        ctx = f["input_ids"][len(q) + 2:-1]
        assert len(f["input_ids"]) == len(q) + 3 + room and len(ctx) == room
        assert ctx == tok.encode(context)[w:w + room]
        assert f["example"] == 0
        covered.update(range(w, w + room))
        s, e = f["start_positions"], f["end_positions"]
        if w <= answer[0] and answer[1] < w + room:  # the whole answer is in this window
            assert context[f["offsets"][s][0]:f["offsets"][e][1]] == "in may"
        else:
            assert (s, e) == (0, 0), w  # no answer, or only half of it (window 4), here: point at [CLS]
    assert covered == set(range(n_ctx))
    assert [(f["start_positions"], f["end_positions"]) != (0, 0) for f in feats] == [True] + [False] * 8


def test_featurize_qa_limits(tok):
    ex = qa_example(CONTEXT, "paris")
    with pytest.raises(DataError, match="--max-seq-len 10 leaves no room"):
        T.featurize_qa([ex], tok, max_len=10)
    (feat,) = T.featurize_qa([ex], tok, max_len=64, max_question_len=2, train=False)
    assert feat["input_ids"][:4] == [tok.cls_id, *tok.encode(ex.question)[:2], tok.sep_id]
    assert "start_positions" not in feat and "end_positions" not in feat
    (no_answer,) = T.featurize_qa([qa_example(CONTEXT, None)], tok, max_len=64)
    assert (no_answer["start_positions"], no_answer["end_positions"]) == (0, 0)


def logits_for(features, spikes: dict[tuple[int, int], float]) -> torch.Tensor:
    width = max(len(f["input_ids"]) for f in features)
    out = torch.zeros(len(features), width)
    for (f, i), v in spikes.items():
        out[f, i] = v
    return out


def token_of(feat, context: str, word: str, occurrence: int = 0) -> int:
    char = -1
    for _ in range(occurrence + 1):
        char = context.index(word, char + 1)
    return next(i for i, o in enumerate(feat["offsets"]) if o is not None and o[0] == char)


def test_best_spans_picks_the_best_valid_span(tok):
    ex = qa_example(CONTEXT, None)
    feats = T.featurize_qa([ex], tok, max_len=64, train=False)
    paris, may, bob = (token_of(feats[0], CONTEXT, w) for w in ("paris", "may", "bob"))
    s = logits_for(feats, {(0, paris): 5.0, (0, bob): 9.0, (0, 1): 20.0})  # 1: a question token, never an answer
    e = logits_for(feats, {(0, may): 5.0, (0, paris): 1.0})  # no end after bob scores: bob..? loses to paris..may
    out = T.best_spans(feats, s, e, [ex])
    assert out["q"]["answer"] == "paris in may"
    assert (out["q"]["start"], out["q"]["end"]) == (CONTEXT.index("paris"), CONTEXT.index("may") + 3)
    assert out["q"]["score"] == pytest.approx(10.0)


def test_best_spans_respects_max_answer_len(tok):
    ex = qa_example(CONTEXT, None)
    feats = T.featurize_qa([ex], tok, max_len=64, train=False)
    alice, london = token_of(feats[0], CONTEXT, "alice"), token_of(feats[0], CONTEXT, "london")
    s = logits_for(feats, {(0, alice): 5.0})
    e = logits_for(feats, {(0, london): 5.0, (0, alice): 4.0})
    assert T.best_spans(feats, s, e, [ex])["q"]["answer"] == CONTEXT
    assert T.best_spans(feats, s, e, [ex], max_answer_len=3)["q"]["answer"] == "alice"


def test_best_spans_across_windows_and_the_empty_answer(tok):
    context = " ".join((WORDS * 3)[:40])
    ex = qa_example(context, None)
    q = tok.encode(ex.question)
    feats = T.featurize_qa([ex], tok, max_len=len(q) + 13, doc_stride=4, train=False)
    # "bob" appears twice; make the second occurrence (in the last window) score highest
    last = len(feats) - 1
    first_bob, second_bob = token_of(feats[0], context, "bob"), token_of(feats[last], context, "bob", 1)
    s = logits_for(feats, {(0, first_bob): 3.0, (last, second_bob): 4.0, (0, 0): 1.0, (last, 0): 1.0})
    e = logits_for(feats, {(0, first_bob): 3.0, (last, second_bob): 4.0, (0, 0): 1.0, (last, 0): 1.0})
    out = T.best_spans(feats, s, e, [ex])["q"]
    assert out["answer"] == "bob" and out["start"] == context.index("bob", context.index("bob") + 1)
    # the empty answer wins only with allow_impossible and only when [CLS] beats every span
    s2, e2 = s.clone(), e.clone()
    s2[:, 0], e2[:, 0] = 9.0, 9.0
    assert T.best_spans(feats, s2, e2, [ex])["q"]["answer"] == "bob"
    assert T.best_spans(feats, s2, e2, [ex], allow_impossible=True)["q"] == {"answer": "", "start": -1, "end": -1,
                                                                              "score": 18.0}
    assert T.best_spans(feats, s, e, [ex], allow_impossible=True)["q"]["answer"] == "bob"


# --------------------------------------------------------------------------------------------------------- CoNLL


CONLL = """-DOCSTART- -X- O O

alice NNP B-PER
visited VBD O
paris NNP B-LOC

bob NNP B-PER
parislondon NNP I-PER


may NNP B-MISC
"""


def test_read_conll_sentences_and_lines(tmp_path):
    ex = T.read_conll(write(tmp_path / "a.conll", CONLL))
    assert [(e.words, e.tags, e.line) for e in ex] == [
        (["alice", "visited", "paris"], ["B-PER", "O", "B-LOC"], 3),
        (["bob", "parislondon"], ["B-PER", "I-PER"], 7),
        (["may"], ["B-MISC"], 11),
    ]
    assert len(T.read_conll(tmp_path / "a.conll", max_rows=2)) == 2


@pytest.mark.parametrize("text, match", [
    ("alice B-PER\nbob\n", r"a\.conll:2: expected 'word \.\.\. TAG' columns"),
    ("alice PER\n", r"a\.conll:1: tag 'PER' is not IOB2"),
    ("alice B-\n", "tag 'B-' is not IOB2"),
    ("-DOCSTART- O\n\n\n", "no sentences found"),
])
def test_read_conll_errors(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        T.read_conll(write(tmp_path / "a.conll", text))


def test_featurize_ner_bpe_pieces_match_running_text(tmp_path):
    # Regression: a byte-level BPE vocabulary marks word starts with 'Ġ'; words encoded one at a time used to lose
    # it ('G' 'er' 'man' instead of 'ĠGerman'), so a pretrained model saw pieces it had hardly met in pretraining.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join("the German call to boycott British lamb ." for _ in range(50)))
    bpe = train_tokenizer([corpus], kind="bpe", vocab_size=300, min_frequency=1)
    words = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    ex = [T.NERExample(words, ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"], 1)]
    labels = T.ner_labels(ex)
    (f,) = T.featurize_ner(ex, bpe, labels, max_len=64)
    running = bpe.hf.encode(" ".join(words), add_special_tokens=False).ids
    assert f["input_ids"] == [bpe.cls_id, *running, bpe.sep_id]
    assert bpe.hf.token_to_id("\u0120German") in f["input_ids"]
    assert [x for x in f["labels"] if x != -100] == [labels.index(t) for t in ex[0].tags]
    assert sorted({w for w in f["word_ids"] if w is not None}) == list(range(len(words)))


def test_ner_labels_order():
    ex = [T.NERExample(["a"] * 5, ["I-PER", "B-LOC", "O", "B-PER", "I-LOC"], 1)]
    assert T.ner_labels(ex) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_featurize_ner_labels_the_first_sub_token_only(tok, tmp_path):
    ex = T.read_conll(write(tmp_path / "a.conll", CONLL))
    labels = T.ner_labels(ex)
    feats = T.featurize_ner(ex, tok, labels, max_len=32)
    f = feats[1]  # bob / parislondon: the second word splits into several sub-tokens
    pieces = tok.hf.encode(["bob", "parislondon"], is_pretokenized=True, add_special_tokens=False)
    assert len(pieces.ids) >= 3
    assert f["input_ids"] == [tok.cls_id, *pieces.ids, tok.sep_id]
    expected = [-100, labels.index("B-PER"), labels.index("I-PER")] + [-100] * (len(pieces.ids) - 2) + [-100]
    assert f["labels"] == expected
    assert f["word_ids"] == [None, 0, 1, *[1] * (len(pieces.ids) - 2), None] and f["n_words"] == 2
    for feat, e in zip(feats, ex, strict=True):  # one label per word, in order
        assert [x for x in feat["labels"] if x != -100] == [labels.index(t) for t in e.tags]


def test_featurize_ner_truncates_and_refuses_unknown_tags(tok):
    ex = [T.NERExample(["alice", "visited", "paris", "in", "may"], ["B-PER", "O", "B-LOC", "O", "B-MISC"], 4)]
    labels = ["O", "B-LOC", "B-MISC", "B-PER"]
    (f,) = T.featurize_ner(ex, tok, labels, max_len=4)
    assert len(f["input_ids"]) == 4 and f["labels"] == [-100, 3, 0, -100]
    with pytest.raises(DataError, match=r"dev:4: tag 'B-MISC' was not in the training tags"):
        T.featurize_ner(ex, tok, ["O", "B-LOC", "B-PER"], max_len=16, source="dev")


# ------------------------------------------------------------------------------------------------------ collate


def test_collate_pads_right_and_types_the_labels():
    feats = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 1, 1], "labels": 1},
             {"input_ids": [8], "token_type_ids": [0], "labels": 0}]
    b = T.collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert b["labels"].dtype == torch.long and b["labels"].tolist() == [1, 0]
    reg = T.collate([{"input_ids": [1], "labels": 0.5}, {"input_ids": [2, 3], "labels": 2.0}], pad_id=9)
    assert reg["labels"].dtype == torch.float and reg["input_ids"].tolist() == [[1, 9], [2, 3]]
    multi = T.collate([{"input_ids": [1], "labels": [1.0, 0.0]}], pad_id=0)
    assert multi["labels"].dtype == torch.float and multi["labels"].tolist() == [[1.0, 0.0]]


def test_collate_token_labels_pad_with_ignore_and_qa_positions():
    ner = T.collate([{"input_ids": [1, 2, 3], "labels": [-100, 4, -100], "word_ids": [None, 0, None]},
                     {"input_ids": [1, 3], "labels": [-100, -100], "word_ids": [None, None]}], pad_id=0)
    assert ner["labels"].tolist() == [[-100, 4, -100], [-100, -100, -100]]
    qa = T.collate([{"input_ids": [1, 2], "start_positions": 1, "end_positions": 1},
                    {"input_ids": [1, 2, 3], "start_positions": 0, "end_positions": 2}], pad_id=0)
    assert qa["start_positions"].tolist() == [1, 0] and qa["end_positions"].tolist() == [1, 2]
    assert "labels" not in qa and "token_type_ids" not in qa
