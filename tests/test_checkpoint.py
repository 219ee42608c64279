"""Checkpoints: round trips, bit-exact resume, and every way a checkpoint can be damaged or interrupted."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from twinlm import checkpoint as ckpt
from twinlm.checkpoint import (
    load_model_state,
    load_training_state,
    save_checkpoint,
    save_model,
    verify_checkpoint,
)
from twinlm.config import ModelConfig
from twinlm.errors import CheckpointError
from twinlm.runfolder import checkpoint_dir, latest_checkpoint, list_checkpoints, prune_checkpoints
from twinlm.trainstate import (
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
    restore_rng_state,
    rng_state_to_json,
)


class DummyTokenizer:
    """Anything with save(folder) counts as a tokenizer."""

    def save(self, folder: str | Path) -> None:
        (Path(folder) / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')


class MarkerOnUnpickle:
    """Unpickling this creates a marker folder, so a test can prove nothing was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def make_optim(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return opt, sched


def train_steps(model: nn.Module, opt, sched, start: int, n: int) -> None:
    for step in range(start, start + n):
        g = torch.Generator().manual_seed(step)  # same batches on both sides of the resume
        x = torch.randn(5, 4, generator=g)
        y = torch.randn(5, 3, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def save_simple(folder: Path, seed: int = 0, step: int = 1) -> dict[str, torch.Tensor]:
    model = make_model(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(folder, model_state=state, config=ModelConfig(), trainer_state={"step": step})
    return state


def scratch_entries(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


def test_round_trip(tmp_path: Path) -> None:
    model = make_model()
    opt, sched = make_optim(model)
    train_steps(model, opt, sched, 0, 2)
    config = ModelConfig(n_layers=3, extra={"origin": "test"})
    trainer_state = {"step": 2, "data_position": [3, 17], "metrics": {"loss": 1.25}, "rng": rng_state_to_json()}
    folder = save_checkpoint(
        checkpoint_dir(tmp_path, 2),
        model_state=model.state_dict(),
        config=config,
        tokenizer=DummyTokenizer(),
        trainer_state=trainer_state,
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
    )
    assert folder == tmp_path / "checkpoint-0000002"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "optimizer.safetensors",
        "manifest.json",
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "twinlm-checkpoint" and manifest["version"] == 1
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["files"]["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    verify_checkpoint(folder)

    loaded = load_model_state(folder)
    expected = model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert ModelConfig.load(folder) == config

    got_trainer, got_opt, got_sched = load_training_state(folder)
    assert got_trainer == trainer_state
    assert got_sched == json.loads(json.dumps(sched.state_dict()))
    assert got_opt is not None and got_opt["param_groups"][0]["betas"] == (0.9, 0.95)
    assert scratch_entries(tmp_path) == []


def test_optimizer_resume_is_bit_identical(tmp_path: Path) -> None:
    model = make_model()
    opt, sched = make_optim(model)
    train_steps(model, opt, sched, 0, 3)
    folder = save_checkpoint(
        checkpoint_dir(tmp_path, 3),
        model_state=model.state_dict(),
        config=ModelConfig(),
        trainer_state={"step": 3},
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
    )

    resumed = make_model(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(load_model_state(folder))
    r_opt, r_sched = make_optim(resumed)
    trainer_state, opt_state, sched_state = load_training_state(folder)
    assert trainer_state == {"step": 3}
    r_opt.load_state_dict(opt_state)
    r_sched.load_state_dict(sched_state)

    train_steps(model, opt, sched, 3, 3)
    train_steps(resumed, r_opt, r_sched, 3, 3)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert r_sched.get_last_lr() == sched.get_last_lr()


def test_optimizer_state_split_round_trip() -> None:
    model = make_model()
    opt, sched = make_optim(model)
    train_steps(model, opt, sched, 0, 1)
    original = opt.state_dict()
    tensors, json_part = optimizer_state_to_safetensors(original)
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(tensors)
    json.dumps(json_part)  # the JSON half must really be JSON
    back = optimizer_state_from_safetensors(tensors, json.loads(json.dumps(json_part)))
    assert back["param_groups"] == original["param_groups"]
    assert back["state"].keys() == original["state"].keys()
    for idx, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(back["state"][idx][key], value)


def test_truncated_model_file_is_detected_and_skipped(tmp_path: Path) -> None:
    first = save_simple(checkpoint_dir(tmp_path, 10), seed=0)
    save_simple(checkpoint_dir(tmp_path, 20), seed=1)
    newest = checkpoint_dir(tmp_path, 20)
    weights = newest / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])

    for call in (lambda: verify_checkpoint(newest), lambda: load_model_state(newest)):
        with pytest.raises(CheckpointError, match="truncated") as info:
            call()
        assert "model.safetensors" in str(info.value) and str(newest) in str(info.value)

    with pytest.warns(UserWarning, match="checkpoint-0000020.*truncated"):
        found = latest_checkpoint(tmp_path)
    assert found == checkpoint_dir(tmp_path, 10)
    loaded = load_model_state(found)
    assert all(torch.equal(loaded[k], v) for k, v in first.items())


def test_flipped_byte_is_corrupted(tmp_path: Path) -> None:
    folder = checkpoint_dir(tmp_path, 1)
    save_simple(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    pos = 8 + header_len + 5  # inside the tensor data, so the file still parses
    data[pos] ^= 0xFF
    weights.write_bytes(bytes(data))

    verify_checkpoint(folder, deep=False)  # same size: only the hash can tell
    with pytest.raises(CheckpointError, match="corrupted") as info:
        verify_checkpoint(folder)
    assert "model.safetensors" in str(info.value)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model_state(folder)
    load_model_state(folder, verify=False)  # explicit opt-out still reads the (damaged) numbers
    with pytest.warns(UserWarning, match="corrupted"):
        assert latest_checkpoint(tmp_path) is None


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    folder = checkpoint_dir(tmp_path, 1)
    save_simple(folder)
    (folder / "manifest.json").unlink()
    for call in (
        lambda: verify_checkpoint(folder),
        lambda: load_model_state(folder),
        lambda: load_training_state(folder),
    ):
        with pytest.raises(CheckpointError, match="incomplete") as info:
            call()
        assert str(folder) in str(info.value)


def test_folder_without_manifest_loads_when_exported_by_hand(tmp_path: Path) -> None:
    state = make_model().state_dict()
    save_file(dict(state), str(tmp_path / "model.safetensors"))
    ModelConfig().save(tmp_path)
    loaded = load_model_state(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_full_disk_while_overwriting_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = checkpoint_dir(tmp_path, 5)
    original = save_simple(folder, seed=0, step=5)
    real_save_file = ckpt.save_file

    def full_disk_save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # leave a half-written file, as a full disk would
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk_save_file)
    model = make_model(seed=7)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint(folder, model_state=model.state_dict(), config=ModelConfig(), trainer_state={"step": 6})
    assert "previous checkpoint is untouched" in str(info.value) and str(folder) in str(info.value)
    monkeypatch.undo()

    verify_checkpoint(folder)
    loaded = load_model_state(folder)
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
    assert load_training_state(folder)[0] == {"step": 5}
    assert scratch_entries(tmp_path) == []


def test_full_disk_at_manifest_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = checkpoint_dir(tmp_path, 5)
    original = save_simple(folder, seed=0, step=5)
    real_write_text = ckpt._write_text

    def failing_write_text(path: Path, text: str) -> None:
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_text(path, text)

    monkeypatch.setattr(ckpt, "_write_text", failing_write_text)
    with pytest.raises(CheckpointError, match="untouched"):
        save_simple(folder, seed=3, step=6)
    monkeypatch.undo()

    verify_checkpoint(folder)
    assert load_training_state(folder)[0] == {"step": 5}
    loaded = load_model_state(folder)
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
    assert scratch_entries(tmp_path) == []


def test_full_disk_on_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        save_simple(checkpoint_dir(tmp_path, 1))
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_save_keeps_previous(tmp_path: Path) -> None:
    folder = checkpoint_dir(tmp_path, 1)
    original = save_simple(folder, seed=0, step=1)
    # a child process overwrites the checkpoint and is killed half-way through writing the weights
    script = textwrap.dedent(
        f"""
        import os, signal
        import torch
        from twinlm import checkpoint as ckpt
        from twinlm.config import ModelConfig

        def killed(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)

        ckpt.save_file = killed
        state = {{"w": torch.ones(3)}}
        ckpt.save_checkpoint({str(folder)!r}, model_state=state, config=ModelConfig(), trainer_state={{"step": 2}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = scratch_entries(tmp_path)
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]

    assert list_checkpoints(tmp_path) == [folder]
    assert latest_checkpoint(tmp_path) == folder
    assert load_training_state(folder)[0] == {"step": 1}
    assert all(torch.equal(load_model_state(folder)[k], v) for k, v in original.items())

    save_simple(folder, seed=2, step=3)  # the next save sweeps up the dead process's temp folder
    assert scratch_entries(tmp_path) == []


def test_pickle_renamed_to_safetensors_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled-marker"
    folder = tmp_path / "model"
    folder.mkdir()
    ModelConfig().save(folder)
    payload = pickle.dumps(MarkerOnUnpickle(str(marker)))
    pickle.loads(payload)  # prove the payload really would leave the marker ...
    assert marker.exists()
    marker.rmdir()  # ... then reset and check the loader never does
    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_state(folder)
    assert not marker.exists()

    # the same inside a checkpoint whose manifest was rewritten to match the swapped file,
    # so verification passes and only the safetensors reader stands between the file and pickle
    ck = checkpoint_dir(tmp_path / "run", 1)
    save_simple(ck)
    (ck / "model.safetensors").write_bytes(payload)
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    (ck / "manifest.json").write_text(json.dumps(manifest))
    verify_checkpoint(ck)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_state(ck)
    assert not marker.exists()


def test_torch_save_file_is_rejected(tmp_path: Path) -> None:
    ModelConfig().save(tmp_path)
    torch.save(make_model().state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model_state(tmp_path)


def test_shared_storage_is_refused(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    with pytest.raises(CheckpointError, match="shares storage"):
        save_model(tmp_path / "m", model_state={"a": w, "b": w}, config=ModelConfig())
    assert not (tmp_path / "m").exists() and scratch_entries(tmp_path) == []


def test_save_model_has_no_trainer_files(tmp_path: Path) -> None:
    state = make_model().state_dict()
    folder = save_model(tmp_path / "export", model_state=state, config=ModelConfig(), tokenizer=DummyTokenizer())
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "manifest.json",
    }
    verify_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a resumable checkpoint"):
        load_training_state(folder)


def test_list_and_prune(tmp_path: Path) -> None:
    for step in (3, 1, 12, 7):
        save_simple(checkpoint_dir(tmp_path, step), step=step)
    (tmp_path / ".checkpoint-0000020.tmp-999999999").mkdir()  # pid that cannot exist: stale
    (tmp_path / f".checkpoint-0000021.tmp-{os.getpid()}").mkdir()  # a live save: must survive
    (tmp_path / ".checkpoint-0000005.old-999999999").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "checkpoint-notes.txt").write_text("not a checkpoint")

    assert list_checkpoints(tmp_path) == [checkpoint_dir(tmp_path, s) for s in (1, 3, 7, 12)]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 12)

    prune_checkpoints(tmp_path, keep_last=2)
    assert list_checkpoints(tmp_path) == [checkpoint_dir(tmp_path, 7), checkpoint_dir(tmp_path, 12)]
    assert scratch_entries(tmp_path) == [f".checkpoint-0000021.tmp-{os.getpid()}"]
    assert (tmp_path / "logs").is_dir()


def test_prune_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_simple(checkpoint_dir(tmp_path, step), step=step)
    (checkpoint_dir(tmp_path, 3) / "manifest.json").unlink()  # the newest is broken
    prune_checkpoints(tmp_path, keep_last=1)
    # step 2 is the newest complete one; the broken newer one is left for inspection
    assert list_checkpoints(tmp_path) == [checkpoint_dir(tmp_path, 2), checkpoint_dir(tmp_path, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)


def test_rng_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _ = (random.random(), np.random.rand(), torch.rand(1), np.random.randn())  # move off the seeded start
    saved = json.loads(json.dumps(rng_state_to_json()))  # must survive trainer_state.json

    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(saved)
    got = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def test_checkpoint_dir_name(tmp_path: Path) -> None:
    assert checkpoint_dir(tmp_path, 42) == tmp_path / "checkpoint-0000042"
    assert checkpoint_dir(tmp_path, 12345678).name == "checkpoint-12345678"
    with pytest.raises(ValueError):
        checkpoint_dir(tmp_path, -1)
