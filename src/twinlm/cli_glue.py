"""`twinlm glue`: fine-tune one model on the GLUE tasks over several seeds; one table, one chart, resumable."""

from __future__ import annotations

import argparse

from .cli_registry import Command

# The names of twinlm.glue.tasks.TASKS, written out so that building the parser imports nothing heavy (a test checks
# they agree).
TASK_NAMES = "cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli"
HELP = "fine-tune a model on the GLUE tasks over seeds; GLUE's metrics, mean ± std, a table and a chart"
EXAMPLES = (
    "twinlm glue --model ../shared/data/checkpoints/all-MiniLM-L6-v2 --out runs/glue",
    "twinlm glue --model runs/mlm --out runs/glue-quick --tasks rte,stsb --seeds 1 --max-train-rows 500  # quick look",
    "twinlm glue --model runs/mlm --out runs/glue-quick --tasks rte,stsb --seeds 3 --max-train-rows 500  "
    "# same folder again: finished task/seed pairs are skipped",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `twinlm glue`."""
    p.add_argument("--model", required=True, metavar="PATH",
                   help="model to fine-tune: a twinlm model/run folder or a Hugging Face folder")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: results.json, results.md, glue.png, runs/<task>/seed<N>/, data/")
    p.add_argument("--tasks", default=TASK_NAMES, metavar="LIST",
                   help=f"comma-separated (default: all of {TASK_NAMES}; those whose files are absent are listed as "
                   "skipped, with the reason)")
    p.add_argument("--data-dir", default="../shared/data", metavar="DIR",
                   help="folder holding glue/ and sentiment/ (default ../shared/data)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="fine-tuning seeds 0..N-1 per task (default 3)")
    g = p.add_argument_group("recipe (the same for every task)")
    g.add_argument("--epochs", type=float, default=3.0, help="default 3")
    g.add_argument("--lr", type=float, default=5e-5, help="default 5e-5")
    g.add_argument("--batch-size", type=int, default=32, help="default 32")
    g.add_argument("--max-train-rows", type=int, default=None, metavar="N",
                   help="cap each task's training rows (a fixed random sample, the same for every seed)")
    g.add_argument("--max-seq-len", type=int, default=128, help="tokens per example, pairs included (default 128)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="the cosine schedule ends at lr x this (default 0.1; 0: decay to zero)")
    g.add_argument("--layer-lr-decay", type=float, default=1.0,
                   help="block i of n learns at lr x decay^(n-i), the embeddings lowest (default 1: all at --lr)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--keep-models", action="store_true",
                   help="keep each run's final checkpoint (by default only its metrics and predictions are kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_command(args: argparse.Namespace) -> None:
    """Run (or continue) the GLUE runs and print the table's path."""
    from .glue import GlueOptions, run_glue

    opts = GlueOptions(model=args.model, out=args.out, tasks=args.tasks, data_dir=args.data_dir, seeds=args.seeds,
                       epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       max_train_rows=args.max_train_rows, max_seq_len=args.max_seq_len,
                       warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
                       layer_lr_decay=args.layer_lr_decay, device=args.device,
                       progress=not args.no_progress, keep_models=args.keep_models)
    run_glue(opts)


COMMANDS = [Command("glue", HELP, examples=EXAMPLES, add_arguments=add_arguments, run=run_command)]
