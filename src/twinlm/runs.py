"""Pretraining runs: wire a prepared corpus, a preset and the trainer together (used by the CLI and quickstart)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import preset
from .data.corpus import load_meta
from .errors import ConfigError
from .heads import TaskModel
from .loading import check_vocab, load
from .model import LanguageModel
from .plots import plot_loss_curves
from .pretrain import PretrainOptions, PretrainTask, attention_for
from .tokenizer import load_tokenizer
from .train import TrainConfig, Trainer, TrainResult


def pretrain_run(data_dir: str | Path, out_dir: str | Path, preset_name: str, opts: PretrainOptions,
                 train_cfg: TrainConfig, resume: str | None = None,
                 model_overrides: dict[str, Any] | None = None, init: str | Path | None = None) -> TrainResult:
    """Pretrain a model of ``preset_name`` on ``data_dir`` into ``out_dir``; write the loss curve at the end.

    ``init`` (a model, run or checkpoint folder) starts from those weights and that architecture instead of a fresh
    preset, with a fresh optimizer and learning-rate schedule: continued (domain-adaptive) pretraining, or a longer
    schedule after a finished run. ``resume`` instead continues one run exactly where it stopped.
    """
    load_meta(data_dir)  # a clear error before anything else if the folder is not a prepared corpus
    tokenizer = load_tokenizer(data_dir)
    overrides = dict(model_overrides or {})
    # Masking or causality is a property of the objective, not of the weights: an MLM may go on as a CLM.
    paradigm = {"attention": attention_for(opts.objective), "objective": opts.objective}
    if init is None:
        config = preset(preset_name, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                        **paradigm, **overrides)  # objective: inference checks what it was trained for
        torch.manual_seed(train_cfg.seed)  # the initial weights are part of "same seed, same loss curve"
        model = LanguageModel(config)
    else:
        model, config = _init_model(init, tokenizer, data_dir, paradigm, overrides)
    task = PretrainTask(data_dir, tokenizer, opts, config.max_positions, train_cfg.batch_size,
                        train_cfg.max_steps, train_cfg.seed)
    run_info = {"objective": opts.objective, "preset": preset_name if init is None else None, "data": str(data_dir),
                "init": str(init) if init is not None else None, "pretrain_options": opts.__dict__}
    trainer = Trainer(model, task, train_cfg, out_dir, tokenizer=tokenizer, run_info=run_info)
    if trainer.dist.main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "run.json").write_text(json.dumps(
            {**run_info, "model_config": config.to_dict(), "train_config": train_cfg.__dict__}, indent=2,
            default=str))
    result = trainer.train(resume=resume)
    if trainer.dist.main:
        start = preset_name if init is None else f"from {init}"
        plot_loss_curves({opts.objective.upper(): Path(out_dir) / "metrics.jsonl"}, Path(out_dir) / "loss_curve.png",
                         title=f"{opts.objective.upper()} pretraining ({start})")
    return result


def _init_model(init: str | Path, tokenizer: Any, data_dir: str | Path, paradigm: dict[str, str],
                overrides: dict[str, Any]) -> tuple[LanguageModel, Any]:
    """The language model of ``init`` set up for ``paradigm``; its tokenizer must be the corpus's."""
    loaded = load(init)
    if isinstance(loaded.model, TaskModel):
        raise ConfigError(f"--init {init}: a fine-tuned model; continue pretraining from the pretrained model it "
                          "started from")
    if loaded.tokenizer is not None and loaded.tokenizer.hf.get_vocab() != tokenizer.hf.get_vocab():
        raise ConfigError(f"--init {init}: its tokenizer differs from the one {data_dir} was prepared with; prepare "
                          f"the corpus with --tokenizer {init}")
    config = loaded.config
    check_vocab(tokenizer, config.vocab_size, init)
    clash = {k: v for k, v in overrides.items() if k != "dropout" and getattr(config, k) != v}
    if clash:
        k, v = next(iter(clash.items()))
        raise ConfigError(f"--{k} {v}: the --init model has {k}={getattr(config, k)!r} and its architecture is kept; "
                          f"drop --{k}")
    config = replace(config, **paradigm, **{k: v for k, v in overrides.items() if k == "dropout"})
    model = LanguageModel(config)
    model.load_state_dict(loaded.model.state_dict())
    return model, config
