"""Training throughput and model-FLOPs utilisation (MFU) of twinlm on one GPU, as JSON lines.

    bash benchmarks/gpu.sh                         # both cases on the GPU, under 5 minutes
    python benchmarks/gpu.py --case clm --steps 50 --batch-size 24
    python benchmarks/gpu.py --smoke --case all --peak-tflops 1.0   # tiny sizes, CPU when there is no GPU

Two cases, each one JSON line:
  clm  GPT-2-124M sizes (preset "base"), vocab 50,257 padded to 50,304 as nanoGPT does, sequence 1024, causal,
       pre-norm, loss twinlm.objectives.clm_loss.
  mlm  BERT-base sizes, vocab 30,522, sequence 512, bidirectional, post-norm, segment embeddings, BERT's head
       transform, 15% masking with a fixed count per row, loss twinlm.objectives.mlm_loss (sparse head).
Both: bf16 autocast over fp32 master weights, SDPA attention, fused AdamW, torch.compile of model + loss (on GPU),
synthetic random tokens made on the device before timing.

MFU follows nanoGPT's estimate_mfu: flops/token = 6 N + 12 L H Q T, MFU = flops/token * tokens/s / peak.
N counts every parameter except the position and token-type embedding tables (lookups, no matmul); the token
embedding is tied to the LM head, so it is counted once, as the head's matmul.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py sits beside this script
from common import counted_params, emit, flops_per_token, head_params, peak_rss_mb, versions  # noqa: E402

from twinlm.config import ModelConfig, preset  # noqa: E402
from twinlm.model import LanguageModel  # noqa: E402
from twinlm.objectives import IGNORE_INDEX, clm_loss, mlm_loss  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets. Checked in order, so the
# PCIe/NVL variants match before the plain "H100" (the SXM part, whose figure the H200 shares).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H200", 989.5),
    ("H100", 989.5),
    ("A100", 312.0),
)

GPT2_VOCAB = 50257
BERT_VOCAB = 30522
# BERT's uncased vocabulary: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; ids below 104 are special or
# unused, so synthetic text and random replacements draw from [104, vocab).
BERT_MASK_ID = 103
BERT_FIRST_WORD_ID = 104
MASK_PROB = 0.15
SMOKE_VOCAB = 1000


@dataclass
class Case:
    """One benchmark case: the model config, the batch shape and how a batch and its loss are made."""

    name: str
    config: ModelConfig
    batch_size: int
    seq_len: int
    real_vocab: int
    masked_per_row: int = 0  # MLM only: the fixed number of masked positions in each row


def pad_to(n: int, multiple: int) -> int:
    """n rounded up to a multiple (1 or less: unchanged)."""
    return n if multiple <= 1 else math.ceil(n / multiple) * multiple


def case_label(name: str, args: argparse.Namespace) -> str:
    """What the row measured, in words: the named model only at its real sizes."""
    full = {"clm": "GPT-2-124M-sized CLM", "mlm": "BERT-base-sized MLM"}[name]
    size = "tiny" if args.smoke and args.preset is None else (args.preset or "base")
    return full if size == "base" and not args.smoke else f"{name.upper()} at preset {size!r}" + (
        " (smoke: sizes shrunk, tests the script)" if args.smoke else "")


def real_vocab(full: int, args: argparse.Namespace) -> int:
    """The case's vocabulary before padding: --vocab-size, else 1,000 in smoke mode, else the real model's.

    Smoke mode shrinks it because CPUs without bf16 matrix units run a 50k-row bf16 head at seconds per step.
    """
    if args.vocab_size is not None:
        return args.vocab_size
    return SMOKE_VOCAB if args.smoke else full


def make_case(name: str, args: argparse.Namespace) -> Case:
    """The config and batch shape of ``name`` ('clm' or 'mlm') at the sizes the flags ask for."""
    size = "tiny" if args.smoke and args.preset is None else (args.preset or "base")
    if name == "clm":
        seq = args.seq_len or (64 if args.smoke else 1024)
        batch = args.batch_size or (2 if args.smoke else 48)  # 48 x 1024 reached 42% MFU on an H200 (16: 39.6%)
        # GPT-2 / nanoGPT: pre-norm, no LM-head bias; 50,304 = 50,257 rounded up to a multiple of 64 so the
        # head's matmul tiles evenly (the extra rows are never a target).
        vocab = real_vocab(GPT2_VOCAB, args)
        cfg = preset(size, vocab_size=pad_to(vocab, args.pad_vocab), attention="causal", norm="pre",
                     max_positions=seq, head_bias=False, dropout=0.0)
        return Case(name, cfg, batch, seq, vocab)
    seq = args.seq_len or (64 if args.smoke else 512)
    batch = args.batch_size or (2 if args.smoke else 48)  # 48 x 512: 43% MFU on an H200 (32: 41.6%)
    # type_vocab_size=2 keeps BERT's segment table; mlm_loss passes no token types, so every row is segment 0.
    vocab = real_vocab(BERT_VOCAB, args)
    cfg = preset(size, vocab_size=vocab, attention="bidirectional", norm="post", max_positions=seq,
                 type_vocab_size=2, head_transform=True, layer_norm_eps=1e-12, dropout=0.0)
    # MLMMasker(fixed_count=True) masks round(p * L) tokens per row; every synthetic position is selectable.
    return Case(name, cfg, batch, seq, vocab, masked_per_row=max(1, round(MASK_PROB * seq)))


def mlm_batch(case: Case, device: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A masked batch made on the device: (corrupted ids, labels).

    MLMMasker builds its tables and draws on the CPU, so this repeats its fixed-count 80/10/10 rule with torch ops
    on the device instead: exactly masked_per_row positions per row are chosen (the lowest of B x T uniform draws),
    then 80% of them become [MASK], 10% a random non-special token and 10% stay.
    """
    B, T, V = case.batch_size, case.seq_len, case.config.vocab_size
    ids = torch.randint(BERT_FIRST_WORD_ID, V, (B, T), device=device, generator=gen)
    chosen = torch.rand(B, T, device=device, generator=gen).argsort(dim=1)[:, : case.masked_per_row]
    selected = torch.zeros(B, T, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    r = torch.rand(B, T, device=device, generator=gen)
    corrupted = torch.where(selected & (r < 0.8), torch.full_like(ids, BERT_MASK_ID), ids)
    random_ids = torch.randint(BERT_FIRST_WORD_ID, V, (B, T), device=device, generator=gen)
    corrupted = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, corrupted)
    return corrupted, labels


def make_batches(case: Case, device: torch.device, count: int) -> list[tuple[torch.Tensor, ...]]:
    """A few synthetic batches, made before timing so data generation never enters the measurement."""
    gen = torch.Generator(device=device).manual_seed(0)
    if case.name == "clm":
        # Only real GPT-2 ids: the padded vocabulary rows stay unused, as in nanoGPT.
        return [(torch.randint(0, case.real_vocab, (case.batch_size, case.seq_len), device=device, generator=gen),)
                for _ in range(count)]
    return [mlm_batch(case, device, gen) for _ in range(count)]


def loss_function(case: Case, model: LanguageModel) -> Callable[..., torch.Tensor]:
    """model + loss as one function: compiling it compiles the forward, the backward and the loss together."""
    if case.name == "clm":
        def clm(ids: torch.Tensor) -> torch.Tensor:
            return clm_loss(model, ids)
        return clm

    def mlm(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # mlm_loss gathers masked positions (and their labels) with boolean indexes: data-dependent shapes, so
        # torch.compile splits it into several graphs and each gather syncs the host. The fixed count keeps the
        # shapes constant, so nothing recompiles after the first step.
        return mlm_loss(model, ids, labels)
    return mlm


def gpu_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """Peak bf16 dense FLOP/s and where the figure came from (None when unknown: MFU is then not reported)."""
    if override is not None:
        return override * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown (CPU: pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"table: {key} bf16 dense"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def dynamo_counts() -> tuple[int, int] | None:
    """(graphs compiled, graph breaks) so far in this process, from torch's internal counters (None if absent)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))
    except Exception:  # an internal API: its absence must not cost the figures
        return None


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: Case, args: argparse.Namespace, device: torch.device, deadline: float) -> dict[str, Any]:
    """Build, (compile,) warm up and time one case; stop early at ``deadline`` (perf_counter seconds)."""
    torch.manual_seed(0)
    # Drop the previous case's compiled code first: it holds that model (and its memory) alive, which would count
    # in this case's peak memory; a fresh cache also makes this case's compile time its own.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = LanguageModel(case.config).to(device)  # fp32 master weights; autocast runs the matmuls in bf16
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    compile_on = args.compile if args.compile is not None else device.type == "cuda"
    loss_fn = loss_function(case, model)
    if compile_on:
        loss_fn = torch.compile(loss_fn)
    batches = make_batches(case, device, count=4)
    counts_before = dynamo_counts()

    def step(i: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(*batches[i % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    # The first step compiles (forward and backward graphs); timed alone so compilation stays out of the rate.
    sync(device)
    start = time.perf_counter()
    loss = step(0)
    sync(device)
    first_step_s = time.perf_counter() - start
    warmup_done = 0
    for i in range(1, args.warmup):
        if time.perf_counter() > deadline:
            break
        loss = step(i)
        warmup_done = i
    sync(device)
    timed = 0
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
        timed += 1
        if time.perf_counter() > deadline:  # the time guard: fewer steps rather than overrunning the budget
            break
    sync(device)
    elapsed = time.perf_counter() - start
    counts_after = dynamo_counts()
    # Graphs compiled over all steps: more than the first step made means shapes changed and it recompiled.
    graphs = breaks = None
    if compile_on and counts_before and counts_after:
        graphs, breaks = (after - before for after, before in zip(counts_after, counts_before, strict=True))

    cfg = case.config
    tokens_per_step = case.batch_size * case.seq_len
    tokens_per_s = tokens_per_step * timed / elapsed
    n = counted_params(model)
    fpt = flops_per_token(model, case.seq_len)
    peak, peak_source = gpu_peak(device, args.peak_tflops)
    row: dict[str, Any] = {
        "case": case.name,
        "model": case_label(case.name, args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": case.batch_size, "seq_len": case.seq_len, "tokens_per_step": tokens_per_step,
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "head_dim": cfg.head_dim,
        "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size, "vocab_real": case.real_vocab,
        "vocab_padded": cfg.vocab_size != case.real_vocab, "norm": cfg.norm, "attention": cfg.attention,
        "type_vocab_size": cfg.type_vocab_size, "head_transform": cfg.head_transform, "head_bias": cfg.head_bias,
        "tie_embeddings": cfg.tie_embeddings, "bias": cfg.bias, "dropout": cfg.dropout,
        "n_params_total": model.num_parameters(), "n_params_counted": n,
        "n_params_note": "N = all parameters minus position and token-type embedding tables (lookups); the tied "
                         "token embedding is counted once, as the LM-head matmul",
        "precision": "bf16 autocast, fp32 master weights", "optimizer": "AdamW(fused=True)",
        "compiled": compile_on, "warmup_steps": warmup_done + 1, "timed_steps": timed,
        "truncated_by_time_guard": timed < args.steps or warmup_done + 1 < args.warmup,
        "step_ms": round(1000 * elapsed / timed, 2), "tokens_per_s": round(tokens_per_s, 1),
        "first_step_s": round(first_step_s, 2),
        # The first step's extra time over a steady step is what compiling cost (plus one-off allocations).
        "compile_s": round(max(0.0, first_step_s - elapsed / timed), 2) if compile_on else None,
        "compiled_graphs": graphs, "graph_breaks": breaks,
        "loss": round(float(loss.detach().float()), 4),
        "flops_per_token": fpt,
        "flops_formula": "6*N + 12*L*H*Q*T (nanoGPT estimate_mfu; attention counted over the full T x T)",
        "achieved_tflops": round(fpt * tokens_per_s / 1e12, 3),
        "peak_tflops": peak / 1e12 if peak else None, "peak_source": peak_source,
        "mfu": round(fpt * tokens_per_s / peak, 4) if peak else None,
    }
    if case.name == "clm":
        row["attention_note"] = "causal via SDPA is_causal (flash); it does about half the 12LHQT attention FLOPs"
    else:
        # The sparse head projects only the masked positions, so the standard 6N over-counts the head's matmuls.
        frac = case.masked_per_row / case.seq_len
        h = head_params(model)
        sparse = fpt - 6 * h + round(6 * h * frac)
        row.update({
            "mask_prob": MASK_PROB, "masked_per_row": case.masked_per_row, "masked_fraction": round(frac, 4),
            "head_params": h,
            "flops_per_token_sparse_head": sparse,
            "achieved_tflops_sparse_head": round(sparse * tokens_per_s / 1e12, 3),
            "mfu_sparse_head": round(sparse * tokens_per_s / peak, 4) if peak else None,
            "mfu_note": "mfu uses the standard 6N+12LHQT as if every position were projected onto the vocabulary; "
                        "mlm_loss projects only masked positions (sparse head), so mfu_sparse_head counts the "
                        "head path's 6*head_params at masked_fraction of the tokens: the FLOPs really done",
            "compile_note": "mlm_loss gathers masked rows by boolean index (data-dependent shape): torch.compile "
                            "breaks the graph there and the host syncs each step; see compiled_graphs",
            "masking": "fixed-count 80/10/10 corruption made on the device with torch ops (MLMMasker's rule)",
        })
    if device.type == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        row["peak_rss_mb"] = peak_rss_mb()
    row["versions"] = {**versions(), "cuda": torch.version.cuda}
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("clm", "mlm", "all"), default="all")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps incl. the compiling one (10; smoke 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 48 (clm and mlm); smoke 2")
    parser.add_argument("--seq-len", type=int, default=None, help="default 1024 (clm), 512 (mlm); smoke 64")
    parser.add_argument("--preset", default=None, help="model size preset (default base; smoke tiny)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary before padding (default 50,257 clm, 30,522 mlm; smoke 1,000)")
    parser.add_argument("--pad-vocab", type=int, default=64, help="pad the CLM vocab to a multiple (1: no padding)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak bf16 TFLOP/s for MFU")
    parser.add_argument("--budget-s", type=float, default=270.0, help="wall-time budget for all cases together")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None,
                               help="torch.compile (default on CUDA only)")
    compile_group.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 3 steps: tests the script, not the GPU")
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.smoke else 30)
    args.warmup = max(1, args.warmup if args.warmup is not None else (1 if args.smoke else 10))
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Any fp32 matmul left outside autocast may use TF32 tensor cores, as nanoGPT allows.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    names = ["clm", "mlm"] if args.case == "all" else [args.case]
    end = time.perf_counter() + args.budget_s
    failed = False
    for i, name in enumerate(names):
        # Each case may use an equal share of what is left, so the first cannot starve the second.
        deadline = time.perf_counter() + (end - time.perf_counter()) / (len(names) - i)
        case = make_case(name, args)
        try:
            emit(run_case(case, args, device, deadline))
        except Exception as exc:  # report and go on: one failing case should not cost the other's figures
            failed = True
            emit({"case": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
