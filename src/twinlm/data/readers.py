"""Documents from text files: plain text (paragraphs), gzip text, JSON lines, parquet and TSV/CSV tables."""

from __future__ import annotations

import csv
import gzip
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError, DataError

SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".parquet", ".tsv", ".csv")
ON_ERROR_CHOICES = ("raise", "skip")
_PARQUET_BATCH_ROWS = 1024
# csv's default cell limit (131,072 characters) is smaller than a long document; 2**31 - 1 fits a C long everywhere.
_CSV_FIELD_LIMIT = 2**31 - 1


def _kind_of(path: Path) -> str | None:
    """The reader for a file name, or None when its extension is not supported."""
    name = path.name.lower()
    # ".txt.gz" must be tested before ".txt": both end the same way after the ".gz" is gone.
    for suffix in (".txt.gz", ".txt", ".jsonl", ".parquet", ".tsv", ".csv"):
        if name.endswith(suffix):
            return suffix
    return None


def supported_files(folder: str | Path) -> list[Path]:
    """The files of ``folder`` (not recursive, hidden files left out) that iter_documents can read, sorted."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _kind_of(p) is not None
    )


def iter_documents(path: str | Path, text_field: str = "text", on_error: str = "raise") -> Iterator[str]:
    """Yield the documents of a file or of every supported file in a folder, streaming.

    ``.txt``/``.txt.gz``: a document is a paragraph (lines separated by blank lines). ``.jsonl``: the
    ``text_field`` of each JSON object. ``.parquet``: the ``text_field`` column. ``.tsv``/``.csv`` with a
    header row: the ``text_field`` column, one document per row (TSV cells are unquoted, as in GLUE's files;
    CSV cells may be quoted and span lines). ``on_error="skip"`` warns about and skips undecodable lines /
    bad records instead of raising DataError.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error is {on_error!r}; choose one of {', '.join(ON_ERROR_CHOICES)}")
    path = Path(path)
    if path.is_dir():
        files = supported_files(path)
        if not files:
            raise DataError(
                f"{path}: no supported files in this folder (looked for {', '.join(SUPPORTED_SUFFIXES)})"
            )
        for file in files:
            yield from iter_documents(file, text_field=text_field, on_error=on_error)
        return
    if not path.exists():
        raise DataError(f"{path}: no such file")
    kind = _kind_of(path)
    if kind == ".txt":
        with open(path, "rb") as fh:
            yield from _iter_paragraphs(fh, path, on_error)
    elif kind == ".txt.gz":
        with gzip.open(path, "rb") as fh:
            try:
                yield from _iter_paragraphs(fh, path, on_error)
            except (gzip.BadGzipFile, EOFError, OSError) as exc:
                raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    elif kind == ".jsonl":
        yield from _iter_jsonl(path, text_field, on_error)
    elif kind == ".parquet":
        yield from _iter_parquet(path, text_field)
    elif kind in (".tsv", ".csv"):
        yield from _iter_table(path, text_field, on_error, tsv=kind == ".tsv")
    else:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _bad_utf8_message(path: Path, offset: int, lineno: int) -> str:
    return (
        f"{path}: not valid UTF-8 at byte offset {offset} (line {lineno}); "
        "re-encode the file as UTF-8 or pass --skip-bad-lines"
    )


def _iter_paragraphs(fh: BinaryIO, path: Path, on_error: str) -> Iterator[str]:
    """Paragraphs of a binary text stream; binary so that a decoding error can name its byte offset."""
    paragraph: list[str] = []
    offset = 0  # bytes before the current line (of the decompressed stream for .gz)
    for lineno, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = _bad_utf8_message(path, offset + exc.start, lineno)
            if on_error == "raise":
                raise DataError(message) from None
            warnings.warn(f"{message}; skipping the line", stacklevel=3)
            offset += len(raw)
            continue
        offset += len(raw)
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]  # a byte-order mark is an encoding artefact, not text
        # Strip only the line ending (LF or CRLF): leading and trailing spaces can be meaningful (verse, code).
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _iter_jsonl(path: Path, text_field: str, on_error: str) -> Iterator[str]:
    """The ``text_field`` string of each JSON object line; empty strings are left out."""

    def bad(message: str) -> None:
        if on_error == "raise":
            raise DataError(message)
        warnings.warn(f"{message}; skipping the line", stacklevel=4)

    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is not JSON
            except UnicodeDecodeError as exc:
                bad(f"{path}:{lineno}: not valid UTF-8 at column {exc.start + 1}; re-encode the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                bad(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                continue
            if text_field not in record:
                # repr for a key with a line break or other control character: the message stays one line
                keys = ", ".join(k if k.isprintable() else repr(k) for k in list(record)[:10]) or "none"
                bad(f"{path}:{lineno}: no '{text_field}' field; pass --text-field NAME (this line has: {keys})")
                continue
            text = record[text_field]
            if not isinstance(text, str):
                bad(f"{path}:{lineno}: field '{text_field}' is {type(text).__name__}, not a string")
                continue
            if text:
                yield text


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The ``text_field`` column, read one record batch at a time so large files never sit in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"{path}: no column '{text_field}'; columns are: {', '.join(names)}; pass --text-field NAME"
        )
    column_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column '{text_field}' has type {column_type}, not string")
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text:  # nulls and empty strings carry no text
                    yield text
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: parquet file could not be read ({exc})") from None


def _iter_table(path: Path, text_field: str, on_error: str, tsv: bool) -> Iterator[str]:
    """The ``text_field`` cell of each row of a TSV/CSV file whose first row names the columns."""
    line = [0]  # the physical line being read, for messages

    def bad(message: str) -> None:
        if on_error == "raise":
            raise DataError(message)
        warnings.warn(f"{message}; skipping it", stacklevel=4)

    def lines(fh: BinaryIO) -> Iterator[str]:
        # Decoded here, line by line, so a bad byte can name its line; line endings stay for csv (CRLF, quoted
        # cells that hold newlines).
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            line[0] = lineno
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad(_bad_utf8_message(path, offset + exc.start, lineno))
                offset += len(raw)
                continue
            offset += len(raw)
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]  # a byte-order mark is an encoding artefact, not part of the first column's name
            yield text

    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open(path, "rb") as fh:
        # TSV cells are taken as they are (quotes are text, as in GLUE's and ChnSentiCorp's files).
        quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        rows = csv.reader(lines(fh), delimiter="\t" if tsv else ",", quoting=quoting)
        try:
            header = next(rows, None)
            if header is None:
                return
            if text_field not in header:
                raise DataError(
                    f"{path}: no column '{text_field}'; columns are: {', '.join(header)}; pass --text-field NAME"
                )
            col = header.index(text_field)
            for row in rows:
                if not row:
                    continue  # a blank line
                if col >= len(row):
                    bad(f"{path}:{line[0]}: only {len(row)} cell(s); column '{text_field}' is number {col + 1}")
                    continue
                if row[col].strip():
                    # A quoted CSV cell keeps the file's line endings; documents use "\n" as .txt paragraphs do.
                    yield row[col].replace("\r\n", "\n")
        except csv.Error as exc:
            kind = "TSV" if tsv else "CSV"
            raise DataError(f"{path}:{line[0]}: not a readable {kind} row ({exc})") from None
