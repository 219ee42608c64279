"""Loss-curve plots from metrics.jsonl files (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, str | Path], out: str | Path, title: str = "loss") -> Path:
    """One figure: training loss (lines) and validation loss (markers) of each named run's metrics.jsonl."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (name, path) in enumerate(runs.items()):
        rows = read_metrics(path)
        color = f"C{i}"
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.8, label=f"{name} train")
        for key in sorted({k for r in rows for k in r if k.startswith("val") and k.endswith("_loss")}):
            val = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*val, strict=True), "o--", color=color, label=f"{name} {key}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / predicted token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
