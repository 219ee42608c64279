"""The `twinlm` command. User mistakes print one line (`twinlm: error: ...`) and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__, cli_generate, cli_tasks
from .errors import TwinLMError

EXAMPLES = {
    "tokenizer": "twinlm tokenizer train --kind bpe --vocab-size 8000 --out tok/ corpus.txt",
    "prepare": "twinlm prepare corpus.txt more.jsonl --tokenizer tok/ --out data/ --val-fraction 0.05",
    "pretrain": "twinlm pretrain --objective mlm --preset tiny --data data/ --out runs/mlm --max-steps 2000",
    "fill-mask": 'twinlm fill-mask --model runs/mlm "To be or not to [MASK]."',
    "sample": 'twinlm sample --model runs/clm --prompt "ROMEO:" --max-new-tokens 60 --temperature 0.8',
    "quickstart": "twinlm quickstart --out runs/quickstart",
    "convert": "twinlm convert --from-hf ../shared/data/checkpoints/all-MiniLM-L6-v2 --out models/minilm",
}


def _example(name: str) -> str:
    return f"example:\n  {EXAMPLES[name]}"


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=32, help="rows per micro-batch per process")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--eval-every", type=int, default=200)
    g.add_argument("--save-every", type=int, default=500)
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints kept in the run folder")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--time-budget", type=float, default=None, help="seconds; then save and stop cleanly")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model and loss (the first step pays the compile time; it is logged)")
    g.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint in --out) or a checkpoint folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-parser per command)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="twinlm", formatter_class=fmt,
        description="Masked and causal language models side by side on one Transformer backbone.",
        epilog="start here:\n  twinlm quickstart      # trains a tiny MLM and CLM on Tiny Shakespeare, compares them",
    )
    parser.add_argument("--version", action="version", version=f"twinlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tok = sub.add_parser("tokenizer", help="train a tokenizer", epilog=_example("tokenizer"), formatter_class=fmt)
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tt = tok_sub.add_parser("train", help="train WordPiece, byte-level BPE or char tokenizer on text files",
                            epilog=_example("tokenizer"), formatter_class=fmt)
    tt.add_argument("files", nargs="+", help=".txt, .txt.gz, .jsonl or .parquet files")
    tt.add_argument("--kind", default="bpe", choices=["wordpiece", "bpe", "char"])
    tt.add_argument("--vocab-size", type=int, default=8000)
    tt.add_argument("--min-frequency", type=int, default=2)
    tt.add_argument("--text-field", default="text", help="field or column holding the text in .jsonl/.parquet")
    tt.add_argument("--out", required=True, help="folder for tokenizer.json")

    pr = sub.add_parser("prepare", help="tokenize text into memory-mapped train/val shards",
                        epilog=_example("prepare"), formatter_class=fmt)
    pr.add_argument("files", nargs="+", help=".txt, .txt.gz, .jsonl or .parquet files or folders")
    pr.add_argument("--tokenizer", required=True, help="tokenizer folder (twinlm, tokenizer.json, vocab.txt, ...)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--val-fraction", type=float, default=0.1)
    pr.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per core)")
    pr.add_argument("--text-field", default="text")
    pr.add_argument("--skip-bad-lines", action="store_true", help="warn and skip undecodable or malformed lines")

    pt = sub.add_parser("pretrain", help="pretrain an MLM, CLM or hybrid model",
                        epilog=_example("pretrain"), formatter_class=fmt)
    pt.add_argument("--objective", required=True, help="mlm | clm | hybrid")
    pt.add_argument("--preset", default="tiny", help="tiny | mini | small | base")
    pt.add_argument("--data", required=True, help="folder written by `twinlm prepare`")
    pt.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, loss_curve.png")
    pt.add_argument("--seq-len", type=int, default=128)
    pt.add_argument("--dropout", type=float, default=0.0)
    pt.add_argument("--norm", default="pre", choices=["pre", "post"])
    pt.add_argument("--mask-prob", type=float, default=0.15)
    pt.add_argument("--whole-word", action="store_true", help="mask whole words (WordPiece ## and BPE word starts)")
    pt.add_argument("--fixed-count", action="store_true", help="mask exactly round(p*L) tokens per row")
    pt.add_argument("--hybrid", default=None, help="phases, e.g. 'clm:4,mlm:16,clm:4' (AntLM)")
    pt.add_argument("--mlm-ratio", type=float, default=None, help="hybrid per-step mix: fraction of MLM steps")
    pt.add_argument("--eval-blocks", type=int, default=64)
    _add_train_flags(pt)

    fm = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] (masked model)",
                        epilog=_example("fill-mask"), formatter_class=fmt)
    fm.add_argument("text")
    fm.add_argument("--model", required=True, help="run, checkpoint or model folder")
    fm.add_argument("--top-k", type=int, default=5)
    fm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fm.add_argument("--joint", action="store_true", help="also fill all masks together by iterative unmasking")

    sa = sub.add_parser("sample", help="continue a prompt (causal model)", epilog=_example("sample"),
                        formatter_class=fmt)
    sa.add_argument("--model", required=True)
    sa.add_argument("--prompt", default="")
    sa.add_argument("--max-new-tokens", type=int, default=60)
    sa.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    sa.add_argument("--top-k", type=int, default=None)
    sa.add_argument("--seed", type=int, default=0)

    qs = sub.add_parser("quickstart", help="tokenizer + tiny MLM + tiny CLM on Tiny Shakespeare, side by side",
                        epilog=_example("quickstart"), formatter_class=fmt)
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--corpus", default=None, help="text file to use instead of the embedded Tiny Shakespeare")
    qs.add_argument("--max-steps", type=int, default=600, help="optimizer steps per model (the same for both)")
    qs.add_argument("--time-budget", type=float, default=120.0,
                    help="safety cap in training seconds per model; a model that hits it stops early and says so")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--no-progress", action="store_true")

    cv = sub.add_parser("convert", help="convert between Hugging Face and twinlm model folders",
                        epilog=_example("convert"), formatter_class=fmt)
    way = cv.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="DIR", help="Hugging Face folder (or hf:ORG/NAME in the local cache)")
    way.add_argument("--to-hf", metavar="DIR", help="twinlm model, checkpoint or run folder")
    cv.add_argument("--family", default=None, help="with --to-hf: bert | roberta | distilbert | gpt2 | llama "
                    "(default: the family it was imported from)")
    cv.add_argument("--out", required=True, help="folder to write")
    from .cli_tasks import add_parsers

    add_parsers(sub, fmt, _add_train_flags)
    cli_generate.add_parsers(sub, fmt)
    return parser


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_every=args.eval_every, save_every=args.save_every, keep_last=args.keep_last, log_every=args.log_every,
        time_budget=args.time_budget, seed=args.seed, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, compile=args.compile,
    )


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from .tokenizer import train_tokenizer

    if args.tokenizer_command != "train":
        raise TwinLMError("tokenizer: say what to do, e.g. `twinlm tokenizer train --help`")
    tok = train_tokenizer(args.files, kind=args.kind, vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency, text_field=args.text_field)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(f"trained a {args.kind} tokenizer with {tok.vocab_size} tokens -> {out / 'tokenizer.json'}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data.corpus import prepare_corpus
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    meta = prepare_corpus(args.files, tok, args.out, val_fraction=args.val_fraction, workers=args.workers,
                          text_field=args.text_field, on_error="skip" if args.skip_bad_lines else "raise")
    print(f"{meta.n_docs} documents -> {meta.n_train:,} train + {meta.n_val:,} validation tokens ({meta.dtype}) "
          f"in {args.out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import PretrainOptions
    from .runs import pretrain_run

    opts = PretrainOptions(objective=args.objective, seq_len=args.seq_len, mask_prob=args.mask_prob,
                           whole_word=args.whole_word, fixed_count=args.fixed_count, hybrid=args.hybrid,
                           mlm_ratio=args.mlm_ratio, eval_blocks=args.eval_blocks)
    result = pretrain_run(args.data, args.out, args.preset, opts, _train_config(args), resume=args.resume,
                          model_overrides={"dropout": args.dropout, "norm": args.norm})
    if result is not None:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"done: step {result.step}, {metrics}, {result.tokens_per_s:,.0f} tokens/s")
        print(f"checkpoint: {result.checkpoint}\nmetrics:    {result.run_dir / 'metrics.jsonl'}\n"
              f"loss curve: {result.run_dir / 'loss_curve.png'}")


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from .pipelines import fill_mask, fill_mask_joint, load_pretrained

    model, tok = load_pretrained(args.model)
    results = fill_mask(model, tok, args.text, args.top_k)
    joint = fill_mask_joint(model, tok, args.text) if args.joint else None
    if args.json:
        preds = [[p.__dict__ for p in preds] for preds in results]
        print(json.dumps({"masks": preds, "joint": joint.__dict__} if joint else preds, indent=2))
        return
    for i, preds in enumerate(results, 1):
        print(f"[MASK] #{i}:")
        for p in preds:
            print(f"  {p.score:6.3f}  {p.token!r:16}  {p.sequence}")
    if joint is not None:
        print(f"joint: {joint.sequence}")


def cmd_sample(args: argparse.Namespace) -> None:
    from .pipelines import load_pretrained, sample

    model, tok = load_pretrained(args.model)
    text = sample(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    print(args.prompt + text)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import quickstart

    quickstart(args.out, corpus=args.corpus, time_budget=args.time_budget, max_steps=args.max_steps,
               seed=args.seed, progress=not args.no_progress)


def cmd_convert(args: argparse.Namespace) -> None:
    from .loading import convert_from_hf, convert_to_hf

    if args.from_hf:
        path, info = convert_from_hf(args.from_hf, args.out)
        print(f"imported {info['family']} from {args.from_hf} -> twinlm model folder {path}")
        for note in info["notes"]:
            print(f"note: {note}")
    else:
        path, family = convert_to_hf(args.to_hf, args.out, args.family)
        print(f"exported {args.to_hf} as {family} -> Hugging Face folder {path}")


COMMANDS = {
    "tokenizer": cmd_tokenizer,
    "prepare": cmd_prepare,
    "pretrain": cmd_pretrain,
    "fill-mask": cmd_fill_mask,
    "sample": cmd_sample,
    "quickstart": cmd_quickstart,
    "convert": cmd_convert,
    "generate": cli_generate.cmd_generate,
    "score": cli_generate.cmd_score,
    "finetune": lambda args: cli_tasks.cmd_finetune(args, _train_config),
    "evaluate": lambda args: cli_tasks.cmd_evaluate(args),
    "classify": lambda args: cli_tasks.cmd_classify(args),
    "answer": lambda args: cli_tasks.cmd_answer(args),
    "tag": lambda args: cli_tasks.cmd_tag(args),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        COMMANDS[args.command](args)
    except TwinLMError as exc:
        print(f"twinlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twinlm: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk or unreadable path outside our own checks: still one line
        if os.environ.get("TWINLM_DEBUG"):
            raise
        print(f"twinlm: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
