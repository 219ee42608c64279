"""Word segmentation for whole-word masking: which tokens start a word, from a segmenter's word boundaries.

Chinese has no spaces, so a WordPiece or char vocabulary sees every character as a word of its own and whole-word
masking degenerates to per-character masking. Chinese-BERT-wwm (Cui et al., arXiv 1906.08101) instead masks whole
words found by a segmenter. Here the segmenter runs once, at prepare time: each token gets a word-start flag
(1: the token begins a word; 0: it continues the word before it) stored beside the token shard.

A token starts a word iff its first character (tokenizer offsets, in characters of the original text) is at a
segmenter word boundary and it does not overlap the previous token: byte-level BPE splits one character into
several tokens that all carry that character's offsets, and only the first of them starts the word.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..cjk import IDEOGRAPHS, IDEOGRAPHS_SUPPLEMENTARY
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

SEGMENTERS = ("jieba",)
MISSING_JIEBA = "--segmenter jieba needs jieba: pip install 'twinlm[zh]'"

Segmenter = Callable[[str], Iterable[str]]


def load_segmenter(name: str) -> Segmenter:
    """A function text -> words whose concatenation is the text; ConfigError when unknown or not installed."""
    if name not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    try:
        import jieba
    except ImportError:
        raise ConfigError(MISSING_JIEBA) from None
    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is DEBUG-level noise on stderr
    # Load the dictionary now: forked workers inherit it instead of each loading it again (about 3 s each).
    jieba.initialize()
    return jieba.cut  # HMM on (the default): unknown words such as names are found too


def word_boundaries(text: str, words: Iterable[str]) -> np.ndarray:
    """bool[len(text) + 1]: True at every character offset where a word of ``words`` begins (and at the end)."""
    boundary = np.zeros(len(text) + 1, dtype=bool)
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64)
    if lengths.sum() != len(text):
        # The flags would silently drift from the text; segmenters that drop characters are not supported.
        raise ConfigError(f"the segmenter returned {lengths.sum()} characters for a text of {len(text)}")
    boundary[np.concatenate([[0], np.cumsum(lengths)])] = True
    return boundary


def word_start_flags(offsets: Sequence[tuple[int, int]], boundary: np.ndarray) -> np.ndarray:
    """uint8 per token: 1 where the token starts a word (see the module docstring), else 0."""
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.uint8)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    begin = np.clip(spans[:, 0], 0, len(boundary) - 1)
    # The furthest any earlier token reached: a token starting before it shares a character with an earlier one.
    reached = np.concatenate([[0], np.maximum.accumulate(spans[:-1, 1])])
    return (boundary[begin] & (spans[:, 0] >= reached)).astype(np.uint8)


def segment_flags(segment: Segmenter, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Word-start flags of the tokens of ``text`` whose character offsets are ``offsets``."""
    return word_start_flags(offsets, word_boundaries(text, segment(text)))


# The CJK ideograph blocks BERT's tokenizer isolates as words of their own (_is_chinese_char in BERT's code).
_CJK = re.compile(f"[{IDEOGRAPHS}{IDEOGRAPHS_SUPPLEMENTARY}]")


def cjk_share(tokenizer: Tokenizer) -> float:
    """Fraction of the non-special vocabulary whose text holds a CJK character (0.0 for an empty vocabulary)."""
    special = set(tokenizer.special_ids)
    ids = [i for i in range(tokenizer.vocab_size) if i not in special]
    if not ids:
        return 0.0
    if tokenizer.kind == "bpe":
        # Byte-level symbols only read as text once decoded; one sequence per token keeps partial characters apart.
        texts = tokenizer.hf.decode_batch([[i] for i in ids], skip_special_tokens=False)
    else:
        texts = [tokenizer.id_to_token(i) or "" for i in ids]
    return sum(_CJK.search(t) is not None for t in texts) / len(ids)


def cjk_whole_word_note(tokenizer: Tokenizer, data_dir: str) -> str | None:
    """The note to print when --whole-word runs on data without flags and a mostly-Chinese vocabulary, else None."""
    if cjk_share(tokenizer) <= 0.5:
        return None
    unit = ("a whole run of Chinese text between spaces is then one word" if tokenizer.kind == "bpe"
            else "every Chinese character is then its own word")
    return (f"{data_dir} has no word-start flags and the vocabulary is mostly Chinese characters: with --whole-word "
            f"{unit}; run `twinlm prepare --segmenter jieba` for word-level masking")
