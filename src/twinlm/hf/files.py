"""Reading a Hugging Face model folder: config.json and its weights (safetensors, sharded, or a weights-only .bin).

Nothing here unpickles arbitrary objects: safetensors files go through :func:`twinlm.tensorfiles.read_safetensors`
and a ``pytorch_model.bin`` is read only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..tensorfiles import read_safetensors
from .names import SUPPORTED_FAMILIES


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The parsed config.json of a Hugging Face model folder, with a supported ``model_type``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder; pass a Hugging Face model folder")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json here; a Hugging Face model folder needs one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported; twinlm imports {', '.join(SUPPORTED_FAMILIES)}"
        )
    return data


def is_hf_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a config.json written by Hugging Face (any model_type other than twinlm's)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type", "twinlm") != "twinlm"


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, loaded only with weights_only=True (tensors and plain containers, no code)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, others for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: it cannot be loaded with torch.load(weights_only=True) ({first}); twinlm never "
            "unpickles arbitrary objects; convert it to model.safetensors where you trust it"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return dict(state)


def _load_index(index: Path, loader: Callable[[Path], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint listed by a *.index.json weight_map."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: shard '{shard}' is missing")
        state.update(loader(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index}: tensor '{missing[0]}' is listed but absent from its shard")
    return state


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder: model.safetensors, a sharded index, or a weights-only pytorch_model.bin."""
    folder = Path(folder)
    candidates = [
        ("model.safetensors", read_safetensors),
        ("model.safetensors.index.json", lambda p: _load_index(p, read_safetensors)),
        ("pytorch_model.bin", _load_torch_bin),
        ("pytorch_model.bin.index.json", lambda p: _load_index(p, _load_torch_bin)),
    ]
    for name, loader in candidates:
        if (folder / name).is_file():
            return loader(folder / name)
    raise CheckpointError(
        f"{folder}: no weights here; looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin"
    )
