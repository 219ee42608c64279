"""Greedy KV-cached generation speed: twinlm vs Hugging Face GPT2LMHeadModel.generate on the same weights.

    python benchmarks/generation.py [--new-tokens 256] [--prompt-len 16] [--rounds 3] [--batches 1,8]

A 4-layer, 256-hidden, 4-head GPT-2-style model with GPT-2's 50,257-token vocabulary is built in twinlm with a fixed
seed, its weights are copied into a transformers GPT-2 of the same shape, and both decode the same random prompts
greedily for exactly --new-tokens tokens (no end-of-text stop). After one warm-up each, the two sides alternate
(A/B, then B/A, ...) so drift in machine load hits both alike; the median time per side is reported. Prints one JSON
line: tokens/s per side and batch, the ratio, whether the greedy tokens are identical, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from twinlm.config import ModelConfig
from twinlm.generate import generate_ids
from twinlm.model import LanguageModel


def twinlm_model(vocab: int, positions: int) -> LanguageModel:
    """The GPT-2-style twinlm model: pre-norm, tanh GELU, tied embeddings, biases."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_positions=positions,
                      attention="causal", norm="pre", activation="gelu_tanh", tie_embeddings=True)
    return LanguageModel(cfg).eval()


def hf_copy(model: LanguageModel):
    """A transformers GPT2LMHeadModel holding the same weights, through twinlm.hf's exporter when it is there."""
    from transformers import GPT2Config, GPT2LMHeadModel

    try:
        from twinlm.hf import export_hf_state, hf_config_from
    except ImportError:
        return hf_copy_by_hand(model)
    cfg = {k: v for k, v in hf_config_from(model.config, "gpt2").items() if k not in ("model_type", "architectures")}
    hf = GPT2LMHeadModel(GPT2Config(**cfg, bos_token_id=0, eos_token_id=0)).eval()
    missing, unexpected = hf.load_state_dict(export_hf_state(model, "gpt2"), strict=False)
    assert not unexpected and all(k == "lm_head.weight" or "attn.bias" in k for k in missing), (missing, unexpected)
    return hf


def hf_copy_by_hand(model: LanguageModel):
    """The same copy mapped here (Conv1D stores (in, out), our Linear (out, in); qkv fused in the same order)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_positions, n_embd=c.d_model, n_layer=c.n_layers,
                        n_head=c.n_heads, n_inner=c.d_ff, activation_function="gelu_new", resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=c.layer_norm_eps,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    src = model.state_dict()
    out: dict[str, torch.Tensor] = {
        "transformer.wte.weight": src["backbone.tok_emb.weight"],
        "transformer.wpe.weight": src["backbone.pos_emb.weight"],
        "transformer.ln_f.weight": src["backbone.final_norm.weight"],
        "transformer.ln_f.bias": src["backbone.final_norm.bias"],
    }
    pairs = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.out",
             "mlp.c_fc": "ffn.up", "mlp.c_proj": "ffn.down"}
    for i in range(c.n_layers):
        for theirs, ours in pairs.items():
            w, b = src[f"backbone.blocks.{i}.{ours}.weight"], src[f"backbone.blocks.{i}.{ours}.bias"]
            # Conv1D computes x @ W with W (in, out); our Linear holds (out, in). LayerNorm weights are 1-D.
            out[f"transformer.h.{i}.{theirs}.weight"] = w.t().contiguous() if w.dim() == 2 else w
            out[f"transformer.h.{i}.{theirs}.bias"] = b
    bias = src.get("head.bias")
    assert bias is None or float(bias.abs().max()) == 0.0, "HF's LM head has no bias; ours must be zero to compare"
    missing, unexpected = hf.load_state_dict(out, strict=False)
    # lm_head.weight is tied to wte; the attention bias buffers (if any) are not weights.
    assert not unexpected and all(k == "lm_head.weight" or "attn.bias" in k for k in missing), (missing, unexpected)
    return hf


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--vocab", type=int, default=50257)
    args = parser.parse_args()
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = twinlm_model(args.vocab, positions=1024)
    hf = hf_copy(model)
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
        record[f"batch{batch}"] = {"twinlm_tokens_per_s": round(ours, 1), "hf_tokens_per_s": round(theirs, 1),
                                   "ratio": round(ours / theirs, 2)}
    record.update({
        "identical_greedy_tokens": identical,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "machine": platform.machine(), "rounds": args.rounds,
    })
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
