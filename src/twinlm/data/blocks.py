"""Packed training blocks read at random offsets from a memory-mapped token shard.

The batch of optimizer step s is a pure function of (seed, s): no sampler state to save, so a resumed run reads
exactly the blocks the uninterrupted run would have read, and under DDP every rank derives the same global batch
and keeps its own slice (rank r of W takes rows r*B .. (r+1)*B-1), which makes 2 processes with batch B equal one
process with batch 2B.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def block_span(seq_len: int, objective: str) -> int:
    """Corpus tokens per block: MLM blocks spend two positions on [CLS] and [SEP]."""
    return seq_len - 2 if objective == "mlm" else seq_len


def check_shard_size(n_tokens: int, seq_len: int, objective: str, where: str) -> None:
    """A shard must hold at least one block."""
    if n_tokens < block_span(seq_len, objective) + 1:
        raise ConfigError(
            f"{where}: {n_tokens} tokens is less than one block of seq_len={seq_len}; lower --seq-len or add text"
        )


def sample_starts(n_tokens: int, span: int, count: int, seed: int, step: int) -> np.ndarray:
    """``count`` random block offsets for ``step``, the same on every call and every rank."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - span + 1, size=count)


def gather_blocks(tokens: np.ndarray, starts: np.ndarray, seq_len: int, objective: str,
                  cls_id: int, sep_id: int) -> torch.Tensor:
    """(len(starts), seq_len) int64 ids. MLM blocks are [CLS] + text + [SEP]; CLM blocks are plain text."""
    span = block_span(seq_len, objective)
    rows = np.stack([np.asarray(tokens[s:s + span], dtype=np.int64) for s in starts])
    if objective == "mlm":
        rows = np.concatenate(
            [np.full((len(rows), 1), cls_id), rows, np.full((len(rows), 1), sep_id)], axis=1
        )
    return torch.from_numpy(rows)


def gather_word_starts(flags: np.ndarray, starts: np.ndarray, seq_len: int, objective: str) -> torch.Tensor:
    """(len(starts), seq_len) bool: the word-start flags of the rows gather_blocks reads at the same ``starts``.

    MLM's [CLS] and [SEP] frame counts as starts. A block may begin inside a word; its first token then reads as a
    continuation here, and the masker starts a word there anyway (it follows [CLS], a special token).
    """
    span = block_span(seq_len, objective)
    rows = np.stack([np.asarray(flags[s:s + span], dtype=bool) for s in starts])
    if objective == "mlm":
        frame = np.ones((len(rows), 1), dtype=bool)
        rows = np.concatenate([frame, rows, frame], axis=1)
    return torch.from_numpy(rows)


def eval_starts(n_tokens: int, span: int, max_blocks: int) -> np.ndarray:
    """Non-overlapping offsets spread evenly over the validation shard: a fixed evaluation set."""
    available = n_tokens // span
    if available == 0:
        return np.zeros(0, dtype=np.int64)
    count = min(available, max_blocks)
    stride = available // count
    return np.arange(count, dtype=np.int64) * stride * span


def rank_slice(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a global batch."""
    per = batch.size(0) // world
    return batch[rank * per:(rank + 1) * per]


def validate_seq_len(seq_len: int, max_positions: int) -> None:
    """seq_len must fit the model's position table."""
    if seq_len > max_positions:
        raise ConfigError(
            f"--seq-len {seq_len} is above the model's max_positions={max_positions}; "
            f"lower --seq-len or pick a preset with more positions"
        )
    if seq_len < 4:
        raise ConfigError(f"--seq-len {seq_len} is too short; use at least 4")
