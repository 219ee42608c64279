"""Keeping evaluation texts out of a pretraining corpus (decontamination by exact match).

Public datasets reuse each other's texts: 629 of ChnSentiCorp's 1,000 dev reviews are also rows of the
online-shopping *train* split. Pretraining on that split would let a model read most of a dev set before it is
scored on it. ``prepare --exclude dev.tsv`` and ``tokenizer train --exclude dev.tsv`` drop every document whose
text equals one in the excluded files, after collapsing whitespace (so a reflowed copy is still caught).
Near-duplicates (a changed character, a review quoted inside a longer one) are not caught: that needs n-gram
overlap, which these corpora have not needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import DataError
from .readers import iter_documents


def text_key(text: str) -> str:
    """The form two texts are compared in: whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.split())


def load_excluded(files: Sequence[str | Path], text_field: str = "text") -> frozenset[str]:
    """The keys of every document in ``files`` (read like corpus files, with the same text field)."""
    keys: set[str] = set()
    for file in files:
        if not Path(file).exists():
            raise DataError(f"{file}: no such file (given to --exclude)")
        before = len(keys)
        keys.update(key for key in map(text_key, iter_documents(file, text_field=text_field)) if key)
        if len(keys) == before:
            raise DataError(f"{file}: no text to exclude found (given to --exclude; is --text-field right?)")
    return frozenset(keys)


def without_excluded(docs: Iterable[str], excluded: frozenset[str], dropped: list[int]) -> Iterator[str]:
    """Pass through the documents not in ``excluded``, counting the dropped ones in dropped[0]."""
    for doc in docs:
        if excluded and text_key(doc) in excluded:
            dropped[0] += 1
            continue
        yield doc
