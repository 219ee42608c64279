"""Encoder inference on real, variable-length text: twinlm vs Hugging Face transformers on the same weights.

    python benchmarks/encoder_inference.py [--reps 3] [--batch-size 32] [--threads N] [--model DIR] [--data TSV]

Data: all 872 sentences of SST-2 dev (``sentence<TAB>label``), 4 to 55 tokens each. Model: all-MiniLM-L6-v2 (a BERT,
6 layers, 384 hidden, 12 heads) plus a 2-way classification head initialised with seed 0. twinlm's side is its
TaskModel (backbone imported by ``load_init``); Hugging Face's side is ``AutoModelForSequenceClassification`` from
the same folder with ``num_labels=2``, whose classifier is given twinlm's head weights.

The pooler. HF's BERT classifier reads tanh(dense([CLS])) through the pooler (MiniLM's folder has its weights);
twinlm's head reads the [CLS] state directly and has no pooler. HF's pooler is made an exact identity here: dense
weight = I, bias = 0, Tanh replaced by Identity. x @ I only adds exact zeros to each x_i, so HF's classifier sees
bit for bit the [CLS] state that twinlm's sees, and HF still pays for its pooler matmul (32 x 384 x 384 per batch,
under 0.01% of the work). Giving twinlm a pooler instead would be a new head parameter that fine-tuning, saving,
loading and the HF import must all carry: a model change, not a benchmark choice. The head is untrained (seeded), so
the labels mean nothing; what matters is that both sides compute the same function and agree on every argmax.

Timed, per side, is what a user calls to classify a list of texts, tokenization included on both sides:
twinlm: ``finetune.classify(model, tokenizer, texts, batch_size=32)`` (its own batching, by length);
HF: for each 32 sentences in file order, the MiniLM tokenizer (padding='longest', truncation at 128) then the model,
as the usual loop does. Both under torch.inference_mode with the same thread count in one process; after a warm-up
on 128 sentences each, the sides alternate (A, B, A, B, ...) so load from other jobs hits both alike, and
``ratio_paired`` gives each repetition's own ratio (HF seconds / twinlm seconds, back to back).

FLOPs count the real (unpadded) tokens only, the same for both sides: 2 * N * tokens + 4 * L * d * T^2 per sentence
of T tokens, N the parameters of the Transformer blocks and the classifier (embeddings are lookups, not matmuls).
So the GFLOP/s ratio equals the sentences/s ratio; the count is nominal: work a side spends on padding shows up as
lower GFLOP/s, work it skips (positions no head reads) as higher. Utilisation
divides by the machine's fp32 matmul peak, measured before and after the timing (the higher of the two: other jobs
on the machine only ever lower it).

Where the time goes: both sides run the same kernels (fp32 GEMMs are ~75% of it) at the same cost per token they
compute, so the speed-up is the padding twinlm does not compute: HF pads each file-order batch to its longest
sentence (48% of the tokens it computes are padding), twinlm's classify() sorts by length first (4%).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py sits beside this script
from common import (  # noqa: E402
    SHARED_DATA,
    alternate,
    emit,
    fp32_peak_gflops,
    measure_peak_gflops,
    peak_rss_mb,
    rate_summary,
    versions,
)

from twinlm.data import tasks as T  # noqa: E402
from twinlm.finetune import classify, length_batches, load_init, predict_logits  # noqa: E402
from twinlm.heads import TaskModel  # noqa: E402
from twinlm.tokenizer import Tokenizer  # noqa: E402

DATA = SHARED_DATA
MINILM = DATA / "checkpoints" / "all-MiniLM-L6-v2"
SST2_DEV = DATA / "sentiment" / "sst2_dev.tsv"
MAX_LEN = 128
LABELS = ["0", "1"]


def twinlm_side(folder: Path, seed: int) -> tuple[TaskModel, Tokenizer]:
    """The encoder in ``folder`` + a seeded classification head, with the task recorded as fine-tuning records it."""
    lm, tokenizer, _, _ = load_init(folder, "classify")
    torch.manual_seed(seed)
    model = TaskModel(lm, "classify", len(LABELS))
    # classify() reads labels and max_seq_len from config.extra['task'], as for a fine-tuned model.
    model.lm.config = lm.config.replace(extra={**lm.config.extra, "task": {
        "task": "classify", "labels": LABELS, "problem": "single_label", "max_seq_len": MAX_LEN}})
    model.lm.backbone.config = model.lm.config
    return model.eval(), tokenizer


def hf_classifier(folder: Path, head: nn.Linear) -> nn.Module:
    """BertForSequenceClassification from ``folder``: twinlm's classifier weights and an exact-identity pooler."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the classifier is "newly initialised" on purpose: we overwrite it below
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(LABELS)).eval()
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
        pooler = model.bert.pooler
        pooler.dense.weight.copy_(torch.eye(pooler.dense.in_features))
        pooler.dense.bias.zero_()
    pooler.activation = nn.Identity()
    return model


def flops(lengths: list[int], model: TaskModel) -> float:
    """Matmul FLOPs over real tokens: 2 * N * tokens + 4 * L * d * T^2 per sentence (QK^T and AV)."""
    n = sum(p.numel() for p in model.lm.backbone.blocks.parameters())
    n += sum(p.numel() for p in model.classifier.parameters())
    c = model.config
    return 2.0 * n * sum(lengths) + sum(4.0 * c.n_layers * c.d_model * t * t for t in lengths)


def classify_hf(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int) -> torch.Tensor:
    """Logits in file order, as the usual loop does: tokenize 32 texts (pad to the longest), run, repeat."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding="longest", truncation=True, max_length=MAX_LEN,
                              return_tensors="pt")
            out.append(model(**batch).logits)
    return torch.cat(out)


def classify_twinlm(model: TaskModel, tokenizer: Tokenizer, texts: list[str], batch_size: int) -> list[int]:
    """Label ids through the public API (tokenization, length-sorted batching, softmax included)."""
    with torch.inference_mode():
        return [int(r["label"]) for r in classify(model, tokenizer, texts, batch_size=batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed passes over all sentences, per side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classification head")
    parser.add_argument("--model", type=Path, default=MINILM, help="a Hugging Face BERT folder")
    parser.add_argument("--data", type=Path, default=SST2_DEV, help="TSV with a 'sentence' column")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = [ex.text for ex in T.read_classification(args.data)]
    model, tokenizer = twinlm_side(args.model, args.seed)
    from transformers import AutoTokenizer

    hf_model, hf_tok = hf_classifier(args.model, model.classifier), AutoTokenizer.from_pretrained(args.model)
    bs = args.batch_size
    peak_before = fp32_peak_gflops()

    # Warm-up on a slice (a full pass would cost as much as a repetition): allocator, thread pool, oneDNN.
    classify_twinlm(model, tokenizer, texts[:4 * bs], bs)
    classify_hf(hf_model, hf_tok, texts[:4 * bs], bs)
    results: dict[str, Any] = {}
    times = alternate({
        "twinlm": lambda: results.__setitem__("twinlm", classify_twinlm(model, tokenizer, texts, bs)),
        "hf": lambda: results.__setitem__("hf", classify_hf(hf_model, hf_tok, texts, bs)),
    }, reps=args.reps, warmup=0)

    # Untimed checks: twinlm's logits from the features classify() builds; token ids against HF's tokenizer.
    feats = [dict(zip(("input_ids", "token_type_ids"), T.encode_pair(tokenizer, t, None, MAX_LEN), strict=True))
             for t in texts]
    lengths = [len(f["input_ids"]) for f in feats]
    tw_logits = torch.stack(predict_logits(model, feats, tokenizer.pad_id, bs))
    hf_logits = results["hf"]
    hf_pred = hf_logits.argmax(-1).tolist()
    agree = sum(a == b for a, b in zip(results["twinlm"], hf_pred, strict=True))
    hf_ids = hf_tok(texts, truncation=True, max_length=MAX_LEN)["input_ids"]

    def padding(batches: list[list[int]]) -> float:
        padded = sum(max(lengths[j] for j in b) * len(b) for b in batches)
        return round(1 - sum(lengths) / padded, 4)

    file_order = [list(range(i, min(i + bs, len(texts)))) for i in range(0, len(texts), bs)]
    work = flops(lengths, model)
    # Other jobs share this machine: measured before and after the timing, the higher peak is the less disturbed.
    peak = max(peak_before, measure_peak_gflops(torch.float32))
    sides: dict[str, dict[str, Any]] = {}
    for name, batches in (("twinlm", length_batches(lengths, bs)), ("hf", file_order)):
        rate = rate_summary(times[name], len(texts))
        gflops = work / 1e9 * rate["median"] / len(texts)
        sides[name] = {"sentences_per_s": rate, "gflops": round(gflops, 1), "utilisation": round(gflops / peak, 3),
                       "padding_fraction": padding(batches), "batches": len(batches)}
    # Each repetition ran the two sides back to back, so its own ratio saw the same load on the machine.
    paired = sorted(h / t for t, h in zip(times["twinlm"], times["hf"], strict=True))
    emit({
        "case": "encoder_inference", "model": f"{args.model.name} + 2-way head (seed {args.seed})",
        "data": args.data.name, "sentences": len(texts), "tokens": sum(lengths), "batch_size": bs,
        "reps": args.reps, "tokenization": "timed, both sides", "hf_pooler": "exact identity", **sides,
        "ratio": round(sides["twinlm"]["sentences_per_s"]["median"] / sides["hf"]["sentences_per_s"]["median"], 2),
        "ratio_paired": [round(r, 2) for r in paired],
        "same_token_ids": [f["input_ids"] for f in feats] == hf_ids,
        "predictions_identical": agree == len(texts), "agreement": agree,
        "max_abs_logit_diff": float((tw_logits - hf_logits).abs().max()),
        "gflop_per_pass": round(work / 1e9, 1), "fp32_peak_gflops": peak, "peak_rss_mb": peak_rss_mb(),
        "wall_s": round(time.perf_counter() - start, 1), **versions(),
    })


if __name__ == "__main__":
    main()
