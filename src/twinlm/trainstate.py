"""Training state beyond the weights, in pickle-free form: optimizer state as safetensors + JSON, RNG states as JSON."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

# The files a resumable checkpoint adds to a model folder; named here because the decoder's errors cite them.
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


# --------------------------------------------------------------------------- optimizer state <-> safetensors


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON form of ``value``: tensors move to ``tensors`` under ``key``; tuples are tagged to come back."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"optimizer state: '{key}' has non-string keys; cannot store it as JSON")
        return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"optimizer state: '{key}' is a {type(value).__name__}; cannot store it as JSON")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``_encode``."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            key = value["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"optimizer state: tensor '{key}' is missing from {OPTIMIZER_FILE}")
            return tensors[key]
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def optimizer_state_to_safetensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<index>.<name>``) and a JSON-able remainder."""
    if "state" not in state_dict or "param_groups" not in state_dict:
        raise CheckpointError(
            "optimizer state: expected a dict with 'state' and 'param_groups' (optimizer.state_dict())"
        )
    tensors: dict[str, torch.Tensor] = {}
    # torch keys per-parameter state by integer index; JSON object keys must be strings
    state = {str(idx): _encode(dict(s), f"state.{idx}", tensors) for idx, s in state_dict["state"].items()}
    groups = [
        _encode(dict(g), f"param_groups.{i}", tensors) for i, g in enumerate(state_dict["param_groups"])
    ]
    extra = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups")}
    json_part = {"state": state, "param_groups": groups}
    if extra:
        json_part["extra"] = _encode(extra, "extra", tensors)
    return tensors, json_part


def optimizer_state_from_safetensors(
    tensors: Mapping[str, torch.Tensor], json_part: Mapping[str, Any]
) -> dict:
    """Rebuild a state dict for ``optimizer.load_state_dict`` from the two halves."""
    try:
        state = {int(idx): _decode(s, tensors) for idx, s in json_part["state"].items()}
        groups = [_decode(g, tensors) for g in json_part["param_groups"]]
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"optimizer state in {TRAINER_STATE_FILE} is malformed ({exc!r})") from None
    out: dict[str, Any] = {"state": state, "param_groups": groups}
    out.update(_decode(json_part.get("extra", {}), tensors))
    return out


# --------------------------------------------------------------------------- RNG state


def rng_state_to_json() -> dict:
    """Python, numpy, torch CPU (and CUDA) generator states as plain JSON values."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back generator states captured by ``rng_state_to_json``."""
    try:
        if "python" in state:
            py = state["python"]
            random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        if "numpy" in state:
            n = state["numpy"]
            keys = np.asarray(n["keys"], dtype=np.uint32)
            np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        if "torch" in state:
            torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the saved random-number generator state is malformed ({exc!r})") from None
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn(
                "checkpoint has CUDA RNG states but CUDA is not available; they are not restored",
                stacklevel=2,
            )
            return
        count = torch.cuda.device_count()
        if count != len(cuda):
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} device(s), this machine has {count}; "
                "restoring the ones that match",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(torch.tensor(s, dtype=torch.uint8), device=i)
