"""benchmarks/gpu.py's CPU smoke path: two JSON rows whose FLOPs and MFU follow nanoGPT's estimate.

The parameter count is recomputed here from the row's config fields by hand, not from the model, so a change in
what the script counts (or in the backbone's parameters) shows up as a failure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = 1.0  # a CPU-sized peak, so the smoke run's MFU is a number in (0, 1)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")])}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--case", "all", "--device", "cpu",
           "--peak-tflops", str(PEAK_TFLOPS)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    parsed = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {row["case"]: row for row in parsed}


def expected_params(row: dict[str, Any]) -> int:
    """N as gpu.py documents it: all parameters but the position and token-type tables, tied embedding once."""
    V, D, L, F = row["vocab_size"], row["d_model"], row["n_layers"], row["d_ff"]
    assert row["bias"] and row["tie_embeddings"]  # the sum below assumes both
    per_layer = (3 * D * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D) + 2 * (2 * D)  # qkv, out, up, down, norms
    n = V * D + L * per_layer + 2 * D  # token embedding, blocks, the one final (pre) or embedding (post) norm
    n += V if row["head_bias"] else 0
    n += (D * D + D + 2 * D) if row["head_transform"] else 0
    return n


def test_two_rows_with_rates(rows: dict[str, dict[str, Any]]) -> None:
    assert sorted(rows) == ["clm", "mlm"]
    for row in rows.values():
        assert "error" not in row
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0
        assert row["timed_steps"] == 3 and not row["truncated_by_time_guard"]
        assert math.isfinite(row["loss"])
        assert row["peak_tflops"] == PEAK_TFLOPS
        assert 0 < row["mfu"] < 1
        assert row["mfu"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / (PEAK_TFLOPS * 1e12),
                                           rel=1e-2, abs=1e-4)


def test_flops_per_token_is_nanogpt_formula(rows: dict[str, dict[str, Any]]) -> None:
    for row in rows.values():
        n = expected_params(row)
        assert row["n_params_counted"] == n
        attention = 12 * row["n_layers"] * row["n_heads"] * row["head_dim"] * row["seq_len"]
        assert row["flops_per_token"] == 6 * n + attention


def test_case_shapes(rows: dict[str, dict[str, Any]]) -> None:
    clm, mlm = rows["clm"], rows["mlm"]
    assert clm["attention"] == "causal" and clm["norm"] == "pre"
    assert clm["vocab_size"] % 64 == 0 and clm["vocab_size"] >= clm["vocab_real"] and clm["vocab_padded"]
    assert mlm["attention"] == "bidirectional" and mlm["norm"] == "post"
    assert mlm["masked_per_row"] == round(0.15 * mlm["seq_len"])


def test_mlm_sparse_head_counts_only_masked_positions(rows: dict[str, dict[str, Any]]) -> None:
    mlm = rows["mlm"]
    V, D = mlm["vocab_size"], mlm["d_model"]
    head = V * D + V + (D * D + 3 * D)  # tied decoder, output bias, BERT's dense + norm transform
    assert mlm["head_params"] == head
    frac = mlm["masked_per_row"] / mlm["seq_len"]
    assert mlm["flops_per_token_sparse_head"] == mlm["flops_per_token"] - 6 * head + round(6 * head * frac)
    assert 0 < mlm["mfu_sparse_head"] < mlm["mfu"]
