"""The one training loop: AdamW, warmup + cosine, accumulation, clipping, autocast, DDP or FSDP, checkpoints, resume.

With ``strategy="fsdp"`` on several processes the model is sharded and checkpoints are sharded too; that part lives
in :mod:`twinlm.distributed`.

The loop knows nothing about objectives or data formats. A *task* supplies them:

    task.loss_module(model) -> nn.Module whose forward(**batch) returns the scalar loss (DDP wraps this module,
                               so the gradient all-reduce sees every parameter the loss used)
    task.batch(step, micro, rank, world) -> dict of CPU tensors (a pure function of its arguments: exact resume)
    task.tokens(batch) -> int   (for tokens/s)
    task.evaluate(model, autocast) -> dict of metrics, e.g. {"val_loss": ..., "val_ppl": ...}
    task.targets(batch) -> int  (optional: how many predictions the batch's mean loss is over; see _train_step)

Pretraining (twinlm.pretrain) is one task; fine-tuning is another.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as parallel
from .errors import ConfigError, TrainingDiverged, TwinLMError
from .loading import fit_weights, training_state
from .runfolder import checkpoint_dir, prune_checkpoints
from .trainstate import restore_rng_state, rng_state_to_json


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (the model's shape lives in ModelConfig)."""

    max_steps: int = 1000
    batch_size: int = 32  # rows per micro-batch on each process
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    layer_lr_decay: float = 1.0  # block i of n learns at lr * decay**(n - i), the embeddings at decay**(n + 1)
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eval_every: int | None = 200  # None: only the run's final evaluation (finetune_run makes it once per epoch)
    save_every: int | None = 500  # None: no checkpoint until the run's final one
    keep_last: int = 2
    log_every: int = 10
    time_budget: float | None = None  # seconds of training; then save and stop cleanly
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool = False  # torch.compile the loss module (model + objective); compile time is logged apart
    progress: bool = True
    best_metric: str | None = None  # e.g. "accuracy": keep run_dir/best at its best evaluation
    greater_is_better: bool = True
    patience: int | None = None  # stop after this many evaluations without improvement
    strategy: str = "ddp"  # with several processes: ddp (whole model per rank) or fsdp (sharded, twinlm.distributed)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible setting."""
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number of steps, at least 1 "
                                  f"(or None: only at the end), got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"--layer-lr-decay must be in (0, 1] (1: every layer at --lr), got {self.layer_lr_decay}")
        if self.dtype not in ("fp32", "bf16"):
            raise ConfigError(f"--dtype {self.dtype!r}: choose fp32 or bf16")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        parallel.check_strategy(self.strategy, self.compile)


class Task(Protocol):
    def loss_module(self, model: nn.Module) -> nn.Module: ...
    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Any]: ...
    def tokens(self, batch: dict[str, Any]) -> int: ...
    def evaluate(self, model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict: ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING = ("tok_emb", "pos_emb", "type_emb", "emb_norm")


def layer_depth(name: str, n_blocks: int) -> int:
    """0 for the embeddings, i + 1 for block i, n_blocks + 1 for what reads the last block (final norm, heads)."""
    block = _BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    if any(f"{part}." in name for part in _EMBEDDING):
        return 0
    return n_blocks + 1


def param_groups(model: nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """Decoupled weight decay on matrices only: never on norms, biases (1-D tensors).

    Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; Sun et al. 2019 for BERT fine-tuning): with
    ``layer_lr_decay`` = d < 1, a parameter at depth k of the n blocks (layer_depth) gets ``lr_scale`` = d**(n+1-k),
    so the task head learns at the full rate and the pretrained layers the less the lower they sit. The trainer
    multiplies each group's scheduled lr by its lr_scale.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_lr_decay == 1.0:
        decay = [p for _, p in named if p.dim() >= 2]
        no_decay = [p for _, p in named if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    blocks = {int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))}
    n_blocks = max(blocks) + 1 if blocks else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        depth, decays = layer_depth(name, n_blocks), p.dim() >= 2
        group = groups.setdefault((depth, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_lr_decay ** (n_blocks + 1 - depth)})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``, as the trainer builds it.

    The fused kernel updates each tensor in one pass instead of ~8 elementwise passes, so the optimizer step reads
    and writes the weights and moments once, which matters most on a CPU (the Hugging Face Trainer also defaults to
    it on torch >= 2.8).
    """
    devices = {p.device.type for p in model.parameters()}
    fused = devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_lr_decay), lr=cfg.lr, betas=cfg.betas,
                             fused=fused)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def autocast_factory(device: torch.device, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A context-manager factory: bf16 autocast where the device supports it, else a no-op."""
    if dtype == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--dtype bf16: this GPU has no bf16 support; use --dtype fp32")
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


class MetricsLog:
    """Append-only JSON-lines log in the run folder (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step``: a resumed run rewrites them, so no step appears twice.

        A last line cut short by a kill or a full disk is dropped too, and the file is replaced in one step, so a
        kill here never loses the rows up to ``step``.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        ckpt.write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as exc:
                reason = exc.strerror or exc
                raise TwinLMError(f"{self.path}: could not append the step {row.get('step')} row ({reason}); the "
                                  "last checkpoint is intact: free some space and run again with --resume auto"
                                  ) from None


def _due(step: int, every: int | None) -> bool:
    """True when a periodic action (log, evaluation, checkpoint) falls on ``step``; ``every=None`` never does."""
    return every is not None and step % every == 0


class InterruptGuard:
    """While active, Ctrl-C only sets ``requested``: the loop finishes its step, saves and stops.

    Ctrl-C then saves a checkpoint instead of losing the work since the last one; every further Ctrl-C is caught the
    same way, so none can cut the checkpoint write short. ``enabled=False`` (DDP ranks) leaves SIGINT alone.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.requested, self._previous = enabled, False, None

    def __enter__(self) -> InterruptGuard:
        if self.enabled:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, lambda *_: setattr(self, "requested", True))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Clock:
    """The run's start time and the tokens/s window since the last logged row."""

    start: float
    window_t: float
    window_tokens: int = 0

    def restart(self, now: float) -> None:
        self.window_t, self.window_tokens = now, 0

    def rate(self, now: float) -> float:
        return self.window_tokens / max(now - self.window_t, 1e-9)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    metrics: dict[str, float]
    tokens_per_s: float
    elapsed_s: float
    stopped_early: str | None = None
    compile_s: float | None = None  # the first step's time when compiled (included in elapsed_s)
    eval_s: float = 0.0  # seconds spent evaluating in this train() call (those in the loop are in elapsed_s)


class Trainer:
    """Runs a task's loss through the optimiser for cfg.max_steps, saving and resuming atomically."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path,
                 tokenizer: Any | None = None, run_info: dict[str, Any] | None = None) -> None:
        cfg.validate()
        self.cfg, self.task, self.tokenizer, self.run_info = cfg, task, tokenizer, run_info or {}
        self.run_dir = Path(run_dir)
        self.dist = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device if cfg.device != "cuda" or self.dist.world == 1
                                     else f"cuda:{self.dist.local_rank}")
        self.autocast = autocast_factory(self.device, cfg.dtype)
        self.model = model.to(self.device)
        self.loss_module = task.loss_module(self.model).to(self.device)
        if cfg.activation_checkpointing:
            parallel.checkpoint_blocks(self.model)
        # Sharded checkpoints: FSDP on several processes; the optimizer below is built over the shards.
        self.sharded = self.dist.world > 1 and cfg.strategy == "fsdp"
        if self.sharded:
            self.loss_module = parallel.shard(self.model, self.loss_module, self.device, cfg.dtype)
        elif self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # A task whose loss leaves some weights without a gradient (fine-tuning: the pretrained LM head) says so;
            # DDP would otherwise wait forever for their reduction and fail.
            unused = bool(getattr(task, "find_unused_parameters", False))
            self.loss_module = nn.parallel.DistributedDataParallel(self.loss_module, device_ids=ids,
                                                                   find_unused_parameters=unused)
        if cfg.compile:
            # Compiled outside DDP so DDP's bucketing hooks stay in eager code; the weights are shared with
            # self.model, so checkpoints and evaluation are unaffected.
            self.loss_module = torch.compile(self.loss_module)
        self.compile_s: float | None = None
        self.optimizer = build_optimizer(self.model, cfg)
        self.step = 0
        self.tokens_seen = 0
        self.best: float | None = None
        self.evals_without_gain = 0
        self.last_metrics: dict[str, float] = {}  # the latest evaluation of the current train() call
        self.eval_s = 0.0  # seconds spent evaluating in the current train() call
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", self.dist.main)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        """Position, best-so-far, RNG and settings: the JSON part of a checkpoint."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "best": self.best,
                "evals_without_gain": self.evals_without_gain, "rng": rng_state_to_json(),
                "train_config": asdict(self.cfg), **self.run_info}

    def save(self) -> Path:
        """Atomic checkpoint of model, optimizer, RNG and position (rank 0 writes, the others wait)."""
        folder = checkpoint_dir(self.run_dir, self.step)
        if self.sharded:  # every rank writes its shard (twinlm.distributed)
            state = self._trainer_state()
            parallel.save_sharded(folder, self.model, self.optimizer, config=self.model.config,
                                  tokenizer=self.tokenizer, trainer_state=state)
            if self.dist.main:
                prune_checkpoints(self.run_dir, self.cfg.keep_last)
            self._barrier()
            return folder
        if self.dist.main:
            state = self._trainer_state()
            ckpt.save_checkpoint(folder, model_state=self.model.state_dict(), config=self.model.config,
                                 tokenizer=self.tokenizer, trainer_state=state,
                                 optimizer_state=self.optimizer.state_dict())
            prune_checkpoints(self.run_dir, self.cfg.keep_last)
        self._barrier()
        return folder

    def resume(self, source: str | None) -> None:
        """``auto``: the newest valid checkpoint in the run folder, if any; else a checkpoint folder path."""
        if not source:
            return
        if self.sharded or parallel.sharded_source(source, self.run_dir):
            # a checkpoint saved on any number of ranks, sharded or whole, into this job's shards (or whole model)
            resumed = parallel.resume_state(source, self.run_dir, self.model, self.optimizer)
            if resumed is None:
                return
            folder, trainer_state = resumed
        else:
            found = training_state(source, self.run_dir)
            if found is None:
                return
            folder, state, trainer_state, optim_state = found
            fit_weights(self.model, state, folder)
            if optim_state is not None:
                self.optimizer.load_state_dict(optim_state)
        self.step = int(trainer_state["step"])
        self.tokens_seen = int(trainer_state.get("tokens_seen", 0))
        self.best = trainer_state.get("best")
        self.evals_without_gain = int(trainer_state.get("evals_without_gain", 0))
        restore_rng_state(trainer_state["rng"])
        self.log.truncate_after(self.step)
        if self.dist.main:
            print(f"resumed from {folder} at step {self.step}")

    def track_best(self, metrics: dict[str, float]) -> bool:
        """Keep run_dir/best at the best evaluation so far; True when patience has run out."""
        name = self.cfg.best_metric
        if not name:
            return False
        if name not in metrics:
            raise ConfigError(f"best metric {name!r} is not among the evaluation metrics ({', '.join(metrics)})")
        value = float(metrics[name])
        gain = self.best is None or (value > self.best if self.cfg.greater_is_better else value < self.best)
        if gain:
            self.best, self.evals_without_gain = value, 0
            weights = parallel.full_model_state(self.model) if self.sharded else self.model.state_dict()
            if self.dist.main:
                ckpt.save_model(self.run_dir / "best", model_state=weights, config=self.model.config,
                                tokenizer=self.tokenizer)
                ckpt.write_text_atomic(self.run_dir / "best_metrics.json", json.dumps({"step": self.step, **metrics}))
            self._barrier()
        else:
            self.evals_without_gain += 1
        return self.cfg.patience is not None and self.evals_without_gain >= self.cfg.patience

    # -- the loop ----------------------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()

    def _agree(self, value: float) -> float:
        """Sum a float over ranks so every rank takes the same decision (stop, NaN)."""
        if self.dist.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def _weights(self, batches: list[dict[str, Any]]) -> list[float]:
        """Each micro-batch's share of the step's loss, so that the step minimises the mean over *all* its targets.

        A micro-batch's loss is a mean over its own targets (masked tokens for MLM), and DDP/FSDP average gradients
        over ranks. Scaling each mean by 1/grad_accum would weigh a token in a micro-batch with 50 masked tokens
        twice as much as one in a micro-batch with 100 (Hugging Face's gradient-accumulation bug of 2024). The
        weight is n_micro / N_step, N_step summed over micro-batches and ranks, times world because the gradient
        all-reduce divides by it (pretraining counts masked or next tokens, fine-tuning labelled tokens or examples).
        A task without ``targets`` weighs its micro-batches equally.
        """
        world = self.dist.world
        if not hasattr(self.task, "targets"):
            return [1.0 / len(batches)] * len(batches)
        counts = [float(self.task.targets(b)) for b in batches]
        total = max(self._agree(sum(counts)), 1.0)
        return [n * world / total for n in counts]

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, tokens on all ranks)."""
        cfg, total, tokens = self.cfg, 0.0, 0
        rank, world = self.dist.rank, self.dist.world
        batches = [self.task.batch(self.step, micro, rank, world) for micro in range(cfg.grad_accum)]
        for micro, (batch, weight) in enumerate(zip(batches, self._weights(batches), strict=True)):
            tokens += self.task.tokens(batch) * self.dist.world
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else parallel.no_sync(self.loss_module)
            with sync:
                with self.autocast():
                    loss = self.loss_module(**batch) * weight
                loss.backward()
            total += loss.detach().float().item()
        mean_loss = self._agree(total) / self.dist.world
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"loss became {mean_loss} at step {self.step + 1}; stopped without saving. The last good checkpoint "
                f"is in {self.run_dir}; lower --lr, raise --warmup-steps or use --dtype fp32"
            )
        # A finite loss can still give a non-finite gradient (an overflow in backward); one step with it would
        # poison every weight and the next checkpoint, so the gradient norm is checked too.
        if cfg.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None]))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"gradient norm became {norm} at step {self.step + 1} (loss {mean_loss:.4g}); stopped without "
                f"saving. The last good checkpoint is in {self.run_dir}; lower --lr, raise --warmup-steps or use "
                f"--dtype fp32"
            )
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return mean_loss, tokens

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), parallel.gathered(self.loss_module):
            metrics = self.task.evaluate(self.model, self.autocast)
        self.model.train()
        return metrics

    def train(self, resume: str | None = None) -> TrainResult:
        """Train to max_steps (or the time budget), evaluating, logging and checkpointing on the way."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            ckpt.remove_stale_scratch(self.run_dir)  # what a killed save left behind; never a complete checkpoint
        torch.manual_seed(cfg.seed)
        self.resume(resume)
        if self.step == 0:
            self.log.truncate_after(0)  # a fresh run in a used folder starts a fresh log
        self.model.train()
        self.last_metrics, self.eval_s = {}, 0.0
        now = time.perf_counter()
        clock = _Clock(start=now, window_t=now)
        stopped: str | None = None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.dist.main),
                   desc="train", unit="step", dynamic_ncols=True)
        with bar, InterruptGuard(enabled=self.dist.world == 1) as ctrl_c:
            while self.step < cfg.max_steps:
                stopped = self._stop_requested(clock, ctrl_c)
                if stopped is None:
                    stopped = self._after_step(self._timed_step(clock), clock, bar)
                if stopped:
                    break
        elapsed = time.perf_counter() - clock.start
        if stopped and not self.last_metrics:  # stopped before any evaluation: still report where it stands
            self._evaluate_and_log()
        folder = self.save() if self.step > 0 else None
        if self.dist.main and stopped:
            print(f"stopped at step {self.step} ({stopped}); checkpoint in {folder}")
        return TrainResult(self.run_dir, folder, self.step, self.last_metrics, self._throughput(), elapsed, stopped,
                           self.compile_s, self.eval_s)

    def _stop_requested(self, clock: _Clock, ctrl_c: InterruptGuard) -> str | None:
        """Why to stop before the next step (time budget, Ctrl-C), agreed by every rank; None to go on."""
        budget = self.cfg.time_budget
        over = budget is not None and time.perf_counter() - clock.start >= budget
        if self._agree(float(over or ctrl_c.requested)) > 0:
            return "interrupted" if ctrl_c.requested else "time budget reached"
        return None

    def _timed_step(self, clock: _Clock) -> float:
        """One optimizer step, its tokens counted; returns the loss."""
        step_start = time.perf_counter()
        loss, tokens = self._train_step()
        self.tokens_seen += tokens
        clock.window_tokens += tokens
        if self.cfg.compile and self.compile_s is None:
            # The first compiled step traces and compiles; its time is reported apart, not as throughput.
            self.compile_s = time.perf_counter() - step_start
            self.log.write({"step": self.step, "compile_s": round(self.compile_s, 2)})
            clock.restart(time.perf_counter())
        return loss

    def _after_step(self, loss: float, clock: _Clock, bar: tqdm) -> str | None:
        """Log, evaluate (best model, early stopping) and checkpoint when due; returns a stop reason or None."""
        cfg = self.cfg
        last = self.step == cfg.max_steps  # the last step is always logged and evaluated; the final save follows
        lr = lr_at(self.step - 1, cfg)
        now = time.perf_counter()
        tok_s = clock.rate(now)
        if _due(self.step, cfg.log_every) or last:
            self.log.write({"step": self.step, "loss": round(loss, 6), "lr": lr, "tokens_per_s": round(tok_s),
                            "tokens": self.tokens_seen, "elapsed_s": round(now - clock.start, 3)})
            clock.restart(now)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        if _due(self.step, cfg.eval_every) or last:
            metrics = self._evaluate_and_log()
            if metrics:
                bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if self.track_best(metrics):
                return f"early stopping: no gain in {cfg.best_metric} for {cfg.patience} evals"
        if _due(self.step, cfg.save_every) and not last:
            self.save()
        return None

    def _evaluate_and_log(self) -> dict[str, float]:
        """Evaluate, append the metrics row and keep it as the run's latest metrics; its seconds add to eval_s."""
        start = time.perf_counter()
        self.last_metrics = self.evaluate()
        self.eval_s += time.perf_counter() - start
        self.log.write({"step": self.step, **self.last_metrics})
        return self.last_metrics

    def _throughput(self) -> float:
        """Median tokens/s over the logged windows (skips the first window, which includes warm-up)."""
        if not self.log.path.exists():
            return 0.0
        rows = [json.loads(line) for line in self.log.path.read_text().splitlines() if line]
        rates = sorted([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]) or [0.0]
        return float(rates[len(rates) // 2])
