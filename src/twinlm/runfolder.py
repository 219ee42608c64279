"""A training run's folder of checkpoint-<step> checkpoints: naming, listing, the newest that verifies, pruning."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

from .checkpoint import remove_stale_scratch, scratch_path, verify_checkpoint
from .errors import CheckpointError

_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """The folder name for the checkpoint at ``step``: run_dir/checkpoint-0001234."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(run_dir) / f"checkpoint-{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint-<step> folders of a run, oldest step first (temp and old folders are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for entry in run_dir.iterdir():
        m = _CHECKPOINT_RE.fullmatch(entry.name)
        if m and entry.is_dir():
            found.append((int(m[1]), entry))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path, warn: bool = True) -> Path | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path, deep=True)
        except CheckpointError as exc:
            if warn:
                warnings.warn(f"skipping checkpoint {path}: {exc}", stacklevel=2)
            continue
        return path
    return None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (and broken ones older than those)."""
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    kept: list[Path] = []
    for path in reversed(checkpoints):
        if len(kept) == keep_last:
            break
        try:
            verify_checkpoint(path, deep=False)  # shallow: pruning runs every save, hashing would be slow
        except CheckpointError:
            continue
        kept.append(path)
    if keep_last > 0 and not kept:
        return  # nothing complete to fall back on: deleting anything could lose the only copy
    # broken checkpoints newer than the oldest kept one stay, so the user can inspect them
    oldest_kept = checkpoints.index(kept[-1]) if kept else len(checkpoints)
    for path in checkpoints[:oldest_kept]:
        # rename first so a crash mid-delete never leaves a half-deleted folder named like a checkpoint;
        # the scratch name lets a later save or prune sweep it up if this process dies here
        doomed = scratch_path(path, "old")
        if doomed.exists():
            shutil.rmtree(doomed)
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    remove_stale_scratch(run_dir)
