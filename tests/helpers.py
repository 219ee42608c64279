"""Small builders shared by tests: a prepared character-level corpus and CLI runners."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shakespeare_excerpt(n_chars: int = 60_000) -> str:
    """The first n_chars of the Tiny Shakespeare text embedded in the package."""
    with resources.files("twinlm").joinpath("assets/tinyshakespeare.txt.gz").open("rb") as f:
        return gzip.decompress(f.read()).decode()[:n_chars]


def prepared_corpus(folder: Path, kind: str = "char", n_chars: int = 60_000) -> Path:
    """Write an excerpt, train a tokenizer of ``kind`` on it and prepare shards in folder/data."""
    from twinlm.data.corpus import prepare_corpus
    from twinlm.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "corpus.txt"
    text.write_text(shakespeare_excerpt(n_chars))
    tok = train_tokenizer([text], kind=kind, vocab_size=400)
    prepare_corpus([text], tok, folder / "data", val_fraction=0.1, workers=1, progress=False)
    return folder / "data"


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m twinlm.cli ARGS` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "twinlm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


def peaked_model(vocab: int, kind: str = "causal", positions: int = 128, norm: str = "pre", seed: int = 0,
                 **extra):
    """A tiny untied model with weights scaled up 4x, so its outputs are peaked and depend on the context
    (a tied random model mostly predicts the token it just read)."""
    import torch

    from twinlm.config import ModelConfig
    from twinlm.model import LanguageModel

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=positions,
                      attention=kind, norm=norm, **{"tie_embeddings": False, **extra})
    model = LanguageModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def cached_logits(model, ids, prefix: int, past: list | None = None):
    """Logits of ``ids`` decoded through the KV cache: a prefill of ``prefix`` tokens, then one token per step.

    Returns (logits (B, T, vocab), the final cache) for comparison with one full forward pass.
    """
    import torch

    with torch.no_grad():
        hidden, cache = model.backbone(ids[:, :prefix], past=past)
        steps = [model.head(hidden)]
        for t in range(prefix, ids.size(1)):
            hidden, cache = model.backbone(ids[:, t:t + 1], past=cache)
            steps.append(model.head(hidden))
    return torch.cat(steps, dim=1), cache


def losses(run: Path) -> dict[int, float]:
    """step -> training loss, from a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
