"""Faults on purpose: SIGKILL inside a checkpoint write, a really full disk (tmpfs), torn logs, NaN/inf losses and
gradients. The promise each test holds: no checkpoint on disk is ever unreadable or poisoned, a resumed run equals
the uninterrupted one bit for bit, and the user gets one clear line.

The NaN guard's documented behaviour is to *stop* on the first non-finite loss or gradient norm without saving (it
does not skip the step); the run is then rolled back by resuming from the last good checkpoint with --resume auto.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, prepared_corpus
from twinlm import checkpoint as ckpt
from twinlm import runfolder
from twinlm.cli import main
from twinlm.config import ModelConfig
from twinlm.errors import TrainingDiverged, TwinLMError
from twinlm.model import LanguageModel
from twinlm.train import TrainConfig, Trainer

SOAK = REPO / "benchmarks" / "soak.py"
SMALL = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--log-every", "1", "--no-progress",
         "--eval-every", "1000", "--lr", "3e-3", "--warmup-steps", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small train many times faster on one thread, most of all on a busy machine, where two
    threads keep waiting on each other. Every run being compared runs in this process, so with the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("corpus"), n_chars=20_000)


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without timing fields: what must be identical after a fault and a resume."""
    drop = ("elapsed_s", "tokens_per_s", "compile_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    x, y = ckpt.load_model_state(a), ckpt.load_model_state(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def scratch(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def dead_pid() -> int:
    """The id of a process that has exited (so scratch names with it count as left by a dead process)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------- kill and resume


def test_sigkill_inside_a_checkpoint_write_then_resume_is_exact(tmp_path, data, capsys):
    """The soak's child (the real CLI with a slowed checkpoint writer) is killed inside its second save; the
    earlier checkpoint stays readable, and `--resume auto` ends bit-identical to an uninterrupted run (those two
    run in this process, on one thread like the child)."""
    args = ["pretrain", "--objective", "clm", "--data", str(data), *SMALL, "--max-steps", "12", "--save-every", "4",
            "--dropout", "0.1"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    run, marker = tmp_path / "killed", tmp_path / "marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    child = [sys.executable, str(SOAK), "--child", str(marker), "0.2", "--", *args, "--out", str(run)]
    proc = subprocess.Popen(child, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=env)
    deadline = time.time() + 240
    while not (marker.exists() and marker.read_text().count("b") >= 2):  # the second save (step 8) has begun
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    time.sleep(0.3)  # inside the slowed writer: two of the checkpoint's files are fsynced by now
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    assert marker.read_text().endswith("b"), "the kill was meant to land inside the save"
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000004"]
    assert any(".checkpoint-0000008.tmp-" in name for name in scratch(run))  # the half-written one, aside
    ckpt.verify_checkpoint(run / "checkpoint-0000004")
    capsys.readouterr()
    assert main([*args, "--out", str(run), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "checkpoint-0000004" in out
    assert rows(run) == rows(tmp_path / "full")
    assert same_weights(run / "checkpoint-0000012", tmp_path / "full" / "checkpoint-0000012")
    assert scratch(run) == []  # the dead process's temporary folder went at the next start


def test_next_start_sweeps_scratch_and_puts_back_a_displaced_checkpoint(tmp_path):
    """A save killed between its two renames leaves the previous checkpoint only under its '.old-PID' name: the
    next start renames it back (it verifies), and deletes a half-written temp folder and a torn temp file."""
    model = micro_model()
    good = ckpt.save_checkpoint(tmp_path / "checkpoint-0000004", model_state=model.state_dict(),
                                config=model.config, trainer_state={"step": 4})
    pid = dead_pid()
    displaced = tmp_path / f".checkpoint-0000004.old-{pid}"
    os.rename(good, displaced)
    shutil.copytree(displaced, tmp_path / f".checkpoint-0000004.tmp-{pid}")  # complete, but not renamed yet
    half = tmp_path / f".checkpoint-0000008.tmp-{pid}"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / f".metrics.jsonl.tmp-{pid}").write_text('{"step": 1')
    mine = tmp_path / f".checkpoint-0000012.tmp-{os.getpid()}"  # a live process's save: not ours to touch
    mine.mkdir()
    ckpt.remove_stale_scratch(tmp_path)
    assert scratch(tmp_path) == [mine.name]
    assert runfolder.latest_checkpoint(tmp_path) == good
    assert ckpt.load_training_state(good)[0] == {"step": 4}


def test_a_log_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    """A kill (or a full disk) in the middle of appending to metrics.jsonl leaves half a line; resuming drops it,
    and the log ends equal to an uninterrupted run's."""
    full = Trainer(micro_model(), Fault(), cfg(max_steps=8, save_every=4), tmp_path / "full")
    full.train()
    run = tmp_path / "run"
    Trainer(micro_model(), Fault(), cfg(max_steps=8, save_every=4), run).train()
    shutil.rmtree(run / "checkpoint-0000008")  # as if killed after step 4's checkpoint ...
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "loss": 1.23')  # ... in the middle of a row
    resumed = Trainer(micro_model(), Fault(), cfg(max_steps=8, save_every=4), run)
    assert resumed.train(resume="auto").step == 8
    assert rows(run) == rows(tmp_path / "full")


# ----------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk (root only); yields (mount point, remount(size_bytes))."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    point = tmp_path / "disk"
    point.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)

    try:
        yield point, resize
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_full_during_a_save_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, small_disk,
                                                                                         capsys):
    point, resize = small_disk
    args = ["pretrain", "--objective", "mlm", "--data", str(data), *SMALL, "--max-steps", "6", "--save-every", "2",
            "--keep-last", "5"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    size = du(tmp_path / "full" / "checkpoint-0000002")
    assert size > 100_000
    resize(int(size * 1.6))  # room for one checkpoint and a half: the second save runs out of space
    run = point / "run"
    capsys.readouterr()
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twinlm: error: could not write checkpoint "), err
    assert "checkpoint-0000004" in err[0] and "No space left on device" in err[0] and "free some space" in err[0]
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000002"]
    assert same_weights(run / "checkpoint-0000002", tmp_path / "full" / "checkpoint-0000002")  # intact, loads
    assert scratch(run) == []
    resize(64 << 20)  # space freed: the run continues where it stopped
    assert main([*args, "--out", str(run), "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert scratch(run) == []
    assert rows(run) == rows(tmp_path / "full")
    assert same_weights(run / "checkpoint-0000006", tmp_path / "full" / "checkpoint-0000006")


def test_disk_filled_by_something_else_mid_run_is_one_line(tmp_path, small_disk):
    """Another program fills the disk during step 4: the log append or the save that follows fails with one line
    naming its file, and the checkpoint of step 2 stays complete."""
    point, resize = small_disk
    resize(1 << 20)
    run = point / "run"
    trainer = Trainer(micro_model(), Fault(fill=(3, point)), cfg(max_steps=6, save_every=2), run)
    with pytest.raises(TwinLMError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and ("metrics.jsonl" in message or "checkpoint-0000004" in message), message
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000002"]
    ckpt.verify_checkpoint(run / "checkpoint-0000002")
    assert scratch(run) == []


# ----------------------------------------------------------------------------------------------- NaN and inf


class Fault:
    """A tiny task whose loss, or one parameter's gradient, turns NaN/inf at chosen steps; ``fill`` fills the disk
    at a given step (step, folder)."""

    def __init__(self, loss_at: set[int] = frozenset(), grad_at: set[int] = frozenset(), value: float = float("nan"),
                 fill: tuple[int, Path] | None = None) -> None:
        self.loss_at, self.grad_at, self.value, self.fill = set(loss_at), set(grad_at), value, fill

    def loss_module(self, model):
        task = self

        class Loss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, step):
                logits = self.model(input_ids).float()
                if step in task.grad_at:  # finite loss, poisoned gradient: an overflow inside backward
                    logits.register_hook(lambda g: torch.full_like(g, task.value))
                loss = logits.pow(2).mean()
                return loss * task.value if step in task.loss_at else loss

        return Loss()

    def batch(self, step, micro, rank, world):
        if self.fill and step == self.fill[0]:
            fill_disk(self.fill[1])
        return {"input_ids": torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(step)),
                "step": step}

    def tokens(self, batch):
        return 16

    def evaluate(self, model, autocast):
        return {"val_loss": 1.0}


def fill_disk(point: Path) -> None:
    """Write a ballast file until the disk refuses another byte."""
    fd = os.open(point / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def micro_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=50, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_positions=16))


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=10, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=None, save_every=2, log_every=1,
                keep_last=20, seed=3, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def all_finite(folder: Path) -> bool:
    state = ckpt.load_model_state(folder)
    _, optim, _ = ckpt.load_training_state(folder)
    tensors = [*state.values(), *(t for s in optim["state"].values() for t in s.values() if torch.is_tensor(t))]
    return all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("where, value, words", [
    ("loss", float("nan"), "loss became nan at step 6"),
    ("loss", float("inf"), "loss became inf at step 6"),
    ("grad", float("nan"), "gradient norm became nan at step 6"),
    ("grad", float("inf"), "gradient norm became (inf|nan) at step 6"),  # inf * 0 inside backward is nan
])
@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_a_non_finite_step_stops_without_saving_and_resume_rolls_back(tmp_path, where, value, words, clip):
    """One bad step (index 5, the 6th): the run stops before the optimizer takes it, every checkpoint on disk is
    finite, and resuming without the fault ends bit-identical to a run that never had it."""
    fault = Fault(loss_at={5} if where == "loss" else set(), grad_at={5} if where == "grad" else set(), value=value)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=words) as info:
        Trainer(micro_model(), fault, cfg(grad_clip=clip), run).train()
    assert "stopped without saving" in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000002", "checkpoint-0000004"]
    assert all(all_finite(p) for p in runfolder.list_checkpoints(run))
    assert max(r["step"] for r in rows(run)) == 5  # step 5 ran and was logged; step 6 never happened
    clean = Trainer(micro_model(), Fault(), cfg(grad_clip=clip), tmp_path / "clean")
    clean.train()
    resumed = Trainer(micro_model(), Fault(), cfg(grad_clip=clip), run)
    assert resumed.train(resume="auto").step == 10
    assert rows(run) == rows(tmp_path / "clean")
    assert same_weights(run / "checkpoint-0000010", tmp_path / "clean" / "checkpoint-0000010")


def test_a_run_whose_loss_stays_nan_stops_with_one_line_and_no_poisoned_checkpoint(tmp_path, data, capsys,
                                                                                     monkeypatch):
    from twinlm.pretrain import ObjectiveLoss

    real = ObjectiveLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kw):  # from the 4th step on, every loss is NaN (a diverged run)
        calls["n"] += 1
        loss = real(self, *args, **kw)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(ObjectiveLoss, "forward", poisoned)
    run = tmp_path / "run"
    args = ["pretrain", "--objective", "clm", "--data", str(data), *SMALL, "--max-steps", "8", "--save-every", "2",
            "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twinlm: error: loss became nan at step 4; stopped without saving")
    assert str(run) in err[0]
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000002"]
    assert all_finite(run / "checkpoint-0000002")
    assert main([*args, "--resume", "auto"]) == 2  # still diverging: stops again, at the same place, same line
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("twinlm: error: loss became nan at step")
    assert [p.name for p in runfolder.list_checkpoints(run)] == ["checkpoint-0000002"]
