"""Tokenizer: trained kinds, real BERT / GPT-2 vocabularies, save/load, continuation table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from twinlm.errors import CheckpointError, DataError
from twinlm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

SHARED_DATA = Path(
    os.environ.get("TWINLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
BERT_DIR = SHARED_DATA / "tokenizers" / "bert-base-uncased"
GPT2_DIR = SHARED_DATA / "tokenizers" / "gpt2"

WORDS = ["the", "world", "is", "running", "jumping", "singing", "walking", "hello", "quiet", "river", "stone"]


def _corpus_text(n_paragraphs: int = 60) -> str:
    # Deterministic pseudo-text: enough repetition for merges, paragraphs separated by blank lines.
    paragraphs = []
    for p in range(n_paragraphs):
        lines = []
        for line in range(3):
            words = [WORDS[(p * 7 + line * 3 + k * 5) % len(WORDS)] for k in range(6)]
            lines.append(" ".join(words) + ("," if line % 2 else "."))
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text("Hello World, the river is running.\n\n" + _corpus_text())
    return path


@pytest.fixture(scope="module")
def wordpiece(corpus_file: Path) -> Tokenizer:
    return train_tokenizer([corpus_file], "wordpiece", vocab_size=200, min_frequency=1)


@pytest.fixture(scope="module")
def bpe(corpus_file: Path) -> Tokenizer:
    return train_tokenizer([corpus_file], "bpe", vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def char(corpus_file: Path) -> Tokenizer:
    return train_tokenizer([corpus_file], "char", vocab_size=0)


def _need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (set TWINLM_SHARED_DATA to the folder holding tokenizers/)")


# ------------------------------------------------------------------------------------------- real vocabularies


def test_bert_vocab_ids() -> None:
    _need(BERT_DIR)
    tok = load_tokenizer(BERT_DIR / "vocab.txt")
    assert tok.kind == "wordpiece"
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.bos_id == tok.cls_id and tok.eos_id == tok.sep_id
    assert tok.vocab_size == 30522
    assert tok.encode("Hello") == [7592]  # lowercased by the BERT normalizer
    assert tok.encode("hello", add_special=True) == [101, 7592, 102]
    assert tok.encode("hello [MASK]") == [7592, 103]
    assert set(tok.special_ids) == {0, 100, 101, 102, 103}
    table = tok.continuation_table()
    assert table.dtype == bool and table.shape == (30522,)
    assert table[tok.token_to_id("##ing")] and not table[7592] and not table[103]
    # The folder form loads the same thing.
    assert load_tokenizer(BERT_DIR).encode("hello world") == tok.encode("hello world")


def test_gpt2_files_ids() -> None:
    _need(GPT2_DIR)
    tok = load_tokenizer(GPT2_DIR)
    assert tok.kind == "bpe"
    assert tok.encode("Hello") == [15496]
    assert tok.encode(" world") == [995]
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.token_to_id("<|endoftext|>") == 50256
    assert tok.eos_id == tok.bos_id == tok.cls_id == tok.sep_id == tok.pad_id == 50256
    assert tok.unk_id is None
    assert tok.mask_id == 50257 and tok.vocab_size == 50258
    assert tok.special_ids == [50256, 50257]
    assert tok.encode("Hello", add_special=True) == [15496, 50256]
    # lstrip: the space before [MASK] belongs to the mask token, the next word keeps its usual form.
    assert tok.encode("Hello [MASK] world") == [15496, 50257, 995]
    text = "Hello  world\n\ttabs, é and 🤗"
    assert tok.decode(tok.encode(text)) == text
    table = tok.continuation_table()
    assert not table[995] and not table[tok.token_to_id("Ċ")] and not table[50256] and not table[50257]
    assert table[tok.token_to_id("ing")]


def test_gpt2_save_load_round_trip(tmp_path: Path) -> None:
    _need(GPT2_DIR)
    tok = load_tokenizer(GPT2_DIR / "vocab.json")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "Hello [MASK] world<|endoftext|>"
    assert again.encode(text) == tok.encode(text)
    assert (again.mask_id, again.eos_id, again.vocab_size) == (50257, 50256, 50258)


# ------------------------------------------------------------------------------------------- trained tokenizers


def test_trained_wordpiece(wordpiece: Tokenizer) -> None:
    tok = wordpiece
    assert tok.kind == "wordpiece"
    assert [tok.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.eos_id == 3 and tok.bos_id == 2
    assert tok.special_ids == [0, 1, 2, 3, 4]
    text = "Hello World, the river is running."
    ids = tok.encode(text)
    assert tok.decode(ids) == text.lower()
    assert tok.encode(text, add_special=True) == [2, *ids, 3]
    assert tok.decode(tok.encode(text, add_special=True)) == text.lower()
    assert tok.decode(tok.encode(text, add_special=True), skip_special=False).startswith("[CLS]")
    assert tok.encode_batch([text, "quiet stone"]) == [ids, tok.encode("quiet stone")]
    table = tok.continuation_table()
    assert table.shape == (tok.vocab_size,)
    assert tok.token_to_id("##ing") is not None and table[tok.token_to_id("##ing")]
    assert not table[tok.token_to_id("the")] and not table[:5].any()


def test_trained_bpe(bpe: Tokenizer) -> None:
    tok = bpe
    assert tok.kind == "bpe"
    assert tok.id_to_token(0) == "<|endoftext|>" and tok.id_to_token(1) == "[MASK]"
    assert tok.eos_id == tok.bos_id == tok.pad_id == tok.cls_id == tok.sep_id == 0
    assert tok.mask_id == 1 and tok.unk_id is None
    assert tok.special_ids == [0, 1]
    # 256 byte symbols are in the vocabulary: unseen characters still encode without an unknown token.
    text = "Hello World,\nthe river is running. Ünïcode ☃ and  two spaces\ttab"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text, add_special=True) == [*tok.encode(text), 0]
    assert tok.encode("the [MASK] is") == [*tok.encode("the"), 1, *tok.encode(" is")]
    table = tok.continuation_table()
    assert tok.token_to_id("Ġworld") is not None and not table[tok.token_to_id("Ġworld")]
    assert table[tok.token_to_id("d")] and not table[tok.token_to_id("Ġ")] and not table[tok.token_to_id("Ċ")]
    assert not table[0] and not table[1]


def test_trained_char(char: Tokenizer, corpus_file: Path) -> None:
    tok = char
    assert tok.kind == "char"
    assert [tok.id_to_token(i) for i in range(4)] == ["[PAD]", "[UNK]", "[MASK]", "<|endoftext|>"]
    chars = sorted(set(corpus_file.read_text()))
    assert [tok.id_to_token(i) for i in range(4, tok.vocab_size)] == chars
    assert tok.sep_id == tok.eos_id == 3 and tok.pad_id == 0 and tok.mask_id == 2 and tok.unk_id == 1
    text = "Hello World,\n the  river\n\nis running."
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode(text, add_special=True) == [*ids, 3]
    assert tok.encode("Hé") == [tok.token_to_id("H"), tok.unk_id]
    assert not tok.continuation_table().any()


@pytest.mark.parametrize("name", ["wordpiece", "bpe", "char"])
def test_save_load_round_trip(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tok: Tokenizer = request.getfixturevalue(name)
    tok.save(tmp_path)
    sidecar = json.loads((tmp_path / "twinlm_tokenizer.json").read_text())
    assert sidecar["kind"] == name
    text = "Hello World, the [MASK] is running.\nquiet stone"
    for again in (load_tokenizer(tmp_path), load_tokenizer(tmp_path / "tokenizer.json"), Tokenizer.load(tmp_path)):
        assert again.kind == name
        assert again.encode(text) == tok.encode(text)
        assert again.special_ids == tok.special_ids
        assert (again.pad_id, again.mask_id, again.sep_id, again.cls_id) == (
            tok.pad_id, tok.mask_id, tok.sep_id, tok.cls_id,
        )
        assert np.array_equal(again.continuation_table(), tok.continuation_table())


@pytest.mark.parametrize("name", ["wordpiece", "bpe"])
def test_foreign_tokenizer_json_without_sidecar(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tok: Tokenizer = request.getfixturevalue(name)
    tok.hf.save(str(tmp_path / "tokenizer.json"))  # a bare Hugging Face file, no twinlm sidecar
    again = load_tokenizer(tmp_path)
    assert again.kind == name
    assert again.special_ids == tok.special_ids
    assert (again.mask_id, again.sep_id, again.pad_id) == (tok.mask_id, tok.sep_id, tok.pad_id)


# ------------------------------------------------------------------------------------------- bad input


def test_empty_corpus_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(DataError, match=r"empty\.txt: no text to train a tokenizer on"):
        train_tokenizer([empty], "bpe", vocab_size=300)
    with pytest.raises(DataError, match=r"empty\.txt: no text to train a tokenizer on"):
        train_tokenizer([empty], "char", vocab_size=0)


def test_missing_training_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        train_tokenizer([tmp_path / "nope.txt"], "wordpiece", vocab_size=100)


def test_load_missing_or_unknown(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*vocab\.txt.*merges\.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read tokenizer.json"):
        load_tokenizer(tmp_path)
