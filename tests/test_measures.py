"""twinlm.measures: cloze / next-word accuracy on models whose answers are known, the unigram baseline and the
diversity of samples against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import peaked_model
from twinlm.config import ModelConfig
from twinlm.errors import ConfigError
from twinlm.measures import (
    ClozeItem,
    _causal_scores,
    _encode_span,
    _rank,
    _words,
    candidate_words,
    cloze_accuracy,
    cloze_items,
    corpus_lines,
    distinct_n,
    first_units,
    next_word_accuracy,
    repetition_rate,
    unigram_baseline,
    units,
    word_counts,
)
from twinlm.model import LanguageModel
from twinlm.scoring import score
from twinlm.tokenizer import train_tokenizer

SENTENCES = [
    "the old king rode north at dawn.",
    "a young queen sang songs by night.",
    "my brave knight fought dragons with fire.",
    "her clever maid baked bread every morning.",
]


def every_item(sentences: list[str]) -> list[ClozeItem]:
    """Every hideable word of every sentence (all but the first), as a cloze item."""
    return [ClozeItem(s[:i] + "[MASK]" + s[i + len(w):], w, s[:i], s[i + len(w):])
            for s in sentences for w, i in _words(s) if i > 0]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("measures") / "text.txt"
    path.write_text("\n\n".join(SENTENCES * 20) + "\n")
    return train_tokenizer([path], kind="bpe", vocab_size=320)


def tiny_hybrid(tok, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layers=2, d_model=64, n_heads=4, d_ff=128, max_positions=64,
                      attention="bidirectional", objective="hybrid", position="rotary")
    return LanguageModel(cfg)


def train_to_overfit(tok, steps: int = 60) -> LanguageModel:
    """A hybrid model trained until it reproduces SENTENCES: every hidden word, masked or causal, is recoverable."""
    model = tiny_hybrid(tok)
    start = tok.bos_id
    causal = [[start, *tok.encode(s)] for s in SENTENCES]
    masked = []  # the inputs the masked measures build: [CLS] left [MASK]*k (right) [SEP], labels at the masks
    for it in every_item(SENTENCES):
        ids, s, e = _encode_span(tok, it.left, it.answer, it.right)
        for right in (ids[e:], []):
            row = [tok.cls_id, *ids[:s], *[tok.mask_id] * (e - s), *right, tok.sep_id]
            labels = [-100] * len(row)
            labels[1 + s:1 + e] = ids[s:e]
            masked.append((row, labels))
    width = max(len(r) for r, _ in masked)
    mx = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r, _ in masked])
    my = torch.tensor([y + [-100] * (width - len(y)) for _, y in masked])
    mm = (torch.arange(width)[None] < torch.tensor([len(r) for r, _ in masked])[:, None]).long()
    cwidth = max(len(r) for r in causal)
    cx = torch.tensor([r + [tok.pad_id] * (cwidth - len(r)) for r in causal])
    cy = torch.tensor([r[1:] + [-100] * (cwidth - len(r) + 1) for r in causal])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        m_loss = F.cross_entropy(model(mx, mm, attention="bidirectional").flatten(0, 1), my.flatten())
        c_loss = F.cross_entropy(model(cx, attention="causal")[:, :-1].flatten(0, 1), cy[:, :-1].flatten())
        opt.zero_grad()
        (m_loss + c_loss).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def overfit(tokenizer):
    return train_to_overfit(tokenizer)


# ------------------------------------------------------------------------------------------------ items


def test_cloze_items_hide_one_word_of_letters_that_is_not_the_first():
    lines = ["My lord, the king is come.", "short line", "  O Romeo, Romeo! wherefore art thou Romeo?  ",
             "Where's the king's o'er-weary horse now gone?"]
    items = cloze_items(lines, n=10, seed=3)
    assert len(items) == 3  # "short line" has fewer than 6 words
    for it in items:
        assert it.text in [line.strip() for line in lines]
        assert it.answer.isalpha() and it.left.strip()  # never the first word
        assert it.left[-1].isspace() and not (it.right[:1].isalpha())
        assert it.text_with_blank == it.left + "[MASK]" + it.right
    assert "king's" not in [it.answer for it in items] and "o" not in [it.answer for it in items]
    assert cloze_items(lines, n=10, seed=3) == items  # seeded
    assert len(cloze_items(lines, n=2)) == 2
    romeo = cloze_items(["O Romeo, Romeo! wherefore art thou"], n=1, seed=0, min_words=2)
    assert romeo[0].answer in {"Romeo", "wherefore", "art", "thou"}
    with pytest.raises(ConfigError):
        cloze_items(lines, n=0)


def test_trailing_punctuation_stays_on_the_right():
    [item] = cloze_items(["the lord, the"], n=1, min_words=3, seed=0) or [None]
    assert item is not None and item.text == "the lord, the"
    if item.answer == "lord":
        assert item.right == ", the"


# ------------------------------------------------------------------------------------------------ scoring


def test_batched_causal_scores_equal_the_scorer(overfit, tokenizer):
    text = SENTENCES[1]
    ids = tokenizer.encode(text)
    ref = score(overfit, tokenizer, text, paradigm="causal")
    whole, part = _causal_scores(overfit, [tokenizer.bos_id], [ids, ids[:3]])
    assert whole == pytest.approx(ref.total, abs=1e-4)
    assert part == pytest.approx(sum(ref.logprobs[:3]), abs=1e-4)
    # A longer shared prefix (through the KV cache), continuations of different lengths, one of a single token.
    tail, one = _causal_scores(overfit, [tokenizer.bos_id, *ids[:2]], [ids[2:], ids[2:3]])
    assert tail == pytest.approx(sum(ref.logprobs[2:]), abs=1e-4)
    assert one == pytest.approx(ref.logprobs[2], abs=1e-4)


def test_causal_scores_with_learned_positions_and_a_prefix_too_long(tokenizer):
    model = peaked_model(tokenizer.vocab_size, "causal", positions=32)
    ids = tokenizer.encode(SENTENCES[2])
    ref = score(model, tokenizer, SENTENCES[2], paradigm="causal")
    [tail] = _causal_scores(model, [tokenizer.bos_id, *ids[:3]], [ids[3:]])
    assert tail == pytest.approx(sum(ref.logprobs[3:]), abs=1e-4)
    model = peaked_model(tokenizer.vocab_size, "causal", positions=16)
    long_prefix = [tokenizer.bos_id, *ids * 3]  # longer than the 16 positions: the oldest context is dropped
    [short] = _causal_scores(model, long_prefix, [ids[:2]])
    assert short < 0 and short == pytest.approx(_causal_scores(model, [tokenizer.bos_id, *long_prefix[-13:]],
                                                               [ids[:2]])[0], abs=1e-5)


def test_rank_counts_ties_against_the_answer():
    assert _rank([2.0, 1.0, 0.0]) == 0
    assert _rank([1.0, 1.0, 0.0]) == 1
    assert _rank([0.0, 1.0, 3.0]) == 2


@pytest.mark.parametrize("paradigm", ["masked", "causal"])
def test_a_model_that_learned_the_sentences_gets_every_word(overfit, tokenizer, paradigm):
    items = every_item(SENTENCES)
    assert len(items) >= 20
    assert any(len(tokenizer.encode(" " + it.answer)) > 1 for it in items)  # multi-token answers are exercised
    cloze = cloze_accuracy(overfit, tokenizer, items, paradigm=paradigm)
    assert cloze["top1"] == 1.0 and cloze["top5"] == 1.0
    assert cloze["n"] == len(items) and cloze["paradigm"] == paradigm
    nxt = next_word_accuracy(overfit, tokenizer, items, paradigm=paradigm)
    assert nxt["top1"] == 1.0 and nxt["paradigm"] == paradigm


@pytest.mark.parametrize("paradigm", ["masked", "causal"])
def test_an_untrained_model_scores_lower(tokenizer, paradigm):
    items = every_item(SENTENCES)
    model = tiny_hybrid(tokenizer, seed=1).eval()
    cloze = cloze_accuracy(model, tokenizer, items, paradigm=paradigm)
    nxt = next_word_accuracy(model, tokenizer, items, paradigm=paradigm)
    assert cloze["top1"] <= 0.25 and nxt["top1"] <= 0.25  # measured: at most 1 of 24
    assert cloze["top1"] <= cloze["top5"]


def test_default_paradigms_and_refusals(overfit, tokenizer):
    items = every_item(SENTENCES)[:3]
    assert cloze_accuracy(overfit, tokenizer, items)["paradigm"] == "masked"  # a hybrid fills blanks by default
    assert next_word_accuracy(overfit, tokenizer, items)["paradigm"] == "causal"  # and predicts causally
    lines = next_word_accuracy(overfit, tokenizer, SENTENCES[:2])  # plain lines become items
    assert lines["n"] == 2
    clm = LanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=32,
                                    max_positions=64, attention="causal"))
    assert cloze_accuracy(clm, tokenizer, items)["paradigm"] == "causal"
    with pytest.raises(ConfigError, match="masked"):
        cloze_accuracy(clm, tokenizer, items, paradigm="masked")


def test_candidates_are_shared_and_include_the_answer(overfit, tokenizer):
    items = every_item(SENTENCES)
    # Only wrong candidates given: each answer is added back for its own item, so the learned model still wins.
    res = cloze_accuracy(overfit, tokenizer, items, candidates=["dragons", "bread"], paradigm="masked")
    assert res["top1"] == 1.0 and res["candidates"] == 2
    assert res["top5"] == 1.0


# ------------------------------------------------------------------------------------------------ baselines


def test_unigram_baseline_equals_the_hand_computed_value():
    train = ["the cat saw the dog.", "the cat, the bird", "a cat saw a dog"]
    # counts: the 4, cat 3, saw 2, dog 2, a 2, bird 1
    assert word_counts(train)["the"] == 4 and word_counts(train)["cat"] == 3
    items = [ClozeItem("x [MASK]", w, "x ", "") for w in ("the", "cat", "bird", "fish")]
    base = unigram_baseline(train, items, top=(1, 2, 5))
    assert base["top1"] == 0.25  # only "the" is the most frequent word
    assert base["top2"] == 0.5  # "the", "cat"
    assert base["top5"] == 0.5  # "bird" is 6th (saw/dog/a tie at 2 before it); "fish" never occurs
    assert base["n"] == 4 and base["paradigm"] == "unigram"
    # Among candidates: the same ranking restricted to them (plus each answer).
    limited = unigram_baseline(train, items, top=(1, 2), candidates=["cat", "bird"])
    assert limited["top1"] == 0.5  # "the" (4 > 3) and "cat"; "bird" loses to cat; "fish" (0) loses
    assert limited["top2"] == 0.75
    assert candidate_words(items, train, k=2) == ["the", "cat", "bird", "fish"]


def test_distinct_n_and_repetition_rate_equal_hand_computed_values():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)  # a b a b a b c: 3 of 7 unique
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc: {ab, ba, bc}
    assert repetition_rate(texts, 2) == pytest.approx(1 / 5)  # only the 2nd "ab" of text 1 repeats within its text
    assert repetition_rate(["x y z w"], 4) == 0.0
    assert repetition_rate(["go go go go go"], 1) == pytest.approx(4 / 5)
    assert distinct_n([], 2) == 0.0 and repetition_rate(["short"], 4) == 0.0


def test_chinese_words_are_characters_and_nothing_is_lost_or_glued():
    text = "这家酒店很好，下次再来。iPhone 15 真的 king, the"
    found = units(text)
    assert [u for u, _ in found[:6]] == ["这", "家", "酒", "店", "很", "好"]
    assert ("，", 6) in found and ("。", 11) in found and ("iPhone", 12) in found and ("king,", 25) in found
    assert all(text[s:s + len(u)] == u for u, s in found)  # offsets point at the text as written
    assert "".join(u for u, _ in found) == text.replace(" ", "")  # every character is in exactly one unit
    # Words to hide are letters: ideographs one by one, punctuation and digits never.
    assert [w for w, _ in _words(text)] == [*"这家酒店很好下次再来", "iPhone", "真", "的", "king", "the"]
    assert first_units("此开卷第一回也．作者自云", 5) == "此开卷第一"
    assert first_units("The king is dead", 2) == "The king"
    assert distinct_n(["好好好", "好坏"], 1) == pytest.approx(2 / 5)  # characters, not one whitespace "word"
    assert repetition_rate(["哈哈哈哈哈"], 2) == pytest.approx(3 / 4)


def test_chinese_cloze_items_hide_one_character_and_keep_the_sentence():
    lines = ["这家酒店的服务很好，下次还会再来。", "房间太小了。", "从前有座山，山里有座庙。"]
    items = cloze_items(lines, 10, seed=0)
    assert len(items) == 3  # six or more units: even the six-character line qualifies
    for item, line in zip(items, lines, strict=True):
        assert len(item.answer) == 1 and "\u4e00" <= item.answer <= "\u9fff"
        assert item.text == line and item.left and item.text_with_blank == item.left + "[MASK]" + item.right
    assert word_counts(["好好，坏"]) == {"好": 2, "坏": 1}


def test_corpus_lines_decode_the_held_out_documents(tmp_path):
    from twinlm.data.corpus import prepare_corpus

    paragraphs = [f"PARA{i}:\nline {i} of the text here" for i in range(30)]
    text = tmp_path / "c.txt"
    text.write_text("\n\n".join(paragraphs) + "\n")
    tok = train_tokenizer([text], kind="bpe", vocab_size=300)
    prepare_corpus([text], tok, tmp_path / "data", val_fraction=0.1, workers=1, progress=False)
    val = corpus_lines(tmp_path / "data", "val", tok)
    train = corpus_lines(tmp_path / "data", "train")
    assert val == ["PARA9:", "line 9 of the text here", "PARA19:", "line 19 of the text here", "PARA29:",
                   "line 29 of the text here"]  # every 10th paragraph is held out
    assert "line 9 of the text here" not in train and len(train) == 2 * 27
