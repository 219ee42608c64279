"""Generation: the KV cache equals full passes, the processors in decoding, streaming, stop strings, beam search
through the text API, the CLI, and each bad input as one clear error (processors, beam search and masked models in
detail: test_processors.py, test_beam.py, test_masked.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import peaked_model
from twinlm.checkpoint import save_model
from twinlm.cli import main
from twinlm.config import ModelConfig
from twinlm.errors import ConfigError
from twinlm.generate import (
    GenerationConfig,
    TextStream,
    TruncationWarning,
    generate,
    generate_ids,
    mask_predict,
    stream,
)
from twinlm.model import LanguageModel
from twinlm.pipelines import fill_mask, sample
from twinlm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

VOCAB = 60


def tiny(kind: str = "causal", vocab: int = VOCAB, positions: int = 128, norm: str = "pre", seed: int = 0,
         **extra) -> LanguageModel:
    return peaked_model(vocab, kind, positions, norm, seed, **extra)


@pytest.fixture(scope="module")
def gpt2_tok(request) -> Tokenizer:
    from conftest import shared_data_dir

    folder = shared_data_dir() / "tokenizers" / "gpt2"
    if not folder.is_dir():
        pytest.skip(f"GPT-2 tokenizer files {folder} are absent (set TWINLM_SHARED_DATA)")
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("chars") / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n\nTHE END, said she; (42)!\n")
    return train_tokenizer([corpus], kind="char", vocab_size=0)


def char_model(tok: Tokenizer, kind: str = "causal", positions: int = 96, **extra) -> LanguageModel:
    return tiny(kind, vocab=tok.vocab_size, positions=positions, **extra)


def padded_full_pass(model: LanguageModel, prompts: list[list[int]], outs: list[list[int]]) -> torch.Tensor:
    """Logits of one cache-free forward pass over left-padded prompt + generated tokens."""
    P, N = max(map(len, prompts)), max(map(len, outs))
    ids = torch.zeros(len(prompts), P + N, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (p, o) in enumerate(zip(prompts, outs, strict=True)):
        ids[b, P - len(p):P + len(o)] = torch.tensor(p + o)
        mask[b, P - len(p):P + len(o)] = 1
    with torch.no_grad():
        return model(ids, mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))


# ---------------------------------------------------------------------------------------------- KV cache


LLAMA_STYLE = dict(position="rotary", norm_type="rmsnorm", mlp="swiglu", n_kv_heads=2, activation="silu")


@pytest.mark.parametrize("norm,extra", [("pre", {}), ("post", {}), ("pre", LLAMA_STYLE)],
                         ids=["pre-norm", "post-norm", "llama-style"])
def test_kv_cache_logits_equal_full_forward_every_step_with_left_padding(norm, extra):
    model = tiny(norm=norm, **extra)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    steps: dict[int, torch.Tensor] = {}
    outs = generate_ids(model, prompts, max_new_tokens=64, on_logits=lambda t, x: steps.__setitem__(t, x.clone()))
    assert [len(o) for o in outs] == [64, 64, 64] and len(steps) == 64
    full = padded_full_pass(model, prompts, outs)
    P = max(map(len, prompts))
    worst = max(float((full[:, P - 1 + t] - steps[t]).abs().max()) for t in range(64))
    assert worst < 1e-4


def test_greedy_equals_argmax_of_full_forward_passes():
    model = tiny()
    prompt = [3, 1, 4, 1, 5]
    out = generate_ids(model, [prompt], max_new_tokens=20)[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt):]
    assert len(set(out)) > 1  # the check means something only if the model does not repeat one token


def test_batched_rows_equal_their_single_runs():
    model = tiny()
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]
    batched = generate_ids(model, prompts, max_new_tokens=12)
    assert batched == [generate_ids(model, [p], max_new_tokens=12)[0] for p in prompts]


# ---------------------------------------------------------------------------------------------- processors in decoding


def test_no_repeat_ngram_in_generation():
    model = tiny()
    prompt = [1, 2, 3]
    plain = generate_ids(model, [prompt], max_new_tokens=40)[0]
    seq = prompt + generate_ids(model, [prompt], max_new_tokens=40, no_repeat_ngram_size=2)[0]
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))
    full = prompt + plain
    assert len(set(zip(full, full[1:], strict=False))) < len(full) - 1  # greedy alone did repeat itself


def test_sampling_respects_top_k_and_the_seed():
    model = tiny()
    raw: dict[int, torch.Tensor] = {}
    out = generate_ids(model, [[1, 2, 3]], max_new_tokens=30, temperature=1.5, top_k=3, seed=7,
                       on_logits=lambda t, x: raw.__setitem__(t, x.clone()))[0]
    for t, token in enumerate(out):
        assert token in raw[t][0].topk(3).indices.tolist()
    assert out == generate_ids(model, [[1, 2, 3]], max_new_tokens=30, temperature=1.5, top_k=3, seed=7)[0]
    others = [generate_ids(model, [[1, 2, 3]], max_new_tokens=30, temperature=1.5, top_k=3, seed=s)[0]
              for s in (8, 9)]
    assert any(o != out for o in others)


def test_temperature_zero_or_below_is_greedy():
    model = tiny()
    greedy = generate_ids(model, [[4, 5]], max_new_tokens=10)[0]
    assert generate_ids(model, [[4, 5]], max_new_tokens=10, temperature=-1.0, top_k=2)[0] == greedy


def test_stop_token_ids_end_generation_without_the_stop_token():
    model = tiny()
    free = generate_ids(model, [[1, 2, 3]], max_new_tokens=20)[0]
    stop = free[5]
    first = free.index(stop)
    out = generate_ids(model, [[1, 2, 3]], max_new_tokens=20, stop_ids=[stop])[0]
    assert out == free[:first]


# ---------------------------------------------------------------------------------------------- text level


@pytest.fixture(scope="module")
def gpt2_model(gpt2_tok) -> LanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=gpt2_tok.vocab_size, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_positions=64,
                      attention="causal", tie_embeddings=False)
    return LanguageModel(cfg).eval()


def test_stop_strings_end_the_text_exactly_before_the_stop_string(gpt2_tok, gpt2_model):
    free = generate(gpt2_model, gpt2_tok, "Hello", max_new_tokens=30, stop_at_eos=False)
    text = free.text
    assert len(text) > 12
    stop = text[8:11]
    cut = generate(gpt2_model, gpt2_tok, "Hello", max_new_tokens=30, stop_at_eos=False, stop_strings=[stop, "\x00"])
    assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
    assert "".join(stream(gpt2_model, gpt2_tok, "Hello", max_new_tokens=30, stop_at_eos=False,
                          stop_strings=[stop])) == cut.text


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.95, "seed": 3}])
def test_streamed_pieces_join_to_the_generated_text(gpt2_tok, gpt2_model, sampling):
    whole = generate(gpt2_model, gpt2_tok, "Once upon a time", max_new_tokens=24, stop_at_eos=False, **sampling)
    pieces = list(stream(gpt2_model, gpt2_tok, "Once upon a time", max_new_tokens=24, stop_at_eos=False, **sampling))
    assert "".join(pieces) == whole.text and len(pieces) > 1


def test_text_stream_never_splits_a_multibyte_character(gpt2_tok):
    text = "Emoji 🙂🎉 and 日本語のテキスト, café — ok"
    ids = gpt2_tok.encode(text)
    assert len(ids) > len(text.split())  # byte-level BPE splits these characters over several tokens
    ts = TextStream(gpt2_tok)
    pieces = [ts.push([i]) for i in ids]
    pieces.append(ts.finish())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if not p) > 0  # some tokens held only part of a character


def test_text_stream_holds_back_a_possible_stop_string(gpt2_tok):
    ts = TextStream(gpt2_tok, stop_strings=["\nUser:"])
    ids = gpt2_tok.encode("Sure thing.\nUser: next")
    pieces = [ts.push([i]) for i in ids]
    pieces.append(ts.finish())
    assert "".join(pieces) == "Sure thing." and ts.stopped


def test_batched_prompts_of_different_lengths_match_single_runs(gpt2_tok, gpt2_model):
    prompts = ["A", "The longer prompt goes here", "日本"]
    batch = generate(gpt2_model, gpt2_tok, prompts, max_new_tokens=10, stop_at_eos=False)
    assert [b.text for b in batch] == [generate(gpt2_model, gpt2_tok, p, max_new_tokens=10, stop_at_eos=False).text
                                       for p in prompts]


def test_sample_is_a_wrapper_over_generate(gpt2_tok, gpt2_model):
    out = sample(gpt2_model, gpt2_tok, "Hi", max_new_tokens=12, temperature=0.8, top_k=20, seed=1)
    assert out == generate(gpt2_model, gpt2_tok, "Hi", max_new_tokens=12, temperature=0.8, top_k=20, seed=1).text


# ---------------------------------------------------------------------------------------------- beam search


def test_beam_search_through_generate_text(gpt2_tok, gpt2_model):
    out = generate(gpt2_model, gpt2_tok, "Hello", max_new_tokens=8, num_beams=3, stop_at_eos=False)
    assert out.score is not None and len(out.token_ids) == 8
    # several prompts of different lengths go through one batch and come out as they do one at a time
    prompts = ["A", "The longer prompt goes here", "Hello"]
    batch = generate(gpt2_model, gpt2_tok, prompts, max_new_tokens=8, num_beams=3, stop_at_eos=False)
    for got, prompt in zip(batch, prompts, strict=True):
        alone = generate(gpt2_model, gpt2_tok, prompt, max_new_tokens=8, num_beams=3, stop_at_eos=False)
        assert (got.text, got.token_ids) == (alone.text, alone.token_ids) and abs(got.score - alone.score) < 1e-4


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors(char_tok):
    causal = char_model(char_tok)
    masked = char_model(char_tok, kind="bidirectional")
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ConfigError, match="num_beams=4.*temperature, top_p"):
        GenerationConfig(num_beams=4, temperature=0.7, top_p=0.9)
    with pytest.raises(ConfigError, match="mask-predict"):
        generate(masked, char_tok, "the")
    with pytest.raises(ConfigError, match="unknown"):
        generate(causal, char_tok, "日本語")
    with pytest.raises(ConfigError, match="max_positions=96"):
        generate(causal, char_tok, "the quick brown fox " * 5, max_new_tokens=20)
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        fill_mask(masked, char_tok, "no blank here")
    with pytest.raises(ConfigError, match="a causal model"):
        mask_predict(causal, char_tok, "the")
    for name, value in [("max_new_tokens", 0), ("top_k", 0), ("repetition_penalty", 0.0), ("num_beams", 0),
                        ("truncate", "right")]:
        with pytest.raises(ConfigError, match=name):
            GenerationConfig(**{name: value})


def test_empty_prompt_starts_from_bos_and_long_prompts_truncate_left_on_request(char_tok):
    model = char_model(char_tok)
    out = generate(model, char_tok, "", max_new_tokens=5, stop_at_eos=False)
    assert len(out.token_ids) == 5
    long = "the quick brown fox " * 5
    with pytest.warns(TruncationWarning, match="cut from the left"):
        cut = generate(model, char_tok, long, max_new_tokens=20, truncate="left", stop_at_eos=False)
    assert cut.prompt_tokens == 96 - 20
    assert cut.text == generate(model, char_tok, long[-76:], max_new_tokens=20, stop_at_eos=False).text


def test_an_empty_prompt_without_bos_is_an_error():
    with pytest.raises(ConfigError, match="at least one token"):
        generate_ids(tiny(), [[]], max_new_tokens=3)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, char_tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for kind in ("causal", "bidirectional"):
        model = char_model(char_tok, kind=kind)
        dirs[kind] = save_model(root / kind, model_state=model.state_dict(), config=model.config, tokenizer=char_tok)
    return dirs


def test_cli_generate_prompt_stream_and_prompts_file(capsys, tmp_path, model_dirs):
    args = ["generate", "--model", str(model_dirs["causal"]), "--prompt", "the ", "--max-new-tokens", "10",
            "--ignore-eos"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--stream"]) == 0
    assert capsys.readouterr().out == plain and plain.startswith("the ")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the "}\n"fox"\n\n{"prompt": ""}\n')
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(model_dirs["causal"]), "--prompts-file", str(prompts), "--out", str(out),
                 "--max-new-tokens", "10", "--ignore-eos", "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the ", "fox", ""]
    assert rows[0]["prompt"] + rows[0]["text"] + "\n" == plain


def test_cli_generate_mask_predict_and_errors(capsys, tmp_path, model_dirs):
    assert main(["generate", "--model", str(model_dirs["bidirectional"]), "--prompt", "the", "--mask-predict",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("the")

    def error(argv: list[str], *needles: str) -> None:
        assert main(argv) != 0
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("twinlm: error:") and all(n in line for n in needles), line

    error(["generate", "--model", str(model_dirs["bidirectional"]), "--prompt", "the"], "mask-predict")
    error(["generate", "--model", str(model_dirs["causal"]), "--prompt", "a", "--top-p", "2"], "top_p")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    error(["generate", "--model", str(model_dirs["causal"]), "--prompts-file", str(bad)], "bad.jsonl:2")
    assert main(["generate", "--model", str(model_dirs["causal"]), "--prompt", "the quick brown fox " * 5,
                 "--max-new-tokens", "20", "--truncate", "left"]) == 0
    assert "twinlm: warning: prompt of" in capsys.readouterr().err


def test_cli_fill_mask_joint(capsys, model_dirs):
    assert main(["fill-mask", "--model", str(model_dirs["bidirectional"]), "--json", "--joint", "--top-k", "2",
                 "the [MASK]uick [MASK]rown"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["masks"]) == 2 and len(out["joint"]["token_ids"]) == 2
