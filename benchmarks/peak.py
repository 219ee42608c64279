"""The machine's dense matmul ceiling, the denominator of every case's utilisation.

    python benchmarks/peak.py

Prints one JSON line: fp32 GFLOP/s of square matmuls at a few sizes with torch's threads, bf16 likewise (on CPUs
without bf16 matrix units it is emulated and far slower, so the fp32 figure is the peak there), and the best.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, measure_peak_gflops, versions  # noqa: E402


def main() -> None:
    fp32 = {n: measure_peak_gflops(torch.float32, n=n, seconds=1.5) for n in (512, 1024, 2048)}
    bf16 = {256: measure_peak_gflops(torch.bfloat16, n=256, seconds=0.5)}
    best = max(max(fp32.values()), max(bf16.values()))
    emit({"case": "peak", "fp32_gflops_by_size": fp32, "bf16_gflops_by_size": bf16,
          "fp32_peak_gflops": max(fp32.values()), "peak_gflops": best,
          "peak_dtype": "fp32" if best == max(fp32.values()) else "bf16", **versions()})


if __name__ == "__main__":
    main()
