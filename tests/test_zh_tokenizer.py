"""Chinese tokenization: round trips with mixed scripts, visible [UNK], streaming decode, TSV/CSV corpora."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_data_dir
from twinlm.cli import main
from twinlm.data.readers import iter_documents
from twinlm.errors import DataError
from twinlm.textstream import TextStream
from twinlm.tokenizer import Tokenizer, is_cjk, load_tokenizer, train_tokenizer

# Everything the tests decode is in here: the examples, full-width forms and every Latin letter and digit
# both word-initial and inside a word (WordPiece needs "x" and "##x" for any Latin word to encode).
ZH_PARAGRAPHS = [
    "这部电影很棒！我很喜欢这部电影。",
    "糟糕的体验，再也不来了。",
    "如何重置我的设备？要重置，按住电源按钮 10 秒钟。",
    "从前有一条龙。龙在村庄上空翱翔。",
    "林冲道：“我这些酒！”小丫头……好——走。he said “hello” — ok",
    "「你好」（测试）：ｆｕｌｌ１２３，酒店服务很好，价格 299 元。",
    "he said hello to the world, ok 2024. Hello OK",
    "abcdefghijklmnopqrstuvwxyz0123456789 9876543210zyxwvutsrqponmlkjihgfedcba",
    " ".join("abcdefghijklmnopqrstuvwxyz0123456789"),
]
ZH_TEXT = "\n\n".join(ZH_PARAGRAPHS * 3) + "\n"

# Round-trip cases for WordPiece: lower-case Latin (it lowercases, as BERT-uncased) and a space wherever CJK
# meets Latin or digits (the one thing WordPiece ids cannot tell).
WORDPIECE_CASES = [
    "这部电影很棒！",
    "糟糕的体验，再也不来了。",
    "按住电源按钮 10 秒钟 said hello",
    "要重置，按住电源按钮 10 秒钟。",
    "如何重置我的设备？",
    "龙在村庄上空翱翔。",
    "「你好」（测试）：ｆｕｌｌ１２３",
    "he said hello to the world, ok 2024 从前有一条龙",
]
# char and byte-level BPE round-trip anything they can encode: case, spacing, newlines.
EXACT_CASES = [*WORDPIECE_CASES, "按钮10秒钟said Hello", "从前\n龙在村庄上空翱翔。  OK！", "价格 299 元。ok"]

CJK_UNITS = sorted({c for c in ZH_TEXT if is_cjk(c)})
# Full-width letters and digits form words as Latin ones do ("ｆｕｌｌ"): single units are ideographs and punctuation.
SINGLE_CJK = [c for c in CJK_UNITS if not c.isalnum() or re.match(r"[\u4e00-\u9fff]", c)]
LATIN_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)


@pytest.fixture(scope="module")
def zh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zh") / "zh.txt"
    path.write_text(ZH_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(zh_file: Path) -> Tokenizer:
    return train_tokenizer([zh_file], "wordpiece", vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def char(zh_file: Path) -> Tokenizer:
    return train_tokenizer([zh_file], "char", vocab_size=0)


@pytest.fixture(scope="module")
def bpe(zh_file: Path) -> Tokenizer:
    # Few merges on top of the 256 bytes: most Chinese characters stay split over 2-3 byte tokens.
    return train_tokenizer([zh_file], "bpe", vocab_size=300, min_frequency=2)


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    """The pieces a TextStream shows when ids arrive one at a time, the final flush last."""
    stream = TextStream(tok)
    pieces = [stream.push([i]) for i in ids]
    return [*pieces, stream.finish()]


# ------------------------------------------------------------------------------------------- round trips


def test_is_cjk_ranges() -> None:
    assert all(is_cjk(c) for c in "中文，。！？「」（）：ｆ１\u3000𠀀")
    assert not any(is_cjk(c) for c in "a1,.!? \n😀é")
    assert not is_cjk("") and not is_cjk("中a")


@pytest.mark.parametrize("text", WORDPIECE_CASES)
def test_wordpiece_round_trips_mixed_chinese(wordpiece: Tokenizer, text: str) -> None:
    ids = wordpiece.encode(text)
    assert wordpiece.unk_id not in ids
    assert wordpiece.decode(ids) == text
    assert wordpiece.decode(wordpiece.encode(text, add_special=True)) == text
    # Each Chinese character is a word of its own, as in BERT.
    tokens = [wordpiece.id_to_token(i) or "" for i in ids]
    assert all(len(t) == 1 for t in tokens if re.search(r"[\u4e00-\u9fff]", t))


def test_shared_punctuation_touches_chinese_only(wordpiece: Tokenizer) -> None:
    # Curly quotes, ellipses and dashes sit against CJK characters without spaces (as novels write them) but keep
    # WordPiece's spaces in Latin text.
    novel = "林冲道：“我这些酒！”小丫头……好——走。"
    assert wordpiece.decode(wordpiece.encode(novel)) == novel
    assert wordpiece.decode(wordpiece.encode("he said “hello” — ok")) == "he said “ hello ” — ok"


def test_wordpiece_documented_spacing(wordpiece: Tokenizer) -> None:
    # CJK next to Latin or digits gets a space whether or not the original had one; specials kept on request.
    assert wordpiece.decode(wordpiece.encode("按钮10秒钟said hello")) == "按钮 10 秒钟 said hello"
    assert wordpiece.decode(wordpiece.encode("你好", add_special=True), skip_special=False) == "[CLS] 你好 [SEP]"


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("text", EXACT_CASES)
def test_char_and_bpe_round_trip_exactly(kind: str, text: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(kind)
    ids = tok.encode(text)
    assert tok.count_unknown(ids) == 0
    assert tok.decode(ids) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(units=st.lists(st.one_of(st.sampled_from(SINGLE_CJK), LATIN_WORDS), min_size=1, max_size=25))
def test_wordpiece_round_trip_property(wordpiece: Tokenizer, units: list[str]) -> None:
    # Written as the rule says: no space between CJK units, one space everywhere else.
    text = units[0]
    for a, b in zip(units, units[1:], strict=False):
        text += ("" if is_cjk(a) and is_cjk(b) else " ") + b
    assert wordpiece.decode(wordpiece.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_bpe_round_trips_any_text(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.unk_id is None and bpe.count_unknown(ids) == 0
    assert bpe.decode(ids) == text


# ------------------------------------------------------------------------------------------- unseen characters


def test_unseen_characters_become_visible_unk(wordpiece: Tokenizer, char: Tokenizer, bpe: Tokenizer) -> None:
    text = "按住龘钮 said hello 😀"  # 龘 and 😀 are in no training text
    wp = wordpiece.encode(text)
    assert wordpiece.count_unknown(wp) == 2
    assert wordpiece.decode(wp) == "按住[UNK]钮 said hello [UNK]"
    ch = char.encode(text)
    assert char.count_unknown(ch) == 2 and len(ch) == len(text)
    assert char.decode(ch) == "按住[UNK]钮 said hello [UNK]"
    assert char.decode(ch, skip_special=False) == char.decode(ch)
    # [UNK] stays visible while the other specials go.
    assert char.decode([*ch, char.eos_id, char.pad_id]) == "按住[UNK]钮 said hello [UNK]"
    assert bpe.decode(bpe.encode(text)) == text and bpe.count_unknown(bpe.encode(text)) == 0


def test_wordpiece_unk_spacing(wordpiece: Tokenizer) -> None:
    # [UNK] beside CJK is joined (an unseen character); two [UNK]s keep a space (each may be a Latin word).
    u = wordpiece.unk_id
    zhong, wen, hello = (wordpiece.token_to_id(t) for t in ("好", "龙", "hello"))
    assert wordpiece.decode([zhong, u, u, wen]) == "好[UNK] [UNK]龙"
    assert wordpiece.decode([hello, u, hello]) == "hello [UNK] hello"
    assert wordpiece.count_unknown([zhong, u, u, wen]) == 2


def test_old_char_tokenizer_without_unk_gets_one(tmp_path: Path, char: Tokenizer) -> None:
    # A char tokenizer.json whose vocabulary has no [UNK] and whose sidecar names none.
    data = json.loads(char.hf.to_str())
    old_unk = data["model"]["vocab"].pop("[UNK]")
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[UNK]"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    special = {**char.special, "unk": None}
    (tmp_path / "twinlm_tokenizer.json").write_text(json.dumps({"kind": "char", "special": special}))
    old = load_tokenizer(tmp_path)
    top = max(v for k, v in char.hf.get_vocab(with_added_tokens=True).items() if k != "[UNK]")
    assert old.unk_id == top + 1 and old.unk_id != old_unk
    assert old.special["unk"] == "[UNK]" and old.unk_id in old.special_ids
    # Known characters keep their ids; an unseen one is a visible, counted [UNK] instead of an encoding failure.
    assert old.encode("你好") == char.encode("你好")
    ids = old.encode("你龘好")
    assert old.count_unknown(ids) == 1 and old.decode(ids) == "你[UNK]好"


# ------------------------------------------------------------------------------------------- streaming


STREAM_CASES = ["这部电影很棒！", "要重置，按住电源按钮 10 秒钟。said hello 😀🤗", "龙在村庄上空翱翔。\n从前"]


@pytest.mark.parametrize("text", STREAM_CASES)
def test_bpe_streaming_never_breaks_a_character(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    # The test means something only if some token holds part of a character.
    assert any("\ufffd" in bpe.decode([i]) for i in ids)
    pieces = _stream(bpe, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == bpe.decode(ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from([*CJK_UNITS, "a", " ", "1", "\n", "😀", "é"]), max_size=30))
def test_bpe_streaming_property(bpe: Tokenizer, text: str) -> None:
    pieces = _stream(bpe, bpe.encode(text))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


@pytest.mark.parametrize("text", [*WORDPIECE_CASES, "按住龘钮 said hello 😀"])
def test_wordpiece_streaming_equals_decode(wordpiece: Tokenizer, text: str) -> None:
    ids = wordpiece.encode(text)
    pieces = _stream(wordpiece, ids)
    assert "".join(pieces) == wordpiece.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    # Every CJK character is shown as soon as its token arrives, with no space before it after CJK.
    assert all(p for p, t in zip(pieces, ids, strict=False) if is_cjk(wordpiece.id_to_token(t) or ""))
    assert not re.search(r"[\u4e00-\u9fff] [\u4e00-\u9fff]", "".join(pieces))


# ------------------------------------------------------------------------------------------- TSV / CSV corpora


def test_tsv_rows_are_documents_from_the_named_column(tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    # BOM, CRLF, a quote that is text (TSV cells are not quoted), a blank line and an empty cell.
    path.write_bytes(
        "\ufeffsentence\tlabel\r\n这部电影很棒！\tZ\r\n他说\"不错\"\tY\r\n\r\n\tY\r\n糟糕的体验。\tZ\r\n".encode()
    )
    assert list(iter_documents(path, text_field="sentence")) == ["这部电影很棒！", '他说"不错"', "糟糕的体验。"]
    # One line naming the file and the columns it has.
    missing = r"reviews\.tsv: no column 'text'; columns are: sentence, label; pass --text-field"
    with pytest.raises(DataError, match=missing):
        list(iter_documents(path))
    # The tokenizer reads the named column only: the labels never enter the vocabulary.
    tok = train_tokenizer([path], "char", vocab_size=0, text_field="sentence")
    assert tok.token_to_id("很") is not None and tok.token_to_id("Z") is None and tok.token_to_id("\t") is None


def test_csv_quoted_cells_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes('id,text\r\n1,"你好，""世界""\r\n第二行"\r\n2,plain\r\n3\r\n'.encode())
    with pytest.raises(DataError, match=r"c\.csv:5: only 1 cell\(s\); column 'text' is number 2"):
        list(iter_documents(path))
    with pytest.warns(UserWarning, match=r"c\.csv:5"):
        assert list(iter_documents(path, on_error="skip")) == ['你好，"世界"\n第二行', "plain"]


def test_table_bad_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes("sentence\tlabel\n好\t1\n".encode() + b"\xff\xfe\t0\n" + "坏\t0\n".encode())
    with pytest.raises(DataError, match=r"bad\.tsv: not valid UTF-8 at byte offset 21 \(line 3\)"):
        list(iter_documents(path, text_field="sentence"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(iter_documents(path, text_field="sentence", on_error="skip")) == ["好", "坏"]
    assert any("line 3" in str(w.message) for w in caught)


def test_cli_trains_on_a_tsv_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\n这部电影很棒！\t1\n糟糕的体验，再也不来了。\t0\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "100", "--min-frequency", "1",
                 "--text-field", "sentence", "--out", str(out), str(path)]) == 0
    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("这部电影很棒！")) == "这部电影很棒！"
    assert tok.token_to_id("1") is None  # the label column was not read
    code = main(["tokenizer", "train", "--kind", "char", "--out", str(out), str(path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0 and "t.tsv: no column 'text'; columns are: sentence, label" in err


# ------------------------------------------------------------------------------------------- real data


def test_real_corpus_wordpiece(tmp_path: Path) -> None:
    zh = shared_data_dir() / "zh"
    novel, reviews = zh / "text" / "hongloumeng.txt", zh / "sentiment" / "chnsenticorp_htl_train.tsv"
    if not (novel.is_file() and reviews.is_file()):
        pytest.skip(f"{zh} lacks the novels or ChnSentiCorp (set TWINLM_SHARED_DATA to point at shared/data)")
    # A slice keeps the test fast: ~300 KB of the novel (as the report) plus 1,500 reviews through the
    # TSV reader's sentence column.
    head = novel.read_bytes()[:300_000].decode("utf-8", errors="ignore").rsplit("\n", 1)[0]
    (tmp_path / "novel.txt").write_text(head, encoding="utf-8")
    rows = reviews.read_text(encoding="utf-8").splitlines()[:1501]
    (tmp_path / "reviews.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    files = [tmp_path / "novel.txt", tmp_path / "reviews.tsv"]
    tok = train_tokenizer(files, "wordpiece", vocab_size=3000, text_field="sentence")
    seen = {c for f in files for d in iter_documents(f, text_field="sentence") for c in d.lower()}
    for text in ["这部电影很棒！", "糟糕的体验，再也不来了。", "按住电源按钮 10 秒钟 said hello", "如何重置我的设备？"]:
        ids = tok.encode(text)
        # Seen characters come back as written; each unseen CJK character is one visible [UNK] in its place.
        unseen = [c for c in text if is_cjk(c) and c not in seen]
        expected = "".join("[UNK]" if c in unseen else c for c in text)
        assert tok.count_unknown(ids) == len(unseen)
        assert tok.decode(ids) == expected
        assert "".join(_stream(tok, ids)) == expected
