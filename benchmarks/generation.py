"""Greedy KV-cached generation speed: twinlm vs Hugging Face GPT2LMHeadModel.generate on the same weights.

    python benchmarks/generation.py [--new-tokens 256] [--prompt-len 16] [--rounds 5] [--batches 1,8]

A 4-layer, 256-hidden, 4-head GPT-2-style model with GPT-2's 50,257-token vocabulary is built in twinlm with a fixed
seed, its weights are copied into a transformers GPT-2 of the same shape, and both decode the same random prompts
greedily for exactly --new-tokens tokens (no end-of-text stop). After one warm-up each, the two sides alternate
(A/B, then B/A, ...) so drift in machine load hits both alike; the median time per side is reported. Prints one JSON
line: tokens/s per side and batch, the ratio, whether the greedy tokens are identical, and the peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import counted_params, emit, fp32_peak_gflops, hf_twin, peak_rss_mb, rate_summary, versions  # noqa: E402

from twinlm.config import ModelConfig  # noqa: E402
from twinlm.generate import generate_ids  # noqa: E402
from twinlm.model import LanguageModel  # noqa: E402


def twinlm_model(vocab: int, positions: int) -> LanguageModel:
    """The GPT-2-style twinlm model: pre-norm, tanh GELU, tied embeddings, biases."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_positions=positions,
                      attention="causal", norm="pre", activation="gelu_tanh", tie_embeddings=True)
    return LanguageModel(cfg).eval()


def time_twinlm(model: LanguageModel, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = generate_ids(model, prompts.tolist(), max_new_tokens=new, stop_ids=())
    return time.perf_counter() - start, out


def time_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, num_beams=1, pad_token_id=0)
    return time.perf_counter() - start, out[:, prompts.size(1):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--vocab", type=int, default=50257)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = twinlm_model(args.vocab, positions=1024)
    hf = hf_twin(model, "gpt2").eval()
    record: dict[str, object] = {"case": "generate-greedy", "layers": 4, "d_model": 256, "heads": 4,
                                 "vocab": args.vocab, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    identical = True
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = torch.randint(0, args.vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
        time_twinlm(model, prompts, 8)  # warm-up: first-call allocations and kernel choices
        time_hf(hf, prompts, 8)
        ours_t, theirs_t = [], []
        for r in range(args.rounds):
            sides = [("twinlm", time_twinlm, model), ("hf", time_hf, hf)]
            for name, fn, m in sides if r % 2 == 0 else sides[::-1]:
                seconds, tokens = fn(m, prompts, args.new_tokens)
                (ours_t if name == "twinlm" else theirs_t).append(seconds)
                if name == "twinlm":
                    ours_tokens = tokens
                else:
                    hf_tokens = tokens
            identical &= ours_tokens == hf_tokens
        ours = batch * args.new_tokens / statistics.median(ours_t)
        theirs = batch * args.new_tokens / statistics.median(theirs_t)
        # Decoding FLOPs per new token: 2 per weight (vocabulary projection included) + attention over the cache.
        c = model.config
        weights = counted_params(model)
        mean_ctx = args.prompt_len + args.new_tokens / 2
        gflop_per_token = (2 * weights + 4 * c.n_layers * c.d_model * mean_ctx) / 1e9
        record[f"batch{batch}"] = {
            "twinlm_tokens_per_s": round(ours, 1), "hf_tokens_per_s": round(theirs, 1),
            "ratio": round(ours / theirs, 2), "twinlm": rate_summary(ours_t, batch * args.new_tokens),
            "hf": rate_summary(theirs_t, batch * args.new_tokens),
            "twinlm_gflops": round(ours * gflop_per_token, 1), "hf_gflops": round(theirs * gflop_per_token, 1),
            "twinlm_utilisation": round(ours * gflop_per_token / fp32_peak_gflops(), 3),
        }
    record.update({
        "identical_greedy_tokens": identical,
        "peak_rss_mb": peak_rss_mb(), "rounds": args.rounds, "fp32_peak_gflops": fp32_peak_gflops(), **versions(),
    })
    emit(record)


if __name__ == "__main__":
    main()
