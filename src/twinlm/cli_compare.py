"""`twinlm compare`: MLM, CLM and hybrid on one corpus, one tokenizer, one backbone and one token budget, measured
fairly (bits per byte, pseudo-perplexity, cloze and next-word accuracy, fine-tuning over seeds, samples) and reported
in report.md, report.html and results.json.

The command registry wires it in from ``add_arguments`` and ``run_command`` (or ``COMMANDS``).
"""

from __future__ import annotations

import argparse

from .config import PRESETS
from .errors import ConfigError

HELP = "train MLM, CLM and hybrid on one corpus and budget; report which paradigm wins which job"
EXAMPLE = ("twinlm compare --corpus corpus.txt --out runs/compare --preset tiny --tokens 2000000 --seeds 3 "
           "--task classify=train.tsv:dev.tsv")
RESUME_EXAMPLE = "twinlm compare --resume runs/compare   # finish a killed comparison; finished parts are skipped"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `twinlm compare`."""
    p.add_argument("--corpus", nargs="+", action="extend", metavar="FILE",
                   help="training text: .txt (paragraphs), .txt.gz, .jsonl or .parquet files")
    p.add_argument("--out", metavar="DIR",
                   help="comparison folder: runs, parts/, figures/, report.md, report.html, results.json")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer (it needs a [MASK] token)")
    tok.add_argument("--vocab-size", type=int, metavar="N",
                     help="train a byte-level BPE of this size on the corpus (default 8000)")
    p.add_argument("--objectives", metavar="LIST", help="comma-separated, from mlm, clm, hybrid (default: all three)")
    p.add_argument("--hybrid", metavar="PHASES",
                   help="the hybrid's schedule, as `twinlm pretrain --hybrid` (default clm:4,mlm:16,clm:4, AntLM)")
    p.add_argument("--positions", metavar="LIST", help="position encodings compared, comma-separated: learned, rotary "
                   "(default: both; a learned table must be learnt from scratch, rotary is built in)")
    p.add_argument("--preset", choices=list(PRESETS), help="backbone size (default tiny)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=int, metavar="N", help="training tokens per model, the same for all")
    budget.add_argument("--time-budget", type=float, metavar="S",
                        help="seconds of pretraining for the slowest model; fixes one token count for all")
    p.add_argument("--seeds", type=int, metavar="N", help="fine-tuning seeds per model and task (default 3)")
    p.add_argument("--task", action="append", metavar="TASK=TRAIN:DEV[:ROWS]",
                   help="fine-tuning task: classify (TSV/CSV/JSONL), ner (CoNLL) or qa (SQuAD JSON); ROWS caps the "
                   "training rows; repeat for several tasks")
    p.add_argument("--heldout", metavar="FILE", help="held-out text for the intrinsic measures (default: every 20th "
                   "document of the corpus is held out)")
    p.add_argument("--resume", metavar="DIR", help="finish the comparison in DIR with its saved settings")
    g = p.add_argument_group("recipe (the same for every model)")
    g.add_argument("--seq-len", type=int, help="pretraining block length (default 128)")
    g.add_argument("--batch-size", type=int, help="pretraining rows per step (default 16)")
    g.add_argument("--lr", type=float, help="pretraining learning rate (default by preset: tiny 3e-3, mini 1e-3)")
    g.add_argument("--cloze-items", type=int, dest="cloze_n", metavar="N", help="held-out cloze items (default 200)")
    g.add_argument("--heldout-chars", type=int, help="held-out characters scored for (pseudo-)perplexity "
                   "(default 10000)")
    g.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                   help="generation prompt (repeat; default: the first words of held-out lines)")
    g.add_argument("--finetune-epochs", type=float, help="default 3")
    g.add_argument("--finetune-lr", type=float, help="default 2e-4")
    g.add_argument("--max-eval-rows", type=int, help="cap on each task's evaluation rows")
    g.add_argument("--no-random-init", dest="random_init", action="store_false", default=None,
                   help="skip fine-tuning the backbone from random weights")
    g.add_argument("--device", help="auto | cpu | cuda (default auto)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")


FIELDS = ("corpus", "out", "tokenizer", "vocab_size", "objectives", "hybrid", "positions", "preset", "tokens",
          "time_budget", "seeds", "heldout", "seq_len", "batch_size", "lr", "cloze_n", "heldout_chars", "prompts",
          "finetune_epochs", "finetune_lr", "max_eval_rows", "random_init", "device", "progress")


def options_from_args(args: argparse.Namespace):
    """CompareOptions from the parsed flags; flags not given keep the dataclass defaults."""
    from .compare import CompareOptions

    if not args.corpus or not args.out:
        raise ConfigError("twinlm compare needs --corpus FILE... and --out DIR (or --resume DIR)")
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    return CompareOptions(**given, tasks=args.task or [])


def run_command(args: argparse.Namespace) -> None:
    """Run or finish the comparison and print where the report is and which claims held."""
    from .compare import run

    if args.resume:
        ignored = [f"--{n.replace('_', '-')}" for n in FIELDS
                   if n not in ("device", "progress") and getattr(args, n, None) is not None]
        if ignored:
            print(f"note: --resume uses the settings saved in {args.resume}; ignoring {', '.join(ignored)}")
        how = {k: getattr(args, k) for k in ("device", "progress") if getattr(args, k) is not None}
        results = run(resume=args.resume, **how)
    else:
        results = run(options_from_args(args))
    for claim in results.claims:
        print(f"  {claim['verdict']:>14}: {claim['text']}")


def _command():
    from .cli_registry import Command

    return Command("compare", HELP, examples=(EXAMPLE, RESUME_EXAMPLE), add_arguments=add_arguments, run=run_command)


COMMANDS = [_command()]
