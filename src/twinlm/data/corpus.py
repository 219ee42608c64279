"""Corpus preparation: documents -> token ids in flat binary shards (train.bin, val.bin) read by memmap.

With a word segmenter (``segmenter="jieba"``) each shard gets a companion {split}.word_starts.bin: one uint8 per
token, 1 where the token starts a word (see data/segment.py), read by whole-word masking at no cost per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from ..errors import ConfigError, DataError
from .exclude import load_excluded, without_excluded
from .readers import iter_documents
from .segment import Segmenter, load_segmenter, segment_flags

if TYPE_CHECKING:
    import tokenizers

    from ..tokenizer import Tokenizer

META_FILE = "meta.json"
SPLITS = ("train", "val")
WORD_STARTS = "word_starts"  # {split}.word_starts.bin: uint8 word-start flag per token


@dataclass
class CorpusMeta:
    """What meta.json records about a prepared corpus; n_train and n_val count tokens."""

    vocab_size: int
    dtype: str  # "uint16" or "uint32"
    n_train: int
    n_val: int
    n_docs: int
    separator_id: int
    tokenizer_kind: str
    sources: list[str] = field(default_factory=list)
    segmenter: str | None = None  # set when {split}.word_starts.bin exist; None in folders prepared without one
    n_unk: int | None = None  # tokens that became the unknown token; None when not counted (older folders)
    excluded_from: list[str] = field(default_factory=list)  # --exclude files (texts kept out of the corpus)
    n_excluded: int = 0  # documents dropped because their text is in one of those files

    def save(self, folder: str | Path) -> Path:
        """Write meta.json into ``folder`` and return its path."""
        path = Path(folder) / META_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path


def load_meta(folder: str | Path) -> CorpusMeta:
    """Read meta.json of a prepared corpus folder."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise DataError(f"{folder}: not a prepared corpus (no meta.json); run `twinlm prepare` first")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(CorpusMeta)}
        meta = CorpusMeta(**{k: v for k, v in data.items() if k in known})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: corrupted meta.json ({exc}); run `twinlm prepare` again") from None
    if meta.dtype not in ("uint16", "uint32"):
        raise DataError(f"{path}: unknown token dtype {meta.dtype!r}; run `twinlm prepare` again")
    return meta


class TokenShard:
    """One split of a prepared corpus as a read-only memmap of token ids."""

    def __init__(self, folder: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.folder = Path(folder)
        self.split = split
        self.meta = load_meta(folder)
        path = self.folder / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"{path}: missing; the corpus is incomplete, run `twinlm prepare` again")
        dtype = np.dtype(self.meta.dtype)
        expected = self.meta.n_train if split == "train" else self.meta.n_val
        size = path.stat().st_size
        if size != expected * dtype.itemsize:
            raise DataError(
                f"{path}: {size} bytes but meta.json says {expected} {dtype.name} tokens; "
                "the corpus is corrupted, run `twinlm prepare` again"
            )
        # np.memmap cannot map an empty file; an empty split is a plain empty array.
        self.tokens: np.ndarray = (
            np.memmap(path, dtype=dtype, mode="r") if expected else np.empty(0, dtype=dtype)
        )
        # uint8 word-start flag per token when the corpus was prepared with a segmenter, else None.
        self.word_starts: np.ndarray | None = None
        if self.meta.segmenter:
            flags = self.folder / f"{split}.{WORD_STARTS}.bin"
            if not flags.is_file() or flags.stat().st_size != expected:
                found = f"{flags.stat().st_size} bytes" if flags.is_file() else "missing"
                raise DataError(
                    f"{flags}: {found} but meta.json says {expected} word-start flags (segmenter "
                    f"{self.meta.segmenter}); the corpus is corrupted, run `twinlm prepare` again"
                )
            self.word_starts = np.memmap(flags, dtype=np.uint8, mode="r") if expected else np.empty(0, np.uint8)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenShard({str(self.folder)!r}, {self.split!r}, tokens={len(self)})"


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype name that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= 65535 else "uint32"


# ---------------------------------------------------------------------------------------------- workers

_WORKER_HF: tokenizers.Tokenizer | None = None
_WORKER_SEGMENT: Segmenter | None = None
_WORKER_ERROR: Exception | None = None

Encoded = tuple[np.ndarray, np.ndarray | None, list[int]]  # ids, word-start flags (or None), document lengths


def literal_copy(tokenizer_json: str) -> tokenizers.Tokenizer:
    """A tokenizer that reads special-token text in a document ("<|endoftext|>", "[MASK]") as ordinary characters.

    Corpus text is data: a web page quoting "<|endoftext|>" must not become a document boundary, nor "[MASK]" a
    masked position the model is asked to predict (nanoGPT's prepare uses tiktoken's encode_ordinary for the same
    reason). Only the separator that prepare itself writes between documents is the special id.
    """
    import tokenizers

    hf = tokenizers.Tokenizer.from_str(tokenizer_json)
    hf.encode_special_tokens = True
    return hf


def _encode_docs(hf: tokenizers.Tokenizer, docs: list[str], sep_id: int, dtype: str,
                 segment: Segmenter | None = None) -> Encoded:
    """Ids of each document followed by the separator, concatenated, with each document's length.

    With ``segment``, also the word-start flag of every token; the separator between documents counts as a start.
    """
    ids: list[int] = []
    lengths: list[int] = []
    flags: list[np.ndarray] = []
    for doc, enc in zip(docs, hf.encode_batch(docs, add_special_tokens=False), strict=True):
        ids.extend(enc.ids)
        ids.append(sep_id)
        lengths.append(len(enc.ids) + 1)
        if segment is not None:
            flags.append(segment_flags(segment, doc, enc.offsets))
            flags.append(np.ones(1, dtype=np.uint8))
    word_starts = np.concatenate(flags) if segment is not None else None
    return np.array(ids, dtype=dtype), word_starts, lengths


def _worker_init(tokenizer_json: str, segmenter: str | None) -> None:
    global _WORKER_HF, _WORKER_SEGMENT, _WORKER_ERROR
    # Parallelism comes from the processes; Rust threads inside each worker would only compete.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        _WORKER_HF = literal_copy(tokenizer_json)
        _WORKER_SEGMENT = load_segmenter(segmenter) if segmenter else None
    except Exception as err:  # noqa: BLE001 (a Pool whose initializer raises respawns workers forever: a hang)
        _WORKER_ERROR = err


def _worker_encode(task: tuple[list[str], int, str]) -> Encoded:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR  # reaches prepare_corpus through pool.imap
    docs, sep_id, dtype = task
    assert _WORKER_HF is not None, "worker initializer did not run"
    return _encode_docs(_WORKER_HF, docs, sep_id, dtype, _WORKER_SEGMENT)


# ---------------------------------------------------------------------------------------------- prepare


def _start_method() -> str:
    """fork on Linux, spawn elsewhere.

    spawn re-imports the caller's __main__ in every worker, which fails (and makes Pool respawn workers
    forever) for scripts without a main guard or code fed on stdin. fork has no such need, and the
    tokenizers library makes forked children drop its thread pool, so fork is safe here. macOS and Windows
    keep spawn, their safe default.
    """
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than a prepared corpus."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a folder; choose another output folder")
        if any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
            raise DataError(
                f"{out_dir}: exists and is not a prepared corpus; choose another output folder or empty it"
            )


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished tmp folder; the old corpus is moved aside first, then deleted."""
    old: Path | None = None
    if out_dir.exists():
        _check_out_dir(out_dir)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _chunks(
    files: Sequence[Path], text_field: str, on_error: str, size: int, counts: dict[str, int],
    excluded: frozenset[str], dropped: list[int],
) -> Iterator[list[str]]:
    """Documents of every file in lists of ``size``; counts[file] records how many each file gave.

    Documents whose text is in ``excluded`` are left out and counted in dropped[0].
    """
    chunk: list[str] = []
    for file in files:
        counts[str(file)] = 0
        docs = iter_documents(file, text_field=text_field, on_error=on_error)
        for doc in without_excluded(docs, excluded, dropped):
            counts[str(file)] += 1
            chunk.append(doc)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _split_tail_to_val(tmp: Path, n_train: int, val_fraction: float, dtype: np.dtype,
                       word_starts: bool = False) -> tuple[int, int]:
    """Move the last val_fraction of train.bin (and of its word-start flags) into val; returns (n_train, n_val)."""
    n_val = min(max(1, round(n_train * val_fraction)), n_train - 1)
    files = [("", dtype)] + ([(f".{WORD_STARTS}", np.dtype(np.uint8))] if word_starts else [])
    for stem, kind in files:
        train_path, val_path = tmp / f"train{stem}.bin", tmp / f"val{stem}.bin"
        tail = np.fromfile(train_path, dtype=kind, count=n_val, offset=(n_train - n_val) * kind.itemsize)
        with open(val_path, "wb") as fh:
            fh.write(tail.tobytes())
        os.truncate(train_path, (n_train - n_val) * kind.itemsize)
    return n_train - n_val, n_val


def prepare_corpus(
    files: list[str | Path],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    workers: int = 0,
    text_field: str = "text",
    on_error: str = "raise",
    chunk_docs: int = 256,
    progress: bool = True,
    segmenter: str | None = None,
    exclude: Sequence[str | Path] = (),
) -> CorpusMeta:
    """Tokenize ``files`` into out_dir/{train,val}.bin (+ meta.json, tokenizer), streaming, and return the meta.

    Every document is followed by tokenizer.sep_id. Document i goes to val when
    ``i % round(1/val_fraction) == round(1/val_fraction) - 1``. When that leaves val empty (fewer documents
    than the period, e.g. a single book) the last val_fraction of the train tokens become val instead.
    workers=0 uses every CPU; workers<=1 tokenizes in this process. Output is identical for any worker count.
    ``segmenter`` ("jieba") also writes out_dir/{train,val}.word_starts.bin, a word-start flag per token.
    meta.n_unk counts the tokens that became the unknown token (0 for a tokenizer without one).
    ``exclude``: files of texts (dev and test splits) to keep out: a document equal to one of them (whitespace
    collapsed) is dropped, and meta.n_excluded counts them (see data/exclude.py).
    """
    from tqdm.auto import tqdm

    if isinstance(files, (str, Path)):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no input files given; pass one or more text, jsonl or parquet files")
    if not 0.0 <= val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be between 0 and 0.5, got {val_fraction}")
    if chunk_docs <= 0:
        raise ConfigError(f"chunk_docs must be a positive integer, got {chunk_docs}")
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: no such file")
    segment = load_segmenter(segmenter) if segmenter else None  # a missing segmenter fails before any work
    excluded = load_excluded(exclude, text_field)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    workers = (os.cpu_count() or 1) if workers == 0 else workers
    period = round(1 / val_fraction) if val_fraction > 0 else 0
    dtype = np.dtype(token_dtype(tokenizer.vocab_size))
    sep_id = tokenizer.sep_id
    # Tokenizers built before Tokenizer.unk_id existed: look the BERT name up instead.
    unk_id = getattr(tokenizer, "unk_id", tokenizer.token_to_id("[UNK]"))
    where = ", ".join(str(p) for p in paths)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling and rename at the end: a crash never leaves a folder with a meta.json
    # next to half-written shards.
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pool = None
    try:
        counts: dict[str, int] = {}
        dropped = [0]
        chunks = _chunks(paths, text_field, on_error, chunk_docs, counts, excluded, dropped)
        if workers > 1:
            ctx = multiprocessing.get_context(_start_method())
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(tokenizer.hf.to_str(), segmenter))
            tasks = ((chunk, sep_id, dtype.name) for chunk in chunks)
            results = pool.imap(_worker_encode, tasks)  # ordered, so the output never depends on timing
        else:
            literal = literal_copy(tokenizer.hf.to_str())
            results = (_encode_docs(literal, chunk, sep_id, dtype.name, segment) for chunk in chunks)

        n_docs = n_train = n_val = n_unk = 0
        start = time.perf_counter()
        # The bar closes on errors too, so a one-line error message starts on a line of its own.
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(desc="tokenizing", unit="doc", disable=not progress, dynamic_ncols=True))
            splits = ((False, "train"), (True, "val"))
            outs: dict[bool, BinaryIO] = {
                is_val: stack.enter_context(open(tmp / f"{split}.bin", "wb")) for is_val, split in splits
            }
            flag_outs: dict[bool, BinaryIO] = {}
            if segment is not None:
                flag_outs = {
                    is_val: stack.enter_context(open(tmp / f"{split}.{WORD_STARTS}.bin", "wb"))
                    for is_val, split in splits
                }
            for flat, word_starts, lengths in results:
                if unk_id is not None:
                    n_unk += int(np.count_nonzero(flat == unk_id))
                pos = 0
                for length in lengths:
                    is_val = period > 0 and n_docs % period == period - 1
                    outs[is_val].write(flat[pos : pos + length].tobytes())
                    if word_starts is not None:
                        flag_outs[is_val].write(word_starts[pos : pos + length].tobytes())
                    if is_val:
                        n_val += length
                    else:
                        n_train += length
                    pos += length
                    n_docs += 1
                bar.update(len(lengths))
                rate = (n_train + n_val) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{n_train + n_val:,} tokens, {rate:,.0f} tok/s", refresh=False)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None

        # Separators alone are not text: documents that encode to nothing leave an empty corpus too.
        if n_docs == 0 or n_train + n_val == n_docs:
            raise DataError(f"{where}: empty corpus, no text found")
        if len(paths) > 1:
            for name, count in counts.items():
                if count == 0:
                    warnings.warn(f"{name}: no documents found in this file; it adds nothing", stacklevel=2)
        if period and n_val == 0 and n_train >= 2:
            n_train, n_val = _split_tail_to_val(tmp, n_train, val_fraction, dtype, word_starts=segment is not None)

        meta = CorpusMeta(
            vocab_size=tokenizer.vocab_size,
            dtype=dtype.name,
            n_train=n_train,
            n_val=n_val,
            n_docs=n_docs,
            separator_id=sep_id,
            tokenizer_kind=tokenizer.kind,
            sources=[str(p.resolve()) for p in paths],
            segmenter=segmenter,
            n_unk=n_unk,
            excluded_from=[str(Path(p).resolve()) for p in exclude],
            n_excluded=dropped[0],
        )
        tokenizer.save(tmp)
        meta.save(tmp)  # written last inside tmp: its presence marks a complete corpus
        _move_into_place(tmp, out_dir)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
