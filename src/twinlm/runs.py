"""Pretraining runs: wire a prepared corpus, a preset and the trainer together (used by the CLI and quickstart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import preset
from .data.corpus import load_meta
from .model import LanguageModel
from .plots import plot_loss_curves
from .pretrain import PretrainOptions, PretrainTask, attention_for
from .tokenizer import load_tokenizer
from .train import TrainConfig, Trainer, TrainResult


def pretrain_run(data_dir: str | Path, out_dir: str | Path, preset_name: str, opts: PretrainOptions,
                 train_cfg: TrainConfig, resume: str | None = None,
                 model_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Pretrain a model of ``preset_name`` on ``data_dir`` into ``out_dir``; write the loss curve at the end."""
    load_meta(data_dir)  # a clear error before anything else if the folder is not a prepared corpus
    tokenizer = load_tokenizer(data_dir)
    config = preset(
        preset_name,
        vocab_size=tokenizer.vocab_size,
        attention=attention_for(opts.objective),
        pad_token_id=tokenizer.pad_id,
        objective=opts.objective,  # inference checks what a checkpoint was trained for (config.require)
        **(model_overrides or {}),
    )
    task = PretrainTask(data_dir, tokenizer, opts, config.max_positions, train_cfg.batch_size,
                        train_cfg.max_steps, train_cfg.seed)
    torch.manual_seed(train_cfg.seed)  # the initial weights are part of "same seed, same loss curve"
    model = LanguageModel(config)
    run_info = {"objective": opts.objective, "preset": preset_name, "data": str(data_dir),
                "pretrain_options": opts.__dict__}
    trainer = Trainer(model, task, train_cfg, out_dir, tokenizer=tokenizer, run_info=run_info)
    if trainer.dist.main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "run.json").write_text(json.dumps(
            {**run_info, "model_config": config.to_dict(), "train_config": train_cfg.__dict__}, indent=2,
            default=str))
    result = trainer.train(resume=resume)
    if trainer.dist.main:
        plot_loss_curves({opts.objective.upper(): Path(out_dir) / "metrics.jsonl"}, Path(out_dir) / "loss_curve.png",
                         title=f"{opts.objective.upper()} pretraining ({preset_name})")
    return result
