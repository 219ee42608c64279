"""Pretraining as a trainer task: packed blocks from a prepared corpus, scored by the MLM, CLM or hybrid objective."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.blocks import (
    block_span,
    check_shard_size,
    eval_starts,
    gather_blocks,
    gather_word_starts,
    rank_slice,
    sample_starts,
    validate_seq_len,
)
from .data.corpus import TokenShard
from .data.segment import cjk_whole_word_note
from .errors import ConfigError
from .model import device_of
from .objectives import ATTENTION_FOR, IGNORE_INDEX, HybridSchedule, MLMMasker, clm_loss, mlm_loss, resolve_objective

EVAL_MASK_SEED = 1234  # the validation masks are the same at every evaluation, so MLM losses are comparable


@dataclass
class PretrainOptions:
    objective: str = "clm"  # mlm | clm | hybrid
    seq_len: int = 128
    mask_prob: float = 0.15
    whole_word: bool = False
    fixed_count: bool = False
    hybrid: str | None = None  # e.g. "clm:4,mlm:16,clm:4"
    mlm_ratio: float | None = None  # per-step mixing instead of phases
    eval_blocks: int = 64
    eval_batch_size: int = 32


class ObjectiveLoss(nn.Module):
    """Wraps the language model so that DDP sees one forward(objective, input_ids, labels) -> loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, objective: str, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if objective == "mlm":
            return mlm_loss(self.model, input_ids, labels)
        return clm_loss(self.model, input_ids)


class PretrainTask:
    """Random packed blocks of the train shard; every batch a pure function of (seed, step, micro)."""

    def __init__(self, data_dir: str | Path, tokenizer: Any, opts: PretrainOptions, max_positions: int,
                 batch_size: int, max_steps: int, seed: int) -> None:
        resolve_objective(opts.objective)
        validate_seq_len(opts.seq_len, max_positions)
        self.opts = opts
        self.tokenizer = tokenizer
        self.train = TokenShard(data_dir, "train")
        self.val = TokenShard(data_dir, "val")
        if self.train.meta.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"{data_dir}: prepared with a vocabulary of {self.train.meta.vocab_size} tokens but the tokenizer has "
                f"{tokenizer.vocab_size}; prepare the corpus again with this tokenizer"
            )
        self.batch_size, self.max_steps, self.seed = batch_size, max_steps, seed
        self.schedule = None
        if opts.objective == "hybrid":
            self.schedule = HybridSchedule.parse(opts.hybrid, opts.mlm_ratio)
        self.uses_mlm = opts.objective in ("mlm", "hybrid")
        for shard, name in ((self.train, "train"), (self.val, "val")):
            for objective in self.objectives():
                check_shard_size(len(shard), opts.seq_len, objective, f"{data_dir}/{name}.bin")
        # Whole-word masking reads the segmenter's word-start flags when prepare stored them (e.g. jieba words for
        # Chinese); otherwise the vocabulary's continuation table (WordPiece ##, BPE word starts).
        self.word_flags = (opts.whole_word and self.uses_mlm and self.train.word_starts is not None
                           and self.val.word_starts is not None)
        self.masker = None
        if self.uses_mlm:
            table = None
            if opts.whole_word and not self.word_flags:
                table = tokenizer.continuation_table()
                note = cjk_whole_word_note(tokenizer, str(data_dir))
                if note and os.environ.get("RANK", "0") == "0":  # once per run, not once per DDP process
                    print(f"note: {note}")
            self.masker = MLMMasker(
                mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.special_ids,
                mask_prob=opts.mask_prob, whole_word=opts.whole_word, fixed_count=opts.fixed_count,
                continuation=table,
            )

    def objectives(self) -> list[str]:
        return ["mlm", "clm"] if self.opts.objective == "hybrid" else [self.opts.objective]

    def objective_at(self, step: int) -> str:
        return self.schedule.objective_at(step, self.max_steps) if self.schedule else self.opts.objective

    def loss_module(self, model: nn.Module) -> nn.Module:
        return ObjectiveLoss(model)

    def _blocks(self, shard: TokenShard, starts, objective: str) -> torch.Tensor:
        tok = self.tokenizer
        return gather_blocks(shard.tokens, starts, self.opts.seq_len, objective, tok.cls_id, tok.sep_id)

    def _word_starts(self, shard: TokenShard, starts, objective: str) -> torch.Tensor | None:
        """The stored word-start flags of the same blocks, when whole-word masking uses them; else None."""
        if not self.word_flags or objective != "mlm":
            return None
        return gather_word_starts(shard.word_starts, starts, self.opts.seq_len, objective)

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, Any]:
        """The global batch of (step, micro) is drawn identically on every rank; each keeps its own rows."""
        objective = self.objective_at(step)
        span = block_span(self.opts.seq_len, objective)
        draw = step * 1_000 + micro
        starts = sample_starts(len(self.train), span, self.batch_size * world, self.seed, draw)
        ids = self._blocks(self.train, starts, objective)
        if objective == "clm":
            return {"objective": "clm", "input_ids": rank_slice(ids, rank, world)}
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        corrupted, labels = self.masker(ids, None, gen, self._word_starts(self.train, starts, objective))
        return {"objective": "mlm", "input_ids": rank_slice(corrupted, rank, world),
                "labels": rank_slice(labels, rank, world)}

    def tokens(self, batch: dict[str, Any]) -> int:
        return batch["input_ids"].numel()

    def targets(self, batch: dict[str, Any]) -> int:
        """The predictions the batch's loss averages over: masked tokens (MLM), every next token of a block (CLM)."""
        if batch["objective"] == "mlm":
            return int((batch["labels"] != IGNORE_INDEX).sum())
        rows, length = batch["input_ids"].shape
        return rows * (length - 1)

    def evaluate(self, model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager]) -> dict:
        """Validation loss and perplexity per objective (MLM: masked-token loss under a fixed masking seed)."""
        device = device_of(model)
        metrics: dict[str, float] = {}
        for objective in self.objectives():
            span = block_span(self.opts.seq_len, objective)
            starts = eval_starts(len(self.val), span, self.opts.eval_blocks)
            gen = torch.Generator().manual_seed(EVAL_MASK_SEED)
            total, count = 0.0, 0
            for i in range(0, len(starts), self.opts.eval_batch_size):
                part = starts[i:i + self.opts.eval_batch_size]
                ids = self._blocks(self.val, part, objective)
                with autocast():
                    if objective == "mlm":
                        corrupted, labels = self.masker(ids, None, gen, self._word_starts(self.val, part, objective))
                        n = int((labels != -100).sum())
                        loss = mlm_loss(model, corrupted.to(device), labels.to(device))
                    else:
                        n = ids.numel() - ids.size(0)
                        loss = clm_loss(model, ids.to(device))
                total += float(loss) * n
                count += n
            value = total / max(count, 1)
            prefix = "val" if len(self.objectives()) == 1 else f"val_{objective}"
            metrics[f"{prefix}_loss"] = value
            metrics[f"{prefix}_ppl"] = math.exp(min(value, 50.0))
        return metrics


def attention_for(objective: str) -> str:
    """The mask kind a model trained with ``objective`` uses by default at inference."""
    return ATTENTION_FOR.get(objective, "causal")
