"""Scoring: perplexity of a known distribution equals its analytic value, sliding windows score each token once with
context, the batched pseudo-log-likelihood equals a hand loop, and the `score` command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import peaked_model
from twinlm.checkpoint import save_model
from twinlm.cli import main
from twinlm.errors import ConfigError
from twinlm.model import LanguageModel
from twinlm.scoring import causal_logprobs, perplexity, pseudo_logprobs, pseudo_perplexity, score
from twinlm.tokenizer import Tokenizer, train_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. the end."


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("chars") / "c.txt"
    corpus.write_text(TEXT + "\n\nTHE END, said she; (42)!\n")
    return train_tokenizer([corpus], kind="char", vocab_size=0)


def model_for(tok: Tokenizer, kind: str = "causal", positions: int = 32, seed: int = 0) -> LanguageModel:
    return peaked_model(tok.vocab_size, kind, positions, seed=seed)


def fixed_distribution_model(tok: Tokenizer, logp: torch.Tensor, positions: int = 16) -> LanguageModel:
    """A causal LM whose next-token distribution is exp(logp) whatever the context: every weight is zero except the
    LM-head bias, so the final LayerNorm outputs zeros and the logits are the bias."""
    model = model_for(tok, positions=positions)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.bias.copy_(logp)
    return model


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 15), (4, 1), (2, 1)])
def test_perplexity_of_a_known_distribution_equals_its_analytic_value(tok, window, stride):
    V = tok.vocab_size
    probs = torch.rand(V, generator=torch.Generator().manual_seed(0)) + 0.1
    probs /= probs.sum()
    model = fixed_distribution_model(tok, probs.log())
    ids = tok.encode(TEXT)
    nll = -sum(math.log(float(probs[i])) for i in ids)
    result = perplexity(model, tok, TEXT, window=window, stride=stride, batch_size=3)
    assert result.tokens == len(ids) == len(TEXT) and result.bytes == len(TEXT.encode())
    assert result.loss == pytest.approx(nll / len(ids), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / len(TEXT), rel=1e-5)


def test_uniform_model_has_perplexity_equal_to_the_vocabulary_size(tok):
    model = fixed_distribution_model(tok, torch.zeros(tok.vocab_size))
    result = perplexity(model, tok, TEXT)
    assert result.perplexity == pytest.approx(tok.vocab_size, rel=1e-6)
    assert result.bits_per_byte == pytest.approx(math.log2(tok.vocab_size), rel=1e-6)  # one char = one byte


def test_sliding_window_scores_each_token_once_with_context(tok):
    model = model_for(tok, positions=64)
    ids = tok.encode(TEXT)
    seq = torch.tensor([[tok.bos_id, *ids]])
    with torch.no_grad():
        full = model(seq)[0, :-1].double().log_softmax(-1).gather(1, seq[0, 1:, None]).squeeze(1)
    one_window = causal_logprobs(model, ids, tok.bos_id, window=64, stride=63)
    assert (one_window - full).abs().max() < 1e-5
    windowed = causal_logprobs(model, ids, tok.bos_id, window=16, stride=4)
    assert windowed.shape == full.shape
    # Target chunks of 4 ending at or before position 16 are read from windows that start at BOS, like the full pass;
    # later ones see 12 to 15 tokens of context, so they differ from it.
    assert (windowed[:12] - full[:12]).abs().max() < 1e-5
    assert (windowed[12:] - full[12:]).abs().max() > 1e-6


def test_window_and_stride_errors(tok):
    model = model_for(tok)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, tok, TEXT, window=16, stride=16)
    with pytest.raises(ConfigError, match="max_positions=32"):
        perplexity(model, tok, TEXT, window=64)
    with pytest.raises(ConfigError, match="empty"):
        perplexity(model, tok, "")


def hand_pll(model: LanguageModel, tok: Tokenizer, text: str) -> list[float]:
    """log P(x_i | rest) by masking one position at a time, one forward pass each."""
    framed = tok.encode(text, add_special=True)  # char: text + EOS
    out = []
    for i in range(len(framed) - 1):
        x = torch.tensor([framed])
        x[0, i] = tok.mask_id
        with torch.no_grad():
            logits = model(x, attention="bidirectional")[0, i]
        out.append(float(logits.double().log_softmax(-1)[framed[i]]))
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_pseudo_log_likelihood_equals_a_hand_loop(tok, batch_size):
    model = model_for(tok, kind="bidirectional")
    text = "the lazy dog."
    expected = hand_pll(model, tok, text)
    got = pseudo_logprobs(model, tok, tok.encode(text), batch_size=batch_size)
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    result = pseudo_perplexity(model, tok, text)
    assert result["pll"] == pytest.approx(sum(expected), abs=1e-4)
    assert result["pseudo_perplexity"] == pytest.approx(math.exp(-sum(expected) / len(expected)), rel=1e-5)


def test_score_returns_per_token_logprobs_for_both_paradigms(tok):
    causal, masked = model_for(tok), model_for(tok, kind="bidirectional")
    c = score(causal, tok, "the dog")
    m = score(masked, tok, "the dog")
    assert c.paradigm == "causal" and m.paradigm == "masked"
    assert len(c.logprobs) == len(m.logprobs) == len("the dog") and c.tokens[0] == "t"
    assert all(lp <= 0 for lp in c.logprobs + m.logprobs)
    with pytest.raises(ConfigError, match="a masked model"):
        score(masked, tok, "the dog", paradigm="causal")
    with pytest.raises(ConfigError, match="a causal model"):
        score(causal, tok, "the dog", paradigm="masked")
    # a long text for a masked model is scored in chunks that fit max_positions
    assert len(score(masked, tok, TEXT * 2).logprobs) == 2 * len(TEXT)


def test_cli_score(capsys, tmp_path, tok):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    for kind in ("causal", "bidirectional"):
        model = model_for(tok, kind=kind)
        folder = save_model(tmp_path / kind, model_state=model.state_dict(), config=model.config, tokenizer=tok)
        assert main(["score", "--model", str(folder), "--data", str(data), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        if kind == "causal":
            assert result["tokens"] == len(TEXT) and result["perplexity"] == pytest.approx(math.exp(result["loss"]))
        else:
            assert result["paradigm"] == "masked" and result["pseudo_perplexity"] > 1
    assert main(["score", "--model", str(tmp_path / "causal"), "--data", str(data), "--stride", "40"]) != 0
    assert "stride" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    assert main(["score", "--model", str(tmp_path / "causal"), "--data", str(bad)]) != 0
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err
