"""Fine-tuning speed at equal accuracy: twinlm's one trainer (`finetune_run`) vs the plain transformers loop.

    python benchmarks/finetune_vs_hf.py [--cases sst2,conll,squad] [--reps 2] [--seeds 0] [--threads N]
        [--sst2-rows 4000] [--conll-rows 3000] [--squad-questions 1000] [--variants random,pack]

Both sides start from all-MiniLM-L6-v2 (../shared/data/checkpoints) with the same rows, epochs, learning rate,
batch size, warm-up (10% of the steps), weight decay (0.01), gradient clipping (1.0), dropout (0.1) and seed:

    sst2   the first 4,000 rows of SST-2 train, 1 epoch, batch 32, lr 5e-5, 64 tokens; accuracy on dev (872 rows)
    conll  the first 3,000 CoNLL-2003 train sentences, 1 epoch, batch 32, lr 5e-5, 128 tokens; entity F1 on
           eng.testa (3,250 sentences)
    squad  the first 1,000 questions of SQuAD v1.1 dev articles 0-31, 1 epoch, batch 16, lr 1e-4, 256-token
           windows with stride 96; EM/F1 on the first 1,000 questions of articles 32-39 (split by article)

twinlm's side is what a user runs: ``finetune_run`` (load, featurise, train with the Trainer, evaluate at the end of the
epoch through the inference path, keep out/best, save the last checkpoint) with its default batching. Its train
and eval seconds come from the TrainResult (elapsed_s minus eval_s, and eval_s).

The Hugging Face side is the plain loop of the transformers course, written fairly:
``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification`` / ``AutoModelForQuestionAnswering``,
fused AdamW (no decay on biases and LayerNorm, as the HF Trainer groups them), a linear schedule with the same
warm-up, batches drawn in a seeded random order and padded to their longest row (a torch collate, not the slower
``tokenizer.pad``), clipping at 1.0, and evaluation under ``torch.no_grad`` in file order, padded per batch, with
the same evaluation batch size (64). Text is tokenised by the MiniLM tokenizer up front, outside the timed loop, the
way ``dataset.map`` does it (``same_token_ids`` checks that its ids equal twinlm's). QA trains both sides on the same
windows (twinlm's ``featurize_qa``) and both read answers with twinlm's span search and SQuAD scorer; NER scores
both with the same entity F1.

Timed per side: train_s (the optimisation loop), eval_s (scoring the dev split, metrics included) and wall_s (the
whole call: loading, tokenising, training, evaluating, and for twinlm also saving); cpu_s is the process's CPU
seconds over that whole call, all threads: on a busy machine the wall times swing with other jobs and CPU seconds much
less (with --threads 1, where no thread waits for a descheduled sibling), so ratio.cpu is the figure to read there.
The sides alternate A B B A ... within one process so load from other jobs hits both alike; medians over repetitions
and seeds are reported, and each repetition's own ratio (hf seconds / twinlm seconds, back to back, train + eval) in
``ratio_paired``. ``padding_share`` is the share of the tokens a side computes in training that are padding.
``--variants random,pack`` adds twinlm runs with the other batchings (same seeds), to show that the batching leaves
the dev metric where it was.

Where the time goes (profiled on this machine, one thread, CPU seconds): both sides run the same fp32 GEMMs (~60% of a
step) at the same cost per token, and the optimizer step plus clipping (~0.08 s a step, all 22.7M weights) is the same
on both. What differs is how many tokens are computed. Random batches padded to their longest row compute 3.1x the
real tokens on SST-2 and 2.6x on CoNLL; twinlm's length-grouped batches 1.05x and 1.04x (packing: 1.08x and 1.09x,
and its block-diagonal mask makes each token dearer, so grouping is the default). In evaluation, file-order batches of
64 compute 2.0x (SST-2 dev) and 2.8x (eng.testa) the real tokens, twinlm's length-sorted ones 1.07x. The classifier's
last block computes only the [CLS] row, in training too (its keys and values still cover every position: 5/6 of
that block's matmuls are saved, about 14% of the model's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py sits beside this script
from common import SHARED_DATA, emit, versions  # noqa: E402

from twinlm.data import tasks as T  # noqa: E402
from twinlm.evaluate import classification_metrics, entity_metrics, squad_metrics  # noqa: E402
from twinlm.finetune import FinetuneOptions, finetune_run, load_init, pack_examples, train_batches  # noqa: E402
from twinlm.train import TrainConfig  # noqa: E402

MINILM = SHARED_DATA / "checkpoints" / "all-MiniLM-L6-v2"
EVAL_BATCH = 64
WARMUP_SHARE = 0.1


@dataclass
class Case:
    """One task: its files, options and recipe, and the examples/features both sides use."""

    name: str
    opts: FinetuneOptions
    train_file: Path
    eval_file: Path
    lr: float
    batch_size: int
    epochs: float
    metric: str
    labels: list[str] = field(default_factory=list)
    train: Any = None  # TaskData (twinlm's featurisation)
    eval: Any = None

    @property
    def steps(self) -> int:
        return max(1, round(self.epochs * math.ceil(len(self.train.features) / self.batch_size)))

    @property
    def warmup(self) -> int:
        return max(1, round(WARMUP_SHARE * self.steps))


def build_cases(args: argparse.Namespace, scratch: Path) -> list[Case]:
    cases = []
    for name in args.cases.split(","):
        if name == "sst2":
            opts = FinetuneOptions("classify", max_seq_len=64, max_train_rows=args.sst2_rows,
                                   max_eval_rows=args.sst2_eval_rows)
            cases.append(Case("sst2", opts, SHARED_DATA / "sentiment/sst2_train.tsv",
                              SHARED_DATA / "sentiment/sst2_dev.tsv", args.lr or 5e-5, args.batch_size or 32,
                              args.epochs, "accuracy"))
        elif name == "conll":
            opts = FinetuneOptions("ner", max_seq_len=128, max_train_rows=args.conll_rows,
                                   max_eval_rows=args.conll_eval_rows)
            cases.append(Case("conll", opts, SHARED_DATA / "ner/conll2003/eng.train",
                              SHARED_DATA / "ner/conll2003/eng.testa", args.lr or 5e-5, args.batch_size or 32,
                              args.epochs, "f1"))
        elif name == "squad":
            data = json.loads((SHARED_DATA / "qa/squad_v1.1_dev_articles_00-39.json").read_text())
            # Split by ARTICLE, never by question: the same paragraph must not sit on both sides.
            for part, articles in (("train", data["data"][:32]), ("eval", data["data"][32:])):
                (scratch / f"squad_{part}.json").write_text(json.dumps({"version": data["version"], "data": articles}))
            opts = FinetuneOptions("qa", max_seq_len=256, doc_stride=96, max_train_rows=args.squad_questions,
                                   max_eval_rows=args.squad_eval_questions)
            cases.append(Case("squad", opts, scratch / "squad_train.json", scratch / "squad_eval.json",
                              args.lr or 1e-4, args.batch_size or 16, args.epochs, "f1"))
        else:
            raise SystemExit(f"unknown case {name!r}; choose from sst2, conll, squad")
    return cases


# -- twinlm ---------------------------------------------------------------------------------------------------
def run_twinlm(case: Case, seed: int, batching: str, scratch: Path) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    cfg = TrainConfig(batch_size=case.batch_size, lr=case.lr, warmup_steps=case.warmup, weight_decay=0.01,
                      eval_every=None, save_every=None, log_every=50, seed=seed, device="cpu", progress=False)
    with tempfile.TemporaryDirectory(dir=scratch) as out, contextlib.redirect_stdout(sys.stderr):
        result, _ = finetune_run(MINILM, case.train_file, case.eval_file, out, replace(case.opts, batching=batching),
                                 cfg, epochs=case.epochs)
    return {"train_s": result.elapsed_s - result.eval_s, "eval_s": result.eval_s,
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "metrics": result.metrics}


def twinlm_padding(case: Case, seed: int, batching: str) -> float:
    """Share of padding among the tokens twinlm's batches compute in the first epoch."""
    lengths = np.array([len(f["input_ids"]) for f in case.train.features])
    computed = 0
    for rows in train_batches(lengths, case.batch_size, seed, 0, batching):
        if batching == "pack":
            packed = pack_examples(lengths[rows].tolist(), case.opts.max_seq_len)
            computed += len(packed) * max(int(lengths[rows][r].sum()) for r in packed)
        else:
            computed += len(rows) * int(lengths[rows].max())
    return round(1 - int(lengths.sum()) / computed, 4)


# -- Hugging Face ---------------------------------------------------------------------------------------------
def hf_features(case: Case, tokenizer: Any, data: Any) -> list[dict[str, Any]]:
    """The rows as the plain loop tokenises them (QA: twinlm's windows, see the module docstring)."""
    if case.opts.task == "classify":
        index = {label: i for i, label in enumerate(case.labels)}
        enc = tokenizer([ex.text for ex in data.examples], truncation=True, max_length=case.opts.max_seq_len)
        return [{"input_ids": ids, "token_type_ids": types, "labels": index[ex.label]}
                for ids, types, ex in zip(enc["input_ids"], enc["token_type_ids"], data.examples, strict=True)]
    if case.opts.task == "ner":
        index = {label: i for i, label in enumerate(case.labels)}
        enc = tokenizer([ex.words for ex in data.examples], is_split_into_words=True, truncation=True,
                        max_length=case.opts.max_seq_len)
        out = []
        for i, ex in enumerate(data.examples):
            words, labels, previous = enc.word_ids(i), [], None
            for w in words:  # the tag on each word's first sub-token, -100 elsewhere
                labels.append(-100 if w is None or w == previous else index[ex.tags[w]])
                previous = w
            out.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                        "labels": labels, "word_ids": words})
        return out
    return [{k: f[k] for k in ("input_ids", "token_type_ids", "start_positions", "end_positions") if k in f}
            for f in data.features]


def hf_collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of the batch (what DataCollatorWithPadding does, without tokenizer.pad's overhead)."""
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, torch.Tensor] = {}
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    token_labels = isinstance(rows[0].get("labels"), list)
    labels = torch.full_like(ids, -100) if token_labels else None
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], types[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["token_type_ids"]), 1
        if labels is not None:
            labels[i, :n] = torch.tensor(r["labels"])
    out.update(input_ids=ids, token_type_ids=types, attention_mask=mask)
    if labels is not None:
        out["labels"] = labels
    elif "labels" in rows[0]:
        out["labels"] = torch.tensor([r["labels"] for r in rows])
    for key in ("start_positions", "end_positions"):
        if key in rows[0]:
            out[key] = torch.tensor([r[key] for r in rows])
    return out


def hf_model(case: Case) -> torch.nn.Module:
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if case.opts.task == "classify":
        return AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=len(case.labels))
    if case.opts.task == "ner":
        return AutoModelForTokenClassification.from_pretrained(MINILM, num_labels=len(case.labels))
    return AutoModelForQuestionAnswering.from_pretrained(MINILM)


def hf_batches(n: int, batch_size: int, epochs: float, seed: int) -> list[torch.Tensor]:
    """A seeded random order per epoch (RandomSampler), cut every batch_size rows; as many batches as twinlm steps."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch_size)
    out: list[torch.Tensor] = []
    while len(out) < round(epochs * per_epoch):
        order = torch.randperm(n, generator=g)
        out.extend(order[i:i + batch_size] for i in range(0, n, batch_size))
    return out[:max(1, round(epochs * per_epoch))]


def hf_score(case: Case, model: torch.nn.Module, feats: list[dict[str, Any]], pad_id: int) -> dict[str, float]:
    """Dev metrics: batches of EVAL_BATCH in file order under torch.no_grad, scored like twinlm's side."""
    model.eval()
    outputs: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(feats), EVAL_BATCH):
            rows = feats[i:i + EVAL_BATCH]
            batch = hf_collate([{k: r[k] for k in ("input_ids", "token_type_ids")} for r in rows], pad_id)
            out = model(**batch)
            if case.opts.task == "qa":
                logits = torch.stack([out.start_logits, out.end_logits], -1)
            else:
                logits = out.logits
            outputs.extend(logits[j, :len(r["input_ids"])] if case.opts.task != "classify" else logits[j]
                           for j, r in enumerate(rows))
    examples = case.eval.examples
    if case.opts.task == "classify":
        return classification_metrics([case.labels[int(x.argmax())] for x in outputs], [ex.label for ex in examples])
    if case.opts.task == "ner":
        preds = []
        for f, x, ex in zip(feats, outputs, examples, strict=True):
            tags, seen, best = ["O"] * len(ex.words), set(), x.argmax(-1).tolist()
            for pos, w in enumerate(f["word_ids"]):
                if w is not None and w not in seen:
                    seen.add(w)
                    tags[w] = case.labels[best[pos]]
            preds.append(tags)
        return entity_metrics(preds, [ex.tags for ex in examples])
    width = max(len(x) for x in outputs)
    starts = torch.full((len(outputs), width), float("-inf"))
    ends = starts.clone()
    for i, x in enumerate(outputs):
        starts[i, :len(x)], ends[i, :len(x)] = x[:, 0], x[:, 1]
    spans = T.best_spans(case.eval.features, starts, ends, examples, case.opts.max_answer_len)
    return squad_metrics({q: s["answer"] for q, s in spans.items()}, {ex.qid: ex.answers for ex in examples})


def run_hf(case: Case, seed: int, hf_tokenizer: Any) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)  # the new head's initialisation and the dropout masks
    model = hf_model(case)
    train = hf_features(case, hf_tokenizer, case.train)
    dev = hf_features(case, hf_tokenizer, case.eval)
    pad = hf_tokenizer.pad_token_id
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0}]
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(groups, lr=case.lr, fused=True)
    schedule = get_linear_schedule_with_warmup(optimizer, case.warmup, case.steps)
    keep = ("input_ids", "token_type_ids", "labels", "start_positions", "end_positions")
    train_start = time.perf_counter()
    model.train()
    for idx in hf_batches(len(train), case.batch_size, case.epochs, seed):
        batch = hf_collate([{k: v for k, v in train[i].items() if k in keep} for i in idx.tolist()], pad)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    eval_start = time.perf_counter()
    metrics = hf_score(case, model, dev, pad)
    end = time.perf_counter()
    return {"train_s": eval_start - train_start, "eval_s": end - eval_start, "wall_s": end - start,
            "cpu_s": time.process_time() - cpu, "metrics": metrics}


def hf_padding(case: Case, seed: int, feats: list[dict[str, Any]]) -> float:
    lengths = np.array([len(f["input_ids"]) for f in feats])
    batches = hf_batches(len(lengths), case.batch_size, 1.0, seed)
    computed = sum(len(b) * int(lengths[b.numpy()].max()) for b in batches)
    return round(1 - int(sum(lengths[b.numpy()].sum() for b in batches)) / computed, 4)


# -- the run --------------------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]], case: Case) -> dict[str, Any]:
    train_s = statistics.median(r["train_s"] for r in runs)
    eval_s = statistics.median(r["eval_s"] for r in runs)
    by_seed: dict[int, dict[str, float]] = {r["seed"]: r["metrics"] for r in runs}
    metric = statistics.mean(m[case.metric] for m in by_seed.values())
    return {"train_s": round(train_s, 2), "eval_s": round(eval_s, 2),
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
            "train_rows_per_s": round(len(case.train.features) * case.epochs / train_s, 1),
            "eval_rows_per_s": round(len(case.eval.features) / eval_s, 1),
            case.metric: round(metric, 4),
            "per_seed": {s: {k: round(v, 4) for k, v in m.items()} for s, m in by_seed.items()}}


def run_case(case: Case, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    wall = time.perf_counter()
    _, tokenizer, _, _ = load_init(MINILM, case.opts.task)
    case.train, case.labels = _build(case, tokenizer, True)
    case.eval, _ = _build(case, tokenizer, False)
    hf_tok = AutoTokenizer.from_pretrained(MINILM)
    hf_train = hf_features(case, hf_tok, case.train)
    same_ids = [f["input_ids"] for f in hf_train] == [f["input_ids"] for f in case.train.features]
    variants = [v for v in args.variants.split(",") if v and not (v == "pack" and case.opts.task == "qa")]
    sides = ["hf", "twinlm", *(f"twinlm[{v}]" for v in variants)]  # QA windows cannot be packed
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    order = list(sides)
    for rep in range(args.reps):
        for seed in args.seeds:
            for side in order:
                if side == "hf":
                    row = run_hf(case, seed, hf_tok)
                else:
                    batching = side[7:-1] if "[" in side else "length"
                    row = run_twinlm(case, seed, batching, scratch)
                runs[side].append({**row, "seed": seed, "rep": rep})
                print(json.dumps({"case": case.name, "side": side, "rep": rep, "seed": seed,
                                  **{k: round(v, 2) for k, v in row.items() if k != "metrics"},
                                  case.metric: row["metrics"][case.metric]}), file=sys.stderr, flush=True)
            order.reverse()  # A B, then B A: a drift in the machine's load hits both sides alike
    out: dict[str, Any] = {
        "case": case.name, "task": case.opts.task, "model": MINILM.name, "train_rows": len(case.train.examples),
        "train_features": len(case.train.features), "eval_rows": len(case.eval.examples),
        "epochs": case.epochs, "batch_size": case.batch_size, "lr": case.lr, "warmup_steps": case.warmup,
        "steps": case.steps, "max_seq_len": case.opts.max_seq_len, "seeds": args.seeds, "reps": args.reps,
        "same_token_ids": same_ids,
    }
    for side in sides:
        out[side] = summarise(runs[side], case)
        batching = side[7:-1] if "[" in side else "length"
        out[side]["padding_share"] = (hf_padding(case, args.seeds[0], hf_train) if side == "hf"
                                      else twinlm_padding(case, args.seeds[0], batching))
    hf, tw = out["hf"], out["twinlm"]
    out["ratio"] = {"train": round(hf["train_s"] / tw["train_s"], 2), "eval": round(hf["eval_s"] / tw["eval_s"], 2),
                    "train_and_eval": round((hf["train_s"] + hf["eval_s"]) / (tw["train_s"] + tw["eval_s"]), 2),
                    "wall": round(hf["wall_s"] / tw["wall_s"], 2), "cpu": round(hf["cpu_s"] / tw["cpu_s"], 2)}
    out["ratio_paired"] = sorted(round((h["train_s"] + h["eval_s"]) / (t["train_s"] + t["eval_s"]), 2)
                                 for h, t in zip(runs["hf"], runs["twinlm"], strict=True))
    out[f"{case.metric}_delta"] = round(tw[case.metric] - hf[case.metric], 4)
    out.update(bench_wall_s=round(time.perf_counter() - wall, 1), **versions())
    return out


def _build(case: Case, tokenizer: Any, train: bool) -> tuple[Any, list[str]]:
    from twinlm.finetune import build_data

    path, rows = (case.train_file, case.opts.max_train_rows) if train else (case.eval_file, case.opts.max_eval_rows)
    return build_data(path, tokenizer, case.opts, case.labels or None, train, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="sst2,conll,squad", help="comma-separated: sst2, conll, squad")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of every side (and seed)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--variants", default="", help="extra twinlm batchings to run too: random, pack")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=None, help="default: the case's (5e-5; squad 1e-4)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the case's (32; squad 16)")
    parser.add_argument("--sst2-rows", type=int, default=4000)
    parser.add_argument("--sst2-eval-rows", type=int, default=None, help="default: all of dev")
    parser.add_argument("--conll-rows", type=int, default=3000)
    parser.add_argument("--conll-eval-rows", type=int, default=None, help="default: all of eng.testa")
    parser.add_argument("--squad-questions", type=int, default=1000)
    parser.add_argument("--squad-eval-questions", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides")
    args = parser.parse_args()
    if not MINILM.is_dir():
        sys.exit(f"{MINILM}: not found; set TWINLM_SHARED_DATA to the shared data folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the task heads are "newly initialised" on purpose
    with tempfile.TemporaryDirectory() as scratch:
        for case in build_cases(args, Path(scratch)):
            emit(run_case(case, args, Path(scratch)))


if __name__ == "__main__":
    main()
