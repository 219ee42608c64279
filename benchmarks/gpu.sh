#!/usr/bin/env bash
# Training tokens/s and MFU of twinlm's GPT-2-124M-sized CLM and BERT-base-sized MLM on one GPU, as JSON lines.
# Run from the repository root: bash benchmarks/gpu.sh [extra gpu.py flags, e.g. --steps 50 --peak-tflops 989.5]
# twinlm need not be installed: src/ and benchmarks/ (for common.py) go on PYTHONPATH.
set -euo pipefail

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L
fi

export PYTHONPATH="src:benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# gpu.py keeps both cases within --budget-s (270 s by default); the timeout is the backstop that holds the
# whole run under 5 minutes even if a compile hangs. Rows already printed survive a kill.
timeout --signal=TERM --kill-after=5 290 python3 benchmarks/gpu.py --case all "$@"
