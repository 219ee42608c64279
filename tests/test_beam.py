"""Beam search: KVBuffer.reorder, one beam is greedy, a wider beam finds a likelier sequence, the logits processors
apply as in greedy decoding, and a batch of prompts searches like one prompt at a time."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import peaked_model
from twinlm.attention import KVBuffer
from twinlm.beam import beam_search, beam_search_batch
from twinlm.config import ModelConfig
from twinlm.generate import generate_ids
from twinlm.model import LanguageModel
from twinlm.processors import GenerationConfig

VOCAB = 60


def tiny(seed: int = 0) -> LanguageModel:
    return peaked_model(VOCAB, "causal", 128, "pre", seed)


# ---------------------------------------------------------------------------------------------- KVBuffer.reorder


def _filled(batch: int, length: int = 5, capacity: int = 8) -> tuple[KVBuffer, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    k, v = torch.randn(batch, 2, length, 4, generator=gen), torch.randn(batch, 2, length, 4, generator=gen)
    buf = KVBuffer(batch, 2, capacity, 4, torch.float32, "cpu")
    buf.append(k, v)
    return buf, k, v


def test_kv_buffer_reorder_rewrites_rows_in_the_same_storage():
    buf, k, v = _filled(3)
    storage = buf.k.data_ptr(), buf.v.data_ptr()
    index = torch.tensor([2, 0, 0])  # a permutation with a repeat, as beam search makes
    buf.reorder(index)
    assert (buf.k.data_ptr(), buf.v.data_ptr()) == storage and buf.length == 5
    assert torch.equal(buf.k[:, :, :5], k[index]) and torch.equal(buf.v[:, :, :5], v[index])
    new = torch.randn(3, 2, 1, 4)
    keys, values = buf.append(new, -new)
    assert torch.equal(keys, torch.cat([k[index], new], 2)) and torch.equal(values, torch.cat([v[index], -new], 2))


def test_kv_buffer_reorder_can_change_the_row_count():
    buf, k, v = _filled(2)
    index = torch.tensor([0, 0, 0, 1, 1, 1])  # each prompt copied to three beams
    buf.reorder(index)
    assert buf.k.shape == (6, 2, 8, 4) and buf.length == 5
    assert torch.equal(buf.k[:, :, :5], k[index]) and torch.equal(buf.v[:, :, :5], v[index])
    keys, _ = buf.append(torch.zeros(6, 2, 3, 4), torch.zeros(6, 2, 3, 4))
    assert keys.shape == (6, 2, 8, 4)
    with pytest.raises(ValueError, match="holds 8 positions"):
        buf.append(torch.zeros(6, 2, 1, 4), torch.zeros(6, 2, 1, 4))


def test_a_reordered_cache_decodes_like_a_full_forward_pass():
    model = tiny()
    c = model.config
    prompts = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    buffers = [KVBuffer(3, c.kv_heads, 8, c.head_dim, torch.float32, "cpu") for _ in range(c.n_layers)]
    index = torch.tensor([2, 0, 1, 1])
    nxt = torch.tensor([[7], [8], [9], [10]])
    with torch.no_grad():
        _, cache = model.backbone(prompts, attention="causal", past=buffers)
        for layer in cache:
            layer.reorder(index)
        hidden, _ = model.backbone(nxt, attention="causal", past=cache)
        full = model(torch.cat([prompts[index], nxt], 1), attention="causal")[:, -1]
    assert (model.head(hidden[:, -1]) - full).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------- beam search


def test_beam_search_with_one_beam_equals_greedy():
    model = tiny()
    for prompt in ([1, 2, 3], [20, 21, 22, 23]):
        greedy = generate_ids(model, [prompt], max_new_tokens=15)[0]
        for early in (True, False):
            cfg = GenerationConfig(max_new_tokens=15, num_beams=1, early_stopping=early)
            assert beam_search(model, prompt, cfg)[0] == greedy
    # with a stop token in play, early stopping ends on the first finished beam like greedy does
    free = generate_ids(model, [[1, 2, 3]], max_new_tokens=15)[0]
    cfg = GenerationConfig(max_new_tokens=15, num_beams=1, early_stopping=True)
    assert beam_search(model, [1, 2, 3], cfg, stop_ids=[free[4]])[0] == free[:free.index(free[4])]


def bigram_model(table: torch.Tensor) -> LanguageModel:
    """A causal LM whose next-token distribution depends only on the previous token: softmax(table[prev]).

    Token embeddings are one-hot, attention and MLP outputs are zero (each block is the identity), so the final
    LayerNorm sees a one-hot vector; the decoder matrix undoes that LayerNorm's affine map.
    """
    V = table.size(0)
    cfg = ModelConfig(vocab_size=V, n_layers=1, d_model=V + 1, n_heads=1, d_ff=4, max_positions=16,
                      attention="causal", tie_embeddings=False, layer_norm_eps=1e-12)
    model = LanguageModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.backbone.tok_emb.weight[:, :V] = torch.eye(V)
        model.backbone.final_norm.weight.fill_(1.0)
        d = V + 1
        std = math.sqrt((1 / d) * (1 - 1 / d))  # LayerNorm of a one-hot e_i is (e_i - 1/d) / std
        w = torch.zeros(V, d)
        w[:, :V] = table.t() * std
        w[:, V] = -w[:, :V].sum(1)  # rows sum to zero, so the -1/d shift contributes nothing
        model.head.decoder.weight.copy_(w)
    return model


def test_beam_search_finds_a_better_sequence_than_greedy():
    # tokens: 0 start, 1 A, 2 B, 3 C, 4 D.  start -> A .6 | B .4;  A -> C .34 | D .33 | start .33;  B -> C .9
    probs = torch.full((5, 5), 1e-6)
    probs[0, 1], probs[0, 2] = 0.6, 0.4
    probs[1, 3], probs[1, 4], probs[1, 0] = 0.34, 0.33, 0.33
    probs[2, 3], probs[2, 4] = 0.9, 0.1
    probs[3] = probs[4] = 0.2
    model = bigram_model(probs.log())

    def logprob(seq: list[int]) -> float:
        with torch.no_grad():
            lp = model(torch.tensor([[0] + seq]))[0].log_softmax(-1)
        return sum(float(lp[i, t]) for i, t in enumerate(seq))

    greedy = generate_ids(model, [[0]], max_new_tokens=2)[0]
    beam = generate_ids(model, [[0]], max_new_tokens=2, num_beams=2, length_penalty=0.0)[0]
    assert greedy == [1, 3] and beam == [2, 3]
    assert logprob(beam) > logprob(greedy)
    assert abs(logprob(beam) - math.log(0.4 * 0.9)) < 1e-3


@pytest.mark.parametrize("penalties", [{"repetition_penalty": 1.8}, {"no_repeat_ngram_size": 2},
                                       {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3}])
def test_one_beam_applies_the_same_processors_as_greedy(penalties):
    model = tiny()
    prompt = [1, 2, 3]
    plain = generate_ids(model, [prompt], max_new_tokens=30)[0]
    greedy = generate_ids(model, [prompt], max_new_tokens=30, **penalties)[0]
    assert greedy != plain  # the processors change the output, so the comparison below means something
    assert beam_search(model, prompt, GenerationConfig(max_new_tokens=30, num_beams=1, **penalties))[0] == greedy


def test_beam_search_never_repeats_an_ngram_when_asked():
    model = tiny()
    prompt = [1, 2, 3]
    plain = prompt + generate_ids(model, [prompt], max_new_tokens=40, num_beams=3)[0]
    assert len(set(zip(plain, plain[1:], strict=False))) < len(plain) - 1  # without the ban it repeats itself
    seq = prompt + generate_ids(model, [prompt], max_new_tokens=40, num_beams=3, no_repeat_ngram_size=2)[0]
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(seq) == 43 and len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("settings", [{"num_beams": 3}, {"num_beams": 2, "early_stopping": True},
                                      {"num_beams": 4, "length_penalty": 0.0, "repetition_penalty": 1.3}])
def test_batched_beam_search_equals_one_prompt_at_a_time(settings):
    model = tiny(seed=1)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [40]]
    cfg = GenerationConfig(max_new_tokens=16, **settings)
    stops = [generate_ids(model, [prompts[1]], max_new_tokens=16)[0][3]]  # a token some beams will end with
    batch = beam_search_batch(model, prompts, cfg, stop_ids=stops)
    singles = [beam_search(model, p, cfg, stop_ids=stops) for p in prompts]
    assert [(t, s) for t, _, s in batch] == [(t, s) for t, _, s in singles]
    assert all(abs(b[1] - s[1]) < 1e-4 for b, s in zip(batch, singles, strict=True))
    assert any(stopped for _, _, stopped in batch)
    assert generate_ids(model, prompts, cfg, stop_ids=stops) == [t for t, _, _ in batch]
