"""Real fine-tuning results on ../shared/data, starting from all-MiniLM-L6-v2 (and from tiny MLM/CLM models).

    python benchmarks/finetune_tasks.py sst2     [--train-rows 4000] [--epochs 1]
    python benchmarks/finetune_tasks.py squad    [--epochs 1]          # 32 train / 8 eval articles
    python benchmarks/finetune_tasks.py conll    [--train-rows 3000]
    python benchmarks/finetune_tasks.py wnut     [--train-rows 3394]
    python benchmarks/finetune_tasks.py paradigms [--train-rows 4000]  # SST-2 from a tiny MLM and a tiny CLM

Each case prints one JSON line with the metrics on the evaluation split, rows used, epochs and wall time.
Runs go to runs/bench/<case>. These take minutes on 2 CPU cores; they are benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from twinlm.finetune import FinetuneOptions, finetune_run
from twinlm.train import TrainConfig

DATA = Path(os.environ.get("TWINLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MINILM = DATA / "checkpoints" / "all-MiniLM-L6-v2"
OUT = Path("runs/bench")


def _cfg(args: argparse.Namespace, lr: float) -> TrainConfig:
    return TrainConfig(batch_size=args.batch_size, lr=args.lr or lr, warmup_steps=args.warmup, weight_decay=0.01,
                       min_lr_ratio=args.min_lr_ratio, layer_lr_decay=args.layer_lr_decay,
                       eval_every=args.eval_every, save_every=None, log_every=20,
                       seed=args.seed, device="cpu", progress=not args.no_progress, patience=None)


def _report(case: str, init: str, metrics: dict, start: float, **extra) -> dict:
    row = {"case": case, "init": init, **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
           **extra, "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    return row


def sst2(args: argparse.Namespace, init: Path = MINILM, tag: str = "minilm") -> dict:
    start = time.perf_counter()
    pooling = getattr(args, "pooling", "auto")
    opts = FinetuneOptions("classify", max_seq_len=64, max_train_rows=args.train_rows, pooling=pooling)
    folder = OUT / (f"sst2-{tag}" if pooling == "auto" else f"sst2-{tag}-{pooling}")
    folder = folder.with_name(folder.name + (f"-{args.tag}" if args.tag else ""))
    _, best = finetune_run(init, DATA / "sentiment/sst2_train.tsv", DATA / "sentiment/sst2_dev.tsv", folder, opts,
                           _cfg(args, 5e-5), epochs=args.epochs)
    # The final model's score is the result (as `twinlm glue` reports): the best of several evaluations on this same
    # dev set would flatter it. With --eval-every every evaluation is listed, and the best apart.
    evaluations = _evaluations(folder)
    final = {k: v for k, v in evaluations[-1].items() if k != "step"} if evaluations else best
    return _report("sst2", tag, final, start, train_rows=args.train_rows, epochs=args.epochs, eval="sst2_dev (872)",
                   pooling=pooling, lr=args.lr or 5e-5, seed=args.seed, batch_size=args.batch_size,
                   min_lr_ratio=args.min_lr_ratio, layer_lr_decay=args.layer_lr_decay, best_on_dev=best,
                   evaluations=evaluations)


def _evaluations(folder: Path) -> list[dict]:
    """Every dev evaluation of the run (step and metrics), so a best-of-several figure is never quoted alone."""
    log = folder / "metrics.jsonl"
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [row for row in rows if "lr" not in row]  # training rows carry the learning rate; evaluations do not


def squad(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    data = json.loads((DATA / "qa/squad_v1.1_dev_articles_00-39.json").read_text())
    split = OUT / "squad-split"
    split.mkdir(parents=True, exist_ok=True)
    # Split by ARTICLE, never by question: the same paragraph must not sit on both sides.
    n_train = args.train_articles
    for name, articles in (("train", data["data"][:n_train]), ("eval", data["data"][n_train:])):
        (split / f"{name}.json").write_text(json.dumps({"version": data["version"], "data": articles}))
    opts = FinetuneOptions("qa", max_seq_len=256, doc_stride=96, max_train_rows=args.train_rows)
    _, best = finetune_run(MINILM, split / "train.json", split / "eval.json", OUT / "squad-minilm", opts,
                           _cfg(args, 1e-4), epochs=args.epochs)
    return _report("squad", "minilm", best, start, train_articles=n_train, eval_articles=len(data["data"]) - n_train,
                   epochs=args.epochs)


def ner(args: argparse.Namespace, which: str) -> dict:
    start = time.perf_counter()
    files = {"conll": ("ner/conll2003/eng.train", "ner/conll2003/eng.testa"),
             "wnut": ("ner/wnut17/wnut17train.conll", "ner/wnut17/emerging.dev.conll")}[which]
    opts = FinetuneOptions("ner", max_seq_len=128, max_train_rows=args.train_rows)
    _, best = finetune_run(MINILM, DATA / files[0], DATA / files[1], OUT / f"{which}-minilm", opts,
                           _cfg(args, 1e-4), epochs=args.epochs)
    return _report(which, "minilm", best, start, train_rows=args.train_rows, epochs=args.epochs, eval=files[1])


def paradigms(args: argparse.Namespace) -> list[dict]:
    """Pretrain a tiny MLM and a tiny CLM on the same text with the same budget, then fine-tune both on SST-2."""
    from twinlm.data.corpus import prepare_corpus
    from twinlm.pretrain import PretrainOptions
    from twinlm.runs import pretrain_run
    from twinlm.tokenizer import train_tokenizer

    root = OUT / "paradigms"
    corpus = [DATA / "text/wikitext-2/valid.tokens.txt", DATA / "text/gutenberg/pride_and_prejudice.txt",
              DATA / "text/gutenberg/moby_dick.txt"]
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=8000)
    prepare_corpus(corpus, tok, root / "data", progress=False)
    rows = []
    for objective in ("mlm", "clm"):
        cfg = TrainConfig(max_steps=args.pretrain_steps, batch_size=32, lr=2e-3, warmup_steps=50, eval_every=None,
                          save_every=None, seed=args.seed, device="cpu", progress=not args.no_progress)
        pretrain_run(root / "data", root / objective, "tiny", PretrainOptions(objective, seq_len=128), cfg)
        args_ft = argparse.Namespace(**{**vars(args), "lr": 1e-3})
        rows.append(sst2(args_ft, root / objective, f"tiny-{objective}-{args.pretrain_steps}steps"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["sst2", "squad", "conll", "wnut", "paradigms"])
    parser.add_argument("--train-rows", type=int, default=None)
    parser.add_argument("--train-articles", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pooling", default="auto", choices=["auto", "mean"],
                        help="sst2: the classifier reads [CLS] (auto) or the mean of the tokens (all-MiniLM-L6-v2's "
                             "own sentence pooling)")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1,
                        help="the cosine schedule ends at lr * this (0: decay to zero, as Hugging Face's linear)")
    parser.add_argument("--layer-lr-decay", type=float, default=1.0, help="lr of block i of n: lr * this**(n-i)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default: each "
                        "epoch); every evaluation is printed with the result")
    parser.add_argument("--tag", default="", help="suffix for the run folder, so two recipes run side by side")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: shared data folder not found; set TWINLM_SHARED_DATA")
    if args.case == "sst2":
        sst2(args)
    elif args.case == "squad":
        squad(args)
    elif args.case in ("conll", "wnut"):
        ner(args, args.case)
    else:
        paradigms(args)


if __name__ == "__main__":
    main()
