"""Crash-safe checkpoints: safetensors and JSON only, written aside, renamed into place, with a manifest.

This module writes, verifies and loads one checkpoint or model folder. A run's folder of checkpoint-<step>
checkpoints is :mod:`twinlm.runfolder`; the optimizer and RNG state codecs are :mod:`twinlm.trainstate`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import CheckpointError
from .tensorfiles import read_safetensors
from .trainstate import (
    OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
)

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "twinlm-checkpoint"
VERSION = 1
TRAINER_STATE_FORMAT = "twinlm-trainer-state"

# Siblings left behind by a save or prune that was killed: ".<name>.tmp-<pid>" / ".<name>.old-<pid>".
_SCRATCH_RE = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)")
_CHUNK = 1 << 20
_INCOMPLETE = f"incomplete checkpoint (no {MANIFEST}): it was interrupted while saving"


# --------------------------------------------------------------------------- low-level file helpers


def _fsync_file(path: Path) -> None:
    """Flush one file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new names, renames) to the disk."""
    if os.name == "nt":  # Windows cannot open a folder for fsync; NTFS journals the metadata itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    """Write a text file and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large weights never sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_under(folder: Path) -> list[Path]:
    """Every regular file below ``folder`` (tokenizers may write sub-folders), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # unknown: err on the side of not deleting someone's work
    return True


def scratch_path(folder: Path, kind: str) -> Path:
    """This process's hidden "tmp" (being written) or "old" (being replaced or deleted) sibling of ``folder``."""
    return folder.parent / f".{folder.name}.{kind}-{os.getpid()}"


def remove_stale_scratch(parent: Path, name: str | None = None) -> None:
    """Delete temp/old folders and files of saves whose process died (SIGKILL, power loss) so they do not fill disks.

    A save killed between its two renames leaves the previous checkpoint only under its "old" name: when that
    checkpoint is complete and its own name is free, it is put back instead of deleted.
    """
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        m = _SCRATCH_RE.fullmatch(entry.name)
        if not m or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        if entry.is_dir():
            home = parent / m["name"]
            if entry.name.startswith(f".{m['name']}.old-") and not home.exists() and _complete(entry):
                os.rename(entry, home)
                continue
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():  # a file written aside by write_text_atomic
            entry.unlink(missing_ok=True)


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint or model folder whose manifest verifies."""
    try:
        verify_checkpoint(folder, deep=True)
    except CheckpointError:
        return False
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small text file (a log, a metrics file) in one step: a crash leaves the old or the new text."""
    path = Path(path)
    tmp = scratch_path(path, "tmp")
    try:
        _write_text(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- JSON helpers


def _json_default(value: Any) -> Any:
    """Turn numpy scalars into Python numbers; refuse anything else that JSON cannot hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serializable")


def _dumps(data: Any, what: str) -> str:
    """JSON text for ``data``, with an error that says which file could not be encoded."""
    try:
        return json.dumps(data, indent=2, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{what}: {exc}; only JSON values (numbers, strings, lists, dicts) can be stored"
        ) from None


def _read_json(path: Path) -> Any:
    """Parse a JSON file, turning any failure into a CheckpointError that names the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is corrupted") from None


# --------------------------------------------------------------------------- tensors


def _prepare_tensors(state: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies; refuse non-tensors and names that share storage."""
    out: dict[str, torch.Tensor] = {}
    owners: dict[tuple[str, int], str] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{what}: key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: '{name}' is a {type(value).__name__}, not a tensor")
        if value.numel() > 0:
            # safetensors cannot express aliasing; saving both silently would untie weights on load
            storage = value.untyped_storage()
            key = (str(value.device), storage.data_ptr())
            if key in owners:
                raise CheckpointError(
                    f"{what}: '{name}' shares storage with '{owners[key]}'; drop one of the tied names "
                    "from the state dict before saving"
                )
            owners[key] = name
        out[name] = value.detach().contiguous().cpu()
    return out


# --------------------------------------------------------------------------- saving


def _write_manifest(folder: Path) -> None:
    """Hash every file and write manifest.json last: its presence marks the checkpoint complete."""
    files = {}
    for path in _files_under(folder):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "version": VERSION, "files": files}
    _write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _atomic_save(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a checkpoint in a temp sibling with ``fill``, fsync it, and rename it onto ``folder``."""
    folder = Path(folder)
    parent, name = folder.parent, folder.name
    tmp = scratch_path(folder, "tmp")
    old = scratch_path(folder, "old")
    existed = folder.exists()
    moved_aside = False
    try:
        if existed and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(folder))
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # our own leftover from an earlier failed attempt in this process
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        for path in _files_under(tmp):  # also files written by config.save / tokenizer.save
            _fsync_file(path)
        _write_manifest(tmp)
        for sub in sorted({p.parent for p in _files_under(tmp)}, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(sub)
        if existed:
            if old.exists():
                shutil.rmtree(old)
            # no portable atomic swap of folders; between these two renames a crash leaves the old
            # checkpoint complete under `old`, which the next save of this name cleans up
            os.rename(folder, old)
            moved_aside = True
        os.rename(tmp, folder)
        moved_aside = False
        _fsync_dir(parent)
    except BaseException as exc:
        if moved_aside and not folder.exists():
            try:
                os.rename(old, folder)  # put the previous checkpoint back where it was
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: clean up but keep their meaning
            raise
        tail = "the previous checkpoint is untouched" if existed else "nothing was left behind"
        if _disk_full(exc):
            tail += f"; free some space on the disk holding {parent}, then run again"
        raise CheckpointError(f"could not write checkpoint {folder}: {exc}; {tail}") from exc
    if existed:
        shutil.rmtree(old, ignore_errors=True)
    remove_stale_scratch(parent, name)
    return folder


def _disk_full(exc: BaseException) -> bool:
    """Whether a write failed for lack of space (safetensors reports it as its own error type, not an OSError)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


def _model_filler(model_state: Mapping[str, torch.Tensor], config: ModelConfig, tokenizer: Any | None):
    """The part shared by checkpoints and model exports: weights, config, tokenizer."""
    if not isinstance(config, ModelConfig):
        raise CheckpointError(f"config must be a twinlm ModelConfig, got {type(config).__name__}")
    if tokenizer is not None and not callable(getattr(tokenizer, "save", None)):
        raise CheckpointError(f"tokenizer of type {type(tokenizer).__name__} has no save(folder) method")

    def fill(tmp: Path) -> None:
        tensors = _prepare_tensors(model_state, MODEL_FILE)
        # "format": "pt" is what Hugging Face loaders look for in safetensors metadata
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        config.save(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)

    return fill


def save_model(
    folder: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: Any | None = None,
) -> Path:
    """Atomically write a model folder (weights, config, tokenizer, manifest) for inference or export."""
    return _atomic_save(folder, _model_filler(model_state, config, tokenizer))


def save_checkpoint(
    folder: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: Any | None = None,
    trainer_state: dict | None = None,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
) -> Path:
    """Atomically write a resumable training checkpoint; the previous one survives any failure."""
    model_fill = _model_filler(model_state, config, tokenizer)

    def fill(tmp: Path) -> None:
        model_fill(tmp)
        opt_json = None
        if optimizer_state is not None:
            tensors, opt_json = optimizer_state_to_safetensors(optimizer_state)
            tensors = _prepare_tensors(tensors, OPTIMIZER_FILE)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
        doc = {
            "format": TRAINER_STATE_FORMAT,
            "version": VERSION,
            "trainer": trainer_state if trainer_state is not None else {},
            "optimizer": opt_json,
            "scheduler": scheduler_state,
        }
        _write_text(tmp / TRAINER_STATE_FILE, _dumps(doc, TRAINER_STATE_FILE))

    return _atomic_save(folder, fill)


# --------------------------------------------------------------------------- verifying and loading


def verify_checkpoint(folder: str | Path, deep: bool = True) -> None:
    """Raise CheckpointError unless every file in the manifest is present, full-size and (deep) unaltered."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: {_INCOMPLETE}")
    manifest = _read_json(manifest_path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(files, dict):
        raise CheckpointError(f"{manifest_path}: not a {FORMAT} manifest; the file is corrupted")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{manifest_path}: checkpoint format version {manifest.get('version')!r} is not supported "
            f"(this twinlm reads version {VERSION}); use the twinlm release that wrote it"
        )
    for rel, entry in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder}: file '{rel}' listed in {MANIFEST} is missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise CheckpointError(
                f"{folder}: file '{rel}' is truncated or altered "
                f"({size} bytes, manifest says {entry.get('bytes')})"
            )
        if deep and _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"{folder}: file '{rel}' is corrupted (sha256 does not match {MANIFEST})")


def _check_before_load(folder: Path, verify: bool) -> None:
    """Verify a folder that has a manifest; refuse a training checkpoint that lost it mid-save."""
    if not verify:
        return
    if (folder / MANIFEST).is_file():
        verify_checkpoint(folder, deep=True)
    elif (folder / TRAINER_STATE_FILE).exists():
        # only our saver writes trainer_state.json, and it always finishes with a manifest
        raise CheckpointError(f"{folder}: {_INCOMPLETE}")


def load_model_state(folder: str | Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint or model folder (a folder without manifest loads unverified)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model or checkpoint folder")
    _check_before_load(folder, verify)
    return read_safetensors(folder / MODEL_FILE)


def load_training_state(folder: str | Path, verify: bool = True) -> tuple[dict, dict | None, dict | None]:
    """(trainer_state, state dict for ``optimizer.load_state_dict``, scheduler state) of a checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    path = folder / TRAINER_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no {TRAINER_STATE_FILE}; it is a model export, not a resumable checkpoint"
        )
    _check_before_load(folder, verify)
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != TRAINER_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a twinlm trainer state file")
    optimizer = None
    if doc.get("optimizer") is not None:
        tensors = read_safetensors(folder / OPTIMIZER_FILE)
        optimizer = optimizer_state_from_safetensors(tensors, doc["optimizer"])
    return doc.get("trainer") or {}, optimizer, doc.get("scheduler")
