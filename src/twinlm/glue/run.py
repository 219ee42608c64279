"""`twinlm glue` as a function: every task x seed pair fine-tuned through `finetune_run`, scored with GLUE's metrics.

    from twinlm.glue import GlueOptions, run_glue
    summary = run_glue(GlueOptions(model="runs/mlm", out="runs/glue", tasks=["rte", "stsb"], seeds=2))
    summary["tasks"]["rte"]["score"]["mean"]

Layout of OUT:

    glue.json                       the recipe (a rerun with another recipe in the same folder is refused)
    data/<task>/{train,dev}.tsv     each task's rows in one layout (sentence, pair, label, source_line)
    runs/<task>/seed<N>/            the fine-tuning run: metrics.jsonl, predictions.tsv, result.json
    results.json, results.md, glue.png

A pair is done when its result.json exists (written atomically, last). A rerun skips done pairs, and a pair killed
mid-training resumes from its newest checkpoint, so a killed `glue` run continues where it stopped.
The fine-tuned weights are deleted once a pair is scored (``keep_models`` keeps each final checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import write_text_atomic
from ..data import tasks as T
from ..errors import ConfigError, DataError, TrainingDiverged
from ..finetune import FinetuneOptions, build_data, finetune_run, score_task, task_info
from ..loading import load, resolve
from ..runfolder import list_checkpoints
from ..train import TrainConfig, resolve_device
from . import metrics as M
from .report import write_report
from .tasks import DEFAULT_TASKS, TASKS, GlueTask, parse_tasks, read_splits, skip_reason

SETTINGS_FILE = "glue.json"
SAMPLE_SEED = 0  # --max-train-rows takes the same random sample for every seed
# What changes the numbers: a rerun in the same folder must match these (tasks and seeds may grow or shrink).
RECIPE = ("model", "epochs", "lr", "batch_size", "max_train_rows", "max_seq_len", "warmup_steps", "dropout",
          "min_lr_ratio", "layer_lr_decay")


@dataclass
class GlueOptions:
    """One GLUE run: the model, the tasks, the seeds and the fine-tuning recipe (the same for every task)."""

    model: str
    out: str
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    data_dir: str = "../shared/data"
    seeds: int = 3
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    max_train_rows: int | None = None
    max_seq_len: int = 128
    warmup_steps: int = 0  # as `twinlm finetune`
    dropout: float = 0.1  # as `twinlm finetune` (BERT's 0.1)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio, as `twinlm finetune`
    layer_lr_decay: float = 1.0  # 1: every layer at lr; below 1, lower blocks learn more slowly (TrainConfig)
    save_every: int = 500  # steps between checkpoints, so a killed long pair resumes mid-way
    device: str = "auto"
    progress: bool = True
    keep_models: bool = False

    def __post_init__(self) -> None:
        self.model, self.out, self.data_dir = str(self.model), str(self.out), str(self.data_dir)
        self.tasks = parse_tasks(self.tasks)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        resolve(self.model)  # a missing model fails now, not after the data is written
        if not Path(self.data_dir).is_dir():
            raise ConfigError(f"--data-dir {self.data_dir}: no such folder; point it at the data folder that holds "
                              "glue/ and sentiment/ (../shared/data)")
        for name, low in (("seeds", 1), ("batch_size", 1), ("max_seq_len", 8)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if self.max_train_rows is not None and self.max_train_rows < 2:
            raise ConfigError(f"--max-train-rows must be at least 2, got {self.max_train_rows}")
        if not self.epochs > 0 or not self.lr > 0:
            raise ConfigError(f"--epochs and --lr must be positive, got {self.epochs} and {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be at least 0, got {self.warmup_steps}")
        self.train_config(seed=0).validate()  # a bad --min-lr-ratio or --layer-lr-decay fails now, not per task

    def train_config(self, seed: int) -> TrainConfig:
        """The trainer settings of one task x seed pair."""
        return TrainConfig(batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           min_lr_ratio=self.min_lr_ratio, layer_lr_decay=self.layer_lr_decay, eval_every=None,
                           save_every=self.save_every, keep_last=1, log_every=10, seed=seed, device=self.device,
                           progress=self.progress)

    def recipe(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECIPE}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_recipe(opts: GlueOptions) -> None:
    """Save the recipe in a new OUT; refuse an OUT whose saved recipe differs (results would mix)."""
    path = Path(opts.out) / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())["recipe"]
        # A folder written before a recipe key existed ran with that key's default.
        defaults = {f.name: f.default for f in dataclasses.fields(GlueOptions)}
        for key, value in opts.recipe().items():
            was = saved.get(key, defaults.get(key))
            if was != value:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"{opts.out} holds a glue run with other settings ({flag}: {was!r} "
                                  f"there, {value!r} now); rerun with the same settings to continue it, or choose "
                                  "another --out")
        return
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"recipe": opts.recipe()}, indent=2) + "\n")


# -- data -----------------------------------------------------------------------------------------------------
def sample_rows(examples: list[T.ClassExample], n: int | None) -> list[T.ClassExample]:
    """``n`` rows drawn at random with a fixed seed, kept in file order (the first n rows of a file sorted by
    source or label would not be a fair sample); all rows when n is None or not smaller."""
    if n is None or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(examples), size=n, replace=False))
    return [examples[int(i)] for i in keep]


def check_label_order(task: GlueTask, train: list[T.ClassExample], source: str) -> None:
    """The label indices come from the task's fixed order (passed to fine-tuning as FinetuneOptions.labels); a
    training sample lacking one of the labels is still refused: the model would never see that class."""
    if task.labels is None:
        return
    counts = Counter(ex.label for ex in train)
    absent = [label for label in task.labels if not counts[label]]
    if absent:
        raise ConfigError(f"{task.title}: the {len(train)} training rows taken from {source} hold no example of "
                          f"label {absent[0]!r}; raise --max-train-rows")


def _write_tsv(path: Path, examples: list[T.ClassExample], pair: bool) -> None:
    head = ["sentence", *(["pair"] if pair else []), "label", "source_line"]
    lines = ["\t".join(head)]
    for ex in examples:
        cells = [ex.text, *([ex.pair or ""] if pair else []), str(ex.label), str(ex.line)]
        if any("\t" in c or "\n" in c for c in cells):
            raise DataError(f"line {ex.line}: a tab or line break inside a text field")
        lines.append("\t".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")


def prepare_task(opts: GlueOptions, task: GlueTask) -> dict[str, Any]:
    """Read a task's splits, sample the training rows, check the label order and write OUT/data/<task>/."""
    train, dev, train_source, dev_source = read_splits(task, opts.data_dir)
    total = len(train)
    train = sample_rows(train, opts.max_train_rows)
    check_label_order(task, train, train_source)
    folder = Path(opts.out) / "data" / task.name
    _write_tsv(folder / "train.tsv", train, task.pair is not None)
    _write_tsv(folder / "dev.tsv", dev, task.pair is not None)
    return {"train_file": str(folder / "train.tsv"), "dev_file": str(folder / "dev.tsv"), "train_rows": len(train),
            "train_rows_available": total, "dev_rows": len(dev), "train_source": train_source,
            "dev_source": dev_source, "dev_gold": [ex.label for ex in dev], "dev_lines": [ex.line for ex in dev]}


# -- one task x seed pair -------------------------------------------------------------------------------------
def pair_dir(out: str | Path, task: str, seed: int) -> Path:
    return Path(out) / "runs" / task / f"seed{seed}"


def _finetune_options(opts: GlueOptions, task: GlueTask) -> FinetuneOptions:
    return FinetuneOptions(task="classify", max_seq_len=opts.max_seq_len, problem=task.problem,
                           text_column="sentence", pair_column="pair" if task.pair is not None else None,
                           label_column="label", dropout=opts.dropout,
                           labels=list(task.labels) if task.labels is not None else None)


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def run_pair(opts: GlueOptions, task: GlueTask, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune on the task's training rows with ``seed``, score the final model on dev, write result.json.

    The final model is scored (after the last epoch), not the best on dev: picking a checkpoint on the dev set
    and reporting that same dev set would flatter every task.
    """
    folder = pair_dir(opts.out, task.name, seed)
    fopts = _finetune_options(opts, task)
    cfg = opts.train_config(seed)
    try:
        result, _ = finetune_run(opts.model, data["train_file"], None, folder, fopts, cfg, epochs=opts.epochs,
                                 resume="auto")
    except TrainingDiverged as exc:  # the same seed would diverge again: a dead run, kept and flagged
        return _save(opts, folder, _record(opts, task, seed, data, dict.fromkeys(task.metrics), None,
                                           f"training diverged ({str(exc).split(';')[0]})", {}, 0, 0.0, 0.0))
    if result.stopped_early:  # Ctrl-C: not scored, not done; its checkpoint stays and a rerun resumes it
        print(f"{task.title} seed {seed}: stopped ({result.stopped_early}); rerun the same command to continue")
        raise KeyboardInterrupt
    if result.checkpoint is None:
        raise ConfigError(f"{task.title} seed {seed}: no checkpoint was written in {folder}")
    t0 = time.perf_counter()
    loaded = load(result.checkpoint, task="classify", device=resolve_device(opts.device))
    model, tokenizer = loaded.model, loaded.tokenizer
    labels = task_info(model)["labels"]
    if task.labels is not None and labels != list(task.labels):
        raise ConfigError(f"{result.checkpoint}: labels {labels}, not {task.title}'s {list(task.labels)}")
    dev, _ = build_data(data["dev_file"], tokenizer, fopts, labels, False, None)
    _, predictions = score_task(model, dev, tokenizer, fopts)
    gold = data["dev_gold"]
    values = {k: _finite(v) for k, v in M.task_metrics(task.metrics, predictions, gold).items()}
    eval_s = time.perf_counter() - t0
    dead = M.dead_run(predictions, task.labels is None)
    if task.labels is None:
        spread = {"min": float(np.min(predictions)), "max": float(np.max(predictions)),
                  "mean": float(np.mean(predictions))}
    else:
        counts = Counter(predictions)
        spread = {label: counts[label] for label in task.labels}
    pred_file = folder / "predictions.tsv"
    write_text_atomic(pred_file, "source_line\tgold\tprediction\n" + "".join(
        f"{line}\t{g}\t{p}\n" for line, g, p in zip(data["dev_lines"], gold, predictions, strict=True)))
    return _save(opts, folder, _record(opts, task, seed, data, values, pred_file, dead, spread, result.step,
                                       result.elapsed_s, eval_s))


def _record(opts: GlueOptions, task: GlueTask, seed: int, data: dict[str, Any], values: dict[str, float | None],
            pred_file: Path | None, dead: str | None, spread: dict[str, Any], steps: int, train_s: float,
            eval_s: float) -> dict[str, Any]:
    """What result.json holds for one pair (paths relative to OUT)."""
    out, folder = Path(opts.out), pair_dir(opts.out, task.name, seed)
    scored = None if any(v is None for v in values.values()) else M.task_score(values)  # type: ignore[arg-type]
    return {"task": task.name, "title": task.title, "seed": seed, "metrics": values, "score": scored, "dead": dead,
            "predicted": spread, "train_rows": data["train_rows"], "dev_rows": data["dev_rows"], "steps": steps,
            "train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "recipe": opts.recipe(),
            "run_dir": str(folder.relative_to(out)),
            "predictions": None if pred_file is None else str(pred_file.relative_to(out))}


def _save(opts: GlueOptions, folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write result.json (atomically, last: from then on the pair is done) and drop the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "result.json", json.dumps(record, indent=2) + "\n")
    if not opts.keep_models:
        remove_weights(folder)
    return record


def remove_weights(folder: Path) -> None:
    """Delete a scored pair's checkpoints (a model and its optimizer state each); its logs and results stay."""
    for path in [*list_checkpoints(folder), folder / "best"]:
        shutil.rmtree(path, ignore_errors=True)


def read_result(out: str | Path, task: str, seed: int) -> dict[str, Any] | None:
    path = pair_dir(out, task, seed) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _line(record: dict[str, Any], out: Path) -> str:
    scores = ", ".join(f"{M.NAMES[k]} {100 * v:.1f}" if v is not None else f"{M.NAMES[k]} n/a"
                       for k, v in record["metrics"].items())
    dead = f"  DEAD RUN: {record['dead']}" if record["dead"] else ""
    return (f"{record['title']} seed {record['seed']}: {scores} ({record['dev_rows']:,} dev rows, "
            f"{record['steps']} steps, {record['train_s']:.0f} s){dead} -> {out / record['run_dir']}")


# -- the whole run --------------------------------------------------------------------------------------------
def run_glue(opts: GlueOptions, log: Callable[[str], None] = print,
             pair: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every unfinished task x seed pair, then write results.json, results.md and glue.png; returns the summary
    (what results.json holds). ``pair`` replaces :func:`run_pair` (tests)."""
    pair = pair or run_pair
    check_recipe(opts)
    out = Path(opts.out)
    skipped = {name: reason for name in opts.tasks if (reason := skip_reason(TASKS[name], opts.data_dir))}
    runnable = [name for name in opts.tasks if name not in skipped]
    for name, reason in skipped.items():
        log(f"{TASKS[name].title}: skipped ({reason})")
    if not runnable:
        raise ConfigError(f"none of the tasks ({','.join(opts.tasks)}) can run from --data-dir {opts.data_dir}: "
                          + "; ".join(f"{TASKS[n].title}: {r}" for n, r in skipped.items()))
    total = len(runnable) * opts.seeds
    width = len(str(total))
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in runnable}
    data_info: dict[str, dict[str, Any]] = {}
    started, done = time.perf_counter(), 0
    for name in runnable:
        task = TASKS[name]
        data = prepare_task(opts, task)
        data_info[name] = {k: v for k, v in data.items() if k not in ("dev_gold", "dev_lines")}
        for seed in range(opts.seeds):
            done += 1
            tag = f"[glue {done:>{width}}/{total}]"
            record = read_result(out, name, seed)
            if record is not None:
                if not opts.keep_models:  # weights left by a run killed after it was scored
                    remove_weights(pair_dir(out, name, seed))
                log(f"{tag} {task.title} seed {seed}: done before, skipped")
            else:
                record = pair(opts, task, seed, data)
                log(f"{tag} {_line(record, out)}")
            records[name].append(record)
    summary = write_report(opts, records, data_info, skipped)
    files = summary["files"]
    log(f"glue finished in {time.perf_counter() - started:.0f} s: {out / files['table']}, "
        f"{out / files['chart']}, {out / files['json']}")
    return summary
