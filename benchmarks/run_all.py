"""`make bench`: the quick benchmark cases in turn, each printing JSON lines.

The real-data fine-tuning runs (finetune_tasks.py) take many minutes each and are run by hand with a case name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = ["pretrain_throughput.py", "generation.py"]

if __name__ == "__main__":
    for script in QUICK:
        subprocess.run([sys.executable, str(HERE / script)], check=True)
