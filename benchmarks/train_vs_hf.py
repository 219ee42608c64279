"""Pretraining step speed and memory: twinlm vs Hugging Face transformers on the same config and weights.

    python benchmarks/train_vs_hf.py [--case mlm|clm|all] [--reps 5] [--batch-size 16] [--seq-len 128]

Case mlm: a 4-layer, 256-hidden, 4-head, FFN-1024 BERT (post-norm, head transform, 30,522-token vocabulary) vs
``transformers.BertForMaskedLM``; 15% of positions masked (80/10/10) by twinlm's MLMMasker, the same masked batches
fed to both. Case clm: the same sizes as a GPT-2 (pre-norm, tanh GELU, 50,257 tokens) vs ``GPT2LMHeadModel``.
A step is forward, backward, gradient clipping at 1.0 and AdamW, on random-token batches; twinlm's side uses the
trainer's own optimizer and loss code. After a warm-up step each, the sides alternate (A, B, A, B, ...) and each
reports tokens/s (median, min, max). Peak memory is measured with each side alone in a fresh process (peak RSS is
per process), running the same steps.

Model FLOPs per token follow nanoGPT's estimate: 6 * N + 12 * L * d * T, N counting every matrix the dense model
multiplies by (the vocabulary projection included, position and type embeddings not); the same count serves both
sides, so the model-GFLOP/s ratio equals the tokens/s ratio. Utilisation divides the FLOPs each side really executes
(twinlm's sparse MLM head projects only the masked rows) by the machine's measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    alternate,
    emit,
    flops_per_token,
    fp32_peak_gflops,
    head_params,
    hf_twin,
    peak_rss_mb,
    rate_summary,
    run_isolated,
    versions,
)

from twinlm.config import ModelConfig  # noqa: E402
from twinlm.model import LanguageModel  # noqa: E402
from twinlm.objectives import MLMMasker, clm_loss, mlm_loss  # noqa: E402
from twinlm.train import TrainConfig, build_optimizer  # noqa: E402

BERT_SPECIALS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
N_BATCHES = 4  # distinct batches cycled through, so no side sees one batch over and over


def twinlm_model(case: str) -> LanguageModel:
    torch.manual_seed(0)
    common = dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, max_positions=512, dropout=0.0)
    if case == "mlm":
        cfg = ModelConfig(vocab_size=30522, norm="post", activation="gelu", attention="bidirectional",
                          layer_norm_eps=1e-12, type_vocab_size=2, head_transform=True, **common)
    else:
        cfg = ModelConfig(vocab_size=50257, norm="pre", activation="gelu_tanh", attention="causal", head_bias=False,
                          **common)
    return LanguageModel(cfg)


def batches(case: str, vocab: int, batch: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """Random-token batches; MLM rows are [CLS] ... [SEP] with 15% of the inner positions masked."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(N_BATCHES):
        ids = torch.randint(1000, vocab, (batch, seq_len), generator=gen)
        if case == "clm":
            out.append({"input_ids": ids})
            continue
        ids[:, 0], ids[:, -1] = BERT_SPECIALS["cls"], BERT_SPECIALS["sep"]
        masker = MLMMasker(mask_id=BERT_SPECIALS["mask"], vocab_size=vocab, special_ids=list(BERT_SPECIALS.values()))
        corrupted, labels = masker(ids, None, gen)
        out.append({"input_ids": corrupted, "labels": labels})
    return out


def executed_flops_per_token(model: LanguageModel, seq_len: int, side: str, masked_fraction: float) -> float:
    """The FLOPs a side really does: twinlm's MLM projects (head transform + vocabulary) only the masked rows."""
    dense = flops_per_token(model, seq_len)
    if side == "hf" or model.config.attention != "bidirectional":
        return dense
    return dense - 6 * head_params(model) * (1.0 - masked_fraction)


class Stepper:
    """One training step of either side on a cycle of batches."""

    def __init__(self, side: str, case: str, model: LanguageModel, data: list[dict[str, torch.Tensor]]) -> None:
        self.side, self.case, self.data, self.i = side, case, data, 0
        cfg = TrainConfig(lr=1e-4, weight_decay=0.01)
        self.module = model if side == "twinlm" else hf_twin(model, "bert" if case == "mlm" else "gpt2")
        self.module.train()
        # Both sides get the trainer's fused AdamW with decay on matrices only: for the transformers model that is
        # also what its own Trainer builds on torch >= 2.8, so the peer is not handicapped.
        self.optimizer = build_optimizer(self.module, cfg)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.side == "hf":
            ids = batch["input_ids"]
            return self.module(input_ids=ids, labels=batch.get("labels", ids)).loss
        if self.case == "mlm":
            return mlm_loss(self.module, batch["input_ids"], batch["labels"])
        return clm_loss(self.module, batch["input_ids"])

    def __call__(self) -> float:
        batch = self.data[self.i % len(self.data)]
        self.i += 1
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def memory_only(case: str, side: str, args: argparse.Namespace) -> None:
    """Run a few steps of one side alone and print its peak RSS (called in a fresh process)."""
    model = twinlm_model(case)
    data = batches(case, model.config.vocab_size, args.batch_size, args.seq_len)
    step = Stepper(side, case, model, data)
    if side == "hf":
        del model  # the HF copy holds its own weights; dropping ours keeps the comparison fair
    for _ in range(3):
        step()
    emit({"peak_rss_mb": peak_rss_mb()})


def run_case(case: str, args: argparse.Namespace) -> None:
    model = twinlm_model(case)
    data = batches(case, model.config.vocab_size, args.batch_size, args.seq_len)
    twin, hf = Stepper("twinlm", case, model, data), Stepper("hf", case, model, data)
    first = {"twinlm": twin(), "hf": hf()}  # same weights, same batch: the first losses must agree
    tokens = args.batch_size * args.seq_len
    times = alternate({"twinlm": twin, "hf": hf}, reps=args.reps, warmup=0)
    fpt = flops_per_token(model, args.seq_len)
    peak = fp32_peak_gflops()
    row: dict = {"case": f"train-{case}", "peer": "BertForMaskedLM" if case == "mlm" else "GPT2LMHeadModel",
                 "batch": args.batch_size, "seq_len": args.seq_len, "vocab": model.config.vocab_size,
                 "parameters": model.num_parameters(), "reps": args.reps,
                 "first_loss": {k: round(v, 4) for k, v in first.items()}}
    masked = float(sum((b["labels"] != -100).float().mean() for b in data) / len(data)) if case == "mlm" else 1.0
    for side in ("twinlm", "hf"):
        rates = rate_summary(times[side], tokens)
        gflops = rates["median"] * fpt / 1e9
        done = rates["median"] * executed_flops_per_token(model, args.seq_len, side, masked) / 1e9
        # model GFLOP/s count the dense model's work (the same for both sides, so its ratio is the speed-up);
        # utilisation divides the FLOPs each side really executes by the machine's fp32 matmul peak.
        row[side] = {"tokens_per_s": rates, "model_gflops": round(gflops, 1), "executed_gflops": round(done, 1),
                     "utilisation": round(done / peak, 3)}
    row["ratio"] = round(row["twinlm"]["tokens_per_s"]["median"] / row["hf"]["tokens_per_s"]["median"], 2)
    if not args.no_memory:
        script = str(Path(__file__).resolve())
        common = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        for side in ("twinlm", "hf"):
            got = run_isolated([script, "--memory-only", side, "--case", case, *common])
            row[side]["peak_rss_mb"] = got["peak_rss_mb"]
        row["rss_ratio"] = round(row["twinlm"]["peak_rss_mb"] / row["hf"]["peak_rss_mb"], 2)
    row.update(flops_per_token=fpt, fp32_peak_gflops=peak, **versions())
    emit(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["mlm", "clm", "all"], default="all")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--no-memory", action="store_true", help="skip the two fresh-process memory runs")
    parser.add_argument("--memory-only", choices=["twinlm", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.memory_only:
        memory_only(args.case, args.memory_only, args)
        return
    for case in (["mlm", "clm"] if args.case == "all" else [args.case]):
        run_case(case, args)


if __name__ == "__main__":
    main()
