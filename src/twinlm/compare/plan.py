"""What a comparison runs: its options (saved as compare.json for resume), the model variants and the parts.

A comparison is a list of *parts* (prepare the data, fix the budget, pretrain one variant, measure it, fine-tune it
with one seed, ...). Each finished part writes ``parts/<part>.json`` atomically; a rerun or ``--resume DIR`` skips
every part whose file is there, so a killed comparison continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import OBJECTIVES, POSITIONS, PRESETS
from ..errors import ConfigError
from ..objectives import HybridSchedule

CONFIG_FILE = "compare.json"
PARTS_DIR = "parts"
TASK_NAMES = ("classify", "ner", "qa")
LR_FOR_PRESET = {"tiny": 3e-3, "mini": 1e-3, "small": 6e-4, "base": 3e-4}
DEFAULT_STEPS = 600  # with no --tokens and no --time-budget: the quickstart's 600 steps of 16 x 128 tokens
# Options that do not change any number, so a rerun may differ in them from the saved comparison.
NOT_COMPARED = ("out", "progress", "device")


@dataclass
class TaskSpec:
    """One fine-tuning task: ``classify=TRAIN:DEV`` with an optional ``:ROWS`` cap on the training rows."""

    task: str
    train: str
    dev: str
    max_train_rows: int | None = None

    @classmethod
    def parse(cls, spec: str) -> TaskSpec:
        task, sep, files = spec.partition("=")
        task = task.strip()
        if not sep or task not in TASK_NAMES:
            raise ConfigError(f"--task {spec!r}: write TASK=TRAIN:DEV[:ROWS] with TASK one of {', '.join(TASK_NAMES)}")
        parts = files.split(":")
        rows = None
        if len(parts) >= 3 and parts[-1].isdigit():
            rows = int(parts.pop())
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--task {spec!r}: give the training and the evaluation file as TRAIN:DEV")
        return cls(task, ":".join(parts[:-1]), parts[-1], rows)

    def label(self) -> str:
        return self.task


@dataclass
class CompareOptions:
    """Everything that fixes a comparison's numbers (saved to OUT/compare.json)."""

    corpus: list[str]
    out: str
    tokenizer: str | None = None  # a tokenizer folder; None: train a byte-level BPE of vocab_size on the corpus
    vocab_size: int = 8000
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    hybrid: str = "clm:4,mlm:16,clm:4"  # HybridSchedule phases (AntLM), as `twinlm pretrain --hybrid`
    positions: list[str] = field(default_factory=lambda: ["learned", "rotary"])
    preset: str = "tiny"
    tokens: int | None = None  # training tokens per variant (the same for all)
    time_budget: float | None = None  # seconds of pretraining for the slowest variant; fixes the tokens
    seeds: int = 3
    tasks: list[TaskSpec] = field(default_factory=list)
    heldout: str | None = None  # held-out text; None: every 20th document of the corpus is held out
    seq_len: int = 128
    batch_size: int = 16
    lr: float | None = None  # None: by preset (tiny 3e-3, mini 1e-3, small 6e-4)
    mask_prob: float = 0.15
    eval_blocks: int = 64  # validation blocks per evaluation during pretraining
    seed: int = 0
    heldout_every: int = 20
    heldout_chars: int = 10_000  # the held-out text scored for (pseudo-)perplexity, cut at a line end
    cloze_n: int = 200
    candidates_k: int = 100  # cloze / next-word candidates: every item's answer + the k most frequent train words
    prompts: list[str] | None = None  # None: the first words of held-out lines
    n_prompts: int = 8
    max_new_tokens: int = 32
    attention_tokens: int = 16  # the sentence whose attention maps are drawn, in tokens
    finetune_epochs: float = 3.0
    finetune_lr: float = 2e-4
    finetune_batch_size: int = 32
    finetune_max_seq_len: int = 128
    max_eval_rows: int | None = None
    random_init: bool = True  # also fine-tune the same backbone from random weights
    keep_finetuned: bool = False  # keep the fine-tuned weights (by default only their metrics are kept)
    hybrid_finetune_attention: str = "bidirectional"  # the mask a hybrid is fine-tuned (and used) with
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.corpus = [str(c) for c in ([self.corpus] if isinstance(self.corpus, (str, Path)) else self.corpus)]
        self.out = str(self.out)
        self.tasks = [t if isinstance(t, TaskSpec) else (TaskSpec(**t) if isinstance(t, dict) else TaskSpec.parse(t))
                      for t in self.tasks]
        self.objectives = _list(self.objectives)
        self.positions = _list(self.positions)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first option that cannot work."""
        if not self.corpus:
            raise ConfigError("give at least one --corpus file")
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise ConfigError(f"--objectives: unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"--objectives must name each objective once, got {','.join(self.objectives)}")
        for name in self.positions:
            if name not in POSITIONS:
                raise ConfigError(f"--positions: unknown position {name!r}; choose from {', '.join(POSITIONS)}")
        if not self.positions or len(set(self.positions)) != len(self.positions):
            raise ConfigError(f"--positions must name each position once, got {','.join(self.positions)}")
        if "hybrid" in self.objectives:
            HybridSchedule.parse(self.hybrid)  # a bad schedule fails now, not after hours of other runs
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.tokens is not None and self.time_budget is not None:
            raise ConfigError("give --tokens or --time-budget, not both")
        if self.tokens is not None and self.tokens < self.batch_size * self.seq_len:
            raise ConfigError(f"--tokens {self.tokens} is less than one step ({self.batch_size} x {self.seq_len})")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be positive, got {self.time_budget}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if len({t.task for t in self.tasks}) != len(self.tasks):
            raise ConfigError("give each --task kind (classify, ner, qa) at most once")
        for path in [*self.corpus, *([self.heldout] if self.heldout else []),
                     *[p for t in self.tasks for p in (t.train, t.dev)]]:
            if not Path(path).exists():
                raise ConfigError(f"{path}: no such file")
        if self.hybrid_finetune_attention not in ("bidirectional", "causal"):
            raise ConfigError("hybrid_finetune_attention must be 'bidirectional' or 'causal'")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LR_FOR_PRESET.get(self.preset, 1e-3)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@dataclass(frozen=True)
class Variant:
    """One pretrained model of the comparison: an objective with a position encoding."""

    objective: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.position}"


def variants(opts: CompareOptions) -> list[Variant]:
    return [Variant(o, p) for o in opts.objectives for p in opts.positions]


def finetune_attention(objective: str, opts: CompareOptions) -> str:
    """The mask a pretrained model is fine-tuned with: its own, and the chosen one for a hybrid."""
    return {"mlm": "bidirectional", "clm": "causal"}.get(objective, opts.hybrid_finetune_attention)


def random_baselines(opts: CompareOptions) -> list[tuple[str, str]]:
    """(attention, position) of the random-init backbones: one per mask and position the variants fine-tune with."""
    if not opts.random_init or not opts.tasks:
        return []
    kinds = sorted({finetune_attention(v.objective, opts) for v in variants(opts)})
    return [(k, p) for k in kinds for p in opts.positions]


def finetune_models(opts: CompareOptions) -> list[str]:
    """Names of every model fine-tuned: the variants, then the random-init baselines."""
    return [v.name for v in variants(opts)] + [f"random-{a}-{p}" for a, p in random_baselines(opts)]


def parts(opts: CompareOptions) -> list[str]:
    """Every part of the comparison, in the order they run."""
    names = ["data", "budget", "baseline"]
    names += [f"pretrain:{v.name}" for v in variants(opts)]
    for kind in ("intrinsic", "generation", "attention"):
        names += [f"{kind}:{v.name}" for v in variants(opts)]
    names += [f"finetune:{t.task}:{m}:{s}" for t in opts.tasks for m in finetune_models(opts)
              for s in range(opts.seeds)]
    return names


# --------------------------------------------------------------------------- saved state


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling, flush it to disk, then rename it into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_options(opts: CompareOptions) -> None:
    write_json_atomic(Path(opts.out) / CONFIG_FILE, opts.to_dict())


def load_options(folder: str | Path) -> CompareOptions:
    """The options a comparison in ``folder`` was started with (for --resume)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {CONFIG_FILE} here; --resume takes the --out folder of a comparison")
    data = json.loads(path.read_text())
    data["out"] = str(folder)  # the folder may have been moved
    return CompareOptions.from_dict(data)


def check_same(saved: CompareOptions, new: CompareOptions) -> None:
    """Refuse to mix two different comparisons in one folder."""
    a, b = saved.to_dict(), new.to_dict()
    for key in a:
        if key not in NOT_COMPARED and a[key] != b.get(key):
            raise ConfigError(f"{new.out} holds a comparison with other settings ({key}: {a[key]!r} there, "
                              f"{b.get(key)!r} now); continue it with --resume {new.out}, or choose another --out")


class PartStore:
    """The finished parts of a comparison: one JSON file each under OUT/parts/."""

    def __init__(self, out: str | Path) -> None:
        self.folder = Path(out) / PARTS_DIR

    def path(self, part: str) -> Path:
        return self.folder / (part.replace(":", "__") + ".json")

    def done(self, part: str) -> bool:
        return self.path(part).is_file()

    def get(self, part: str) -> dict[str, Any]:
        return json.loads(self.path(part).read_text())["result"]

    def put(self, part: str, result: dict[str, Any], seconds: float) -> None:
        write_json_atomic(self.path(part), {"part": part, "seconds": round(seconds, 3),
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result})

    def all(self) -> dict[str, dict[str, Any]]:
        out = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("*.json")):
                doc = json.loads(path.read_text())
                out[doc["part"]] = doc["result"]
        return out
