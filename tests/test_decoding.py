"""The Decoder's continuous batching: rows joined and dropped between steps get exactly the tokens their prompts get
from generate_ids alone (greedy and seeded sampling), and a drop leaves the surviving rows' KV cache untouched."""

from __future__ import annotations

import pytest
import torch

from helpers import peaked_model
from twinlm.decoding import Decoder
from twinlm.generate import GenerationConfig, generate_ids

VOCAB, PAD = 50, 0
LLAMA_STYLE = dict(position="rotary", norm_type="rmsnorm", mlp="swiglu", n_kv_heads=2, activation="silu")
STYLES = pytest.mark.parametrize("style", [{}, LLAMA_STYLE], ids=["learned-positions", "llama-style"])


@pytest.fixture(autouse=True)
def _inference():
    with torch.no_grad():  # not inference_mode: models built here must stay normal tensors (head_logits reads versions)
        yield


def config(max_new_tokens: int = 10, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=max_new_tokens, stop_at_eos=False, **kw)


def alone(model, prompt: list[int], cfg: GenerationConfig, stop_ids=()) -> list[int]:
    return generate_ids(model, [prompt], cfg, pad_id=PAD, stop_ids=stop_ids)[0]


def prefilled(model, prompt: list[int], cfg: GenerationConfig, stop_ids=()) -> Decoder:
    dec = Decoder(model, [prompt], cfg, PAD, stop_ids)
    dec.prefill()
    return dec


def serve(model, requests: list[tuple[int, list[int], GenerationConfig]], leave: dict[int, int] | None = None,
          stop_ids: dict[int, list[int]] | None = None) -> tuple[dict[int, list[int]], int]:
    """Decode like the server: request i (joining at step, prompt, config) joins between steps, finished rows and
    requests leaving early (leave: request -> step) are dropped. Returns each request's tokens and the widest batch."""
    leave, stop_ids = leave or {}, stop_ids or {}
    dec: Decoder | None = None
    rows: list[int] = []  # row r of the decoder is request rows[r]
    out: dict[int, list[int]] = {}
    widest, step = 0, 0
    while len(out) < len(requests):
        gone = [r for r, i in enumerate(rows) if leave.get(i) == step]
        for r in gone:
            out[rows[r]] = dec.new_tokens(r)
        if gone:
            dec.drop(gone)
            rows = [i for r, i in enumerate(rows) if r not in gone]
        for i, (at, prompt, cfg) in enumerate(requests):
            if at == step:
                new = prefilled(model, prompt, cfg, stop_ids.get(i, ()))
                if dec is None:
                    dec = new
                else:
                    dec.join(new)
                rows.append(i)
        widest = max(widest, len(rows))
        if rows:
            dec.step()
        step += 1
        done = [r for r in range(len(rows)) if bool(dec.finished[r])]
        for r in done:
            out[rows[r]] = dec.new_tokens(r)
        dec.drop(done)
        rows = [i for r, i in enumerate(rows) if r not in done]
    return out, widest


@STYLES
def test_joined_rows_equal_decoding_alone(style):
    model = peaked_model(VOCAB, "causal", 64, seed=4, **style)
    first = [3, 14, 15, 9, 2]
    dec = prefilled(model, first, config(12))
    for _ in range(3):
        dec.step()
    dec.join(prefilled(model, [7, 1], config(6)))  # a shorter prompt: left-padded onto the batch
    dec.step()
    pair = [[5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6], [2, 2, 4]]  # a batch of its own, longer than the live one
    joined = Decoder(model, pair, config(8), PAD)
    joined.prefill()
    dec.join(joined)
    assert len(dec.lanes) == 1  # greedy lanes with the same processors merge
    while not dec.done:
        dec.step()
    got = [dec.new_tokens(r) for r in range(4)]
    assert got == [alone(model, first, config(12)), alone(model, [7, 1], config(6)),
                   *generate_ids(model, pair, config(8), pad_id=PAD)]
    assert [len(g) for g in got] == [12, 6, 8, 8]


@STYLES
def test_rows_joining_and_leaving_equal_decoding_alone(style):
    model = peaked_model(VOCAB, "causal", 64, seed=5, **style)
    greedy, sampled = config(9), config(11, temperature=0.9, top_k=12, seed=5)
    penalised, nucleus = config(7, repetition_penalty=1.3), config(10, temperature=1.2, top_p=0.9, seed=8)
    requests = [(0, [4, 9, 2, 6, 11, 3], sampled), (1, [8, 3], greedy), (2, [17, 2, 5], penalised),
                (4, [1, 2, 3, 4, 5, 6, 7, 8, 9], nucleus), (5, [12], sampled), (6, [30, 31], greedy)]
    stop_at = alone(model, [8, 3], greedy)[4]  # request 1 stops on its fifth token (or earlier)
    got, widest = serve(model, requests, stop_ids={1: [stop_at]})
    assert widest >= 4
    for i, (_, prompt, cfg) in enumerate(requests):
        assert got[i] == alone(model, prompt, cfg, [stop_at] if i == 1 else ()), i
    assert len(got[1]) < 5


def test_leaving_early_keeps_the_other_rows_exact():
    model = peaked_model(VOCAB, "causal", 64, seed=6)
    requests = [(0, [2, 3, 4, 5, 6, 7, 8], config(12)), (1, [9, 10], config(12, temperature=0.8, seed=3)),
                (1, [11, 12, 13], config(12)), (3, [14], config(12, temperature=0.7, top_k=5, seed=1))]
    got, _ = serve(model, requests, leave={0: 4, 2: 6})
    assert got[0] == alone(model, *requests[0][1:])[:4] and got[2] == alone(model, *requests[2][1:])[:5]
    for i in (1, 3):
        assert got[i] == alone(model, *requests[i][1:])


@STYLES
def test_drop_keeps_the_survivors_cache_and_releases_unused_columns(style):
    model = peaked_model(VOCAB, "causal", 64, seed=7, **style)
    prompts = [[5, 6], [1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7]]
    dec = Decoder(model, prompts, config(10), PAD)
    for _ in range(3):
        dec.step()
    before = {r: [(layer.k[r, :, :dec.length].clone(), layer.v[r, :, :dec.length].clone()) for layer in dec.cache]
              for r in (0, 2)}
    logits = dec.next_logits[[0, 2]].clone()
    width = dec.length
    dec.drop([1])  # the longest prompt leaves: the columns only it used are released
    assert dec.batch_size == 2 and dec.length == width - 5 == dec.cache[0].length
    for new, old in enumerate((0, 2)):
        for layer, (k, v) in zip(dec.cache, before[old], strict=True):
            assert torch.equal(layer.k[new, :, :dec.length], k[:, -dec.length:])
            assert torch.equal(layer.v[new, :, :dec.length], v[:, -dec.length:])
    assert torch.equal(dec.next_logits, logits)
    while not dec.done:
        dec.step()
    assert [dec.new_tokens(0), dec.new_tokens(1)] == [alone(model, p, config(10)) for p in (prompts[0], prompts[2])]


def test_an_emptied_batch_takes_new_rows():
    model = peaked_model(VOCAB, "causal", 64, seed=8)
    dec = prefilled(model, [3, 4, 5], config(4))
    dec.step()
    dec.drop([0])
    assert dec.batch_size == 0 and dec.done
    dec.join(prefilled(model, [6, 7], config(5, temperature=0.8, seed=2)))
    while not dec.done:
        dec.step()
    assert dec.new_tokens(0) == alone(model, [6, 7], config(5, temperature=0.8, seed=2))


def test_join_refuses_a_finished_batch_and_another_model():
    model = peaked_model(VOCAB, "causal", 64, seed=9)
    dec = prefilled(model, [3, 4], config(2))
    while not dec.done:
        dec.step()
    with pytest.raises(ValueError, match="drop"):
        dec.join(prefilled(model, [5], config(2)))
    with pytest.raises(ValueError, match="same model"):
        prefilled(model, [3], config(2)).join(prefilled(peaked_model(VOCAB, "causal", 64, seed=9), [5], config(2)))
