"""Chinese whole-word masking: jieba word-start flags from prepare, through shards and blocks, to the masker.

A char tokenizer makes every token one character of the text, so the stored flags can be compared with jieba's own
segmentation of the documents, character for character.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twinlm.cli import main
from twinlm.data.blocks import block_span, gather_blocks, gather_word_starts, sample_starts
from twinlm.data.corpus import TokenShard, prepare_corpus
from twinlm.data.readers import iter_documents
from twinlm.data.segment import cjk_share, word_boundaries, word_start_flags
from twinlm.errors import ConfigError, DataError
from twinlm.objectives import MLMMasker
from twinlm.pretrain import PretrainOptions, PretrainTask
from twinlm.tokenizer import Tokenizer, train_tokenizer

needs_jieba = pytest.mark.skipif(
    importlib.util.find_spec("jieba") is None,
    reason="jieba is not installed: pip install 'twinlm[zh]' (make test installs it with the dev extra)",
)

SENTENCES = [
    "这部电影很棒！", "糟糕的体验，再也不来了。", "从前有一座山，山上有一座庙。", "龙在村庄上空翱翔。",
    "如何重置我的设备？", "要重置，按住电源按钮10秒钟。", "我们明天去北京大学参观图书馆。", "他说hello之后就走了。",
    "今天的天气非常好，适合出去散步。", "中华人民共和国成立于1949年。", "这家餐厅的服务态度很差，菜也凉了。",
    "贾宝玉和林黛玉在大观园里读书。", "机器学习模型需要大量的训练数据。", "请把这本书放回书架上。",
    "外卖送得很快，味道也不错。", "酒店的房间干净整洁，下次还会再来。",
]
SEQ_LEN = 32


def _documents(n: int = 90) -> list[str]:
    """n documents of 3-6 sentences each, in a fixed pseudo-random order."""
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(SENTENCES, size=int(rng.integers(3, 7)))) for _ in range(n)]


def _jieba_flags(text: str) -> list[int]:
    """1 at the first character of every word jieba finds in text, else 0: the expectation, from jieba itself."""
    import jieba

    return [int(i == 0) for word in jieba.cut(text) for i in range(len(word))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Tokenizer]:
    """(folder, prepared-with-jieba data folder, char tokenizer) over the documents above."""
    if importlib.util.find_spec("jieba") is None:
        pytest.skip("jieba is not installed: pip install 'twinlm[zh]' (make test installs it with the dev extra)")
    folder = tmp_path_factory.mktemp("zh")
    (folder / "corpus.txt").write_text("\n\n".join(_documents()) + "\n")
    tok = train_tokenizer([folder / "corpus.txt"], "char", vocab_size=0)
    tok.save(folder / "tok")
    prepare_corpus([folder / "corpus.txt"], tok, folder / "data", val_fraction=0.1, workers=1, progress=False,
                   segmenter="jieba")
    return folder, folder / "data", tok


# -------------------------------------------------------------------------------------- flags from offsets


def test_word_start_flags_from_character_offsets():
    # words: 中国 | 人 | ab — boundaries at 0, 2, 3 (and the end, 5)
    boundary = word_boundaries("中国人ab", ["中国", "人", "ab"])
    assert np.flatnonzero(boundary).tolist() == [0, 2, 3, 5]
    # One token per character: starts exactly at word boundaries.
    assert word_start_flags([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], boundary).tolist() == [1, 0, 1, 1, 0]
    # Byte-level BPE: the pieces of one character share its offsets; only the first piece starts the word.
    assert word_start_flags([(0, 1), (0, 1), (1, 2), (2, 3), (2, 3), (2, 3), (3, 5)], boundary).tolist() == \
        [1, 0, 0, 1, 0, 0, 1]
    # A token holding the tail of 国 and the head of 人 starts nothing; 人's own tail piece neither.
    assert word_start_flags([(0, 2), (1, 3), (2, 3), (3, 5)], boundary).tolist() == [1, 0, 0, 1]
    # A token that spans two words starts the first; an empty document has no tokens.
    assert word_start_flags([(0, 3), (3, 5)], boundary).tolist() == [1, 1]
    assert word_start_flags([], word_boundaries("", [])).tolist() == []
    with pytest.raises(ConfigError, match="returned 4 characters for a text of 5"):
        word_boundaries("中国人ab", ["中国", "人a"])


# -------------------------------------------------------------------------------------- prepare -> blocks


@needs_jieba
def test_flags_survive_prepare_shards_and_blocks(corpus):
    _, data, tok = corpus
    docs = list(iter_documents(data.parent / "corpus.txt"))
    expected: dict[str, list[int]] = {"train": [], "val": []}
    ids: dict[str, list[int]] = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        split = "val" if i % 10 == 9 else "train"  # val_fraction 0.1: every tenth document
        doc_ids = tok.encode(doc)
        assert len(doc_ids) == len(doc)  # a char tokenizer: token i is character i
        expected[split] += _jieba_flags(doc) + [1]  # the separator after each document starts a word
        ids[split] += doc_ids + [tok.sep_id]
    meta = json.loads((data / "meta.json").read_text())
    assert meta["segmenter"] == "jieba" and meta["n_unk"] == 0
    for split in ("train", "val"):
        shard = TokenShard(data, split)
        assert shard.tokens.tolist() == ids[split]
        assert isinstance(shard.word_starts, np.memmap) and shard.word_starts.dtype == np.uint8
        assert shard.word_starts.tolist() == expected[split]
    # Jieba found multi-character words: a good share of the characters continue a word.
    assert 0.2 < 1 - np.mean(expected["train"]) < 0.8

    train = TokenShard(data, "train")
    for objective in ("mlm", "clm"):
        span = block_span(SEQ_LEN, objective)
        starts = sample_starts(len(train), span, 16, seed=5, step=3)
        blocks = gather_blocks(train.tokens, starts, SEQ_LEN, objective, tok.cls_id, tok.sep_id)
        flags = gather_word_starts(train.word_starts, starts, SEQ_LEN, objective)
        assert flags.dtype == torch.bool and flags.shape == blocks.shape
        for row, s in enumerate(starts.tolist()):
            inner = expected["train"][s:s + span]
            framed = [1, *inner, 1] if objective == "mlm" else inner
            assert flags[row].tolist() == [bool(f) for f in framed]
            body = blocks[row, 1:-1] if objective == "mlm" else blocks[row]
            assert body.tolist() == ids["train"][s:s + span]


@needs_jieba
def test_workers_write_the_same_flags_and_a_single_book_splits_them_too(corpus, tmp_path):
    folder, data, tok = corpus
    prepare_corpus([folder / "corpus.txt"], tok, tmp_path / "w2", val_fraction=0.1, workers=2, chunk_docs=7,
                   progress=False, segmenter="jieba")
    for split in ("train", "val"):
        for name in (f"{split}.bin", f"{split}.word_starts.bin"):
            assert (tmp_path / "w2" / name).read_bytes() == (data / name).read_bytes(), name
    # One document: the val split is the tail of the tokens, and of the flags with them.
    book = tmp_path / "book.txt"
    book.write_text("".join(SENTENCES))
    prepare_corpus([book], tok, tmp_path / "book", val_fraction=0.1, workers=1, progress=False, segmenter="jieba")
    train, val = TokenShard(tmp_path / "book", "train"), TokenShard(tmp_path / "book", "val")
    assert len(val) > 0
    assert train.word_starts.tolist() + val.word_starts.tolist() == _jieba_flags("".join(SENTENCES)) + [1]


@needs_jieba
def test_byte_level_bpe_flags_group_whole_characters_into_whole_jieba_words(corpus, tmp_path):
    import jieba

    folder, _, _ = corpus
    bpe = train_tokenizer([folder / "corpus.txt"], "bpe", vocab_size=400, min_frequency=2)
    prepare_corpus([folder / "corpus.txt"], bpe, tmp_path / "bpe", val_fraction=0.0, workers=1, progress=False,
                   segmenter="jieba")
    shard = TokenShard(tmp_path / "bpe", "train")
    ids, flags = shard.tokens.tolist(), shard.word_starts.tolist()
    docs = list(iter_documents(folder / "corpus.txt"))
    pos = 0
    pieces_per_group = []
    for doc in docs:
        end = ids.index(bpe.sep_id, pos)
        starts = [t for t in range(pos, end) if flags[t]] + [end]
        assert starts[0] == pos  # a document begins with a word
        groups = [bpe.decode(ids[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
        # No group cuts a character in two (its bytes would decode to U+FFFD) ...
        assert "\ufffd" not in "".join(groups) and "".join(groups) == doc
        # ... and every group boundary is a jieba word boundary.
        edges = np.cumsum([0] + [len(g) for g in groups])
        assert set(edges.tolist()) <= set(np.flatnonzero(word_boundaries(doc, jieba.cut(doc))).tolist())
        pieces_per_group += [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert flags[end] == 1
        pos = end + 1
    assert max(pieces_per_group) >= 3  # Chinese characters are several byte-level pieces here


# -------------------------------------------------------------------------------------------------- masking


def _word_ids(flags: torch.Tensor, selectable: torch.Tensor) -> torch.Tensor:
    """Word number of every position as the masker sees words: a start flag, or the first token after a special."""
    prev_special = torch.ones_like(selectable)
    prev_special[:, 1:] = ~selectable[:, :-1]
    return torch.cumsum((selectable & (flags | prev_special)).long(), dim=1)


def _blocks(data: Path, tok: Tokenizer, draws: int, rows: int = 32):
    """(ids, word_starts) of ``draws`` batches of MLM blocks from the train shard."""
    shard = TokenShard(data, "train")
    span = block_span(SEQ_LEN, "mlm")
    for draw in range(draws):
        starts = sample_starts(len(shard), span, rows, seed=11, step=draw)
        yield (gather_blocks(shard.tokens, starts, SEQ_LEN, "mlm", tok.cls_id, tok.sep_id),
               gather_word_starts(shard.word_starts, starts, SEQ_LEN, "mlm"), starts)


@needs_jieba
@pytest.mark.parametrize("fixed", [False, True])
def test_masking_with_flags_never_splits_a_jieba_word(corpus, fixed):
    _, data, tok = corpus
    # The word of every train-shard position, from jieba directly (not from the stored flags).
    docs = list(iter_documents(data.parent / "corpus.txt"))
    shard_flags = [f for i, d in enumerate(docs) if i % 10 != 9 for f in _jieba_flags(d) + [1]]
    word_of = np.cumsum(shard_flags)
    masker = MLMMasker(tok.mask_id, tok.vocab_size, tok.special_ids, mask_prob=0.15, whole_word=True,
                       fixed_count=fixed)
    span = block_span(SEQ_LEN, "mlm")
    checked = 0
    for ids, flags, starts in _blocks(data, tok, draws=20):
        selected = masker.select(ids, None, torch.Generator().manual_seed(checked), word_starts=flags)
        selectable = ~torch.isin(ids, torch.tensor(tok.special_ids))
        assert not (selected & ~selectable).any()
        for row, s in enumerate(starts.tolist()):
            words = word_of[s:s + span]
            sel = selected[row, 1:-1].numpy()
            for w in np.unique(words):
                part = sel[(words == w) & selectable[row, 1:-1].numpy()]
                assert part.all() or not part.any(), "a jieba word was split by the mask"
                checked += part.size > 1
        if fixed:
            k = round(0.15 * int(selectable.sum(1).max()))
            assert (selected.sum(1) <= k).all() and (selected.sum(1) >= k - 8).all()
    assert checked > 1000  # many multi-character words were looked at


@needs_jieba
def test_masked_character_fraction_is_fifteen_percent(corpus):
    _, data, tok = corpus
    p = 0.15
    masker = MLMMasker(tok.mask_id, tok.vocab_size, tok.special_ids, mask_prob=p, whole_word=True)
    special = torch.tensor(tok.special_ids)
    masked = chars = 0
    sum_sq = 0  # sum over words of (characters in the word)^2
    for draw, (ids, flags, _) in enumerate(_blocks(data, tok, draws=60)):
        selected = masker.select(ids, None, torch.Generator().manual_seed(100 + draw), word_starts=flags)
        selectable = ~torch.isin(ids, special)
        masked += int(selected.sum())
        chars += int(selectable.sum())
        words = _word_ids(flags, selectable)
        for row in range(ids.size(0)):
            sum_sq += int((torch.bincount(words[row][selectable[row]]) ** 2).sum())
    # Each word is chosen independently with probability p, so the masked count is a sum of len_w * Bernoulli(p):
    # its mean is p * chars and its variance p(1-p) * sum_w len_w^2. The fraction's standard deviation is
    # sqrt(p(1-p) * sum_sq) / chars (about 0.002 here: ~57k characters in ~35k words); 5 standard deviations
    # fail a correct masker with probability below 1e-6.
    sd = math.sqrt(p * (1 - p) * sum_sq) / chars
    assert chars > 50_000
    assert abs(masked / chars - p) < 5 * sd, (masked / chars, sd)


# -------------------------------------------------------------------------------------------------- the CLI


def test_segmenter_without_jieba_is_one_line_error(tmp_path, monkeypatch, capsys):
    text = tmp_path / "zh.txt"
    text.write_text("\n\n".join(SENTENCES))
    tok = train_tokenizer([text], "char", vocab_size=0)
    tok.save(tmp_path / "tok")
    monkeypatch.setitem(sys.modules, "jieba", None)  # `import jieba` now raises ImportError
    code = main(["prepare", str(text), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "data"),
                 "--workers", "1", "--segmenter", "jieba"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "twinlm: error: --segmenter jieba needs jieba: pip install 'twinlm[zh]'\n"
    assert not (tmp_path / "data").exists()


def test_prepare_counts_unknown_tokens(tmp_path, capsys):
    (tmp_path / "seen.txt").write_text("\n\n".join(SENTENCES[:8]))
    tok = train_tokenizer([tmp_path / "seen.txt"], "char", vocab_size=0)
    tok.save(tmp_path / "tok")
    text = "这部电影很棒！\n\n鳄鱼鳄鱼很棒"  # 鳄 and 鱼 are not in SENTENCES[:8]
    assert all(tok.token_to_id(c) is None for c in "鳄鱼")
    (tmp_path / "new.txt").write_text(text)
    code = main(["prepare", str(tmp_path / "new.txt"), "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "data"), "--workers", "1", "--val-fraction", "0"])
    out = capsys.readouterr().out
    assert code == 0
    total = len(text.replace("\n\n", "")) + 2  # every character is a token, plus a separator per document
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["n_unk"] == 4
    assert f"4 tokens ({100 * 4 / total:.3g}%) became [UNK]" in out
    # Nothing unknown: no such line.
    main(["prepare", str(tmp_path / "seen.txt"), "--tokenizer", str(tmp_path / "tok"), "--out",
          str(tmp_path / "data2"), "--workers", "1"])
    assert "[UNK]" not in capsys.readouterr().out


@needs_jieba
def test_pretrain_whole_word_on_flagged_data_feeds_the_flags_to_the_masker(corpus, tmp_path, monkeypatch, capsys):
    _, data, tok = corpus
    calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    original = MLMMasker.select

    def spy(self, input_ids, attention_mask, generator=None, word_starts=None):
        selected = original(self, input_ids, attention_mask, generator, word_starts)
        calls.append((input_ids.clone(), None if word_starts is None else word_starts.clone(), selected))
        return selected

    monkeypatch.setattr(MLMMasker, "select", spy)
    code = main(["pretrain", "--objective", "mlm", "--whole-word", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--preset", "tiny", "--seq-len", str(SEQ_LEN), "--batch-size", "4", "--max-steps", "3",
                 "--eval-every", "1000", "--eval-blocks", "4", "--save-every", "1000", "--warmup-steps", "1",
                 "--device", "cpu", "--seed", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "done: step 3" in out
    assert "no word-start flags" not in out  # the CJK note is only for data without flags
    assert len(calls) >= 3 and all(ws is not None for _, ws, _ in calls)
    # Step 0's flags are exactly the stored flags of step 0's blocks (seed 0, draw 0, batch 4).
    train = TokenShard(data, "train")
    starts = sample_starts(len(train), block_span(SEQ_LEN, "mlm"), 4, 0, 0)
    assert torch.equal(calls[0][1], gather_word_starts(train.word_starts, starts, SEQ_LEN, "mlm"))
    # And the masker grouped by them: every selected word is selected whole.
    ids, flags, selected = calls[0]
    selectable = ~torch.isin(ids, torch.tensor(tok.special_ids))
    words = _word_ids(flags, selectable)
    for row in range(ids.size(0)):
        for w in words[row][selectable[row]].unique():
            part = selected[row][(words[row] == w) & selectable[row]]
            assert part.all() or not part.any()


# ---------------------------------------------------------------------------------- data without flags


def test_data_without_flags_keeps_todays_masking_and_notes_chinese_vocabularies(tmp_path, capsys):
    (tmp_path / "zh.txt").write_text("\n\n".join(_documents(40)))
    tok = train_tokenizer([tmp_path / "zh.txt"], "char", vocab_size=0)
    prepare_corpus([tmp_path / "zh.txt"], tok, tmp_path / "data", val_fraction=0.1, workers=1, progress=False)
    assert TokenShard(tmp_path / "data", "train").word_starts is None
    opts = PretrainOptions(objective="mlm", seq_len=SEQ_LEN, whole_word=True)
    task = PretrainTask(tmp_path / "data", tok, opts, max_positions=64, batch_size=4, max_steps=10, seed=7)
    out = capsys.readouterr().out
    assert out.count("note:") == 1
    assert "every Chinese character is then its own word" in out and "prepare --segmenter jieba" in out
    assert not task.word_flags and task.masker.continuation is not None
    # The batch is today's: blocks at sample_starts, masked through the vocabulary table with the step's generator.
    for step in (0, 5):
        batch = task.batch(step, 0, 0, 1)
        starts = sample_starts(len(task.train), block_span(SEQ_LEN, "mlm"), 4, 7, step * 1_000)
        ids = gather_blocks(task.train.tokens, starts, SEQ_LEN, "mlm", tok.cls_id, tok.sep_id)
        reference = MLMMasker(tok.mask_id, tok.vocab_size, tok.special_ids, whole_word=True,
                              continuation=tok.continuation_table())
        corrupted, labels = reference(ids, None, torch.Generator().manual_seed(7 * 1_000_003 + step * 1_000))
        assert torch.equal(batch["input_ids"], corrupted) and torch.equal(batch["labels"], labels)
        assert torch.equal(task.batch(step, 0, 0, 1)["labels"], labels)  # a resumed run draws the same batch
    # An English vocabulary gets no note.
    (tmp_path / "en.txt").write_text("the quick brown fox jumps over the lazy dog\n\nto be or not to be\n" * 30)
    en = train_tokenizer([tmp_path / "en.txt"], "char", vocab_size=0)
    assert cjk_share(en) == 0.0 and cjk_share(tok) > 0.5
    prepare_corpus([tmp_path / "en.txt"], en, tmp_path / "en", val_fraction=0.1, workers=1, progress=False)
    PretrainTask(tmp_path / "en", en, opts, max_positions=64, batch_size=4, max_steps=10, seed=7)
    assert "note:" not in capsys.readouterr().out


@needs_jieba
def test_flagged_data_without_whole_word_masks_as_before(corpus, tmp_path):
    """Flags change nothing unless --whole-word asks for them: the same batches as the same tokens without flags."""
    folder, data, tok = corpus
    prepare_corpus([folder / "corpus.txt"], tok, tmp_path / "plain", val_fraction=0.1, workers=1, progress=False)
    opts = PretrainOptions(objective="mlm", seq_len=SEQ_LEN)
    flagged = PretrainTask(data, tok, opts, max_positions=64, batch_size=4, max_steps=10, seed=3)
    plain = PretrainTask(tmp_path / "plain", tok, opts, max_positions=64, batch_size=4, max_steps=10, seed=3)
    assert not flagged.word_flags
    for step in range(3):
        a, b = flagged.batch(step, 0, 0, 1), plain.batch(step, 0, 0, 1)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_old_folders_load_and_damaged_flags_are_a_clear_error(tmp_path):
    (tmp_path / "zh.txt").write_text("\n\n".join(_documents(30)))
    tok = train_tokenizer([tmp_path / "zh.txt"], "char", vocab_size=0)
    prepare_corpus([tmp_path / "zh.txt"], tok, tmp_path / "data", val_fraction=0.1, workers=1, progress=False)
    meta_path = tmp_path / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["segmenter"] is None
    # A folder from before flags existed: no segmenter or n_unk keys at all.
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("segmenter", "n_unk")}))
    shard = TokenShard(tmp_path / "data", "train")
    assert shard.word_starts is None and shard.meta.segmenter is None and len(shard) == meta["n_train"]
    # meta.json says jieba but a flags file is short or missing: the file is named.
    meta_path.write_text(json.dumps({**meta, "segmenter": "jieba"}))
    (tmp_path / "data" / "train.word_starts.bin").write_bytes(b"\x01" * (meta["n_train"] - 1))
    with pytest.raises(DataError, match=r"train\.word_starts\.bin: \d+ bytes but meta\.json says \d+ word-start"):
        TokenShard(tmp_path / "data", "train")
    with pytest.raises(DataError, match=r"val\.word_starts\.bin: missing"):
        TokenShard(tmp_path / "data", "val")
