"""`twinlm finetune`, `evaluate`, `classify`, `answer` and `tag`: the understanding-task commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import add_train_flags, train_config
from .cli_registry import Command
from .errors import TwinLMError


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--doc-stride", type=int, default=128, help="qa: overlap between context windows, in tokens")
    p.add_argument("--max-answer-len", type=int, default=30, help="qa: longest answer span, in tokens")
    p.add_argument("--text-column", default=None, help="classify: text column (default: 'text' or 'sentence')")
    p.add_argument("--pair-column", default=None, help="classify: second text column for sentence pairs")
    p.add_argument("--label-column", default="label")
    p.add_argument("--problem", default="single_label", choices=["single_label", "multi_label", "regression"])


def _metric_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default="auto", choices=["auto", "squad", "cmrc"],
                   help="qa: SQuAD's exact match/F1 or CMRC 2018's (characters, for Chinese); auto: cmrc when "
                        "over 30%% of the context characters are Chinese")


def _finetune_arguments(ft: argparse.ArgumentParser) -> None:
    ft.add_argument("--task", required=True, help="classify | qa | ner")
    ft.add_argument("--init", required=True, help="twinlm run/model folder or Hugging Face folder to start from")
    ft.add_argument("--train", required=True, help="TSV/CSV/JSONL (classify), SQuAD JSON (qa), CoNLL (ner)")
    ft.add_argument("--eval", default=None, help="labelled evaluation file (early stopping, best checkpoint)")
    ft.add_argument("--out", required=True)
    ft.add_argument("--epochs", type=float, default=3.0)
    ft.add_argument("--patience", type=int, default=2, help="evaluations without gain before stopping")
    ft.add_argument("--max-train-rows", type=int, default=None)
    ft.add_argument("--max-eval-rows", type=int, default=None)
    ft.add_argument("--dropout", type=float, default=0.1, help="backbone dropout while fine-tuning")
    ft.add_argument("--truncation", default="head", choices=["head", "head-tail"],
                    help="classify: what a text longer than --max-seq-len keeps: its first tokens (head), or its first "
                         "quarter and last three quarters (head-tail, which helps on long reviews); the fine-tuned "
                         "model remembers the choice")
    ft.add_argument("--pooling", default="auto", choices=["auto", "mean"],
                    help="classify: what the classifier reads: auto = [CLS] (bidirectional) or the last token "
                         "(causal); mean = the average of every token's state, as sentence-embedding models "
                         "(all-MiniLM-L6-v2) were trained")
    _data_flags(ft)
    _metric_flag(ft)
    add_train_flags(ft)
    ft.set_defaults(lr=5e-5, warmup_steps=0, batch_size=32, eval_every=None, save_every=None)  # per epoch; at the end


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None, help="metrics JSON file (default: MODEL/eval_<file>.json)")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    _metric_flag(p)


def _texts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="+")
    p.add_argument("--model", required=True)


def _answer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--context", required=True, help="the text, or @FILE to read it from a file")


def cmd_finetune(args: argparse.Namespace) -> None:
    """Run `twinlm finetune`."""
    from .finetune import FinetuneOptions, finetune_run

    opts = FinetuneOptions(task=args.task, max_seq_len=args.max_seq_len, doc_stride=args.doc_stride,
                           max_answer_len=args.max_answer_len, problem=args.problem, text_column=args.text_column,
                           pair_column=args.pair_column, label_column=args.label_column,
                           max_train_rows=args.max_train_rows, max_eval_rows=args.max_eval_rows, dropout=args.dropout,
                           metric=args.metric, truncation=args.truncation, pooling=args.pooling)
    cfg = train_config(args)
    cfg.patience = args.patience
    result, best = finetune_run(args.init, args.train, args.eval, args.out, opts, cfg, args.epochs, args.resume)
    print(f"done: step {result.step}" + (f" ({result.stopped_early})" if result.stopped_early else ""))
    if best:
        print("best: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "step") + f" at step {best['step']}")
        print(f"best model: {Path(args.out) / 'best'}")
    print(f"last checkpoint: {result.checkpoint}\nmetrics: {Path(args.out) / 'metrics.jsonl'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Run `twinlm evaluate`."""
    from .checkpoint import write_text_atomic
    from .finetune import _opts_for, build_data, check_metric, score_task, task_info
    from .loading import load_task_model

    model, tok = load_task_model(args.model, args.task)
    opts = _opts_for(model)
    opts.eval_batch_size, opts.metric = args.batch_size, args.metric
    check_metric(opts)
    data, _ = build_data(args.data, tok, opts, task_info(model)["labels"], False, args.max_rows)
    metrics, _ = score_task(model, data, tok, opts)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    folder = Path(args.model)
    default = (folder if folder.is_dir() else folder.parent) / f"eval_{Path(args.data).stem}.json"
    out = Path(args.out) if args.out else default
    write_text_atomic(out, json.dumps({"task": args.task, "data": str(args.data), **metrics}, indent=2,
                                      ensure_ascii=False) + "\n")
    print(f"metrics written to {out}")


def cmd_classify(args: argparse.Namespace) -> None:
    """Run `twinlm classify`."""
    from .finetune import classify
    from .loading import load_task_model

    model, tok = load_task_model(args.model, "classify")
    for text, pred in zip(args.texts, classify(model, tok, args.texts), strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False))  # Chinese labels as themselves


def cmd_answer(args: argparse.Namespace) -> None:
    """Run `twinlm answer`."""
    from .finetune import answer
    from .loading import load_task_model

    context = args.context
    if context.startswith("@"):
        try:
            context = Path(context[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise TwinLMError(f"{context[1:]}: cannot read the context file ({exc.strerror})") from None
    model, tok = load_task_model(args.model, "qa")
    print(json.dumps(answer(model, tok, args.question, context), ensure_ascii=False))


def cmd_tag(args: argparse.Namespace) -> None:
    """Run `twinlm tag`."""
    from .finetune import tag
    from .loading import load_task_model

    model, tok = load_task_model(args.model, "ner")
    for text, found in zip(args.texts, tag(model, tok, args.texts), strict=True):
        json.dump({"text": text, "entities": found}, sys.stdout, ensure_ascii=False)
        print()


COMMANDS = [
    Command("finetune", "fine-tune an encoder (or decoder) for classify, qa or ner",
            examples=("twinlm finetune --task classify --init ../shared/data/checkpoints/all-MiniLM-L6-v2 "
                      "--train sst2_train.tsv --eval sst2_dev.tsv --out runs/sst2 --epochs 2",
                      "twinlm finetune --task qa --init runs/mlm --train squad_train.json --eval squad_dev.json "
                      "--out runs/qa --max-seq-len 256 --doc-stride 96",
                      "twinlm finetune --task ner --init runs/mlm --train eng.train --eval eng.testa --out runs/ner",
                      "twinlm finetune --task classify --init runs/zh-mlm --train online_shopping_train.tsv "
                      "--eval online_shopping_dev.tsv --label-column category --out runs/shopping"),
            add_arguments=_finetune_arguments, run=cmd_finetune),
    Command("evaluate", "metrics of a fine-tuned model on a labelled file",
            examples=("twinlm evaluate --task classify --model runs/sst2 --data sst2_dev.tsv",
                      "twinlm evaluate --task qa --model runs/qa --data squad_dev.json --out qa_dev.json",
                      "twinlm evaluate --task qa --model runs/cmrc --data cmrc2018_dev.json --metric cmrc"),
            add_arguments=_evaluate_arguments, run=cmd_evaluate),
    Command("classify", "label texts with a fine-tuned classifier",
            examples=('twinlm classify --model runs/sst2 "a charming and often affecting journey" "a dull mess"',),
            add_arguments=_texts_arguments, run=cmd_classify),
    Command("answer", "extract an answer span from a context",
            examples=('twinlm answer --model runs/squad --question "Who won?" --context "The Broncos won the game."',
                      'twinlm answer --model runs/squad --question "Who won?" --context @article.txt'),
            add_arguments=_answer_arguments, run=cmd_answer),
    Command("tag", "named entities with character offsets",
            examples=('twinlm tag --model runs/conll "EU rejects German call to boycott British lamb ."',),
            add_arguments=_texts_arguments, run=cmd_tag),
]
