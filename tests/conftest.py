"""Shared fixtures: deterministic torch, and the path of ../shared/data when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
# Tests never touch the network: hf:ORG/NAME resolution and transformers stay on the local cache (tests that
# exercise a download replace the hub client with a fake).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $TWINLM_SHARED_DATA."""
    env = os.environ.get("TWINLM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set TWINLM_SHARED_DATA to point at shared/data)")
    return path
