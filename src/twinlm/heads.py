"""Task heads on the shared backbone: thin modules that return (logits, loss).

Sequence classification pools the [CLS] state of a bidirectional backbone, or the last non-padding token of a
causal one (the only position that has seen the whole text), so both paradigms can be fine-tuned on the same task.
``pooling="mean"`` averages every real token's state instead: what sentence-embedding models such as
all-MiniLM-L6-v2 were trained to make meaningful (sentence-transformers' mean pooling).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .model import LanguageModel

TASKS = ("classify", "qa", "ner")
PROBLEMS = ("single_label", "multi_label", "regression")
POOLING = ("auto", "mean")  # auto: [CLS] (bidirectional) or the last real token (causal)


def pooled_rows(shape: tuple[int, ...], attention_mask: torch.Tensor | None, attention: str,
                device: torch.device) -> torch.Tensor:
    """(B,) the position a sequence head reads in each row: [CLS] (0) under bidirectional attention, the last real
    token under causal attention (the only position that has seen the whole text)."""
    B, T = shape[0], shape[1]
    if attention == "bidirectional":
        return torch.zeros(B, dtype=torch.long, device=device)
    if attention_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=device)
    return attention_mask.long().sum(1) - 1  # right padding: the last real token


def packed_rows(segment_ids: torch.Tensor, attention: str) -> torch.Tensor:
    """(N, 2) (row, position) of the position a sequence head reads in each of the N examples packed in the rows
    (segment ids 1, 2, ... per row, 0 for padding), in row-major order: an example's first token under
    bidirectional attention, its last under causal attention."""
    real = segment_ids != 0
    edge = torch.ones_like(real)
    if attention == "bidirectional":
        edge[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    else:
        edge[:, :-1] = segment_ids[:, :-1] != segment_ids[:, 1:]
    return (edge & real).nonzero()


def check_pooling(pooling: str, task: str) -> None:
    """An unknown pooling, or mean pooling for a task other than classification, is a ConfigError."""
    if pooling not in POOLING:
        raise ConfigError(f"--pooling {pooling!r} is unknown; choose one of {', '.join(POOLING)}")
    if pooling != "auto" and task != "classify":
        raise ConfigError(f"--pooling {pooling} applies to --task classify only, not {task}")


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the hidden states over each example's real tokens: (B, d) per row, or for packed rows (N, d) per
    example in row-major order (the order of packed_rows)."""
    if segment_ids is None:
        if attention_mask is None:
            return hidden.mean(1)
        keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
    B, T, d = hidden.shape
    k = int(segment_ids.max()) + 1
    slot = (torch.arange(B, device=hidden.device).unsqueeze(1) * k + segment_ids).flatten()  # (row, segment)
    sums = hidden.new_zeros(B * k, d).index_add_(0, slot, hidden.flatten(0, 1))
    counts = torch.bincount(slot, minlength=B * k)
    real = (counts > 0) & (torch.arange(B * k, device=hidden.device) % k != 0)  # segment 0 is padding
    return sums[real] / counts[real].unsqueeze(1).to(hidden.dtype)


class TaskModel(nn.Module):
    """A LanguageModel backbone plus one task head; ``config.extra['task']`` records the task and its labels."""

    def __init__(self, lm: LanguageModel, task: str, num_labels: int, problem: str = "single_label",
                 pooling: str = "auto") -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if problem not in PROBLEMS:
            raise ConfigError(f"unknown problem type {problem!r}; choose one of {', '.join(PROBLEMS)}")
        check_pooling(pooling, task)
        self.lm = lm
        self.task = task
        self.problem = problem
        self.pooling = pooling
        d = lm.config.d_model
        self.dropout = nn.Dropout(0.1)
        out = 2 if task == "qa" else (1 if problem == "regression" else num_labels)
        self.classifier = nn.Linear(d, out)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @property
    def config(self) -> ModelConfig:
        return self.lm.config

    @property
    def attention(self) -> str:
        return self.lm.config.attention

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 token_type_ids: torch.Tensor | None, rows: torch.Tensor | None = None,
                 **packed: torch.Tensor | None) -> torch.Tensor:
        kwargs: dict[str, Any] = {k: v for k, v in packed.items() if v is not None}
        if rows is not None:
            kwargs["rows"] = rows
        if token_type_ids is not None and self.lm.backbone.type_emb is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.lm.hidden(input_ids, attention_mask, attention=self.attention, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss). classify: (B, C); qa: (B, T, 2) start/end; ner: (B, T, C).

        segment_ids (and position_ids) mark several examples packed in each row (see Transformer.forward):
        classify then gives (N, C) for the N examples in row-major order, ner (B, T, C) as usual; qa is not packed.
        """
        packed = {"segment_ids": segment_ids, "position_ids": position_ids}
        if self.task == "classify" and self.pooling == "mean":
            hidden = mean_pooled(self.features(input_ids, attention_mask, token_type_ids, **packed), attention_mask,
                                 segment_ids)
            logits = self.classifier(self.dropout(hidden))
            return logits, None if labels is None else self._classification_loss(logits, labels)
        if self.task == "classify":
            # Only the pooled position is read, so the last block computes just that one (the same numbers).
            if segment_ids is None:
                rows = pooled_rows(input_ids.shape, attention_mask, self.attention, input_ids.device)
            else:
                rows = packed_rows(segment_ids, self.attention)
            hidden = self.features(input_ids, attention_mask, token_type_ids, rows, **packed)
            logits = self.classifier(self.dropout(hidden[:, 0]))
            return logits, None if labels is None else self._classification_loss(logits, labels)
        if self.task == "qa" and segment_ids is not None:
            raise ConfigError("question answering reads positions inside each window: its rows cannot be packed")
        hidden = self.features(input_ids, attention_mask, token_type_ids, **packed)
        logits = self.classifier(self.dropout(hidden))
        if self.task == "ner":
            loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                               ignore_index=-100)
            return logits, loss
        loss = None
        if start_positions is not None and end_positions is not None:
            start_logits, end_logits = logits.float().unbind(-1)
            if attention_mask is not None:  # padding can never be an answer boundary
                pad = ~attention_mask.bool()
                start_logits = start_logits.masked_fill(pad, -1e4)
                end_logits = end_logits.masked_fill(pad, -1e4)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=-100)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=-100)) / 2
        return logits, loss

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.problem == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if self.problem == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)


class TaskLoss(nn.Module):
    """What the trainer (and DDP) wraps: forward(**batch) -> loss."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.model(**batch)[1]
