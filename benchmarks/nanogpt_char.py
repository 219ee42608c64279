"""nanoGPT's CPU recipe (character-level Tiny Shakespeare) run through twinlm, and through nanoGPT when given.

    python benchmarks/nanogpt_char.py [--nanogpt PATH_TO_NANOGPT_CHECKOUT] [--iters 2000] [--compile]

The recipe (nanoGPT README, "I only have a MacBook"): 4 layers, 4 heads, 128 hidden, block 64, batch 12, 2,000
iterations, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, AdamW betas (0.9, 0.99), weight decay 0.1 on
matrices and embeddings, gradient clipping 1.0, dropout 0, no biases in the linear layers, tied embeddings. The text is
one document, split 90/10 at the same character as nanoGPT's prepare.py; the vocabulary is the set of characters
(twinlm's char tokenizer adds its few special tokens, which never occur in the text).

twinlm trains through its own trainer (the one every run uses) and checkpoint at the end. Blocks are 65 tokens: the
causal loss of a 65-token block has 64 targets with 1..64 tokens of context, exactly nanoGPT's (x, y) pair of block
64. The validation loss is reported two ways: nanoGPT's estimate (the mean over --eval-iters random batches of 12
blocks, what its log prints; 200 by default, because the recipe's 20 are noisy at the +-0.01 level) and the loss over
every non-overlapping block of the whole validation split.
With --nanogpt, the same recipe runs through nanoGPT's train.py on the same machine (its data/shakespeare_char/
input.txt is filled from the shared copy first, so nothing is downloaded), evaluating at the start and the end only
with the same --eval-iters, and both are printed; without it, nanoGPT's figures quoted in the performance issue (val
1.886 with 20 batches, ~38 ms/iteration) are given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit, flops_per_token, fp32_peak_gflops, peak_rss_mb, versions  # noqa: E402

from twinlm.data.corpus import TokenShard, prepare_corpus  # noqa: E402
from twinlm.objectives import clm_loss  # noqa: E402
from twinlm.pretrain import PretrainOptions  # noqa: E402
from twinlm.quickstart import embedded_corpus  # noqa: E402
from twinlm.runs import pretrain_run  # noqa: E402
from twinlm.tokenizer import train_tokenizer  # noqa: E402
from twinlm.train import TrainConfig  # noqa: E402

SHARED = SHARED_DATA / "text" / "tinyshakespeare.txt"
NANOGPT_QUOTED = {"val_loss_estimate": 1.886, "ms_per_iter": 38.0,
                  "source": "quoted by the performance issue, measured on a machine like this one"}
MODEL = dict(n_layers=4, d_model=128, n_heads=4, d_ff=512, max_positions=65, dropout=0.0, bias=False,
             activation="gelu")


def corpus_text(tmp: Path) -> Path:
    """Tiny Shakespeare from ../shared when present, else the copy quickstart embeds."""
    return SHARED if SHARED.is_file() else embedded_corpus(tmp / "tinyshakespeare.txt")


@torch.no_grad()
def val_losses(model: torch.nn.Module, val: np.ndarray, seq_len: int, batch: int, batches: int) -> dict[str, float]:
    """nanoGPT's estimate (mean over ``batches`` random batches) and the loss over every non-overlapping block."""
    model.eval()
    rng = np.random.default_rng(1337)
    est = []
    for _ in range(batches):
        starts = rng.integers(0, len(val) - seq_len, size=batch)
        ids = torch.from_numpy(np.stack([val[s:s + seq_len].astype(np.int64) for s in starts]))
        est.append(float(clm_loss(model, ids)))
    blocks = torch.from_numpy(val[: len(val) // seq_len * seq_len].astype(np.int64)).view(-1, seq_len)
    total = sum(float(clm_loss(model, b)) * b.size(0) for b in blocks.split(256))
    return {"val_loss_estimate": round(sum(est) / len(est), 4), "val_loss_full": round(total / blocks.size(0), 4)}


def run_twinlm(text: Path, root: Path, args: argparse.Namespace) -> dict:
    doc = root / "shakespeare.jsonl"
    doc.write_text(json.dumps({"text": text.read_text(encoding="utf-8")}) + "\n")
    tok = train_tokenizer([text], kind="char", vocab_size=0)
    data = root / "data"
    prepare_corpus([doc], tok, data, val_fraction=0.1, workers=1, progress=False)  # one document: last 10% is val
    cfg = TrainConfig(max_steps=args.iters, batch_size=12, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100,
                      weight_decay=0.1, betas=(0.9, 0.99), grad_clip=1.0, eval_every=None, save_every=None,
                      log_every=100, device="cpu", progress=args.progress, compile=args.compile)
    start = time.perf_counter()
    result = pretrain_run(data, root / "run", "tiny", PretrainOptions(objective="clm", seq_len=65), cfg,
                          model_overrides=MODEL)
    wall = time.perf_counter() - start
    from twinlm.pipelines import load_pretrained

    model, _ = load_pretrained(result.checkpoint)
    losses = val_losses(model, np.asarray(TokenShard(data, "val").tokens), 65, 12, args.eval_iters)
    params = model.num_parameters()
    flops = flops_per_token(model, 64)  # 64 targets per block, as nanoGPT counts its block of 64
    train_s = result.elapsed_s - (result.compile_s or 0.0)
    return {"val_loss_estimate": losses["val_loss_estimate"], "val_loss_full": losses["val_loss_full"],
            "iters": result.step, "train_s": round(train_s, 1),
            "compile_s": None if result.compile_s is None else round(result.compile_s, 1),
            "wall_s_with_setup": round(wall, 1),
            "ms_per_iter": round(1000 * train_s / max(result.step, 1), 1), "parameters": params,
            "vocab": tok.vocab_size, "tokens_per_s": round(result.step * 12 * 64 / train_s),
            "gflops": round(flops * result.step * 12 * 64 / train_s / 1e9, 2), "peak_rss_mb": peak_rss_mb()}


def run_nanogpt(checkout: Path, text: Path, iters: int, eval_iters: int) -> dict:
    """nanoGPT's own train.py with the README's CPU flags; its data folder gets the shared text, not a download.

    It evaluates only at the start and the end (eval_interval = iters), over ``eval_iters`` batches like twinlm's
    estimate, so neither side's wall time carries evaluations the other does not make.
    """
    data = checkout / "data" / "shakespeare_char"
    if not (data / "input.txt").exists():
        shutil.copy(text, data / "input.txt")
    if not all((data / name).exists() for name in ("train.bin", "val.bin", "meta.pkl")):
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    flags = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", f"--eval_iters={eval_iters}",
             f"--eval_interval={iters}",
             "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
             f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0", "--out_dir=/tmp/nanogpt-bench"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", *flags], cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"nanoGPT failed:\n{out.stderr[-2000:]}")
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out.stdout)
    times = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", out.stdout)]
    times = sorted(times[10:]) or [math.nan]
    return {"val_loss_estimate": float(evals[-1][2]) if evals else None, "wall_s": round(wall, 1),
            "ms_per_iter_median": times[len(times) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout to run side by side")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-iters", type=int, default=200,
                        help="random validation batches in the loss estimate of both sides (nanoGPT's recipe: 20)")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile (compile time included)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus_text(Path(tmp))
        ours = run_twinlm(text, Path(tmp), args)
        theirs = run_nanogpt(args.nanogpt, text, args.iters, args.eval_iters) if args.nanogpt else dict(NANOGPT_QUOTED)
    row = {"case": "nanogpt-char", "recipe": "4L 4H 128d, block 64, batch 12, lr 1e-3 cosine, dropout 0",
           "twinlm": ours, "nanogpt": theirs,
           "val_loss_delta": round(ours["val_loss_estimate"] - theirs["val_loss_estimate"], 4),
           "time_ratio": round(theirs.get("ms_per_iter", theirs.get("ms_per_iter_median", math.nan))
                               / ours["ms_per_iter"], 2),
           "fp32_peak_gflops": fp32_peak_gflops(), "threads_env": os.environ.get("OMP_NUM_THREADS"), **versions()}
    emit(row)


if __name__ == "__main__":
    main()
