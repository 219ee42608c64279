"""`make bench`: every CPU case of the performance suite in turn, each printing JSON lines.

    python benchmarks/run_all.py [--only peak,train,nanogpt,encoder,generation]

Cases: peak (the machine's matmul ceiling), train (MLM and CLM pretraining steps vs transformers, with peak memory),
nanogpt (nanoGPT's character-level CPU recipe), encoder (MiniLM classification of SST-2 dev vs transformers),
generation (KV-cached greedy decoding vs transformers' generate). Each takes under ~3 minutes on a 2-core machine;
run nothing else meanwhile, the figures are wall-clock rates. The real-data fine-tuning runs (finetune_tasks.py) and
the GPU script (gpu.sh) are run by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = {
    "peak": ["peak.py"],
    "train": ["train_vs_hf.py"],
    "nanogpt": ["nanogpt_char.py"],
    "encoder": ["encoder_inference.py"],
    "generation": ["generation.py"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    failed = []
    for name in names:
        start = time.perf_counter()
        script, *extra = CASES[name]
        done = subprocess.run([sys.executable, str(HERE / script), *extra])
        print(f"# {name}: {time.perf_counter() - start:.0f} s" + ("" if done.returncode == 0 else " (FAILED)"),
              file=sys.stderr, flush=True)
        if done.returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"benchmark case(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
