"""Chinese results table: fine-tune the Chinese pretrained models (and the same backbone from random weights) on
ChnSentiCorp, waimai, online-shopping topics, MSRA NER and CMRC 2018, one recipe per task, and write a table.

The pretrained models come from the README's Chinese recipe (`twinlm pretrain ... --out runs/zh/mlm` etc.); a missing
one is skipped with a note. Each (task, init) pair is one part, written to RUNS/results/parts as JSON when it ends, so a
killed run continues where it stopped. Prints the rows asked for as JSON and Markdown, and writes the table of every
finished part (all tasks, inits and tagged recipes) to --out.

    python benchmarks/zh_results.py --runs runs/zh --out benchmarks/results/zh
    python benchmarks/zh_results.py --tasks chnsenticorp --inits mlm,random     # a subset
    python benchmarks/zh_results.py --tasks chnsenticorp,msra --inits mlm-char1000,mlm-wwm1000 --epochs 1
        # any folder under --runs is an init: here per-character vs whole-word MLM checkpoints at the same step
    python benchmarks/zh_results.py --tasks topic --inits mlm2 --max-train-rows 16000 --tag 16k   # a second recipe

Held-back splits (ChnSentiCorp/online-shopping/MSRA test rows, CMRC articles 600-847) are never read: CMRC is scored
on articles 500-599 of the public dev file after training on the trial set and articles 0-499.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from twinlm import checkpoint as ckpt
from twinlm.config import preset
from twinlm.finetune import BEST_METRIC, FinetuneOptions, finetune_run
from twinlm.loading import load
from twinlm.model import LanguageModel
from twinlm.train import TrainConfig

ZH = Path(os.environ.get("TWINLM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "zh"


@dataclass
class Task:
    name: str
    task: str
    train: str
    dev: str
    epochs: float
    max_seq_len: int = 128
    max_train_rows: int | None = None
    extra: dict = field(default_factory=dict)


def tasks(work: Path) -> dict[str, Task]:
    return {
        "chnsenticorp": Task("ChnSentiCorp (hotel sentiment)", "classify", f"{ZH}/sentiment/chnsenticorp_htl_train.tsv",
                             f"{ZH}/sentiment/chnsenticorp_htl_dev.tsv", epochs=3, max_seq_len=256),
        "waimai": Task("waimai (delivery sentiment)", "classify", f"{ZH}/sentiment/waimai_10k_train.tsv",
                       f"{ZH}/sentiment/waimai_10k_dev.tsv", epochs=2),
        "topic": Task("online-shopping topic (10 classes)", "classify", f"{ZH}/topic/online_shopping_train.tsv",
                      f"{ZH}/topic/online_shopping_dev.tsv", epochs=1, max_train_rows=4000,
                      extra={"label_column": "category"}),
        "msra": Task("MSRA NER", "ner", f"{ZH}/ner/msra_train.conll", f"{ZH}/ner/msra_dev.conll", epochs=2,
                     max_train_rows=8000),
        "cmrc": Task("CMRC 2018 QA", "qa", str(work / "cmrc_train.json"), str(work / "cmrc_eval.json"), epochs=1,
                     max_seq_len=256, max_train_rows=1500, extra={"doc_stride": 128}),
    }


def split_cmrc(work: Path) -> None:
    """Train = the trial set + dev articles 0-499; evaluation = dev articles 500-599 (600-847 are held back)."""
    if (work / "cmrc_eval.json").exists():
        return
    trial = json.loads((ZH / "qa" / "cmrc2018_trial.json").read_text(encoding="utf-8"))
    dev = json.loads((ZH / "qa" / "cmrc2018_dev_articles_000-599.json").read_text(encoding="utf-8"))
    train_docs = trial["data"] + dev["data"][:500]
    work.mkdir(parents=True, exist_ok=True)
    for name, docs in (("cmrc_train.json", train_docs), ("cmrc_eval.json", dev["data"][500:])):
        tmp = work / (name + ".tmp")
        tmp.write_text(json.dumps({"version": "cmrc2018-split", "data": docs}, ensure_ascii=False), encoding="utf-8")
        tmp.replace(work / name)


def random_init(runs: Path, folder: Path, seed: int) -> Path:
    """The MLM's backbone config with random weights: what pretraining bought."""
    loaded = load(runs / "mlm")
    config = preset("mini", vocab_size=loaded.tokenizer.vocab_size, attention="bidirectional",
                    pad_token_id=loaded.tokenizer.pad_id, position=loaded.config.position)
    torch.manual_seed(seed + 7919)
    return ckpt.save_model(folder, model_state=LanguageModel(config).state_dict(), config=config,
                           tokenizer=loaded.tokenizer)


def run_part(runs: Path, work: Path, key: str, spec: Task, init: str, lr: float, seed: int, tag: str = "",
             truncation: str = "head", pooling: str = "auto") -> dict:
    out = work / "finetune" / key / (f"{init}-{tag}" if tag else init)  # a second recipe must not resume the first
    if init == "random":
        source = random_init(runs, work / "init" / f"{key}-random", seed)
    else:
        source = runs / init
    extra = dict(spec.extra)
    opts = FinetuneOptions(task=spec.task, max_seq_len=spec.max_seq_len, max_train_rows=spec.max_train_rows,
                           label_column=extra.pop("label_column", "label"),
                           truncation=truncation if spec.task == "classify" else "head",
                           pooling=pooling if spec.task == "classify" else "auto", **extra)
    cfg = TrainConfig(batch_size=32, lr=lr, warmup_steps=30, eval_every=None, save_every=None, keep_last=1,
                      log_every=20, seed=seed, progress=sys.stderr.isatty())
    start = time.perf_counter()
    result, best = finetune_run(source, spec.train, spec.dev, out, opts, cfg, epochs=spec.epochs, resume="auto")
    metric = BEST_METRIC[spec.task]
    if f"cmrc_{metric}" in best:  # Chinese QA is scored with CMRC 2018's metric, named so
        metric = f"cmrc_{metric}"
    row = {"task": key, "name": spec.name, "init": init, "metric": metric, "best": best,
           "final": {k: v for k, v in result.metrics.items() if isinstance(v, float)},
           "score": best.get(metric, result.metrics.get(metric)), "epochs": spec.epochs, "lr": lr, "seed": seed,
           "train_rows": spec.max_train_rows or "all", "max_seq_len": spec.max_seq_len, "steps": result.step,
           "tag": tag, "truncation": opts.truncation, "pooling": opts.pooling,
           "wall_s": round(time.perf_counter() - start, 1)}
    for folder in [*out.glob("checkpoint-*"), out / "best"]:
        if init != "mlm" or tag or key not in ("chnsenticorp", "cmrc", "msra"):  # keep the models the README demos use
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(work / "init", ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| task | init | metric | dev score | epochs | train rows | wall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = ""
        if r["task"] == "cmrc":
            extra = f" (EM {r['best'].get('cmrc_exact_match', float('nan')):.1f})"
        score = r["score"] if r["score"] is not None else float("nan")
        shown = f"{score:.1f}" if r["task"] == "cmrc" else f"{score:.3f}"
        init = f"{r['init']} ({r['tag']})" if r.get("tag") else r["init"]
        lines.append(f"| {r['name']} | {init} | {r['metric']} | {shown}{extra} | {r['epochs']} | "
                     f"{r['train_rows']} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/zh", help="folder with the pretrained mlm/, mlm-wwm/, clm/ runs")
    ap.add_argument("--out", default="benchmarks/results/zh")
    ap.add_argument("--tasks", default="chnsenticorp,msra,cmrc,topic,waimai")
    ap.add_argument("--inits", default="mlm,clm,random,mlm-wwm")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, help="fine-tuning epochs for every task run now (default: each task's own)")
    ap.add_argument("--max-train-rows", type=int, help="training rows for every task run now (default: per task)")
    ap.add_argument("--tag", default="", help="suffix of the part names, so a second recipe keeps the first one's rows")
    ap.add_argument("--truncation", default="head", choices=["head", "head-tail"],
                    help="classification tasks: what an over-long text keeps (twinlm finetune --truncation)")
    ap.add_argument("--pooling", default="auto", choices=["auto", "mean"],
                    help="classification tasks: [CLS] (auto) or the mean of the token states (finetune --pooling)")
    ap.add_argument("--table-only", action="store_true", help="write the table from the finished parts; train nothing")
    args = ap.parse_args()
    runs = Path(args.runs)
    work = runs / "results"
    split_cmrc(work)
    specs = tasks(work)
    if args.epochs:
        specs = {k: replace(v, epochs=args.epochs) for k, v in specs.items()}
    if args.max_train_rows:
        specs = {k: replace(v, max_train_rows=args.max_train_rows) for k, v in specs.items()}
    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in args.tasks.split(","):
        for init in args.inits.split(","):
            if init != "random" and not (runs / init).exists():
                print(f"skip {key}/{init}: no pretrained model at {runs / init}", file=sys.stderr)
                continue
            part = parts / f"{key}__{init}{'__' + args.tag if args.tag else ''}.json"
            if args.table_only:  # every recipe of this pair: the plain part and the tagged ones
                rows += [json.loads(f.read_text()) for f in sorted(parts.glob(f"{key}__{init}*.json"))
                         if f.stem.split("__")[1] == init]
                continue
            if not part.exists():
                print(f"== {key} from {init}", file=sys.stderr)
                row = run_part(runs, work, key, specs[key], init, args.lr, args.seed, args.tag, args.truncation,
                               args.pooling)
                part.write_text(json.dumps(row, indent=1, ensure_ascii=False))
            rows.append(json.loads(part.read_text()))
    print(json.dumps(rows, ensure_ascii=False))
    print(table(rows))
    # The written table holds every finished part, so running one more recipe never drops the others' rows.
    order = list(specs)
    every = sorted((json.loads(f.read_text()) for f in parts.glob("*.json")),
                   key=lambda r: (order.index(r["task"]) if r["task"] in order else len(order), r["init"],
                                  r.get("tag", "")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(every, indent=1, ensure_ascii=False))
    (out / "results.md").write_text(table(every) + "\n")
    print(f"table of all {len(every)} finished parts: {out / 'results.md'}", file=sys.stderr)

if __name__ == "__main__":
    main()
