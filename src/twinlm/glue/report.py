"""The GLUE summary: mean and spread over seeds per task, dead runs flagged and left out, the GLUE-style average;
written as results.json, a Markdown table (results.md) and a bar chart with error bars (glue.png)."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from ..checkpoint import scratch_path, write_text_atomic  # noqa: E402
from . import metrics as M  # noqa: E402
from .tasks import TASKS  # noqa: E402

FILES = {"json": "results.json", "table": "results.md", "chart": "glue.png"}


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; None with fewer than two values) of ``values``."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def summarize_task(name: str, records: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    """One task over its seeds: dead runs (one class predicted, a constant score) are kept, flagged and left out
    of the mean and spread."""
    task = TASKS[name]
    live = [r for r in records if not r["dead"] and r["score"] is not None]
    dead = {r["seed"]: r["dead"] or "a metric is undefined" for r in records if r not in live}
    stats = {k: mean_std([r["metrics"][k] for r in live]) for k in task.metrics}
    score = mean_std([r["score"] for r in live])
    if dead and live:
        which = ", ".join(str(s) for s in dead)
        note = (f"{len(dead)} of {len(records)} seeds dead (seed {which}: {next(iter(dead.values()))}); "
                "left out of the mean")
    elif dead:
        note = f"every seed dead ({next(iter(dead.values()))}): no score, left out of the GLUE average"
    else:
        note = ""
    return {"title": task.title, "metrics": list(task.metrics), "seeds": [
        {"seed": r["seed"], "metrics": r["metrics"], "score": r["score"], "dead": r["dead"],
         "predicted": r["predicted"], "train_s": r["train_s"], "run_dir": r["run_dir"]} for r in records],
        "dead_seeds": dead, "metric_stats": stats, "score": score, "note": " ".join(x for x in (note, task.note) if x),
        **{k: data[k] for k in ("train_rows", "train_rows_available", "dev_rows", "train_source", "dev_source")}}


def summarize(opts: Any, records: dict[str, list[dict[str, Any]]], data: dict[str, dict[str, Any]],
              skipped: dict[str, str]) -> dict[str, Any]:
    """What results.json holds: the recipe, every task (and seed), the skipped tasks and the GLUE-style average."""
    tasks = {name: summarize_task(name, recs, data[name]) for name, recs in records.items()}
    scores = {n: t["score"]["mean"] for n, t in tasks.items() if t["score"]["mean"] is not None}
    left_out = {n: "every seed dead" for n, t in tasks.items() if t["score"]["mean"] is None}
    return {"model": opts.model, "recipe": opts.recipe(), "seeds": list(range(opts.seeds)), "tasks": tasks,
            "skipped": skipped, "glue_score": {"score": M.glue_score(scores) if scores else None,
                                               "tasks": list(scores), "left_out": left_out},
            "stsb_predictions": "scored as the model outputs them, not clipped to 0-5",
            "scored_checkpoint": "the final one (after the last epoch); none is picked on the dev set",
            "files": dict(FILES)}


# -- the table ------------------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _pm(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    return _pct(stats["mean"]) + (f" ± {_pct(stats['std'])}" if stats["std"] is not None else "")


def table(summary: dict[str, Any]) -> str:
    """results.md: the recipe, one row per task (skipped ones too), the GLUE-style average and the notes."""
    r = summary["recipe"]
    rows_note = "all training rows" if r["max_train_rows"] is None else \
        f"at most {r['max_train_rows']:,} training rows per task (a fixed random sample)"
    lines = [f"# GLUE dev results: {Path(summary['model']).name}", "",
             f"Model `{summary['model']}`; seeds {', '.join(map(str, summary['seeds']))}; {r['epochs']:g} epochs, "
             f"lr {r['lr']:g}, batch {r['batch_size']}, at most {r['max_seq_len']} tokens, {rows_note}.", "",
             "| task | metric | train / dev rows | score | metrics (mean ± std) | per seed | note |",
             "|---|---|---|---|---|---|---|"]
    for t in summary["tasks"].values():
        metric_names = " / ".join(M.NAMES[k] for k in t["metrics"])
        per_metric = ", ".join(f"{M.NAMES[k]} {_pm(t['metric_stats'][k])}" for k in t["metrics"])
        seeds = ", ".join(f"{_pct(s['score'])}" + (" **DEAD**" if s["dead"] else "") for s in t["seeds"])
        lines.append(f"| {t['title']} | {metric_names} | {t['train_rows']:,} / {t['dev_rows']:,} | "
                     f"{_pm(t['score'])} | {per_metric} | {seeds} | {t['note']} |")
    for name, reason in summary["skipped"].items():
        lines.append(f"| {TASKS[name].title} | {' / '.join(M.NAMES[k] for k in TASKS[name].metrics)} | - | "
                     f"skipped | | | {reason} |")
    g = summary["glue_score"]
    titles = ", ".join(TASKS[n].title for n in g["tasks"])
    lines.append(f"| **GLUE-style average** | mean of task scores | | **{_pct(g['score'])}** | | | over {titles} |")
    lines += ["", "Notes:", "",
              "- Dev figures x100 (test labels are not public); ± is the sample standard deviation over seeds.",
              "- A task's score is the mean of its metrics when it has two (MRPC and QQP: F1 and accuracy; STS-B: "
              "Pearson and Spearman), and the average is the mean of the task scores, as GLUE computes its score. "
              "It covers only the tasks above, so it is not comparable to the official nine-task GLUE score.",
              "- Each run is scored after its last epoch; no checkpoint is picked on the dev set.",
              "- STS-B predictions are scored as the model outputs them (not clipped to 0-5).",
              "- A **DEAD** run predicted one class for every dev row (or one constant score): it is flagged here "
              "and left out of its task's mean and spread."]
    if g["left_out"]:
        lines.append("- Left out of the average: " + "; ".join(f"{TASKS[n].title} ({why})"
                                                                for n, why in g["left_out"].items()) + ".")
    return "\n".join(lines) + "\n"


# -- the chart ------------------------------------------------------------------------------------------------
def chart(summary: dict[str, Any], path: Path) -> Path:
    """Bars of each task's mean score with error bars (std over seeds), each seed as a dot, dead runs as red
    crosses, skipped tasks named; the GLUE-style average as a dashed line."""
    names = [*summary["tasks"], *summary["skipped"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5), dpi=120)
    lowest = 0.0
    for x, name in enumerate(names):
        t = summary["tasks"].get(name)
        if t is None or t["score"]["mean"] is None:
            why = "skipped" if t is None else "every run dead"
            ax.text(x, 3, why, rotation=90, ha="center", va="bottom", color="0.4", fontsize=8, style="italic")
        if t is None:
            continue
        mean, std = t["score"]["mean"], t["score"]["std"]
        if mean is not None:
            ax.bar(x, 100 * mean, width=0.6, color="C0", alpha=0.75, yerr=None if std is None else 100 * std,
                   capsize=5, error_kw={"elinewidth": 1.2})
            lowest = min(lowest, 100 * mean)
        for s in t["seeds"]:
            if s["score"] is None:
                continue
            value = 100 * s["score"]
            lowest = min(lowest, value)
            if s["dead"]:
                ax.plot(x, value, "x", color="C3", markersize=9, mew=2)
            else:
                ax.plot(x, value, "o", color="k", markersize=3.5)
    if any(s["dead"] for t in summary["tasks"].values() for s in t["seeds"]):
        ax.plot([], [], "x", color="C3", mew=2, label="dead run (left out of the mean)")
    ax.plot([], [], "o", color="k", markersize=3.5, label="one seed")
    g = summary["glue_score"]["score"]
    if g is not None:
        ax.axhline(100 * g, color="C1", linestyle="--", linewidth=1.2, label=f"GLUE-style average {100 * g:.1f}")
    ax.set_xticks(range(len(names)), [TASKS[n].title.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(min(lowest, 0) - 5, 115)  # room above 100 for the legend
    ax.set_yticks([v for v in range(-100, 101, 20) if v >= min(lowest, 0) - 5])
    ax.set_ylabel("dev score x100 (mean ± std over seeds)")
    ax.set_title(f"GLUE dev scores: {Path(summary['model']).name}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout()
    tmp = scratch_path(path, "tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(opts: Any, records: dict[str, list[dict[str, Any]]], data: dict[str, dict[str, Any]],
                 skipped: dict[str, str]) -> dict[str, Any]:
    """Write results.json, results.md and glue.png into opts.out; returns the summary."""
    out = Path(opts.out)
    summary = summarize(opts, records, data, skipped)
    write_text_atomic(out / FILES["json"], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / FILES["table"], table(summary))
    chart(summary, out / FILES["chart"])
    return summary
