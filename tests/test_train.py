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

from helpers import REPO, losses, prepared_corpus
from twinlm import checkpoint as ckpt
from twinlm import runfolder
from twinlm.config import ModelConfig
from twinlm.errors import ConfigError, TrainingDiverged
from twinlm.model import LanguageModel
from twinlm.pipelines import load_pretrained
from twinlm.pretrain import ObjectiveLoss, PretrainOptions, PretrainTask
from twinlm.runs import pretrain_run
from twinlm.train import InterruptGuard, TrainConfig, Trainer, _due, lr_at, param_groups

SMALL = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--log-every", "1", "--no-progress",
         "--eval-every", "1000", "--lr", "3e-3", "--warmup-steps", "5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


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
    assert len(runfolder.list_checkpoints(tmp_path / "two")) == 1  # only rank 0 wrote


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


class _FixedMLM:
    """Fixed MLM micro-batches (rows of 8 tokens): two of them accumulated, or the same rows as one batch."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.parts = parts

    def loss_module(self, model):
        return ObjectiveLoss(model)

    def batch(self, step, micro, rank, world):
        ids, labels = self.parts[micro]
        return {"objective": "mlm", "input_ids": ids, "labels": labels}

    def tokens(self, batch):
        return batch["input_ids"].numel()

    def targets(self, batch):
        return PretrainTask.targets(self, batch)

    def evaluate(self, model, autocast):
        return {}


def _one_step(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of one training step and the gradients the optimizer was handed."""
    grads: dict[str, torch.Tensor] = {}
    trainer.optimizer.step = lambda: grads.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    loss, _ = trainer._train_step()
    return loss, grads


def test_accumulated_micro_batches_average_over_all_masked_tokens(tmp_path):
    """1 masked token in one micro-batch and 7 in the other: the step is the mean over the 8, as one batch of both."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (4, 8), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[0, 3] = ids[0, 3]
    labels[2:, 1:5] = ids[2:, 1:5]
    labels[3, 4:] = -100
    labels[3, 1] = -100  # rows 2-3: 4 + 3 = 7 masked tokens
    ids = torch.where(labels != -100, torch.full_like(ids, 4), ids)
    split = [(ids[:2], labels[:2]), (ids[2:], labels[2:])]
    got = {}
    for name, parts, accum in (("accumulated", split, 2), ("whole", [(ids, labels)], 1)):
        cfg = _cfg(max_steps=1, grad_accum=accum, batch_size=2, grad_clip=0.0)
        got[name] = _one_step(Trainer(_micro_model(), _FixedMLM(parts), cfg, tmp_path / name))
    (loss_a, grads_a), (loss_w, grads_w) = got["accumulated"], got["whole"]
    assert loss_a == pytest.approx(loss_w, rel=1e-5)
    assert grads_a.keys() == grads_w.keys() and grads_a
    assert all(torch.allclose(grads_a[k], grads_w[k], atol=1e-6) for k in grads_w)
    # what equal weights (the mean of the two micro-batch means) would have given instead
    model = _micro_model()
    means = [float(ObjectiveLoss(model)("mlm", i, lb).detach()) for i, lb in split]
    assert abs(sum(means) / 2 - loss_w) > 0.01


def test_layer_wise_lr_decay_scales_each_layer_update(tmp_path):
    """--layer-lr-decay d: block i of n steps at lr * d**(n-i), the embeddings at d**(n+1), the rest at lr. Adam's
    first step moves each weight by about lr_scale * lr (m / sqrt(v) = sign of the gradient), so the moves show it."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=50, n_layers=3, d_model=16, n_heads=2, d_ff=32, max_positions=16))
    expect = {"backbone.tok_emb.weight": 0.5 ** 4, "backbone.pos_emb.weight": 0.5 ** 4,
              "backbone.blocks.0.attn.qkv.weight": 0.5 ** 3, "backbone.blocks.1.ffn.up.bias": 0.5 ** 2,
              "backbone.blocks.2.attn.out.weight": 0.5, "head.bias": 1.0}
    groups = param_groups(model, 0.1, 0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale) == len(list(model.parameters()))
    assert {n: scale[n] for n in expect} == expect
    ids = torch.randint(5, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.where(torch.rand(4, 8, generator=torch.Generator().manual_seed(2)) < 0.5, ids, -100)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(max_steps=1, batch_size=4, grad_clip=0.0, weight_decay=0.0, warmup_steps=0, lr=1e-3,
               layer_lr_decay=0.5)
    Trainer(model, _FixedMLM([(ids, labels)]), cfg, tmp_path)._train_step()
    for name, want in expect.items():
        moved = (dict(model.named_parameters())[name].detach() - before[name]).abs()
        moved = moved[moved > 0]  # rows no gradient reached (unused token embeddings) stay put
        assert moved.median().item() == pytest.approx(1e-3 * want, rel=0.05), name
    with pytest.raises(ConfigError, match="--layer-lr-decay"):
        TrainConfig(layer_lr_decay=0.0).validate()


def test_nan_guard_stops_without_writing_a_bad_checkpoint(tmp_path):
    trainer = Trainer(_micro_model(), _NaNAfter(bad_step=5), _cfg(max_steps=10, save_every=2), tmp_path)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 6"):
        trainer.train()
    names = [p.name for p in runfolder.list_checkpoints(tmp_path)]
    assert names[-1] == "checkpoint-0000004"  # the last good one, nothing after the NaN
    state = ckpt.load_model_state(tmp_path / names[-1])
    assert all(torch.isfinite(t).all() for t in state.values())


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    trainer = Trainer(_micro_model(), _NaNAfter(bad_step=10**9), _cfg(max_steps=10**6, time_budget=0.5), tmp_path)
    result = trainer.train()
    assert result.stopped_early == "time budget reached"
    assert 0 < result.step < 10**6
    assert result.checkpoint == runfolder.latest_checkpoint(tmp_path)


def _rows(run: Path, key: str) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def _saved(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in runfolder.list_checkpoints(run)]


def test_due_is_a_multiple_and_none_is_never():
    assert [s for s in range(1, 13) if _due(s, 4)] == [4, 8, 12]
    assert not any(_due(s, None) for s in range(1, 13))


@pytest.mark.parametrize("name", ["eval_every", "save_every"])
def test_every_is_a_positive_step_count_or_none(name):
    TrainConfig(**{name: None}).validate()
    TrainConfig(**{name: 1}).validate()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match=name.replace("_", "-")):
            TrainConfig(**{name: bad}).validate()


@pytest.mark.parametrize("eval_every, save_every, evals, saves", [
    (4, 3, [4, 8, 10], [3, 6, 9, 10]),  # periodic, plus the final evaluation and checkpoint at max_steps
    (None, None, [10], [10]),  # None: nothing periodic, only the final evaluation and checkpoint
    (5, 5, [5, 10], [5, 10]),  # max_steps on the schedule: evaluated and saved once, not twice
])
def test_schedule_logs_evaluates_and_saves_at_exactly_the_due_steps(tmp_path, eval_every, save_every, evals, saves):
    cfg = _cfg(max_steps=10, eval_every=eval_every, save_every=save_every, log_every=4, keep_last=20)
    result = Trainer(_micro_model(), _NaNAfter(bad_step=10**9), cfg, tmp_path).train()
    assert _rows(tmp_path, "loss") == [4, 8, 10]  # log_every, plus the last step
    assert _rows(tmp_path, "val_loss") == evals
    assert _saved(tmp_path) == saves
    assert result.step == 10 and result.stopped_early is None and result.metrics == {"val_loss": 1.0}


def test_early_stopping_keeps_the_best_and_saves_where_it_stopped(tmp_path):
    cfg = _cfg(max_steps=20, eval_every=2, save_every=3, keep_last=20, best_metric="val_loss",
               greater_is_better=False, patience=2)
    result = Trainer(_micro_model(), _NaNAfter(bad_step=10**9), cfg, tmp_path).train()
    # The first evaluation sets the best; the constant metric then gains nothing at steps 4 and 6: patience is out.
    assert result.step == 6 and result.stopped_early.startswith("early stopping: no gain in val_loss")
    assert _rows(tmp_path, "val_loss") == [2, 4, 6]
    assert _saved(tmp_path) == [3, 6]
    assert json.loads((tmp_path / "best_metrics.json").read_text())["step"] == 2


def test_interrupt_guard_turns_ctrl_c_into_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with InterruptGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C does not break out either
        time.sleep(0.01)
        assert guard.requested
    assert signal.getsignal(signal.SIGINT) is before
    with InterruptGuard(enabled=False) as off:  # DDP ranks: the handler is left alone
        assert signal.getsignal(signal.SIGINT) is before and not off.requested


class _CtrlCAt(_NaNAfter):
    """A finite-loss task that presses Ctrl-C once, while the batch of a given step is being built."""

    def __init__(self, press_at: int | None) -> None:
        super().__init__(bad_step=10**9)
        self.press_at = press_at

    def batch(self, step, micro, rank, world):
        if step == self.press_at:
            self.press_at = None
            os.kill(os.getpid(), signal.SIGINT)
        return super().batch(step, micro, rank, world)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    cfg = dict(max_steps=8, eval_every=None, save_every=None)
    full = Trainer(_micro_model(), _CtrlCAt(None), _cfg(**cfg), tmp_path / "full")
    full.train()
    stopped = Trainer(_micro_model(), _CtrlCAt(3), _cfg(**cfg), tmp_path / "run").train()
    assert stopped.stopped_early == "interrupted" and stopped.step == 4  # step 4 (index 3) ran to its end
    run = tmp_path / "run"
    assert stopped.checkpoint == runfolder.latest_checkpoint(run) == runfolder.checkpoint_dir(run, 4)
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]
    resumed = Trainer(_micro_model(), _CtrlCAt(None), _cfg(**cfg), tmp_path / "run")
    assert resumed.train(resume="auto").step == 8
    assert losses(tmp_path / "run") == losses(tmp_path / "full")  # every step, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                 full.model.state_dict().values(), strict=True))


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
