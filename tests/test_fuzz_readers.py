"""Fuzzed input files (Hypothesis): every reader either reads a file or raises a TwinLMError whose one-line message
names the file, never another exception. Inputs: classification TSV/CSV/JSONL, SQuAD/CMRC JSON, CoNLL, corpus text
(.txt, .txt.gz, .jsonl), tokenizer files, config.json (twinlm and Hugging Face) and safetensors headers, each built
from a valid layout and then damaged: wrong encodings, byte-order marks, CRLF or CR line ends, NUL bytes, huge lines,
truncation, missing columns and fields, wrong JSON types, flipped bytes.

A documented skip is a warning that names the file (SQuAD answers not at their answer_start); they are counted.
The examples are derandomized (the same cases every run); TWINLM_FUZZ_EXAMPLES=N runs N per reader instead of 60.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save  # noqa: E402

from helpers import REPO, peaked_model  # noqa: E402
from twinlm import checkpoint as ckpt  # noqa: E402
from twinlm.cli import main  # noqa: E402
from twinlm.config import ModelConfig  # noqa: E402
from twinlm.data.readers import iter_documents  # noqa: E402
from twinlm.errors import TwinLMError  # noqa: E402
from twinlm.finetune import FinetuneOptions, build_data  # noqa: E402
from twinlm.hf import config_from_hf, hf_config_from, is_hf_folder, read_hf_config  # noqa: E402
from twinlm.tensorfiles import read_safetensors  # noqa: E402
from twinlm.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

EXAMPLES = int(os.environ.get("TWINLM_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
OUTCOMES: dict[str, Counter] = {}  # reader -> {"read", "error", "skip"}: printed at the end with -s


# --------------------------------------------------------------------------------------------------- damage


# Any character, NUL, tab, CR and line separators included (surrogates cannot be encoded at all).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
WORDS = st.text(st.sampled_from("abc xyz ÉÀ 中文\t\r\n\0\"',;:{}[]#-"), max_size=24)
CLEAN = st.text(st.sampled_from("abcdef xyz É中文"), min_size=1, max_size=12).filter(str.strip)
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)


@st.composite
def damaged(draw, text: str) -> bytes:
    """``text`` re-encoded and then hurt in a few random ways (or left as it is: half the cases)."""
    if draw(st.booleans()):
        return text.encode("utf-8")
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if newline != "\n":
        text = text.replace("\n", newline)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    data = text.encode(encoding, errors="replace")
    for op in draw(st.lists(st.sampled_from(["truncate", "nul", "flip", "huge", "garbage"]), max_size=3)):
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:at]
        elif op == "nul":
            data = data[:at] + b"\0" * draw(st.integers(1, 4)) + data[at:]
        elif op == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        elif op == "huge":  # a 300 kB line
            data = data[:at] + b"x" * 300_000 + data[at:]
        elif op == "garbage":
            data = data[:at] + draw(st.binary(max_size=16)) + data[at:]
    return data


def check(reader: str, path: Path, read) -> None:
    """Run ``read(path)``: it returns, warns about a skip naming the file, or raises a one-line TwinLMError naming
    the file. Anything else (another exception type) propagates, and Hypothesis reports and shrinks it."""
    tally = OUTCOMES.setdefault(reader, Counter())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read(path)
        except TwinLMError as exc:
            message = str(exc)
            assert path.name in message, f"the error does not name the file: {message}"
            assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
            tally["error"] += 1
            return
    skips = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for message in skips:
        assert path.name in message, f"the warning does not name the file: {message}"
    tally["skip" if skips else "read"] += 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for reader, tally in sorted(OUTCOMES.items()):
        print(f"\nfuzz {reader}: {sum(tally.values())} cases: {dict(tally)}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tok(work):
    text = work / "train.txt"
    text.write_text("the cat sat on the mat . 中文 很 好 . alice went to paris .\n" * 20)
    return train_tokenizer([text], kind="wordpiece", vocab_size=120)


# --------------------------------------------------------------------------------------------------- task files


@st.composite
def table(draw) -> tuple[str, str]:
    """(suffix, text) of a classification file: a header and rows, some with too few or too many cells."""
    suffix = draw(st.sampled_from([".tsv", ".csv", ".jsonl"]))
    columns = draw(st.one_of(st.just(["text", "label"]), st.just(["id", "sentence", "label"]),
                             st.lists(st.sampled_from(["text", "sentence", "label", "pair", "id"]), min_size=1,
                                      max_size=4, unique=True)))
    cell = st.one_of(CLEAN, CLEAN, CLEAN, WORDS, st.sampled_from(["pos", "neg", "1", "0.5", "a,b", ""]))
    n = len(columns)
    width = st.one_of(st.just(n), st.just(n), st.just(n), st.integers(max(0, n - 1), n + 1))  # some rows ragged
    rows = [draw(st.lists(cell, min_size=w, max_size=w)) for w in draw(st.lists(width, min_size=1, max_size=6))]
    if suffix == ".jsonl":
        lines = []
        for row in rows:
            if draw(st.booleans()):
                cells = zip(columns, row, strict=False)
                lines.append(json.dumps({c: draw(st.one_of(st.just(v), JUNK)) for c, v in cells}))
            else:
                lines.append(draw(st.one_of(st.just("{"), st.just("[1, 2]"), st.just("null"), TEXT)))
        return suffix, "\n".join(lines) + "\n"
    out = io.StringIO()
    if suffix == ".csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return suffix, out.getvalue()
    return suffix, "\n".join("\t".join(r) for r in [columns, *rows]) + "\n"


@given(case=table(), problem=st.sampled_from(["single_label", "multi_label", "regression"]), data=st.data())
@FUZZ
def test_classification_files(work, tok, case, problem, data):
    suffix, text = case
    path = work / f"fuzz{suffix}"
    path.write_bytes(data.draw(damaged(text)))
    opts = FinetuneOptions("classify", max_seq_len=16, problem=problem)
    check("classification", path, lambda p: build_data(p, tok, opts, None, True, None))
    check("classification-eval", path, lambda p: build_data(p, tok, opts, ["neg", "pos"], False, None))


@st.composite
def squad(draw) -> str:
    """SQuAD/CMRC JSON: the real layout with answers taken from their context, any part of it possibly replaced
    by a value of the wrong type."""
    def maybe(value):  # one part in 12 gets a value of a random type
        return draw(JUNK) if draw(st.integers(0, 11)) == 0 else value

    articles = []
    for _ in range(draw(st.integers(1, 2))):
        paragraphs = []
        for _ in range(draw(st.integers(1, 2))):
            context = draw(st.one_of(CLEAN, WORDS))
            qas = []
            for q in range(draw(st.integers(1, 3))):
                start = draw(st.integers(0, len(context)))
                answer = {"text": context[start:start + draw(st.integers(0, 5))],
                          "answer_start": start + draw(st.sampled_from([0, 0, 0, 1, -1, -100]))}
                qa = {"id": maybe(f"q{q}"), "question": maybe(draw(WORDS)),
                      "answers": maybe([maybe(answer)] * draw(st.integers(0, 2)))}
                if draw(st.booleans()):
                    qa["is_impossible"] = maybe(True)
                qas.append(maybe(qa))
            paragraphs.append(maybe({"context": maybe(context), "qas": maybe(qas)}))
        articles.append(maybe({"title": "t", "paragraphs": maybe(paragraphs)}))
    doc = maybe({"version": "v2.0", "data": maybe(articles)})
    return json.dumps(doc, ensure_ascii=draw(st.booleans()))


@given(text=squad(), data=st.data())
@FUZZ
def test_squad_files(work, tok, text, data):
    path = work / "fuzz-squad.json"
    path.write_bytes(data.draw(damaged(text)))
    opts = FinetuneOptions("qa", max_seq_len=48, doc_stride=16)
    check("squad", path, lambda p: build_data(p, tok, opts, None, True, None))


@st.composite
def conll(draw) -> str:
    valid = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    tag = st.one_of(valid, valid, valid, st.sampled_from(["B-", "X", "b-per", "O O"]))
    word = st.sampled_from(["EU", "rejects", "中", "a\0b", "Ölp"])
    line = st.one_of(st.builds(lambda w, t: f"{w} NN {t}", word, tag), st.builds(lambda w, t: f"{w} NN {t}", word, tag),
                     st.builds(lambda w, t: f"{w}\t{t}", WORDS, tag), st.just(""), st.just(""),
                     st.just("-DOCSTART- -X- O O"), WORDS)
    return "\n".join(draw(st.lists(line, max_size=12))) + "\n"


@given(text=conll(), data=st.data())
@FUZZ
def test_conll_files(work, tok, text, data):
    path = work / "fuzz.conll"
    path.write_bytes(data.draw(damaged(text)))
    opts = FinetuneOptions("ner", max_seq_len=16)
    check("conll", path, lambda p: build_data(p, tok, opts, None, True, None))
    check("conll-eval", path, lambda p: build_data(p, tok, opts, ["O", "B-PER", "I-PER"], False, None))


# --------------------------------------------------------------------------------------------------- corpus text


@st.composite
def corpus(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".txt", ".txt.gz", ".jsonl"]))
    if suffix == ".jsonl":
        records = draw(st.lists(st.one_of(st.builds(lambda t: {"text": t}, WORDS), JUNK), max_size=5))
        text = "\n".join(json.dumps(r) for r in records) + "\n"
    else:
        text = "\n".join(draw(st.lists(WORDS, max_size=8)))
    data = draw(damaged(text))
    if suffix == ".txt.gz":
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]  # a truncated download
    return suffix, data


@given(case=corpus(), skip=st.booleans())
@FUZZ
def test_corpus_files(work, case, skip):
    suffix, data = case
    path = work / f"fuzz-corpus{suffix}"
    path.write_bytes(data)

    def read(p):
        docs = list(iter_documents(p, on_error="skip" if skip else "raise"))
        assert all(isinstance(d, str) and d for d in docs)

    check("corpus-skip" if skip else "corpus", path, read)


# --------------------------------------------------------------------------------------------------- model files


def mutate_json(draw, value):
    """A JSON value with a few keys deleted, replaced by junk, or added."""
    if isinstance(value, dict) and value:
        value = dict(value)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(sorted(value)))
            action = draw(st.sampled_from(["delete", "junk", "recurse", "add"]))
            if action == "delete":
                value.pop(key)
            elif action == "junk":
                value[key] = draw(JUNK)
            elif action == "recurse":
                value[key] = mutate_json(draw, value[key])
            else:
                value[draw(TEXT)] = draw(JUNK)
            if not value:
                break
    elif isinstance(value, list) and value:
        value = list(value)
        at = draw(st.integers(0, len(value) - 1))
        value[at] = draw(st.one_of(JUNK, st.just(mutate_json(draw, value[at]))))
    return value


@st.composite
def tokenizer_files(draw, sources: dict[str, str]) -> dict[str, bytes]:
    files = {}
    for name, text in sources.items():
        if draw(st.booleans()):
            text = json.dumps(mutate_json(draw, json.loads(text)))
        files[name] = draw(damaged(text)) if draw(st.booleans()) else text.encode()
    if draw(st.booleans()):
        files.pop(draw(st.sampled_from(sorted(files))))
    return files


@pytest.fixture(scope="module")
def tokenizer_sources(work, tok) -> dict[str, str]:
    folder = work / "tok-valid"
    tok.save(folder)
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


@given(data=st.data())
@FUZZ
def test_tokenizer_files(work, tokenizer_sources, data):
    folder = work / "tok-fuzz"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, content in data.draw(tokenizer_files(tokenizer_sources)).items():
        (folder / name).write_bytes(content)

    def read(p):
        tok = load_tokenizer(p)
        tok.encode("the cat [MASK] 中文")

    check("tokenizer", folder, read)


TWINLM_CONFIG = ModelConfig(vocab_size=120, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_positions=32)
CONFIGS = [TWINLM_CONFIG.to_dict(),
           hf_config_from(TWINLM_CONFIG.replace(norm="post", type_vocab_size=2, head_transform=True), "bert"),
           hf_config_from(TWINLM_CONFIG.replace(attention="causal", type_vocab_size=0), "gpt2"),
           hf_config_from(TWINLM_CONFIG.replace(attention="causal", norm_type="rmsnorm", position="rotary",
                                                mlp="swiglu", activation="silu"), "llama")]


def read_config(folder: Path) -> ModelConfig:
    """config.json as loading.load reads it: a Hugging Face one is mapped, a twinlm one read as is."""
    if is_hf_folder(folder):
        return config_from_hf(read_hf_config(folder), has_head=True, tied=True, where=str(folder / "config.json"))
    return ModelConfig.load(folder)


@given(base=st.sampled_from(CONFIGS), data=st.data())
@FUZZ
def test_config_files(work, base, data):
    folder = work / "config-fuzz"
    folder.mkdir(exist_ok=True)
    text = json.dumps(mutate_json(data.draw, base))
    (folder / "config.json").write_bytes(data.draw(damaged(text)) if data.draw(st.booleans()) else text.encode())
    check("config.json", folder / "config.json", lambda p: read_config(p.parent))


@st.composite
def safetensors_bytes(draw) -> bytes:
    """A real safetensors file with its header (JSON after an 8-byte length) or its data damaged."""
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5, dtype=torch.int64)}
    raw = save(tensors, metadata={"format": "pt"})
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    kind = draw(st.sampled_from(["header", "length", "bytes", "offsets"]))
    if kind == "header":
        header = mutate_json(draw, header)
    elif kind == "offsets":
        name = draw(st.sampled_from(["w", "b"]))
        header[name]["data_offsets"] = [draw(st.integers(-2, 10**15)), draw(st.integers(-2, 10**15))]
        header[name]["shape"] = draw(st.lists(st.integers(-1, 10**9), max_size=3))
    text = json.dumps(header).encode()
    length = len(text) if kind != "length" else draw(st.integers(0, 2**64 - 1))
    data = struct.pack("<Q", length) + text + body
    if kind == "bytes":
        data = draw(damaged(data.decode("latin-1"))) if draw(st.booleans()) else data[:draw(st.integers(0, len(data)))]
    return data


@given(data=safetensors_bytes())
@FUZZ
def test_safetensors_headers(work, data):
    path = work / "fuzz.safetensors"
    path.write_bytes(data)

    def read(p):
        for name, tensor in read_safetensors(p).items():
            assert isinstance(name, str) and isinstance(tensor, torch.Tensor)

    check("safetensors", path, read)


# --------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def model_folder(work, tok) -> Path:
    model = peaked_model(tok.vocab_size, "bidirectional", positions=32)
    return ckpt.save_model(work / "model", model_state=model.state_dict(), config=model.config, tokenizer=tok)


BAD_FILES = {
    "bad.tsv": "sentence\tlabel\nfine\tpos\n\0\t\n",
    "bad.csv": "\ufefftext,label\n\"unclosed,pos\n",
    "bad.jsonl": '{"text": "a", "label": "pos"}\n{"text": ["not", "text"], "label": 1}\n',
    "bad-squad.json": '{"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": 1, "question": 7, "answers": '
                      '[{"text": "b", "answer_start": "one"}]}]}]}]}',
    "bad.conll": "EU B-ORG\nrejects O\n\nGerman\n",
}
COMMANDS = {".tsv": "classify", ".csv": "classify", ".jsonl": "classify", ".json": "qa", ".conll": "ner"}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_cli_turns_a_bad_task_file_into_one_error_line(work, model_folder, name, capsys):
    path = work / name
    path.write_bytes(BAD_FILES[name].encode("utf-8"))
    task = COMMANDS[path.suffix]
    code = main(["finetune", "--task", task, "--init", str(model_folder), "--train", str(path), "--out",
                 str(work / "cli-run"), "--max-seq-len", "32", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("twinlm: error: ") and name in err[0], err


MODEL_DAMAGE = {"config.json": b'{"vocab_size": "many", "n_layers": 1}', "model.safetensors": b"\xff" * 8 + b"{}",
                "tokenizer.json": b'{"model": {"type": "WordPiece"'}


def broken_copy(model_folder: Path, work: Path, name: str) -> Path:
    """The model folder with one file damaged and no manifest (a hand-edited folder), so the reader meets it."""
    import shutil

    folder = work / f"broken-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model_folder, folder)
    (folder / "manifest.json").unlink()
    (folder / name).write_bytes(MODEL_DAMAGE[name])
    return folder


@pytest.mark.parametrize("name", sorted(MODEL_DAMAGE))
def test_cli_turns_a_damaged_model_file_into_one_error_line(work, model_folder, name, capsys):
    folder = broken_copy(model_folder, work, name)
    code = main(["fill-mask", "--model", str(folder), "a [MASK]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("twinlm: error: ") and name in err[0], err


def test_the_console_script_prints_no_traceback(work, model_folder):
    """The real process: a damaged config.json ends in one `twinlm: error:` line on stderr and exit code 2."""
    folder = broken_copy(model_folder, work, "config.json")
    got = subprocess.run([sys.executable, "-m", "twinlm.cli", "fill-mask", "--model", str(folder), "a [MASK]"],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = got.stderr.strip().splitlines()
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("twinlm: error: ") and "config.json" in lines[0], lines


BOM_CASES = {
    "bom.tsv": ("classify", "text\tlabel\nthe cat\tpos\nthe mat\tneg\n"),
    "bom.csv": ("classify", "text,label\nthe cat,pos\nthe mat,neg\n"),
    "bom.jsonl": ("classify", '{"text": "the cat", "label": "pos"}\n{"text": "the mat", "label": "neg"}\n'),
    "bom.json": ("qa", '{"data": [{"paragraphs": [{"context": "the cat sat", "qas": [{"id": "1", "question": "who",'
                       ' "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}'),
    "bom.conll": ("ner", "EU B-LOC\nrejects O\n\nthe O\ncat B-PER\n"),
}


@pytest.mark.parametrize("name", sorted(BOM_CASES))
def test_a_byte_order_mark_reads_like_the_same_file_without_one(work, tok, name):
    """Windows tools often start UTF-8 files with a BOM: every task reader sees the same rows with or without."""
    task, text = BOM_CASES[name]
    plain, marked = work / f"plain-{name}", work / f"marked-{name}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    opts = FinetuneOptions(task, max_seq_len=32)
    (a, labels_a), (b, labels_b) = build_data(plain, tok, opts, None, True, None), \
        build_data(marked, tok, opts, None, True, None)
    assert labels_a == labels_b and a.features == b.features and len(a.features) >= 1


def test_a_byte_order_mark_in_corpus_files_is_not_text(work):
    for suffix, text in ((".txt", "first line\nsecond\n\nnext paragraph\n"), (".jsonl", '{"text": "first"}\n')):
        plain, marked = work / f"plain{suffix}", work / f"marked{suffix}"
        plain.write_text(text, encoding="utf-8")
        marked.write_text(text, encoding="utf-8-sig")
        assert list(iter_documents(marked)) == list(iter_documents(plain)) != []
