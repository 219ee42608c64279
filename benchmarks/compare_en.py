"""The real `twinlm compare` on the shared English text: which paradigm for which job, with evidence.

    python benchmarks/compare_en.py                       # mini, ~15 min of pretraining per model, 3 seeds
    python benchmarks/compare_en.py --positions rotary    # half the models (no learned-vs-rotary axis)
    python benchmarks/compare_en.py --resume              # finish a killed run; finished parts are skipped
    python benchmarks/compare_en.py --device cuda --preset small --time-budget 1800 --out runs/compare-en-gpu \
        --results benchmarks/results/compare-en-gpu      # a larger budget on a GPU

It is the same as

    twinlm compare --corpus ../shared/data/text/wikitext-2/valid.tokens.txt \
        --corpus ../shared/data/text/wikitext-2/test.tokens.txt \
        --corpus ../shared/data/text/gutenberg/pride_and_prejudice.txt \
        --corpus ../shared/data/text/gutenberg/moby_dick.txt \
        --out runs/compare-en --vocab-size 8000 --objectives mlm,clm,hybrid --hybrid clm:4,mlm:16,clm:4 \
        --positions learned,rotary --preset mini --time-budget 900 --seeds 3 \
        --task classify=../shared/data/sentiment/sst2_train.tsv:../shared/data/sentiment/sst2_dev.tsv:4000 \
        --task ner=../shared/data/ner/conll2003/eng.train:../shared/data/ner/conll2003/eng.testa:3000 \
        --max-eval-rows 1000

with the report files (report.md, report.html, results.json, figures/) copied to benchmarks/results/compare-en/
(the models stay in runs/compare-en, which git ignores). Every 20th paragraph of the text is held out for the
intrinsic measures. --time-budget 900 gives every model the steps the slowest one does in 15 minutes on this
machine, so all see the same tokens. It takes hours on 2 CPU cores (pretraining 6 x <= 15 min, then 60 fine-tuning
runs and the measures); it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common import SHARED_DATA

from twinlm.compare import CompareOptions, run

TEXT = SHARED_DATA / "text"
CORPUS = [TEXT / "wikitext-2" / "valid.tokens.txt", TEXT / "wikitext-2" / "test.tokens.txt",
          TEXT / "gutenberg" / "pride_and_prejudice.txt", TEXT / "gutenberg" / "moby_dick.txt"]
SST2 = (SHARED_DATA / "sentiment" / "sst2_train.tsv", SHARED_DATA / "sentiment" / "sst2_dev.tsv", 4000)
CONLL = (SHARED_DATA / "ner" / "conll2003" / "eng.train", SHARED_DATA / "ner" / "conll2003" / "eng.testa", 3000)
REPORT_FILES = ("report.md", "report.html", "results.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/compare-en", help="work folder (models, parts)")
    p.add_argument("--results", default="benchmarks/results/compare-en", help="where the report files are copied")
    p.add_argument("--preset", default="mini")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, default=900.0,
                        help="seconds of pretraining of the slowest model (the steps are fixed once, in parts/)")
    budget.add_argument("--tokens", type=int, default=None, help="a fixed token budget instead (machine-independent)")
    p.add_argument("--positions", default="learned,rotary")
    p.add_argument("--objectives", default="mlm,clm,hybrid")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--finetune-epochs", type=float, default=3.0)
    p.add_argument("--finetune-lr", type=float, default=1e-3,
                   help="fine-tuning lr (at 2e-4, 1 epoch, pretrained tiny models stay below random init)")
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init fine-tuning baselines")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="finish the comparison in --out with its saved settings")
    args = p.parse_args(argv)
    missing = [str(f) for f in [*CORPUS, *SST2[:2], *CONLL[:2]] if not f.is_file()]
    if missing:
        print(f"shared data not found ({', '.join(missing)}); set TWINLM_SHARED_DATA", file=sys.stderr)
        return 2
    if args.resume:
        results = run(resume=args.out, device=args.device)
    else:
        opts = CompareOptions(
            corpus=[str(f) for f in CORPUS], out=args.out, vocab_size=8000, objectives=args.objectives,
            hybrid="clm:4,mlm:16,clm:4", positions=args.positions, preset=args.preset,
            time_budget=None if args.tokens else args.time_budget, tokens=args.tokens, seeds=args.seeds,
            finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
            random_init=not args.no_random_init, max_eval_rows=1000,
            device=args.device,
            tasks=[f"classify={SST2[0]}:{SST2[1]}:{SST2[2]}", f"ner={CONLL[0]}:{CONLL[1]}:{CONLL[2]}"])
        results = run(opts)
    dest = Path(args.results)
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        shutil.copy2(results.out / name, dest / name)
    shutil.copytree(results.out / "figures", dest / "figures", dirs_exist_ok=True)
    print(f"report copied to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
