"""The GLUE tasks as GLUE defines them: files, column layout, label set and label order, metrics.

Every quirk of the official TSV files is handled here, once: CoLA has no header and four columns (source, label,
original label, sentence); MRPC's header starts with a UTF-8 byte-order mark; STS-B is a regression on 0-5;
RTE, QNLI and MNLI carry string labels; no file is CSV-quoted (a leading '"' is text). The label order of each task
is fixed here (the order GLUE and Hugging Face's datasets use), never taken from the rows.

Readers return the example type fine-tuning uses (:class:`twinlm.data.tasks.ClassExample`), labels as strings of
the task's label set (floats for STS-B).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.tasks import ClassExample
from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its splits are, how their rows are laid out, its labels and its metrics."""

    name: str  # the --tasks name: "cola"
    title: str  # as tables show it: "CoLA"
    train: str | None  # path under the data folder; None: no train split can be had here
    dev: str | None
    header: bool  # False: columns are addressed by position (CoLA)
    text: str | int  # column name, or 0-based position when there is no header
    label: str | int
    labels: tuple[str, ...] | None  # fixed label order; None: regression
    metrics: tuple[str, ...]  # GLUE's metrics for the task; the task's score is their mean
    pair: str | int | None = None
    dev_fraction: float | None = None  # carve the dev split out of the train file (QQP's train sample)
    missing: str = ""  # why the task cannot run here, shown when it is skipped
    note: str = ""

    @property
    def problem(self) -> str:
        return "regression" if self.labels is None else "single_label"

    @property
    def columns(self) -> int | None:
        """How many columns a header-less row must have."""
        return None if self.header else 4


# GLUE's order (MNLI and QNLI have no train split here: they are listed, and skipped with the reason).
TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", "CoLA", "glue/CoLA/train.tsv", "glue/CoLA/dev.tsv", header=False, text=3, label=1,
             labels=("0", "1"), metrics=("mcc",)),
    GlueTask("sst2", "SST-2", "sentiment/sst2_train.tsv", "sentiment/sst2_dev.tsv", header=True, text="sentence",
             label="label", labels=("0", "1"), metrics=("accuracy",),
             note="train: the official split less 2,000 rows held out"),
    GlueTask("mrpc", "MRPC", "glue/MRPC/train.tsv", "glue/MRPC/dev.tsv", header=True, text="#1 String",
             pair="#2 String", label="Quality", labels=("0", "1"), metrics=("f1", "accuracy")),
    GlueTask("stsb", "STS-B", "glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", header=True, text="sentence1",
             pair="sentence2", label="score", labels=None, metrics=("pearson", "spearman")),
    GlueTask("qqp", "QQP (train sample)", "glue/QQP/train_subset.tsv", None, header=True, text="question1",
             pair="question2", label="is_duplicate", labels=("0", "1"), metrics=("f1", "accuracy"),
             dev_fraction=0.1, note="dev: 10% of a sample of the official train split, not the official dev set"),
    GlueTask("mnli", "MNLI-m", "glue/MNLI/train.tsv", "glue/MNLI/dev_matched.tsv", header=True, text="sentence1",
             pair="sentence2", label="gold_label", labels=("contradiction", "entailment", "neutral"),
             metrics=("accuracy",), missing="no MNLI files here (too large for the mirrors reachable)"),
    GlueTask("qnli", "QNLI", None, "glue/QNLI/dev.tsv", header=True, text="question", pair="sentence", label="label",
             labels=("entailment", "not_entailment"), metrics=("accuracy",),
             missing="no train split here (only glue/QNLI/dev.tsv)"),
    GlueTask("rte", "RTE", "glue/RTE/train.tsv", "glue/RTE/dev.tsv", header=True, text="sentence1",
             pair="sentence2", label="label", labels=("entailment", "not_entailment"), metrics=("accuracy",)),
    GlueTask("wnli", "WNLI", "glue/WNLI/train.tsv", "glue/WNLI/dev.tsv", header=True, text="sentence1",
             pair="sentence2", label="label", labels=("0", "1"), metrics=("accuracy",)),
]}
DEFAULT_TASKS = tuple(TASKS)


def parse_tasks(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Task names from '--tasks cola,rte' (any case, GLUE spellings like 'sts-b' too), in the order given."""
    if spec is None:
        return list(DEFAULT_TASKS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in items:
        name = item.strip().lower().replace("-", "")
        if not name:
            continue
        if name not in TASKS:
            raise ConfigError(f"--tasks: unknown task {item.strip()!r}; choose from {','.join(TASKS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("--tasks is empty; name at least one of " + ",".join(TASKS))
    return names


def skip_reason(task: GlueTask, data_dir: str | Path) -> str | None:
    """Why ``task`` cannot run from ``data_dir`` (a missing split), or None when it can."""
    for split in ("train", "dev"):
        rel = getattr(task, split)
        if rel is None and (split == "train" or task.dev_fraction is None):
            return task.missing or f"no {split} split"
        if rel is not None and not (Path(data_dir) / rel).is_file():
            return task.missing or f"no {split} file {Path(data_dir) / rel}"
    return None


def _table(path: Path, task: GlueTask) -> tuple[list[list[str]], list[str] | None]:
    """(rows with their 1-based line number appended, header or None) of a GLUE TSV, exactly as written."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # utf-8-sig drops MRPC's byte-order mark, so its first column is 'Quality', not '\ufeffQuality'.
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = [[*row, str(n)] for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1)
                    if row]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}; re-encode the file as UTF-8") from None
    header = None
    if task.header:
        if not rows:
            raise DataError(f"{path}: empty file; expected a header line")
        header = rows.pop(0)[:-1]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, header


def _position(column: str | int, header: list[str] | None, path: Path, task: GlueTask) -> int:
    if header is None:
        return int(column)
    if column not in header:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(header)}); is this {task.title}'s "
                        "official GLUE file?")
    return header.index(str(column))


def read_file(task: GlueTask, path: str | Path) -> list[ClassExample]:
    """The labelled examples of one of ``task``'s files; a row with a bad label or layout is a DataError."""
    path = Path(path)
    rows, header = _table(path, task)
    width = len(header) if header is not None else task.columns
    text = _position(task.text, header, path, task)
    pair = None if task.pair is None else _position(task.pair, header, path, task)
    label = _position(task.label, header, path, task)
    out = []
    for row in rows:
        line, fields = int(row[-1]), row[:-1]
        if len(fields) != width:
            raise DataError(f"{path}:{line}: {len(fields)} tab-separated columns, expected {width} "
                            f"({task.title}'s layout)")
        value = fields[label].strip()
        if task.labels is None:
            try:
                score: float | str = float(value)
            except ValueError:
                raise DataError(f"{path}:{line}: score {value!r} is not a number") from None
        elif value not in task.labels:
            raise DataError(f"{path}:{line}: label {value!r} is not one of {task.title}'s labels "
                            f"({', '.join(task.labels)})")
        else:
            score = value
        first, second = fields[text].strip(), fields[pair].strip() if pair is not None else None
        if not first or (pair is not None and not second):
            raise DataError(f"{path}:{line}: empty text")
        out.append(ClassExample(first, second, score, line))
    return out


def _hash_key(example: ClassExample) -> str:
    return hashlib.sha256(f"{example.text}\t{example.pair}".encode()).hexdigest()


def read_splits(task: GlueTask, data_dir: str | Path) -> tuple[list[ClassExample], list[ClassExample], str, str]:
    """(train, dev, train source, dev source) of a task. QQP's dev is the 10% of its train sample whose pair
    hashes lowest: a fixed split, whatever the file's row order."""
    data_dir = Path(data_dir)
    reason = skip_reason(task, data_dir)
    if reason:
        raise DataError(f"{task.title}: {reason}")
    train_path = data_dir / str(task.train)
    train = read_file(task, train_path)
    if task.dev_fraction is None:
        dev_path = data_dir / str(task.dev)
        return train, read_file(task, dev_path), str(train_path), str(dev_path)
    order = sorted(range(len(train)), key=lambda i: _hash_key(train[i]))
    held = set(order[:round(len(train) * task.dev_fraction)])
    dev = [ex for i, ex in enumerate(train) if i in held]
    rest = [ex for i, ex in enumerate(train) if i not in held]
    share = f"{task.dev_fraction:.0%}"
    return rest, dev, f"{train_path} (the other {1 - task.dev_fraction:.0%})", f"{train_path} ({share}, by hash)"
