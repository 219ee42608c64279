"""The one safetensors reader: twinlm checkpoints and Hugging Face folders both load tensors through it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import CheckpointError


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU; a missing or unreadable file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing; the folder is incomplete, save or download it again")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises Rust-side error types for every kind of bad file
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__  # the CLI prints errors as one line
        # safetensors never unpickles, so a pickle under this name is refused here rather than executed
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({reason}); the file is truncated, corrupted or in another "
            "format (a pickle is never read in its place); save or download it again"
        ) from None
