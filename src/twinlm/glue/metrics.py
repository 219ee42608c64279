"""GLUE's metrics (Matthews correlation, F1 with accuracy, Pearson and Spearman), dead-run detection, the score.

Written with numpy (scikit-learn and scipy are not runtime dependencies); the tests check each one against
scikit-learn and scipy on random data. Values are fractions (MCC and correlations in [-1, 1]); tables show x100,
as GLUE does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

NAMES = {"mcc": "Matthews corr.", "accuracy": "accuracy", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman"}
POSITIVE = "1"  # MRPC and QQP: F1 of the positive class (paraphrase / duplicate), as GLUE scores it


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of exact matches."""
    p, r = np.asarray(predictions), np.asarray(references)
    return float((p == r).mean()) if len(r) else 0.0


def binary_f1(predictions: Sequence, references: Sequence, positive: str = POSITIVE) -> float:
    """F1 of the ``positive`` label (0 when it is neither predicted nor present)."""
    p, r = np.asarray(predictions) == positive, np.asarray(references) == positive
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corrcoef(predictions: Sequence, references: Sequence) -> float:
    """Matthews correlation (Gorodkin's multi-class form, which is the usual MCC for two classes); 0 when
    either side is constant, as scikit-learn returns."""
    labels = sorted(set(references) | set(predictions))
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for p, r in zip(predictions, references, strict=True):
        confusion[index[r], index[p]] += 1
    true_k, pred_k = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * total - true_k @ pred_k
    cov_ypyp = total**2 - pred_k @ pred_k
    cov_ytyt = total**2 - true_k @ true_k
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant (it is undefined there)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (what Spearman's correlation needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v), dtype=np.float64)
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2  # mean of ranks s+1 .. e
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def task_metrics(metrics: Sequence[str], predictions: Sequence, references: Sequence) -> dict[str, float]:
    """The named GLUE metrics of one run's dev predictions."""
    functions = {"mcc": matthews_corrcoef, "accuracy": accuracy, "f1": binary_f1, "pearson": pearson,
                 "spearman": spearman}
    return {name: functions[name](predictions, references) for name in metrics}


def task_score(values: dict[str, float]) -> float:
    """A task's single score: the mean of its metrics (MRPC's F1 and accuracy, STS-B's Pearson and Spearman), as
    GLUE averages them before averaging tasks."""
    return float(np.mean(list(values.values())))


def glue_score(scores: dict[str, float]) -> float:
    """The GLUE-style average: the unweighted mean of task scores (each already the mean of its metrics)."""
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def dead_run(predictions: Sequence, regression: bool) -> str | None:
    """Why a run is dead (it predicts one class, or a constant score), or None when it is alive."""
    if regression:
        values = np.asarray(predictions, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            return "predicted a non-finite score"
        if len(values) and float(values.max() - values.min()) < 1e-6:
            return f"predicted the same score ({values[0]:.3f}) for every dev row"
        return None
    counts = Counter(predictions)
    if len(counts) == 1:
        return f"predicted one class ({next(iter(counts))!r}) for every dev row"
    return None
