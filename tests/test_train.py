"""The training loop: determinism, exact resume after SIGKILL, 2-process DDP, NaN guard, budget, schedule."""

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
from twinlm.config import ModelConfig
from twinlm.errors import TrainingDiverged
from twinlm.model import LanguageModel
from twinlm.pipelines import load_pretrained
from twinlm.pretrain import PretrainOptions
from twinlm.runs import pretrain_run
from twinlm.train import TrainConfig, Trainer, lr_at, param_groups

SMALL = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--log-every", "1", "--no-progress",
         "--eval-every", "1000", "--lr", "3e-3", "--warmup-steps", "5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=3, eval_every=6, save_every=6, log_every=1,
                seed=3, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("objective", ["mlm", "clm", "hybrid"])
def test_same_seed_same_loss_curve_and_loss_goes_down(tmp_path, data, objective):
    opts = PretrainOptions(objective=objective, seq_len=32, hybrid="mlm:1,clm:1" if objective == "hybrid" else None)
    a = pretrain_run(data, tmp_path / "a", "tiny", opts, _cfg(max_steps=30, eval_every=30))
    b = pretrain_run(data, tmp_path / "b", "tiny", opts, _cfg(max_steps=30, eval_every=30))
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert la == lb and len(la) == 30
    assert a.metrics == b.metrics
    first, last = sum(list(la.values())[:3]) / 3, sum(list(la.values())[-3:]) / 3
    assert last < first - 0.3, (first, last)
    keys = {"val_mlm_loss", "val_clm_loss"} if objective == "hybrid" else {"val_loss", "val_ppl"}
    assert keys <= set(a.metrics)
    assert (tmp_path / "a" / "loss_curve.png").stat().st_size > 1000
    model, tok = load_pretrained(tmp_path / "a")
    assert model.config.vocab_size == tok.vocab_size


def test_hybrid_alternates_objective_on_the_same_weights(data):
    from twinlm.pretrain import PretrainTask
    from twinlm.tokenizer import load_tokenizer

    task = PretrainTask(data, load_tokenizer(data), PretrainOptions("hybrid", 32, hybrid="clm:1,mlm:2,clm:1"),
                        256, 4, 8, 0)
    kinds = [task.batch(s, 0, 0, 1)["objective"] for s in range(8)]
    assert kinds == ["clm", "clm", "mlm", "mlm", "mlm", "mlm", "clm", "clm"]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, data):
    args = ["pretrain", "--objective", "mlm", "--data", str(data), *SMALL, "--max-steps", "150",
            "--save-every", "20"]
    full = subprocess.run([sys.executable, "-m", "twinlm.cli", *args, "--out", str(tmp_path / "full")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "twinlm.cli", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + 120
    while not (run / "checkpoint-0000040" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run))
    assert killed_at < 150, "the kill came too late to test anything"
    resumed = subprocess.run([sys.executable, "-m", "twinlm.cli", *args, "--out", str(run), "--resume", "auto"],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert losses(run) == losses(tmp_path / "full")  # every step, bit for bit
    a, _ = load_pretrained(run)
    b, _ = load_pretrained(tmp_path / "full")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, data):
    common = ["pretrain", "--objective", "clm", "--data", str(data), "--preset", "tiny", "--seq-len", "32",
              "--log-every", "1", "--no-progress", "--eval-every", "1000", "--max-steps", "8", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "twinlm.cli", *common, "--batch-size", "8",
                             "--out", str(tmp_path / "one")], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "twinlm.cli", *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4 * max(1.0, abs(one[step])), (step, one[step], two[step])
    assert len(ckpt.list_checkpoints(tmp_path / "two")) == 1  # only rank 0 wrote


class _NaNAfter:
    """A task whose loss turns NaN at a given step."""

    def __init__(self, bad_step: int) -> None:
        self.bad_step, self.step = bad_step, 0

    def loss_module(self, model):
        task = self

        class Loss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, step):
                loss = self.model(input_ids).float().pow(2).mean()
                return loss * float("nan") if step >= task.bad_step else loss

        return Loss()

    def batch(self, step, micro, rank, world):
        return {"input_ids": torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(step)),
                "step": step}

    def tokens(self, batch):
        return 16

    def evaluate(self, model, autocast):
        return {"val_loss": 1.0}


def _micro_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=50, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_positions=16))


def test_nan_guard_stops_without_writing_a_bad_checkpoint(tmp_path):
    trainer = Trainer(_micro_model(), _NaNAfter(bad_step=5), _cfg(max_steps=10, save_every=2), tmp_path)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 6"):
        trainer.train()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names[-1] == "checkpoint-0000004"  # the last good one, nothing after the NaN
    state = ckpt.load_model_state(tmp_path / names[-1])
    assert all(torch.isfinite(t).all() for t in state.values())


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    trainer = Trainer(_micro_model(), _NaNAfter(bad_step=10**9), _cfg(max_steps=10**6, time_budget=0.5), tmp_path)
    result = trainer.train()
    assert result.stopped_early == "time budget reached"
    assert 0 < result.step < 10**6
    assert result.checkpoint == ckpt.latest_checkpoint(tmp_path)


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_no_weight_decay_on_norms_and_biases():
    model = _micro_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bf16_autocast_step_tracks_fp32(tmp_path, data):
    from twinlm.pretrain import PretrainTask
    from twinlm.tokenizer import load_tokenizer

    task = PretrainTask(data, load_tokenizer(data), PretrainOptions("clm", 32), 256, 4, 1, 0)
    result = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig(vocab_size=load_tokenizer(data).vocab_size, n_layers=1, d_model=32,
                                          n_heads=2, d_ff=64, max_positions=64))
        trainer = Trainer(model, task, _cfg(max_steps=1, dtype=dtype, eval_every=1), tmp_path / dtype)
        result[dtype] = trainer.train().metrics["val_loss"]
    assert result["fp32"] != result["bf16"]  # autocast really ran in bf16
    assert abs(result["fp32"] - result["bf16"]) < 0.05


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager(tmp_path, data):
    """--compile changes the speed, not the maths: the same losses as eager, and the compile time is logged apart."""
    opts = PretrainOptions(objective="clm", seq_len=32)
    eager = pretrain_run(data, tmp_path / "eager", "tiny", opts, _cfg(max_steps=4, eval_every=100))
    compiled = pretrain_run(data, tmp_path / "compiled", "tiny", opts, _cfg(max_steps=4, eval_every=100, compile=True))
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-3 for k in a), (a, b)
    assert compiled.compile_s is not None and compiled.compile_s > 0 and eager.compile_s is None
    rows = [json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert any("compile_s" in r for r in rows)
