"""data/blocks.py: block spans, MLM/CLM framing, sampled offsets as a pure function of (seed, step), rank slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinlm.data.blocks import (
    block_span,
    check_shard_size,
    eval_starts,
    gather_blocks,
    rank_slice,
    sample_starts,
    validate_seq_len,
)
from twinlm.errors import ConfigError

CLS, SEP = 1000, 1001
TOKENS = np.arange(500, dtype=np.uint16)  # token i has id i: a row's ids tell where it was read from


def test_block_span():
    assert block_span(16, "mlm") == 14  # [CLS] and [SEP] take two positions
    assert block_span(16, "clm") == 16
    assert block_span(16, "hybrid") == 16


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_check_shard_size_needs_one_block_plus_one(objective):
    span = block_span(16, objective)
    check_shard_size(span + 1, 16, objective, "train.bin")
    with pytest.raises(ConfigError, match=f"train.bin: {span} tokens is less than one block of seq_len=16"):
        check_shard_size(span, 16, objective, "train.bin")


def test_mlm_blocks_are_framed_with_cls_and_sep():
    starts = np.array([0, 7, 480])
    rows = gather_blocks(TOKENS, starts, 16, "mlm", CLS, SEP)
    assert rows.shape == (3, 16) and rows.dtype == torch.int64
    assert rows[:, 0].tolist() == [CLS] * 3 and rows[:, -1].tolist() == [SEP] * 3
    for row, s in zip(rows, starts, strict=True):
        assert row[1:-1].tolist() == list(range(s, s + 14))


@pytest.mark.parametrize("objective", ["clm", "hybrid"])
def test_clm_blocks_are_plain_text(objective):
    starts = np.array([3, 484])
    rows = gather_blocks(TOKENS, starts, 16, objective, CLS, SEP)
    assert rows.shape == (2, 16)
    assert rows.tolist() == [list(range(3, 19)), list(range(484, 500))]
    assert CLS not in rows and SEP not in rows


def test_gather_blocks_reads_a_memory_map(tmp_path):
    path = tmp_path / "shard.bin"
    TOKENS.tofile(path)
    shard = np.memmap(path, dtype=np.uint16, mode="r")
    torch.testing.assert_close(gather_blocks(shard, np.array([10, 20]), 8, "clm", CLS, SEP),
                               gather_blocks(TOKENS, np.array([10, 20]), 8, "clm", CLS, SEP))


def test_large_token_ids_survive():
    tokens = np.array([65535, 65534, 7, 8, 9], dtype=np.uint16)  # would turn negative as int16
    assert gather_blocks(tokens, np.array([0]), 4, "clm", CLS, SEP).tolist() == [[65535, 65534, 7, 8]]


# ------------------------------------------------------------------------------------------------ sampled starts


def test_sample_starts_is_a_pure_function_of_seed_and_step():
    a = sample_starts(10_000, 64, 32, seed=7, step=3)
    assert np.array_equal(a, sample_starts(10_000, 64, 32, seed=7, step=3))
    assert not np.array_equal(a, sample_starts(10_000, 64, 32, seed=7, step=4))
    assert not np.array_equal(a, sample_starts(10_000, 64, 32, seed=8, step=3))
    # the same whatever was sampled before it (no hidden generator state)
    np.random.seed(0)
    torch.manual_seed(0)
    sample_starts(10_000, 64, 5, seed=1, step=0)
    assert np.array_equal(a, sample_starts(10_000, 64, 32, seed=7, step=3))


def test_sample_starts_stay_inside_the_shard():
    n, span = 100, 30
    starts = np.concatenate([sample_starts(n, span, 64, seed=0, step=s) for s in range(50)])
    assert starts.min() >= 0 and starts.max() <= n - span
    assert starts.max() == n - span and starts.min() == 0  # both ends are reachable
    assert len(gather_blocks(np.arange(n), starts, span, "clm", CLS, SEP)) == len(starts)


def test_sample_starts_on_a_shard_of_exactly_one_block():
    assert sample_starts(30, 30, 4, seed=0, step=0).tolist() == [0, 0, 0, 0]


def test_a_resumed_run_reads_the_same_blocks():
    def batch(step: int) -> torch.Tensor:
        return gather_blocks(TOKENS, sample_starts(len(TOKENS), 14, 8, seed=5, step=step), 16, "mlm", CLS, SEP)

    uninterrupted = [batch(s) for s in range(6)]
    resumed = [batch(s) for s in range(3, 6)]  # a fresh process starting at step 3
    for a, b in zip(uninterrupted[3:], resumed, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(uninterrupted[0], uninterrupted[1])


# ------------------------------------------------------------------------------------------------------- ranks


def test_rank_slices_partition_the_global_batch():
    batch = torch.arange(12).view(6, 2)
    parts = [rank_slice(batch, r, 3) for r in range(3)]
    assert [p[:, 0].tolist() for p in parts] == [[0, 2], [4, 6], [8, 10]]
    assert torch.equal(torch.cat(parts), batch)
    assert torch.equal(rank_slice(batch, 0, 1), batch)


def test_two_ranks_with_batch_b_equal_one_rank_with_batch_2b():
    B = 4
    starts = sample_starts(len(TOKENS), 16, 2 * B, seed=3, step=11)
    global_batch = gather_blocks(TOKENS, starts, 16, "clm", CLS, SEP)
    per_rank = [rank_slice(global_batch, r, 2) for r in range(2)]
    assert all(p.shape == (B, 16) for p in per_rank)
    assert torch.equal(torch.cat(per_rank), global_batch)
    assert not torch.equal(per_rank[0], per_rank[1])


# -------------------------------------------------------------------------------------------------- evaluation


def test_eval_starts_are_fixed_evenly_spread_and_disjoint():
    starts = eval_starts(1000, 30, 10)
    assert len(starts) == 10 and np.array_equal(starts, eval_starts(1000, 30, 10))
    assert (np.diff(starts) >= 30).all()  # no two blocks overlap
    assert starts[0] == 0 and starts[-1] + 30 <= 1000
    assert np.array_equal(starts, np.arange(10) * 3 * 30)  # 33 blocks available, every third taken


def test_eval_starts_when_few_blocks_fit():
    assert eval_starts(95, 30, 10).tolist() == [0, 30, 60]
    assert len(eval_starts(29, 30, 10)) == 0


# -------------------------------------------------------------------------------------------------- seq length


def test_validate_seq_len():
    validate_seq_len(128, 128)
    validate_seq_len(4, 128)
    with pytest.raises(ConfigError, match="--seq-len 129 is above the model's max_positions=128"):
        validate_seq_len(129, 128)
    with pytest.raises(ConfigError, match="--seq-len 3 is too short"):
        validate_seq_len(3, 128)
