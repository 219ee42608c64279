"""twinlm quickstart: a very small run prints the word test (both models beside the unigram baseline) and fill-mask
answers that are words; the word filter on its own."""

from __future__ import annotations

import torch

from helpers import shakespeare_excerpt
from twinlm.config import ModelConfig
from twinlm.model import LanguageModel
from twinlm.quickstart import is_word, quickstart, word_fills
from twinlm.tokenizer import train_tokenizer


def test_is_word():
    assert is_word(" king") and is_word("Romeo") and is_word("th")
    assert not is_word(",") and not is_word("\n") and not is_word(" ") and not is_word("'s") and not is_word("3")


def test_word_fills_skip_punctuation_and_say_so(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(shakespeare_excerpt(20_000))
    tok = train_tokenizer([text], kind="bpe", vocab_size=400)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=32,
                                      max_positions=64, position="rotary")).eval()
    comma, newline = tok.encode(",")[0], tok.encode("\n")[0]
    with torch.no_grad():
        model.head.bias[comma] = 8.0  # the tiny-MLM failure: punctuation wins every blank
        model.head.bias[newline] = 7.0
    words, skipped = word_fills(model, tok, "My lord, the [MASK] is come.", k=3)
    assert len(words) == 3 and all(is_word(p.token) for p in words)
    assert [p.token for p in skipped[:2]] == [",", "\n"]
    assert all(p.score >= words[-1].score for p in skipped)


def test_small_quickstart_prints_the_word_test_and_word_answers(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_excerpt(40_000))
    result = quickstart(tmp_path / "out", corpus=corpus, max_steps=2, progress=False, n_cloze=8)
    out = capsys.readouterr().out
    assert "Word test on text neither model trained on: 8 lines of the validation split" in out
    table = out[out.index("fill the blank   next word"):]
    labels = [line.split()[0] for line in table.splitlines()[2:5]]
    assert labels == ["guessing", "MLM", "CLM"]  # the baseline first, then both models, each with 4 percentages
    assert all(line.count("%") == 4 for line in table.splitlines()[2:5])
    base = result["baseline"]
    assert base["n"] == 8 and 0.0 <= base["top1"] <= base["top5"] <= 1.0
    for name in ("mlm", "clm"):
        assert result[name]["position"] == "rotary"
        assert result[name]["cloze"]["n"] == 8 and result[name]["next word"]["n"] == 8
    answers = [line.split("->", 1)[1] for line in out.splitlines() if line.strip().startswith("->")]
    assert len(answers) == 3
    for line in answers:
        assert all(is_word(part.split()[0]) for part in line.split(","))  # "king 0.12": the word, its probability
