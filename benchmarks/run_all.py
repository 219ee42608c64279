"""Run every benchmark script in this folder in turn (each prints JSON lines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for script in sorted(HERE.glob("*.py")):
        if script.name != "run_all.py":
            subprocess.run([sys.executable, str(script)], check=True)
