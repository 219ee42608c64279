"""Readers and corpus preparation: documents, token shards, the split, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twinlm.data.corpus import CorpusMeta, TokenShard, load_meta, prepare_corpus, token_dtype
from twinlm.data.readers import iter_documents
from twinlm.errors import DataError
from twinlm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

WORDS = ["the", "world", "is", "running", "quiet", "river", "stone", "hello", "over", "a"]


def _docs(n: int) -> list[str]:
    """n distinct multi-line documents of varying length."""
    docs = []
    for i in range(n):
        lines = [" ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(3 + (i + j) % 5)) for j in range(1 + i % 3)]
        docs.append(f"Doc {i}: " + "\n".join(lines))
    return docs


def _write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    src = _write_txt(tmp_path_factory.mktemp("tok") / "train.txt", _docs(40))
    return train_tokenizer([src], "bpe", vocab_size=320, min_frequency=1)


# ------------------------------------------------------------------------------------------- readers


def test_txt_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line\r\nsecond line\r\n\r\n\n  \nThird para\n  indented\n\n\n")
    assert list(iter_documents(path)) == ["First line\nsecond line", "Third para\n  indented"]


def test_txt_gz_jsonl_parquet_and_folder(tmp_path: Path) -> None:
    docs = _docs(5)
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n\n".join(docs))
    assert list(iter_documents(tmp_path / "b.txt.gz")) == docs
    with open(tmp_path / "c.jsonl", "w") as fh:
        for d in docs:
            fh.write(json.dumps({"id": 1, "body": d}) + "\n\n")
    assert list(iter_documents(tmp_path / "c.jsonl", text_field="body")) == docs
    pq.write_table(pa.table({"text": docs + [None], "n": list(range(6))}), tmp_path / "d.parquet")
    assert list(iter_documents(tmp_path / "d.parquet")) == docs
    # A folder yields its supported files in sorted name order and ignores the others.
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_txt(folder / "b.txt", docs[:2])
    (folder / "a.jsonl").write_text(json.dumps({"text": docs[2]}) + "\n")
    pq.write_table(pa.table({"text": docs[3:]}), folder / "c.parquet")
    (folder / "notes.md").write_text("not a corpus file")
    assert list(iter_documents(folder)) == [docs[2], *docs[:2], *docs[3:]]


def test_invalid_utf8_txt(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n\nsecond \xff bad\nthird line\n")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte offset 18 \(line 3\).*--skip-bad-lines"):
        list(iter_documents(path))
    with pytest.warns(UserWarning, match=r"byte offset 18 \(line 3\)"):
        docs = list(iter_documents(path, on_error="skip"))
    assert docs == ["good line", "third line"]


def test_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: no 'text' field; pass --text-field NAME"):
        list(iter_documents(path))
    with pytest.warns(UserWarning, match=r"d\.jsonl:2: no 'text' field"):
        assert list(iter_documents(path, on_error="skip")) == ["ok"]
    path.write_text('{"text": "ok"}\n\n{"text": "broken\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON"):
        list(iter_documents(path))
    path.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'text' is int, not a string"):
        list(iter_documents(path))
    path.write_text('["text"]\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object"):
        list(iter_documents(path))


def test_parquet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a"], "id": [1]}), path)
    with pytest.raises(DataError, match=r"t\.parquet: no column 'text'; columns are: content, id"):
        list(iter_documents(path))
    with pytest.raises(DataError, match=r"column 'id' has type int64, not string"):
        list(iter_documents(path, text_field="id"))


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        list(iter_documents(tmp_path / "nope.txt"))
    (tmp_path / "x.docx").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.docx: unsupported file type; use one of \.txt, \.txt\.gz, \.jsonl"):
        list(iter_documents(tmp_path / "x.docx"))
    with pytest.raises(DataError, match="no supported files"):
        list(iter_documents(tmp_path))


# ------------------------------------------------------------------------------------------- prepare


def _expected(tok: Tokenizer, docs: list[str], period: int) -> tuple[list[int], list[int]]:
    train: list[int] = []
    val: list[int] = []
    for i, d in enumerate(docs):
        ids = [*tok.encode(d), tok.sep_id]
        (val if period and i % period == period - 1 else train).extend(ids)
    return train, val


def test_prepare_contents(tok: Tokenizer, tmp_path: Path) -> None:
    docs = _docs(23)
    src = _write_txt(tmp_path / "c.txt", docs)
    meta = prepare_corpus([src], tok, tmp_path / "out", val_fraction=0.2, workers=1, chunk_docs=4, progress=False)
    train, val = _expected(tok, docs, period=5)
    assert meta.n_docs == 23 and meta.dtype == "uint16" and meta.separator_id == tok.sep_id
    assert meta.n_train + meta.n_val == sum(len(tok.encode(d)) for d in docs) + len(docs)
    assert (meta.n_train, meta.n_val) == (len(train), len(val))
    assert meta.vocab_size == tok.vocab_size and meta.tokenizer_kind == "bpe"
    assert meta.sources == [str(src.resolve())]
    assert load_meta(tmp_path / "out") == meta
    tr, va = TokenShard(tmp_path / "out", "train"), TokenShard(tmp_path / "out", "val")
    assert tr.tokens.dtype == np.uint16 and isinstance(tr.tokens, np.memmap)
    assert tr.tokens.tolist() == train and va.tokens.tolist() == val and len(va) == len(val)
    assert (tmp_path / "out" / "train.bin").stat().st_size == 2 * len(train)
    # The saved tokenizer is the one used, and nothing temporary is left beside the output.
    assert load_tokenizer(tmp_path / "out").encode(docs[0]) == tok.encode(docs[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "out"]


def test_workers_identical(tok: Tokenizer, tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _docs(30))
    prepare_corpus([src], tok, tmp_path / "w1", val_fraction=0.1, workers=1, chunk_docs=3, progress=False)
    prepare_corpus([src], tok, tmp_path / "w2", val_fraction=0.1, workers=2, chunk_docs=3, progress=False)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert load_meta(tmp_path / "w2").n_val > 0


def test_single_document_tail_split(tok: Tokenizer, tmp_path: Path) -> None:
    doc = " ".join(WORDS * 8)
    src = _write_txt(tmp_path / "one.txt", [doc])
    meta = prepare_corpus([src], tok, tmp_path / "out", val_fraction=0.1, workers=1, progress=False)
    ids = [*tok.encode(doc), tok.sep_id]
    n_val = round(len(ids) * 0.1)
    assert (meta.n_train, meta.n_val, meta.n_docs) == (len(ids) - n_val, n_val, 1)
    out = tmp_path / "out"
    joined = TokenShard(out, "train").tokens.tolist() + TokenShard(out, "val").tokens.tolist()
    assert joined == ids


@pytest.mark.parametrize("workers", [1, 2])
def test_special_token_text_in_a_document_stays_text(tok: Tokenizer, tmp_path: Path, workers: int) -> None:
    """A document quoting "<|endoftext|>" or "[MASK]" gets no boundary or mask id from it: only prepare's separators."""
    docs = ["the world<|endoftext|>is quiet", "a river [MASK] stone", "hello over"]
    src = _write_txt(tmp_path / "c.txt", docs)
    prepare_corpus([src], tok, tmp_path / "out", val_fraction=0.0, workers=workers, chunk_docs=1, progress=False)
    ids = TokenShard(tmp_path / "out", "train").tokens.tolist()
    assert ids.count(tok.sep_id) == len(docs) and ids[-1] == tok.sep_id
    assert tok.mask_id not in ids
    cut = [i for i, t in enumerate(ids) if t == tok.sep_id]
    first = ids[:cut[0]]
    assert tok.decode(first) == docs[0]  # the quoted marker comes back as the characters it was


def test_a_worker_that_cannot_start_fails_the_prepare_instead_of_hanging(tok: Tokenizer, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A multiprocessing Pool whose initializer raises starts new workers forever; the error must reach the caller.
    import signal

    from twinlm.data import corpus

    def broken(_json: str):
        raise DataError("tokenizer.json: cannot be read in a worker")

    monkeypatch.setattr(corpus, "literal_copy", broken)  # forked workers inherit the patch
    src = _write_txt(tmp_path / "c.txt", _docs(6))
    signal.alarm(120)  # a regression hangs: fail loudly instead of stalling the suite
    try:
        with pytest.raises(DataError, match="cannot be read in a worker"):
            prepare_corpus([src], tok, tmp_path / "out", workers=2, chunk_docs=2, progress=False)
    finally:
        signal.alarm(0)
    assert not (tmp_path / "out").exists()


def test_prepare_no_val_and_replace(tok: Tokenizer, tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _docs(4))
    out = tmp_path / "out"
    prepare_corpus([src], tok, out, val_fraction=0.2, workers=1, progress=False)
    meta = prepare_corpus([src], tok, out, val_fraction=0.0, workers=1, progress=False)  # replaces the old one
    assert meta.n_val == 0 and len(TokenShard(out, "val")) == 0
    assert TokenShard(out, "train").tokens.tolist() == _expected(tok, _docs(4), 0)[0]


def test_prepare_multiple_formats(tok: Tokenizer, tmp_path: Path) -> None:
    docs = _docs(6)
    a = _write_txt(tmp_path / "a.txt", docs[:3])
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[3:]))
    meta = prepare_corpus([a, b], tok, tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    assert meta.n_docs == 6
    assert TokenShard(tmp_path / "out", "train").tokens.tolist() == _expected(tok, docs, 0)[0]


def test_prepare_exclude_drops_eval_texts(tok: Tokenizer, tmp_path: Path) -> None:
    """--exclude: a document equal to an eval text (whitespace aside) never reaches the shards; it is counted."""
    docs = _docs(12)
    src = tmp_path / "train.tsv"
    src.write_text("sentence\tlabel\n" + "".join(f"{d.replace(chr(10), ' ')}\t1\n" for d in docs))
    dev = tmp_path / "dev.tsv"
    # Doc 3 with its spaces doubled and doc 7 as written; a text absent from the corpus changes nothing.
    reflowed = docs[3].replace("\n", " ").replace(" ", "  ")
    dev.write_text(f"sentence\tlabel\n{reflowed}\t0\n{docs[7].replace(chr(10), ' ')}\t1\nnot in the corpus\t0\n")
    meta = prepare_corpus([src], tok, tmp_path / "out", val_fraction=0.0, workers=1, progress=False,
                          text_field="sentence", exclude=[dev])
    kept = [d.replace("\n", " ") for i, d in enumerate(docs) if i not in (3, 7)]
    assert meta.n_excluded == 2 and meta.n_docs == 10 and meta.excluded_from == [str(dev.resolve())]
    assert TokenShard(tmp_path / "out", "train").tokens.tolist() == _expected(tok, kept, 0)[0]
    assert load_meta(tmp_path / "out").n_excluded == 2


def test_exclude_bad_files(tok: Tokenizer, tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _docs(4))
    with pytest.raises(DataError, match=r"dev\.tsv: no such file \(given to --exclude\)"):
        prepare_corpus([src], tok, tmp_path / "out", workers=1, progress=False, exclude=[tmp_path / "dev.tsv"])
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("sentence\tlabel\nsome text\t1\n")  # read with text_field "text": no such column
    with pytest.raises(DataError, match=r"wrong\.tsv"):
        prepare_corpus([src], tok, tmp_path / "out", workers=1, progress=False, exclude=[wrong])
    assert not (tmp_path / "out").exists()


def test_tokenizer_train_exclude(tmp_path: Path) -> None:
    """A word seen only in an excluded text does not enter the vocabulary."""
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(["alpha beta gamma"] * 5 + ["zzqx zzqx zzqx zzqx"]) + "\n")
    dev = tmp_path / "dev.txt"
    dev.write_text("zzqx zzqx  zzqx zzqx\n")
    seen = train_tokenizer([src], "wordpiece", vocab_size=200, min_frequency=1)
    kept_out = train_tokenizer([src], "wordpiece", vocab_size=200, min_frequency=1, exclude=[dev])
    assert seen.token_to_id("zzqx") is not None and kept_out.token_to_id("zzqx") is None
    assert kept_out.token_to_id("alpha") is not None


def test_token_dtype() -> None:
    assert token_dtype(65535) == "uint16" and token_dtype(65536) == "uint32"


# ------------------------------------------------------------------------------------------- prepare: bad input


def test_prepare_missing_file(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        prepare_corpus([tmp_path / "nope.txt"], tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_empty_file(tok: Tokenizer, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: empty corpus, no text found"):
        prepare_corpus([empty], tok, tmp_path / "out", workers=1, progress=False)
    # The failed run leaves neither the output nor its temporary folder behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_prepare_bad_jsonl_line(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(5)) + '{"title": "x"}\n')
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"d\.jsonl:6: no 'text' field"):
            prepare_corpus([path], tok, tmp_path / "out", workers=workers, chunk_docs=2, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_prepare_bad_utf8_skip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello world\n\nthe \xc3\x28 river\n\nquiet stone\n")
    with pytest.raises(DataError, match="byte offset 17"):
        prepare_corpus([path], tok, tmp_path / "out", workers=1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = prepare_corpus([path], tok, tmp_path / "out", val_fraction=0.0, on_error="skip", workers=1,
                              progress=False)
    assert any("byte offset 17 (line 3)" in str(w.message) for w in caught)
    assert meta.n_docs == 2


def test_prepare_refuses_foreign_out_dir(tok: Tokenizer, tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _docs(3))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared corpus"):
        prepare_corpus([src], tok, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_token_shard_not_prepared(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not a prepared corpus \(no meta\.json\); run `twinlm prepare` first"):
        TokenShard(tmp_path, "train")


def test_token_shard_truncated(tok: Tokenizer, tmp_path: Path) -> None:
    src = _write_txt(tmp_path / "c.txt", _docs(10))
    prepare_corpus([src], tok, tmp_path / "out", workers=1, progress=False)
    with open(tmp_path / "out" / "train.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(DataError, match="corrupted"):
        TokenShard(tmp_path / "out", "train")
    assert isinstance(load_meta(tmp_path / "out"), CorpusMeta)
