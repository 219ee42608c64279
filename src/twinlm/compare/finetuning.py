"""Part 'finetune:<task>:<model>:<seed>': one fine-tuning run with the comparison's one recipe.

The model is a pretrained variant (a hybrid under ``hybrid_finetune_attention``) or the same backbone with random
weights (what pretraining bought). The fine-tuned weights are deleted afterwards (kept with keep_finetuned): the
part keeps the dev metrics and the run's metrics.jsonl.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..config import preset
from ..finetune import BEST_METRIC, FinetuneOptions, finetune_run
from ..loading import load
from ..model import LanguageModel
from ..tokenizer import load_tokenizer
from ..train import TrainConfig
from .data import paths
from .plan import CompareOptions, TaskSpec, finetune_attention

RANDOM_SEED_OFFSET = 7919  # random-init weights use seed + this, apart from the fine-tuning seed's head init


def _random_init(opts: CompareOptions, name: str, seed: int, folder: Path) -> Path:
    """A model folder with the variants' backbone config and random weights: 'random-<attention>-<position>'."""
    _, attention, position = name.split("-", 2)
    tok = load_tokenizer(paths(opts.out)["tokenizer"])
    config = preset(opts.preset, vocab_size=tok.vocab_size, attention=attention, pad_token_id=tok.pad_id,
                    position=position)
    torch.manual_seed(seed + RANDOM_SEED_OFFSET)
    model = LanguageModel(config)
    return ckpt.save_model(folder, model_state=model.state_dict(), config=config, tokenizer=tok)


def _with_attention(opts: CompareOptions, model_path: str, attention: str, folder: Path) -> Path:
    """The pretrained model itself, or (a hybrid) a copy whose default mask is ``attention``."""
    source = Path(opts.out) / model_path
    loaded = load(source)
    if loaded.config.attention == attention:
        return source
    config = loaded.config.replace(attention=attention)  # a hybrid stays a hybrid: only its default mask changes
    return ckpt.save_model(folder, model_state=loaded.lm.state_dict(), config=config, tokenizer=loaded.tokenizer)


def finetune(opts: CompareOptions, task: TaskSpec, model: str, seed: int,
             pretrained: dict[str, Any] | None) -> dict[str, Any]:
    """Fine-tune ``model`` (a variant name with its pretrain part, or random-*) on ``task`` with ``seed``."""
    out = Path(opts.out)
    scratch = out / "init" / f"{task.task}-{model}-{seed}"
    if pretrained is None:
        attention = model.split("-")[1]
        init = _random_init(opts, model, seed, scratch)
    else:
        attention = finetune_attention(pretrained["objective"], opts)
        init = _with_attention(opts, pretrained["model"], attention, scratch)
    run_dir = out / "finetune" / task.task / model / f"seed{seed}"
    fopts = FinetuneOptions(task=task.task, max_seq_len=opts.finetune_max_seq_len,
                            max_train_rows=task.max_train_rows, max_eval_rows=opts.max_eval_rows)
    # eval_every None: finetune_run evaluates once per epoch; save_every None: one checkpoint, at the end
    cfg = TrainConfig(batch_size=opts.finetune_batch_size, lr=opts.finetune_lr, warmup_steps=0, eval_every=None,
                      save_every=None, keep_last=1, log_every=10, seed=seed, device=opts.device,
                      progress=opts.progress)
    result, best = finetune_run(init, task.train, task.dev, run_dir, fopts, cfg, epochs=opts.finetune_epochs,
                                resume="auto")
    shutil.rmtree(scratch, ignore_errors=True)
    if not opts.keep_finetuned:
        for folder in [*run_dir.glob("checkpoint-*"), run_dir / "best"]:
            shutil.rmtree(folder, ignore_errors=True)
    metric = cfg.best_metric or BEST_METRIC[task.task]  # Chinese QA: cmrc_f1
    return {"task": task.task, "model": model, "seed": seed, "attention": attention, "metric": metric,
            "score": float(result.metrics.get(metric, float("nan"))), "final": result.metrics,
            "best": best, "steps": result.step, "wall_s": round(result.elapsed_s, 2), "run_dir": str(
                run_dir.relative_to(out))}
