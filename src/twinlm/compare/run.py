"""`twinlm compare` as a function: run every unfinished part in order, then write the report.

    from twinlm.compare import run
    results = run(corpus=["corpus.txt"], out="runs/compare", objectives="mlm,clm", preset="tiny", tokens=500_000)
    results.models["mlm-rotary"]["intrinsic"]["cloze"]["masked"]["top1"]

A part that finished wrote parts/<part>.json; a rerun (or ``run(resume=OUT)``) skips it, so a killed comparison
continues where it stopped, and a pretraining run killed half-way resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import data, finetuning, measuring, report
from .plan import CONFIG_FILE, CompareOptions, PartStore, check_same, load_options, parts, save_options, variants
from .results import Results


def _variant(opts: CompareOptions, name: str):
    return next(v for v in variants(opts) if v.name == name)


def part_function(opts: CompareOptions, store: PartStore, part: str) -> Callable[[], dict[str, Any]]:
    """The call that computes ``part`` (the results of the parts it needs are read from their files)."""
    kind, _, rest = part.partition(":")
    if kind == "data":
        return lambda: data.prepare(opts)
    if kind == "budget":
        return lambda: data.budget(opts)
    if kind == "baseline":
        return lambda: measuring.baseline(opts)
    if kind == "pretrain":
        return lambda: measuring.pretrain(opts, _variant(opts, rest), store.get("budget"))
    if kind == "intrinsic":
        return lambda: measuring.intrinsic(opts, store.get(f"pretrain:{rest}"), store.get("baseline"))
    if kind == "generation":
        return lambda: measuring.generation(opts, store.get(f"pretrain:{rest}"))
    if kind == "attention":
        return lambda: measuring.attention(opts, store.get(f"pretrain:{rest}"))
    if kind == "finetune":
        task_name, model, seed = rest.split(":")
        task = next(t for t in opts.tasks if t.task == task_name)
        pre = None if model.startswith("random-") else store.get(f"pretrain:{model}")
        return lambda: finetuning.finetune(opts, task, model, int(seed), pre)
    raise ValueError(f"unknown part {part!r}")


def _describe(part: str, store: PartStore) -> str:
    kind, _, rest = part.partition(":")
    if kind == "pretrain" and store.done("budget"):
        b = store.get("budget")
        return f"pretrain {rest}: {b['steps']:,} steps, {b['tokens']:,} tokens"
    if kind == "finetune":
        task, model, seed = rest.split(":")
        return f"finetune {model} on {task}, seed {seed}"
    return f"{kind} {rest}".strip()


def options_for(options: CompareOptions | None, resume: str | Path | None, **kwargs: Any) -> CompareOptions:
    """The options to run: a comparison's saved ones (resume), or the given/keyword ones checked against any saved."""
    if resume is not None:
        opts = load_options(resume)
        for key in ("progress", "device"):  # how to run, not what: may change on resume
            if key in kwargs:
                setattr(opts, key, kwargs[key])
        return opts
    opts = options if options is not None else CompareOptions(**kwargs)
    if (Path(opts.out) / CONFIG_FILE).is_file():
        check_same(load_options(opts.out), opts)
    return opts


def run(options: CompareOptions | None = None, *, resume: str | Path | None = None,
        log: Callable[[str], None] = print, **kwargs: Any) -> Results:
    """Run (or finish) a comparison and write its report; returns the Results (also in OUT/results.json).

    Give a CompareOptions, or its fields as keywords (corpus=..., out=..., objectives="mlm,clm", ...), or
    ``resume=OUT`` to finish the comparison saved there.
    """
    opts = options_for(options, resume, **kwargs)
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    save_options(opts)
    store = PartStore(opts.out)
    todo = parts(opts)
    started = time.perf_counter()
    for i, part in enumerate(todo, 1):
        tag = f"[compare {i:>{len(str(len(todo)))}}/{len(todo)}]"
        if store.done(part):
            log(f"{tag} {_describe(part, store)}: done before, skipped")
            continue
        log(f"{tag} {_describe(part, store)} ...")
        t0 = time.perf_counter()
        result = part_function(opts, store, part)()
        store.put(part, result, time.perf_counter() - t0)
        log(f"{tag} {_describe(part, store)}: finished in {time.perf_counter() - t0:.1f} s")
    results = Results.gather(opts)
    paths = report.write(results)
    log(f"compare finished in {time.perf_counter() - started:.0f} s: {paths['md']}, {paths['html']}, {paths['json']}")
    return results


def load_results(out: str | Path) -> Results:
    """The Results of a comparison folder as far as it got (nothing is run)."""
    return Results.gather(load_options(out))
