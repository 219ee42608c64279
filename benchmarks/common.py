"""What every benchmark case shares: alternating A/B timing, summaries, peak RSS, versions, the machine's peak.

Each case prints one JSON object per line through ``emit``. Timings are never asserted anywhere: the suite is run by
hand and its output quoted.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from twinlm.model import LanguageModel

# ../shared/data beside the repository, or $TWINLM_SHARED_DATA (as the tests read it).
SHARED_DATA = Path(os.environ.get("TWINLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def emit(row: dict[str, Any]) -> None:
    """Print one JSON line (flushed, so a long suite shows each case as it ends)."""
    print(json.dumps(row), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux's VmHWM first: ru_maxrss survives exec, so a child started by a large parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def versions() -> dict[str, Any]:
    """Library versions and the thread count, so a quoted figure says what produced it."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def alternate(cases: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case, run A, B, A, B, ... so drift and noise hit both sides alike."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def rate_summary(seconds: list[float], units: float) -> dict[str, float]:
    """Units per second: median, min and max over the repetitions."""
    rates = [units / s for s in seconds]
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1)}


def measure_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.5) -> float:
    """Dense square matmul GFLOP/s on this machine with torch's threads: the ceiling that utilisation divides by."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool, caches
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return round(2 * n**3 * calls / (time.perf_counter() - start) / 1e9, 1)


_PEAK: dict[str, float] = {}


def peak_gflops() -> float:
    """The best of fp32 and bf16 dense matmul GFLOP/s, measured once per process (the 'peak' case)."""
    if "peak" not in _PEAK:
        _PEAK["fp32"] = measure_peak_gflops(torch.float32)
        # Without bf16 matrix units a bf16 matmul is emulated and far slower: a small size keeps this quick.
        _PEAK["bf16"] = measure_peak_gflops(torch.bfloat16, n=256, seconds=0.5)
        _PEAK["peak"] = max(_PEAK["fp32"], _PEAK["bf16"])
    return _PEAK["peak"]


def fp32_peak_gflops() -> float:
    """fp32 dense matmul GFLOP/s (the ceiling for the fp32 cases)."""
    peak_gflops()
    return _PEAK["fp32"]


def run_isolated(argv: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh interpreter and parse the JSON object it prints last.

    Peak RSS is per process, so memory is compared with each side alone in its own process.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"isolated run {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def counted_params(model: LanguageModel) -> int:
    """N for 6N: every parameter but the position and token-type tables (lookups, not matmuls); the tied token
    embedding counts once, as the LM head's matmul."""
    n = model.num_parameters()
    for table in (model.backbone.pos_emb, model.backbone.type_emb):
        if table is not None:
            n -= table.weight.numel()
    return n


def flops_per_token(model: LanguageModel, seq_len: int) -> int:
    """nanoGPT's training estimate: 6N for the matmuls' forward and backward, 12 L d T for attention."""
    c = model.config
    return 6 * counted_params(model) + 12 * c.n_layers * c.d_model * seq_len


def head_params(model: LanguageModel) -> int:
    """Parameters of the LM-head path (decoder matrix, bias, BERT's transform): used only where a loss is taken."""
    return model.head.weight.numel() + sum(p.numel() for p in model.head.parameters())


def hf_twin(model: LanguageModel, family: str) -> torch.nn.Module:
    """The transformers model of ``family`` ('bert' with its MLM head, or 'gpt2') holding ``model``'s weights."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from twinlm.hf import export_hf_state, hf_config_from

    cfg = {k: v for k, v in hf_config_from(model.config, family).items() if k not in ("model_type", "architectures")}
    if family == "bert":
        hf = BertForMaskedLM(BertConfig(**cfg))
    else:
        hf = GPT2LMHeadModel(GPT2Config(**cfg, bos_token_id=0, eos_token_id=0))
    missing, unexpected = hf.load_state_dict(export_hf_state(model, family), strict=False)
    # Tied decoder weights and GPT-2's causal-mask buffers are not in the exported state.
    tied = ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    assert not unexpected and all(k in tied or "attn.bias" in k for k in missing), (missing, unexpected)
    return hf
