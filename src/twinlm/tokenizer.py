"""Tokenizers for both paradigms, built on the Hugging Face ``tokenizers`` library.

Three kinds: ``wordpiece`` (BERT-style), ``bpe`` (GPT-2-style byte-level BPE, with an extra ``[MASK]`` so one
tokenizer serves masked, causal and hybrid training) and ``char`` (one token per character). A tokenizer is
saved as ``tokenizer.json`` plus a small ``twinlm_tokenizer.json`` sidecar naming its kind and special tokens.

Chinese (and any CJK text): WordPiece makes every CJK character its own word, as BERT does, and decoding joins
CJK characters and CJK/full-width punctuation without spaces (see Tokenizer.decode). A character the vocabulary
lacks becomes a visible ``[UNK]`` (WordPiece, char), never nothing; byte-level BPE needs no unknown token.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .cjk import CJK_PUNCTUATION, FULL_WIDTH, IDEOGRAPHS, IDEOGRAPHS_SUPPLEMENTARY, KANA
from .data.exclude import load_excluded, without_excluded
from .data.readers import iter_documents
from .errors import CheckpointError, ConfigError, DataError

KINDS = ("wordpiece", "bpe", "char")
SIDECAR = "twinlm_tokenizer.json"
TOKENIZER_JSON = "tokenizer.json"
ROLES = ("pad", "mask", "unk", "cls", "sep", "eos", "bos")

EOT = "<|endoftext|>"
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
# The trained WordPiece vocabulary starts with these, in this order (ids 0..4).
WORDPIECE_SPECIAL_ORDER = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHAR_SPECIAL_ORDER = ("[PAD]", "[UNK]", "[MASK]", EOT)

# Characters written without spaces between them: CJK ideographs (the ranges of BERT's _is_chinese_char), kana,
# CJK symbols and punctuation (U+3000-303F) and full-width forms (U+FF00-FFEF).
_CJK_CHARS = CJK_PUNCTUATION + KANA + IDEOGRAPHS + FULL_WIDTH + IDEOGRAPHS_SUPPLEMENTARY
_CJK_TOKEN = re.compile(f"[{_CJK_CHARS}]+")
# Punctuation Chinese text shares with Western text (curly quotes, dashes, ellipsis, middle dot): written without a
# space next to a CJK character, with one elsewhere.
_SHARED_PUNCT = re.compile("[\u00b7\u2010-\u2027\u2030-\u205e]+")


def is_cjk(text: str) -> bool:
    """True when ``text`` is non-empty and made only of CJK characters and CJK/full-width punctuation."""
    return _CJK_TOKEN.fullmatch(text) is not None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus its kind and the ids of its special tokens."""

    def __init__(self, hf: tokenizers.Tokenizer, kind: str, special: dict[str, str | None], source: str = "") -> None:
        if kind not in KINDS:
            raise ConfigError(f"tokenizer kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
        self.hf = hf
        self.kind = kind
        self.special: dict[str, str | None] = {role: special.get(role) for role in ROLES}
        if kind == "char" and self.special["unk"] is None:
            self.special["unk"] = _give_char_unk(hf)
        where = source or "tokenizer"
        ids: dict[str, int | None] = {}
        for role in ROLES:
            token = self.special[role]
            ids[role] = None if token is None else hf.token_to_id(token)
            if token is not None and ids[role] is None:
                raise CheckpointError(f"{where}: special token {token!r} ({role}) is not in the vocabulary")
            if ids[role] is None and role != "unk":
                raise CheckpointError(f"{where}: the tokenizer has no {role} token")
        self.pad_id: int = ids["pad"]  # type: ignore[assignment]
        self.mask_id: int = ids["mask"]  # type: ignore[assignment]
        self.unk_id: int | None = ids["unk"]
        self.cls_id: int = ids["cls"]  # type: ignore[assignment]
        self.sep_id: int = ids["sep"]  # type: ignore[assignment]
        self.eos_id: int = ids["eos"]  # type: ignore[assignment]
        self.bos_id: int = ids["bos"]  # type: ignore[assignment]
        self._cjk: np.ndarray | None = None  # is_cjk of every token, built on the first WordPiece decode
        self._shared_punct: np.ndarray = np.zeros(0, dtype=bool)  # shared-punctuation flag of every token, ditto

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> list[int]:
        """Every special token id (the named roles and any other added special token), sorted, once each."""
        ids = {
            i for i in (self.pad_id, self.mask_id, self.unk_id, self.cls_id, self.sep_id, self.eos_id, self.bos_id)
            if i is not None
        }
        ids.update(i for i, tok in self.hf.get_added_tokens_decoder().items() if tok.special)
        return sorted(ids)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text``; add_special wraps as ``[CLS] ... [SEP]`` (wordpiece) or appends eos (bpe, char)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if not add_special:
            return ids
        # Wrapped here rather than by the post-processor so the result does not depend on what a
        # foreign tokenizer.json carries as its post-processor.
        if self.kind == "wordpiece":
            return [self.cls_id, *ids, self.sep_id]
        return [*ids, self.eos_id]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return [enc.ids for enc in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless skip_special is False, except ``[UNK]``.

        ``[UNK]`` always stays: dropping it would lose text without a trace. WordPiece puts a space between
        words, except between two CJK tokens (characters, CJK or full-width punctuation) and between ``[UNK]``
        and a CJK neighbour (most likely an unseen character), so "这部电影很棒！" comes back without spaces.
        Between CJK and Latin words or digits the space is kept: WordPiece ids cannot tell whether the original
        had one there ("按钮 10 秒" and "按钮10秒" encode alike), so text written with spaces there round-trips
        and text without them gains them; byte-level BPE is the exact tokenizer (char is exact too, for seen
        characters). The rule looks only at a token and the one before it, so a prefix of the ids decodes to a
        prefix of the text (streaming).
        """
        ids = [int(i) for i in ids]
        if skip_special:
            drop = set(self.special_ids) - {self.unk_id}
            ids = [i for i in ids if i not in drop]
        if self.kind != "wordpiece":
            return self.hf.decode(ids, skip_special_tokens=False)
        groups = self._spaced_groups(ids)
        if len(groups) == 1:
            return self.hf.decode(groups[0], skip_special_tokens=False)
        # Each group decodes with the library's own WordPiece rules (## joins, spaces, punctuation clean-up);
        # the groups meet where no space belongs.
        return "".join(self.hf.decode_batch(groups, skip_special_tokens=False))

    def decode_batch(self, sequences: Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        """decode of each sequence."""
        return [self.decode(ids, skip_special=skip_special) for ids in sequences]

    def count_unknown(self, ids: Sequence[int]) -> int:
        """How many of ``ids`` are the unknown token (0 when the tokenizer has none, as byte-level BPE).

        char: one per unseen character; WordPiece: one per word holding an unseen character (a CJK character
        is a word of its own, so in Chinese also one per character).
        """
        if self.unk_id is None:
            return 0
        return sum(1 for i in ids if int(i) == self.unk_id)

    def _cjk_table(self) -> np.ndarray:
        if self._cjk is None:
            vocab = self.hf.get_vocab(with_added_tokens=True)
            table = np.zeros(max(vocab.values(), default=-1) + 1, dtype=bool)  # ids need not be contiguous
            for token, i in vocab.items():
                table[i] = is_cjk(token)
            self._cjk = table
            shared = np.zeros_like(table)
            for token, i in vocab.items():
                shared[i] = _SHARED_PUNCT.fullmatch(token) is not None
            self._shared_punct = shared
        return self._cjk

    def _spaced_groups(self, ids: list[int]) -> list[list[int]]:
        """``ids`` cut where WordPiece would put a space that CJK text does not have."""
        table = self._cjk_table()
        shared = self._shared_punct
        groups: list[list[int]] = [[]]
        prev_cjk = prev_unk = prev_punct = False
        prev = -1
        for i in ids:
            cjk = 0 <= i < len(table) and bool(table[i])
            punct = 0 <= i < len(shared) and bool(shared[i])
            unk = i == self.unk_id
            # [UNK] beside CJK is most likely an unseen character; two [UNK]s keep their space, since each may
            # stand for a whole Latin word. Only the token before decides, so a prefix decodes to a prefix.
            # Curly quotes and dashes touch a CJK neighbour, and a doubled one its twin: 道：“我……”小.
            after_punct = prev_punct and (cjk or (punct and i == prev))
            if groups[-1] and ((prev_cjk and (cjk or unk or punct)) or (prev_unk and cjk) or after_punct):
                groups.append([])
            groups[-1].append(i)
            prev_cjk, prev_unk, prev_punct, prev = cjk, unk, punct, i
        return groups

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when it is not in the vocabulary."""
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        return self.hf.id_to_token(int(i))

    def continuation_table(self) -> np.ndarray:
        """bool[vocab_size]: True where a token continues the word before it (for whole-word masking).

        wordpiece: tokens starting with ``##``. bpe: tokens that do not start with a (byte-level or
        metaspace) whitespace marker; a word at the very start of a text therefore also reads as a
        continuation, which only matters for the first word. char: False everywhere, because a single
        character cannot tell whether it starts a word. Special tokens are always False.
        """
        table = np.zeros(self.vocab_size, dtype=bool)
        if self.kind == "char":
            return table
        if self.kind == "wordpiece":
            prefix = getattr(self.hf.model, "continuing_subword_prefix", "##") or "##"
            for token, i in self.hf.get_vocab(with_added_tokens=True).items():
                table[i] = token.startswith(prefix)
        else:
            starts = _word_start_markers()
            for token, i in self.hf.get_vocab(with_added_tokens=True).items():
                table[i] = bool(token) and token[0] not in starts
        table[self.special_ids] = False
        return table

    def save(self, folder: str | Path) -> None:
        """Write ``folder/tokenizer.json`` and the ``folder/twinlm_tokenizer.json`` sidecar."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(folder / TOKENIZER_JSON))
        sidecar = {"kind": self.kind, "special": self.special}
        (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer; see load_tokenizer for the accepted layouts."""
        return load_tokenizer(path)


def _give_char_unk(hf: tokenizers.Tokenizer) -> str | None:
    """Give a char tokenizer that lacks an unknown-character token one; returns its string.

    Without one, an unseen character makes encoding fail. ``[UNK]`` is appended after the last id (ids already
    in use keep their meaning), so such a tokenizer grows by one token. None when the model is not WordLevel.
    """
    if type(hf.model).__name__ != "WordLevel":
        return None
    vocab = hf.get_vocab(with_added_tokens=False)
    if "[UNK]" not in vocab and hf.token_to_id("[UNK]") is None:
        vocab["[UNK]"] = max(hf.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    elif "[UNK]" not in vocab:
        vocab["[UNK]"] = hf.token_to_id("[UNK]")  # an added token: the model must map unseen characters to it
    hf.model = models.WordLevel(vocab=vocab, unk_token="[UNK]")
    hf.add_special_tokens([AddedToken("[UNK]", special=True)])
    return "[UNK]"


def _word_start_markers() -> frozenset[str]:
    """Characters that begin a new word in BPE vocabularies: byte-level images of whitespace, and '▁'."""
    decoder = decoders.ByteLevel()
    # Ask the library which alphabet symbols stand for whitespace bytes (Ġ=space, Ċ=newline, ĉ=tab, ...)
    # rather than hard-coding GPT-2's byte-to-unicode table.
    markers = {c for c in pre_tokenizers.ByteLevel.alphabet() if decoder.decode([c]).isspace()}
    markers.add("\u2581")  # SentencePiece/Metaspace word boundary, for foreign BPE tokenizer.json files
    return frozenset(markers)


# ---------------------------------------------------------------------------------------------- builders


def _bpe_specials(eos: str, mask: str, pad: str | None = None, bos: str | None = None,
                  unk: str | None = None) -> dict[str, str | None]:
    # GPT-2 convention: one end-of-text token marks both ends of a document and doubles as padding.
    return {"pad": pad or eos, "mask": mask, "unk": unk, "cls": bos or eos, "sep": eos, "eos": eos, "bos": bos or eos}


def _wordpiece_specials() -> dict[str, str | None]:
    return {**BERT_SPECIALS, "eos": BERT_SPECIALS["sep"], "bos": BERT_SPECIALS["cls"]}


def _char_specials() -> dict[str, str | None]:
    return {"pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]", "cls": EOT, "sep": EOT, "eos": EOT, "bos": EOT}


def _mask_token() -> AddedToken:
    # lstrip: "to [MASK]" puts the space inside the mask token, as RoBERTa's <mask>, so the token after a
    # masked word keeps its usual "Ġword" form.
    return AddedToken("[MASK]", lstrip=True, special=True)


def _wordpiece_pipeline(hf: tokenizers.Tokenizer, lowercase: bool) -> None:
    """BERT's normalizer, pre-tokenizer, decoder and [CLS] $A [SEP] post-processor."""
    hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    hf.add_special_tokens([AddedToken(t, special=True) for t in WORDPIECE_SPECIAL_ORDER])
    cls_id, sep_id = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _bpe_pipeline(hf: tokenizers.Tokenizer, eos: str = EOT) -> None:
    """GPT-2's byte-level pre-tokenizer and decoder; the post-processor appends eos."""
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, hf.token_to_id(eos))]
    )


def _char_pipeline(hf: tokenizers.Tokenizer) -> None:
    """Split every character, join them back without spaces, append eos on add_special."""
    hf.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(t, special=True) for t in CHAR_SPECIAL_ORDER])
    hf.post_processor = processors.TemplateProcessing(
        single=f"$A {EOT}", pair=f"$A {EOT} $B:1 {EOT}:1", special_tokens=[(EOT, hf.token_to_id(EOT))]
    )


def _counting(docs: Iterable[str], counter: list[int]) -> Iterator[str]:
    """Pass documents through, counting those with any non-space text in counter[0]."""
    for doc in docs:
        if doc.strip():
            counter[0] += 1
        yield doc


def _all_documents(files: Sequence[str | Path], text_field: str) -> Iterator[str]:
    for file in files:
        yield from iter_documents(file, text_field=text_field)


def train_tokenizer(
    files: list[str | Path],
    kind: str,
    vocab_size: int,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    text_field: str = "text",
    exclude: Sequence[str | Path] = (),
    dropped: list[int] | None = None,
) -> Tokenizer:
    """Train a wordpiece, bpe or char tokenizer on the documents of ``files`` (vocab_size is ignored for char).

    lowercase defaults to True for wordpiece (BERT-uncased) and False for bpe and char. Documents equal to a text
    of the ``exclude`` files (dev/test splits) are left out, as by prepare_corpus, and counted in ``dropped[0]``
    when a list is given.
    """
    if kind not in KINDS:
        raise ConfigError(f"tokenizer kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if isinstance(files, (str, Path)):
        files = [files]
    files = list(files)
    if not files:
        raise DataError("no files given to train a tokenizer on")
    if kind != "char" and vocab_size <= 0:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size}")
    if lowercase is None:
        lowercase = kind == "wordpiece"
    where = ", ".join(str(f) for f in files)
    counter = [0]
    excluded = load_excluded(exclude, text_field)
    docs = _counting(without_excluded(_all_documents(files, text_field), excluded, dropped or [0]), counter)

    if kind == "wordpiece":
        hf = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(WORDPIECE_SPECIAL_ORDER),
            continuing_subword_prefix="##",
            show_progress=_interactive(),
        )
        hf.train_from_iterator(docs, trainer)
        _empty_check(counter, where)
        _wordpiece_pipeline(hf, lowercase)
        return Tokenizer(hf, "wordpiece", _wordpiece_specials(), source="trained wordpiece")

    if kind == "bpe":
        hf = tokenizers.Tokenizer(models.BPE())
        if lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[AddedToken(EOT, special=True), _mask_token()],
            # All 256 bytes from the start, so any text encodes without an unknown token.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=_interactive(),
        )
        hf.train_from_iterator(docs, trainer)
        _empty_check(counter, where)
        _bpe_pipeline(hf)
        return Tokenizer(hf, "bpe", _bpe_specials(EOT, "[MASK]"), source="trained bpe")

    # char: the vocabulary is the sorted set of characters seen; collected here because a trainer
    # would order it by frequency.
    chars: set[str] = set()
    for doc in docs:
        chars.update(doc)
    _empty_check(counter, where)
    # Newline always gets an id: with one-line documents it may never occur inside one, yet a text
    # joining documents (or a prompt) needs it.
    chars.add("\n")
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIAL_ORDER)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    hf = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if lowercase:
        hf.normalizer = normalizers.Lowercase()
    _char_pipeline(hf)
    return Tokenizer(hf, "char", _char_specials(), source="trained char")


def _interactive() -> bool:
    """The library's own progress bar only on a terminal: in logs and CI it prints bare blank lines."""
    return sys.stderr.isatty()


def _empty_check(counter: list[int], where: str) -> None:
    if counter[0] == 0:
        raise DataError(f"{where}: no text to train a tokenizer on")


# ---------------------------------------------------------------------------------------------- loading


def _from_bert_vocab(path: Path) -> Tokenizer:
    """A BERT-uncased WordPiece tokenizer from a vocab.txt (one token per line, id = line number)."""
    vocab: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                token = line.rstrip("\r\n")
                if token:
                    vocab.setdefault(token, len(vocab))  # id = line number when lines are distinct
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: vocab.txt is not valid UTF-8; the file is corrupted") from None
    missing = [t for t in WORDPIECE_SPECIAL_ORDER if t not in vocab]
    if missing:
        raise CheckpointError(f"{path}: BERT vocab.txt lacks {', '.join(missing)}")
    hf = tokenizers.Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    _wordpiece_pipeline(hf, lowercase=True)
    return Tokenizer(hf, "wordpiece", _wordpiece_specials(), source=str(path))


def _from_gpt2_files(vocab_json: Path, merges_txt: Path) -> Tokenizer:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, with [MASK] added after the vocabulary."""
    try:
        model = models.BPE.from_file(str(vocab_json), str(merges_txt))
    except Exception as exc:  # the Rust side raises a plain Exception for malformed files
        raise CheckpointError(f"{vocab_json.parent}: cannot read vocab.json + merges.txt ({exc})") from None
    hf = tokenizers.Tokenizer(model)
    if hf.token_to_id(EOT) is None:
        raise CheckpointError(f"{vocab_json}: no {EOT} token; is this a GPT-2 vocabulary?")
    hf.add_special_tokens([AddedToken(EOT, special=True), _mask_token()])
    _bpe_pipeline(hf)
    return Tokenizer(hf, "bpe", _bpe_specials(EOT, "[MASK]"), source=str(vocab_json.parent))


def _first_present(hf: tokenizers.Tokenizer, candidates: Sequence[str]) -> str | None:
    return next((t for t in candidates if hf.token_to_id(t) is not None), None)


def _infer_foreign(hf: tokenizers.Tokenizer, path: Path) -> Tokenizer:
    """Kind and specials of a tokenizer.json that has no twinlm sidecar, read from its model type and vocab."""
    model = type(hf.model).__name__
    if model == "WordPiece":
        present = {role: _first_present(hf, [tok]) for role, tok in BERT_SPECIALS.items()}
        missing = [BERT_SPECIALS[r] for r, t in present.items() if t is None and r != "unk"]
        if missing:
            raise CheckpointError(f"{path}: WordPiece tokenizer lacks {', '.join(missing)}")
        special = {**present, "eos": present["sep"], "bos": present["cls"]}
        return Tokenizer(hf, "wordpiece", special, source=str(path))
    if model == "BPE":
        eos = _first_present(hf, [EOT, "</s>"])
        if eos is None:
            raise CheckpointError(f"{path}: BPE tokenizer has no end-of-text token (looked for {EOT}, </s>)")
        mask = _first_present(hf, ["[MASK]", "<mask>"])
        if mask is None:
            # Same treatment as GPT-2's own files: one mask token appended so masked training works too.
            hf.add_special_tokens([_mask_token()])
            mask = "[MASK]"
        special = _bpe_specials(
            eos, mask, pad=_first_present(hf, ["<pad>"]), bos=_first_present(hf, ["<s>"]),
            unk=_first_present(hf, ["<unk>"]),
        )
        return Tokenizer(hf, "bpe", special, source=str(path))
    if model == "WordLevel":
        special = {role: _first_present(hf, [tok]) for role, tok in _char_specials().items()}
        return Tokenizer(hf, "char", special, source=str(path))
    raise CheckpointError(f"{path}: tokenizer model {model} is not supported (WordPiece, BPE or WordLevel)")


def _from_tokenizer_json(path: Path) -> Tokenizer:
    try:
        hf = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on malformed JSON
        reason = " ".join(str(exc).split())  # the Rust message may quote a line break from the file: keep one line
        raise CheckpointError(f"{path}: cannot read tokenizer.json ({reason}); the file is corrupted") from None
    # Hugging Face files may enable fixed-length padding/truncation (all-MiniLM-L6-v2 pads to 128); twinlm pads
    # batches itself, so encode() must return exactly the text's tokens.
    hf.no_padding()
    hf.no_truncation()
    sidecar = path.parent / SIDECAR
    if not sidecar.is_file():
        return _infer_foreign(hf, path)
    try:
        meta = json.loads(sidecar.read_text())
        kind, special = meta["kind"], meta["special"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{sidecar}: corrupted tokenizer sidecar ({exc})") from None
    if not isinstance(special, dict) or not all(isinstance(t, str) or t is None for t in special.values()):
        raise CheckpointError(f"{sidecar}: corrupted tokenizer sidecar ('special' is not a map of role to token)")
    if kind not in KINDS:
        raise CheckpointError(f"{sidecar}: unknown tokenizer kind {kind!r}")
    return Tokenizer(hf, kind, special, source=str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a folder or file.

    Accepted: a folder holding tokenizer.json (with or without our sidecar), a tokenizer.json path, a BERT
    vocab.txt (folder or file), or a folder with GPT-2's vocab.json + merges.txt.
    """
    path = Path(path)
    looked_for = "tokenizer.json, vocab.txt, or vocab.json + merges.txt"
    if path.is_file():
        if path.name == "vocab.txt":
            return _from_bert_vocab(path)
        if path.name == "vocab.json":
            merges = path.parent / "merges.txt"
            if not merges.is_file():
                raise CheckpointError(f"{path}: found vocab.json but no merges.txt beside it")
            return _from_gpt2_files(path, merges)
        if path.suffix == ".json":
            return _from_tokenizer_json(path)
        raise CheckpointError(f"{path}: not a tokenizer file; pass a folder or a file named {looked_for}")
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return _from_tokenizer_json(path / TOKENIZER_JSON)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _from_gpt2_files(path / "vocab.json", path / "merges.txt")
        if (path / "vocab.txt").is_file():
            return _from_bert_vocab(path / "vocab.txt")
        if (path / "tokenizer.model").is_file():
            # Reading SentencePiece's protobuf needs the sentencepiece package, which twinlm does not depend on.
            raise CheckpointError(
                f"{path}: only a SentencePiece tokenizer.model is here, which twinlm cannot read; write a "
                "tokenizer.json beside it (transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder))"
            )
        raise CheckpointError(f"{path}: no tokenizer here; looked for {looked_for}")
    raise CheckpointError(f"{path}: no such file or folder; expected a folder with {looked_for}")
