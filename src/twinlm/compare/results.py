"""The results object: every finished part gathered into one structure (what results.json holds)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import CompareOptions, PartStore, finetune_models, parts, variants


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Results:
    """A comparison's results: per model (pretraining, intrinsic measures, samples), per task, the baseline."""

    out: Path
    options: CompareOptions
    data: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # parts not finished (a partial report says so)
    claims: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def gather(cls, opts: CompareOptions) -> Results:
        store = PartStore(opts.out)
        done = store.all()
        res = cls(Path(opts.out), opts, done.get("data", {}), done.get("budget", {}), done.get("baseline", {}))
        res.missing = [p for p in parts(opts) if p not in done]
        for v in variants(opts):
            entry: dict[str, Any] = {"objective": v.objective, "position": v.position}
            for kind in ("pretrain", "intrinsic", "generation"):
                if f"{kind}:{v.name}" in done:
                    entry[kind] = done[f"{kind}:{v.name}"]
            res.models[v.name] = entry
        for task in opts.tasks:
            per_model: dict[str, dict[str, Any]] = {}
            for model in finetune_models(opts):
                runs = [done[f"finetune:{task.task}:{model}:{s}"] for s in range(opts.seeds)
                        if f"finetune:{task.task}:{model}:{s}" in done]
                if not runs:
                    continue
                mean, std = mean_std([r["score"] for r in runs])
                per_model[model] = {"metric": runs[0]["metric"], "attention": runs[0]["attention"], "mean": mean,
                                    "std": std, "seeds": [r["score"] for r in runs], "n": len(runs),
                                    "wall_s": sum(r["wall_s"] for r in runs)}
            res.tasks[task.task] = per_model
        return res

    def attention_parts(self) -> dict[str, dict[str, Any]]:
        """The attention maps of each variant (kept in their part files, too large for results.json)."""
        store = PartStore(self.out)
        return {v.name: store.get(f"attention:{v.name}") for v in variants(self.options)
                if store.done(f"attention:{v.name}")}

    # -- accessors used by the claims and the report ----------------------------------------------------------
    def metric(self, model: str, *keys: str) -> float:
        """A nested number of a model's entry, NaN when that part has not run or does not apply."""
        value: Any = self.models.get(model, {})
        for k in keys:
            if not isinstance(value, dict) or k not in value:
                return float("nan")
            value = value[k]
        return float(value) if isinstance(value, (int, float)) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options.to_dict(), "data": self.data, "budget": self.budget,
                "baseline": {k: v for k, v in self.baseline.items() if k != "candidates"}
                | {"n_candidates": len(self.baseline.get("candidates", []))},
                "models": self.models, "tasks": self.tasks, "claims": self.claims, "missing_parts": self.missing,
                "files": self.files}
