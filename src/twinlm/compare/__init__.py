"""`twinlm compare`: MLM, CLM and hybrid trained on one corpus and one token budget, measured fairly, reported.

    from twinlm.compare import run
    results = run(corpus=["corpus.txt"], out="runs/compare", preset="tiny", tokens=1_000_000, seeds=3,
                  tasks=["classify=train.tsv:dev.tsv"])

Modules, one job each: plan (options, variants, parts, saved state), data (tokenizer, held-out split, shards,
budget), measuring (pretrain and measure one variant), finetuning (one fine-tuning run), results (the parts gathered),
claims (the README's claims checked), pictures (masks, attention maps, curves, bars), report (md, html, json), run.
"""

from .plan import CompareOptions, TaskSpec
from .results import Results
from .run import load_results, run

__all__ = ["CompareOptions", "Results", "TaskSpec", "load_results", "run"]
