"""Training throughput of the tiny MLM and CLM through the real trainer, as JSON lines.

    python benchmarks/pretrain_throughput.py [--steps 60] [--preset tiny] [--batch-size 16] [--seq-len 128]

Prepares the embedded Tiny Shakespeare with a 2,048-token BPE tokenizer in a temp folder, then trains each
objective for --steps steps and prints {"case", "tokens_per_s", "step_ms", "parameters", "threads", ...}.
The peer comparison (Hugging Face, nanoGPT) is the performance issue's suite; this is twinlm alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from twinlm.data.corpus import prepare_corpus
from twinlm.pretrain import PretrainOptions
from twinlm.quickstart import embedded_corpus
from twinlm.runs import pretrain_run
from twinlm.tokenizer import train_tokenizer
from twinlm.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = embedded_corpus(root / "tinyshakespeare.txt")
        tok = train_tokenizer([text], kind="bpe", vocab_size=2048)
        prepare_corpus([text], tok, root / "data", progress=False)
        for objective in ("mlm", "clm"):
            cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, warmup_steps=5,
                              eval_every=None, save_every=None, log_every=10, device="cpu", progress=False)
            start = time.perf_counter()
            result = pretrain_run(root / "data", root / objective, args.preset,
                                  PretrainOptions(objective=objective, seq_len=args.seq_len), cfg)
            wall = time.perf_counter() - start
            print(json.dumps({
                "case": f"pretrain-{objective}", "preset": args.preset, "vocab": tok.vocab_size,
                "batch": args.batch_size, "seq_len": args.seq_len, "steps": result.step,
                "tokens_per_s": round(result.tokens_per_s),
                "step_ms": round(1000 * args.batch_size * args.seq_len / max(result.tokens_per_s, 1), 1),
                "wall_s_with_eval_and_save": round(wall, 1), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": platform.machine(),
            }), flush=True)


if __name__ == "__main__":
    main()
