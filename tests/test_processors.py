"""Logits processors: each keeps its promise on random logits, and build_processors picks them in order."""

from __future__ import annotations

import pytest
import torch

from twinlm.processors import (
    GenerationConfig,
    apply_processors,
    build_processors,
    min_p,
    no_repeat_ngram,
    repetition_penalty,
    temperature,
    top_k,
    top_p,
)


def _logits(rows: int = 6, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_keeps_exactly_the_k_best(k):
    logits = _logits()
    out = top_k(k)(None, None, logits)
    for row, kept in zip(logits, out, strict=True):
        finite = torch.isfinite(kept)
        assert int(finite.sum()) == k
        assert set(finite.nonzero().squeeze(1).tolist()) == set(row.topk(k).indices.tolist())


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(p):
    logits = _logits()
    out = top_p(p)(None, None, logits)
    for row, kept in zip(logits, out, strict=True):
        probs = row.softmax(-1)
        keep = torch.isfinite(kept)
        mass = float(probs[keep].sum())
        assert mass >= p - 1e-6
        # the kept tokens are the most likely ones, and dropping the least likely kept one falls short of p
        assert float(probs[keep].min()) >= float(probs[~keep].max()) if (~keep).any() else True
        assert mass - float(probs[keep].min()) < p


def test_min_p_keeps_tokens_above_a_fraction_of_the_best():
    logits = _logits()
    out = min_p(0.2)(None, None, logits)
    probs = logits.softmax(-1)
    expected = probs >= 0.2 * probs.max(-1, keepdim=True).values
    assert torch.equal(torch.isfinite(out), expected)


def test_repetition_penalty_touches_only_seen_tokens_and_ignores_padding():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 1.0]])
    ids = torch.tensor([[4, 0, 1]])
    mask = torch.tensor([[0, 1, 1]])  # token 4 is padding
    out = repetition_penalty(2.0)(ids, mask, logits)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 1.0]]


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    ids = torch.tensor([[1, 2, 3, 1, 2, 4, 1]])
    out = no_repeat_ngram(2)(ids, torch.ones_like(ids), torch.zeros(1, 6))
    assert torch.isinf(out[0]).nonzero().squeeze(1).tolist() == [2]  # "1 2" was seen; "1 3" was not
    out = no_repeat_ngram(3)(torch.tensor([[1, 2, 3, 1, 2]]), torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 6))
    assert torch.isinf(out[0]).nonzero().squeeze(1).tolist() == [3]


def test_temperature_scales_the_logits():
    logits = _logits()
    assert torch.allclose(temperature(0.5)(None, None, logits), logits * 2)


def _names(config: GenerationConfig) -> list[str]:
    return [proc.__qualname__.split(".")[0] for proc in build_processors(config)]


def test_build_processors_picks_the_asked_ones_in_order():
    everything = GenerationConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2,
                                  no_repeat_ngram_size=3)
    assert _names(everything) == ["repetition_penalty", "no_repeat_ngram", "temperature", "top_k", "top_p", "min_p"]
    # greedy: the warpers could not change the argmax, so only the penalties run
    greedy = GenerationConfig(top_k=5, top_p=0.9, repetition_penalty=1.2, no_repeat_ngram_size=3)
    assert _names(greedy) == ["repetition_penalty", "no_repeat_ngram"]
    assert _names(GenerationConfig()) == [] and _names(GenerationConfig(temperature=1.0, top_p=1.0)) == []


def test_apply_processors_runs_them_in_order():
    logits = _logits(rows=2)
    ids = torch.tensor([[3, 4], [5, 6]])
    procs = build_processors(GenerationConfig(temperature=2.0, top_k=4, repetition_penalty=1.5))
    expected = top_k(4)(ids, None, temperature(2.0)(ids, None, repetition_penalty(1.5)(ids, torch.ones_like(ids),
                                                                                        logits)))
    assert torch.equal(apply_processors(procs, ids, torch.ones_like(ids), logits), expected)
