"""The `twinlm` command: main() (a user mistake is one `twinlm: error:` line, exit 2), pretraining commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_registry import Command, build_parser, commands
from .errors import TwinLMError

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["COMMANDS", "add_train_flags", "build_parser", "main", "train_config"]


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The optimisation flags shared by `pretrain` and `finetune`."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=32, help="rows per micro-batch per process")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="the cosine schedule ends at lr * this (0 decays to zero, like Hugging Face's linear schedule)")
    g.add_argument("--layer-lr-decay", type=float, default=1.0,
                   help="layer-wise lr decay: block i of n learns at lr * this**(n-i), the embeddings lowest, the task "
                        "head at lr (fine-tuning: 0.8-0.95; 1 turns it off)")
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
    g.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"],
                   help="under torchrun: ddp keeps a whole model per process; fsdp shards weights, gradients and "
                        "optimizer state across processes (FSDP2) and writes sharded checkpoints that resume on "
                        "any number of processes (`twinlm convert --from-sharded` makes a model folder of one)")
    g.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each Transformer block's activations in the backward pass: less memory, "
                        "about a third more compute")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


_EXCLUDE_HELP = ("files of texts to keep out, such as dev/test splits (read with --text-field): a document equal "
                 "to one of them (whitespace collapsed) is dropped and counted")


def _tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tt = actions.add_parser("train", help="train WordPiece, byte-level BPE or char tokenizer on text files",
                            description="train WordPiece, byte-level BPE or char tokenizer on text files",
                            epilog=p.epilog, formatter_class=p.formatter_class)  # `tokenizer`'s example is this one's
    tt.add_argument("files", nargs="+", help=".txt, .txt.gz, .jsonl, .parquet, or .tsv/.csv (header row) files")
    tt.add_argument("--kind", default="bpe", choices=["wordpiece", "bpe", "char"])
    tt.add_argument("--vocab-size", type=int, default=8000)
    tt.add_argument("--min-frequency", type=int, default=2)
    tt.add_argument("--text-field", default="text",
                    help="field or column holding the text in .jsonl/.parquet/.tsv/.csv")
    tt.add_argument("--out", required=True, help="folder for tokenizer.json")
    tt.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                    help=_EXCLUDE_HELP)


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help=".txt, .txt.gz, .jsonl, .parquet, .tsv/.csv (header row) files or folders")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (twinlm, tokenizer.json, vocab.txt, ...)")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per core)")
    p.add_argument("--text-field", default="text", help="field or column holding the text in .jsonl/.parquet/.tsv/.csv")
    p.add_argument("--skip-bad-lines", action="store_true", help="warn and skip undecodable or malformed lines")
    p.add_argument("--segmenter", default=None, choices=["jieba"],
                   help="also store word-start flags from this word segmenter, for Chinese whole-word masking "
                        "(pretrain --whole-word); needs pip install 'twinlm[zh]'")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help=_EXCLUDE_HELP)


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", required=True, help="mlm | clm | hybrid")
    p.add_argument("--preset", default="tiny", help="tiny | mini | small | base")
    p.add_argument("--data", required=True, help="folder written by `twinlm prepare`")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, loss_curve.png")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--init", default=None,
                   help="start from this model's weights and architecture (model, run or checkpoint folder; its "
                        "tokenizer must be the corpus's) with a fresh optimizer and schedule: continued pretraining")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--norm", default=None, choices=["pre", "post"], help="default pre")
    p.add_argument("--position", default=None, choices=["learned", "rotary"],
                   help="learned position table (BERT/GPT-2, the default) or rotary (RoPE): rotary learns faster on "
                        "small budgets")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--whole-word", action="store_true",
                   help="mask whole words: the word-start flags of prepare --segmenter when the data has them, "
                        "else WordPiece ## and BPE word starts")
    p.add_argument("--fixed-count", action="store_true", help="mask exactly round(p*L) tokens per row")
    p.add_argument("--hybrid", default=None, help="phases, e.g. 'clm:4,mlm:16,clm:4' (AntLM)")
    p.add_argument("--mlm-ratio", type=float, default=None, help="hybrid per-step mix: fraction of MLM steps")
    p.add_argument("--eval-blocks", type=int, default=64)
    add_train_flags(p)


def _fill_mask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text")
    p.add_argument("--model", required=True, help="run, checkpoint or model folder")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--joint", action="store_true", help="also fill all masks together by iterative unmasking")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--corpus", default=None, help="text file to use instead of the embedded Tiny Shakespeare")
    p.add_argument("--max-steps", type=int, default=600, help="optimizer steps per model (the same for both)")
    p.add_argument("--time-budget", type=float, default=120.0,
                   help="safety cap in training seconds per model; a model that hits it stops early and says so")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="DIR", help="Hugging Face folder (or hf:ORG/NAME in the local cache)")
    way.add_argument("--to-hf", metavar="DIR", help="twinlm model, checkpoint or run folder")
    way.add_argument("--from-sharded", metavar="DIR",
                     help="sharded checkpoint folder (--strategy fsdp) -> ordinary checkpoint folder (model folder)")
    p.add_argument("--family", default=None, help="with --to-hf: bert | roberta | distilbert | gpt2 | llama "
                   "(default: the family it was imported from)")
    p.add_argument("--out", required=True, help="folder to write")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the flags added by add_train_flags."""
    from .train import TrainConfig

    return TrainConfig(
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio, layer_lr_decay=args.layer_lr_decay,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_every=args.eval_every, save_every=args.save_every, keep_last=args.keep_last, log_every=args.log_every,
        time_budget=args.time_budget, seed=args.seed, device=args.device, dtype=args.dtype,
        progress=not args.no_progress, compile=args.compile, strategy=args.strategy,
        activation_checkpointing=args.activation_checkpointing,
    )


def _left_out(n: int, files: list[str]) -> str:
    """The line --exclude prints: how many corpus documents were dropped and why."""
    return f"{n:,} {'document' if n == 1 else 'documents'} left out: their text is in {', '.join(files)}"


def cmd_tokenizer(args: argparse.Namespace) -> None:
    """Run `twinlm tokenizer train`."""
    from .tokenizer import train_tokenizer

    if args.tokenizer_command != "train":
        raise TwinLMError("tokenizer: say what to do, e.g. `twinlm tokenizer train --help`")
    dropped = [0]
    tok = train_tokenizer(args.files, kind=args.kind, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          text_field=args.text_field, exclude=args.exclude, dropped=dropped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(f"trained a {args.kind} tokenizer with {tok.vocab_size} tokens -> {out / 'tokenizer.json'}")
    if args.exclude:
        print(_left_out(dropped[0], args.exclude))


def cmd_prepare(args: argparse.Namespace) -> None:
    """Run `twinlm prepare`."""
    from .data.corpus import prepare_corpus
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    meta = prepare_corpus(args.files, tok, args.out, val_fraction=args.val_fraction, workers=args.workers,
                          text_field=args.text_field, on_error="skip" if args.skip_bad_lines else "raise",
                          segmenter=args.segmenter, exclude=args.exclude)
    if args.exclude:
        print(_left_out(meta.n_excluded, args.exclude))
    print(f"{meta.n_docs} documents -> {meta.n_train:,} train + {meta.n_val:,} validation tokens ({meta.dtype}) "
          f"in {args.out}")
    if meta.n_unk:
        share = 100 * meta.n_unk / max(meta.n_train + meta.n_val, 1)
        unk = getattr(tok, "special", {}).get("unk") or "[UNK]"
        print(f"{meta.n_unk:,} tokens ({share:.3g}%) became {unk}")
    if meta.segmenter:
        print(f"word-start flags from {meta.segmenter} stored beside the shards (pretrain --whole-word uses them)")


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Run `twinlm pretrain`."""
    from .pretrain import PretrainOptions
    from .runs import pretrain_run

    opts = PretrainOptions(objective=args.objective, seq_len=args.seq_len, mask_prob=args.mask_prob,
                           whole_word=args.whole_word, fixed_count=args.fixed_count, hybrid=args.hybrid,
                           mlm_ratio=args.mlm_ratio, eval_blocks=args.eval_blocks)
    overrides = {"dropout": args.dropout, "norm": args.norm, "position": args.position}
    result = pretrain_run(args.data, args.out, args.preset, opts, train_config(args), resume=args.resume,
                          model_overrides={k: v for k, v in overrides.items() if v is not None}, init=args.init)
    if result is not None:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"done: step {result.step}, {metrics}, {result.tokens_per_s:,.0f} tokens/s")
        print(f"checkpoint: {result.checkpoint}\nmetrics:    {result.run_dir / 'metrics.jsonl'}\n"
              f"loss curve: {result.run_dir / 'loss_curve.png'}")


def cmd_fill_mask(args: argparse.Namespace) -> None:
    """Run `twinlm fill-mask`."""
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
    """Run `twinlm sample`."""
    from .pipelines import load_pretrained, sample

    model, tok = load_pretrained(args.model)
    text = sample(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    print(args.prompt + text)


def cmd_quickstart(args: argparse.Namespace) -> None:
    """Run `twinlm quickstart`."""
    from .quickstart import quickstart

    quickstart(args.out, corpus=args.corpus, time_budget=args.time_budget, max_steps=args.max_steps,
               seed=args.seed, progress=not args.no_progress)


def cmd_convert(args: argparse.Namespace) -> None:
    """Run `twinlm convert`."""
    from .loading import convert_from_hf, convert_to_hf

    if args.from_sharded:
        from .distributed import consolidate

        path = consolidate(args.from_sharded, args.out)
        print(f"consolidated sharded checkpoint {args.from_sharded} -> checkpoint folder {path}")
    elif args.from_hf:
        path, info = convert_from_hf(args.from_hf, args.out)
        print(f"imported {info['family']} from {args.from_hf} -> twinlm model folder {path}")
        for note in info["notes"]:
            print(f"note: {note}")
    else:
        path, family = convert_to_hf(args.to_hf, args.out, args.family)
        print(f"exported {args.to_hf} as {family} -> Hugging Face folder {path}")


COMMANDS = [
    Command("quickstart", "tokenizer + tiny MLM + tiny CLM on Tiny Shakespeare, side by side",
            examples=("twinlm quickstart --out runs/quickstart",
                      "twinlm quickstart --corpus my_corpus.txt --max-steps 300 --out runs/mine"),
            add_arguments=_quickstart_arguments, run=cmd_quickstart),
    Command("tokenizer", "train a tokenizer (WordPiece, byte-level BPE or char)",
            examples=("twinlm tokenizer train --kind bpe --vocab-size 8000 --out tok/ corpus.txt",),
            add_arguments=_tokenizer_arguments, run=cmd_tokenizer),
    Command("prepare", "tokenize text into memory-mapped train/val shards",
            examples=("twinlm prepare corpus.txt more.jsonl --tokenizer tok/ --out data/ --val-fraction 0.05",),
            add_arguments=_prepare_arguments, run=cmd_prepare),
    Command("pretrain", "pretrain an MLM, CLM or hybrid model",
            examples=("twinlm pretrain --objective mlm --preset tiny --data data/ --out runs/mlm --max-steps 2000",
                      "twinlm pretrain --objective hybrid --hybrid clm:4,mlm:16,clm:4 --data data/ --out runs/hybrid",
                      "twinlm pretrain --objective clm --data data/ --out runs/clm --resume auto   # continue a run"),
            add_arguments=_pretrain_arguments, run=cmd_pretrain),
    Command("fill-mask", "top-k predictions for each [MASK] (masked model)",
            examples=('twinlm fill-mask --model runs/mlm "To be or not to [MASK]."',
                      'twinlm fill-mask --model runs/mlm --joint "The [MASK] of France is [MASK]."'),
            add_arguments=_fill_mask_arguments, run=cmd_fill_mask),
    Command("sample", "continue a prompt (causal model)",
            examples=('twinlm sample --model runs/clm --prompt "ROMEO:" --max-new-tokens 60 --temperature 0.8',),
            add_arguments=_sample_arguments, run=cmd_sample),
    Command("convert", "convert between Hugging Face and twinlm model folders",
            examples=("twinlm convert --from-hf ../shared/data/checkpoints/all-MiniLM-L6-v2 --out models/minilm",
                      "twinlm convert --to-hf models/minilm --out hf/minilm   # back, as the family it came from",
                      "twinlm convert --from-sharded runs/mlm/checkpoint-0002000 --out models/mlm   # FSDP run"),
            add_arguments=_convert_arguments, run=cmd_convert),
]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        commands()[args.command].run(args)
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
