"""FSDP2 and sharded (DCP) checkpoints: same losses as DDP and one process, resharding, atomic saves, no pickle.

The tests marked ``dist`` launch several CPU processes with torchrun (gloo); `make test-dist` runs them alone.
The others run in this process, FSDP on a one-rank gloo group.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import REPO, losses, prepared_corpus
from twinlm import checkpoint as ckpt
from twinlm import distributed as parallel
from twinlm import runfolder
from twinlm.cli import build_parser, train_config
from twinlm.config import ModelConfig
from twinlm.errors import CheckpointError, ConfigError
from twinlm.loading import load
from twinlm.model import LanguageModel
from twinlm.objectives import clm_loss
from twinlm.pretrain import ObjectiveLoss
from twinlm.tensorfiles import read_safetensors
from twinlm.train import TrainConfig, build_optimizer

# Losses of runs that differ only in how the same global batch is split over processes: the sums are taken in
# another order, so they agree to float32 rounding; metrics.jsonl keeps 6 decimals. Measured over 20 steps: at
# most 2e-6 (FSDP vs DDP) and 1e-6 (FSDP vs one process).
TOLERANCE = 1e-4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


def pretrain_args(data: Path, objective: str, steps: int, *extra: str) -> list[str]:
    # MLM masks each token with probability 0.15, so ranks and micro-batches hold different numbers of masked
    # tokens: the losses below agree only because the trainer weighs each micro-batch by its share of the step's
    # masked tokens (Trainer._weights).
    return ["pretrain", "--objective", objective, "--data", str(data), "--preset", "tiny", "--seq-len", "32",
            "--log-every", "1", "--no-progress", "--eval-every", "1000", "--eval-blocks", "8", "--warmup-steps", "3",
            "--lr", "3e-3", "--max-steps", str(steps), "--device", "cpu", *extra]


def twinlm(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`twinlm ARGS` in one process (nproc 1) or under torchrun on ``nproc`` processes."""
    launch = [sys.executable, "-m", "twinlm.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
        "-m", "twinlm.cli"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def assert_same_curve(a: dict[int, float], b: dict[int, float], steps: range) -> None:
    assert [s for s in steps if s in a] == list(steps) and [s for s in steps if s in b] == list(steps)
    worst = max(abs(a[s] - b[s]) for s in steps)
    print(f"max |loss difference| over steps {steps.start}-{steps.stop - 1}: {worst:.2g}")  # shown by pytest -rP
    assert worst <= TOLERANCE * max(1.0, *(abs(a[s]) for s in steps)), (worst, a, b)


# --------------------------------------------------------------------------- in this process


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=61, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=64,
                                 attention="causal", type_vocab_size=2), **kw})


@pytest.fixture
def one_rank():
    """A one-process gloo group (FSDP and DCP need one), torn down after the test."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def trained_sharded(steps: int = 2):
    """(model, optimizer, loss module): a tiny CLM sharded with FSDP on the current group, trained a few steps."""
    torch.manual_seed(0)
    model = LanguageModel(tiny_config())
    loss_module = parallel.shard(model, ObjectiveLoss(model), torch.device("cpu"), "fp32")
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    ids = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss_module("clm", ids).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, loss_module


def whole(t: torch.Tensor) -> torch.Tensor:
    """A DTensor shard's whole tensor; a plain tensor's copy."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def plain_state(model) -> dict[str, torch.Tensor]:
    return {k: whole(v) for k, v in model.state_dict().items()}


def test_sharded_checkpoint_resumes_whole_and_converts_without_unpickling(tmp_path, one_rank, monkeypatch):
    model, opt, _ = trained_sharded()
    expected = {k: v.clone() for k, v in plain_state(model).items()}
    moments = {name: {k: whole(v) for k, v in opt.state[p].items()} for name, p in model.named_parameters()}
    folder = parallel.save_sharded(tmp_path / "checkpoint-0000002", model, opt, config=model.config, tokenizer=None,
                                   trainer_state={"step": 2})
    dist.destroy_process_group()  # loaded below by one plain process with no group at all
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == ["config.json", "manifest.json", "shards/shard-00001-model-00001-of-00001.safetensors",
                     "trainer_state.json"]

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint file was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    torch.manual_seed(5)
    fresh = LanguageModel(tiny_config())
    fresh_opt = build_optimizer(fresh, TrainConfig(lr=1e-2))
    where, state = parallel.resume_state("auto", tmp_path, fresh, fresh_opt)
    assert where == folder and state == {"step": 2}
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    for name, p in fresh.named_parameters():
        assert set(fresh_opt.state[p]) == set(moments[name])
        assert all(torch.equal(fresh_opt.state[p][k], v) for k, v in moments[name].items())
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

    for where in (folder, tmp_path):  # the checkpoint, or its run folder: one line that says what to do
        with pytest.raises(CheckpointError, match="sharded .* twinlm convert --from-sharded"):
            load(where, tokenizer_required=False)
    out = parallel.consolidate(folder, tmp_path / "whole")
    loaded = load(out, tokenizer_required=False)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    _, optim_state, _ = ckpt.load_training_state(out)
    fresh_opt.load_state_dict(optim_state)  # the converted optimizer state is an ordinary, index-keyed one
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(clm_loss(loaded.model, ids))


def test_a_failed_sharded_save_leaves_the_previous_checkpoint(tmp_path, one_rank):
    model, opt, _ = trained_sharded(steps=1)
    folder = tmp_path / "checkpoint-0000001"
    parallel.save_sharded(folder, model, opt, config=model.config, tokenizer=None, trainer_state={"step": 1})
    shard_file = next((folder / "shards").iterdir())
    before = read_safetensors(shard_file)

    class BrokenTokenizer:
        def save(self, where):
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="previous checkpoint is untouched"):
        parallel.save_sharded(folder, model, opt, config=model.config, tokenizer=BrokenTokenizer(),
                              trainer_state={"step": 1})
    ckpt.verify_checkpoint(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000001"]  # no temp folder left behind
    after = read_safetensors(shard_file)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_a_sharded_checkpoint_of_another_model_is_refused_by_name(tmp_path, one_rank):
    model, opt, _ = trained_sharded(steps=1)
    folder = parallel.save_sharded(tmp_path / "checkpoint-0000001", model, opt, config=model.config,
                                   tokenizer=None, trainer_state={"step": 1})
    other = LanguageModel(tiny_config(d_ff=32))
    with pytest.raises(CheckpointError, match=r"'backbone\.blocks\.0\.ffn\.\w+\.weight' has shape"):
        parallel.resume_state(str(folder), tmp_path, other, build_optimizer(other, TrainConfig()))
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        parallel.consolidate(tmp_path, tmp_path / "out")


def test_an_ordinary_checkpoint_resumes_into_fsdp_shards(tmp_path, one_rank):
    torch.manual_seed(0)
    model = LanguageModel(tiny_config())
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    ids = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(1))
    clm_loss(model, ids).backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path / "checkpoint-0000001", model_state=model.state_dict(), config=model.config,
                         trainer_state={"step": 1}, optimizer_state=opt.state_dict())
    sharded, sharded_opt, _ = trained_sharded(steps=0)
    where, state = parallel.resume_state("auto", tmp_path, sharded, sharded_opt)
    assert state == {"step": 1}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain_state(sharded).items())
    for (name, p), q in zip(model.named_parameters(), sharded.parameters(), strict=True):
        assert all(torch.equal(whole(sharded_opt.state[q][k]), v) for k, v in opt.state[p].items()), name


def test_activation_checkpointing_keeps_losses_and_gradients_and_names():
    torch.manual_seed(0)
    a = LanguageModel(tiny_config(dropout=0.1))
    b = LanguageModel(tiny_config(dropout=0.1))
    b.load_state_dict(a.state_dict())
    assert parallel.checkpoint_blocks(b) == 2 and parallel.checkpoint_blocks(b) == 0  # once per block
    assert list(a.state_dict()) == list(b.state_dict())
    ids = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for model in (a, b):
        torch.manual_seed(7)  # dropout draws the same masks; the recomputation replays them
        loss = clm_loss(model, ids)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(results[0][1], results[1][1], strict=True))


def test_strategy_flags_reach_the_train_config_and_bad_ones_are_refused(data):
    args = build_parser().parse_args(pretrain_args(data, "mlm", 5, "--strategy", "fsdp",
                                                   "--activation-checkpointing", "--out", "x"))
    cfg = train_config(args)
    assert (cfg.strategy, cfg.activation_checkpointing) == ("fsdp", True)
    cfg.validate()
    with pytest.raises(ConfigError, match="--strategy 'zero'"):
        TrainConfig(strategy="zero").validate()
    with pytest.raises(ConfigError, match="--compile with --strategy fsdp"):
        TrainConfig(strategy="fsdp", compile=True).validate()
    default = train_config(build_parser().parse_args(pretrain_args(data, "mlm", 5, "--out", "x")))
    assert (default.strategy, default.activation_checkpointing) == ("ddp", False)


# --------------------------------------------------------------------------- several processes (torchrun)


@pytest.mark.dist
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_fsdp_ddp_and_one_process_give_the_same_losses(tmp_path, data, objective):
    """20 steps, global batch 8 rows x 2 accumulated micro-batches, split 2 x 4 (FSDP, DDP) or 1 x 8."""
    common = pretrain_args(data, objective, 20, "--grad-accum", "2", "--save-every", "10")
    # the MLM run also recomputes its activations: the same numbers, less memory
    ac = ["--activation-checkpointing"] if objective == "mlm" else []
    twinlm(2, *common, "--batch-size", "4", "--strategy", "fsdp", *ac, "--out", str(tmp_path / "fsdp"))
    twinlm(2, *common, "--batch-size", "4", "--strategy", "ddp", "--out", str(tmp_path / "ddp"))
    twinlm(1, *common, "--batch-size", "8", "--out", str(tmp_path / "one"))
    fsdp, ddp, one = (losses(tmp_path / name) for name in ("fsdp", "ddp", "one"))
    steps = range(1, 21)
    assert_same_curve(fsdp, ddp, steps)
    assert_same_curve(fsdp, one, steps)
    assert fsdp[20] < fsdp[1] - 0.3  # it learnt something, the same thing
    sharded = runfolder.latest_checkpoint(tmp_path / "fsdp")
    assert parallel.is_sharded(sharded) and len(list((sharded / "shards").iterdir())) == 2
    assert not parallel.is_sharded(runfolder.latest_checkpoint(tmp_path / "ddp"))
    # `twinlm convert --from-sharded` gives an ordinary model folder holding the weights DDP arrived at
    twinlm(1, "convert", "--from-sharded", str(sharded), "--out", str(tmp_path / "model"))
    got = load(tmp_path / "model").model.state_dict()
    want = load(tmp_path / "ddp").model.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-4) for k in want)


@pytest.mark.dist
def test_saved_on_4_processes_resumes_on_2_and_on_1(tmp_path, data):
    """The loss curve after resuming a 4-rank sharded checkpoint on 2 ranks or 1 process is the uninterrupted one."""
    common = pretrain_args(data, "mlm", 12, "--save-every", "6", "--keep-last", "5")
    twinlm(4, *common, "--batch-size", "2", "--strategy", "fsdp", "--out", str(tmp_path / "full"))
    saved = tmp_path / "full" / "checkpoint-0000006"
    assert len(list((saved / "shards").iterdir())) == 4
    full = losses(tmp_path / "full")
    for nproc, batch in ((2, "4"), (1, "8")):
        run = tmp_path / f"on{nproc}"
        run.mkdir()
        shutil.copytree(saved, run / saved.name)
        done = twinlm(nproc, *common, "--batch-size", batch, "--strategy", "fsdp", "--resume", "auto",
                      "--out", str(run))
        assert f"resumed from {run / saved.name} at step 6" in done.stdout
        assert_same_curve(losses(run), full, range(7, 13))
        assert parallel.is_sharded(run / "checkpoint-0000012") == (nproc > 1)


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` (a child of the launcher with RANK in its environment)."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
    return None


@pytest.mark.dist
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc (Linux)")
def test_sigkill_of_one_rank_during_a_sharded_save_leaves_the_last_checkpoint(tmp_path, data):
    run = tmp_path / "run"
    args = pretrain_args(data, "clm", 400, "--batch-size", "2", "--strategy", "fsdp", "--save-every", "1",
                         "--keep-last", "2")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "twinlm.cli", *args]
    proc = subprocess.Popen([*launch, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO, env=ENV)
    deadline, victim, caught = time.time() + 180, None, None
    try:
        # every step saves; wait for a complete checkpoint, then for the next save's temp folder, then kill rank 1
        while caught is None:
            assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
            victim = victim or _worker_pid(proc.pid, 1)
            if victim and runfolder.list_checkpoints(run):
                caught = next((p for p in run.glob(".checkpoint-*.tmp-*") if (p / "shards").is_dir()), None)
            time.sleep(0.002)
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
        names = [p.name for p in runfolder.list_checkpoints(run)]
        print(f"killed rank 1 while {caught.name} was written; temp left: {caught.exists()}; checkpoints: {names}")
    finally:
        if proc.poll() is None:
            proc.kill()
    # nothing half-written carries a checkpoint's name: every checkpoint-* folder verifies, byte for byte
    survivors = runfolder.list_checkpoints(run)
    assert survivors
    for folder in survivors:
        ckpt.verify_checkpoint(folder, deep=True)
    last = survivors[-1]
    step = int(last.name.split("-")[1])
    # it loads, and the run resumes from it, sweeping away the dead save's temp folder
    parallel.consolidate(last, tmp_path / "model")
    assert load(tmp_path / "model").model is not None
    resume_args = pretrain_args(data, "clm", step + 2, "--batch-size", "2", "--strategy", "fsdp",
                                "--save-every", "1000")
    done = twinlm(2, *resume_args, "--resume", "auto", "--out", str(run))
    assert f"resumed from {last} at step {step}" in done.stdout
    assert not list(run.glob(".checkpoint-*.tmp-*"))
    assert max(losses(run)) == step + 2


@pytest.mark.dist
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_distributed_fine_tuning_keeps_a_whole_best_model_that_scores_as_logged(tmp_path, strategy):
    """A task head on the shards (the unused LM head too): each epoch's evaluation gathers the weights, and best/
    is written whole: re-scored on its own it gives the metrics logged for it."""
    from twinlm.tokenizer import train_tokenizer

    words = {1: ["good", "great", "lovely"], 0: ["bad", "awful", "dull"]}
    filler = ["the", "film", "was", "a", "story", "plot", "very", "with"]
    (tmp_path / "c.txt").write_text(" ".join(filler + words[0] + words[1]))
    tok = train_tokenizer([tmp_path / "c.txt"], kind="wordpiece", vocab_size=100, min_frequency=1)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, n_layers=2, d_model=32, n_heads=4, d_ff=64,
                                      max_positions=64, pad_token_id=tok.pad_id))
    ckpt.save_model(tmp_path / "base", model_state=model.state_dict(), config=model.config, tokenizer=tok)
    for name, n in (("train", 96), ("dev", 32)):
        rows = ["sentence\tlabel"] + [f"{filler[i % 8]} {words[i % 2][i % 3]} {filler[(i * 5) % 8]}\t{i % 2}"
                                      for i in range(n)]
        (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    twinlm(2, "finetune", "--task", "classify", "--init", str(tmp_path / "base"), "--train",
           str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "dev.tsv"), "--epochs", "2", "--batch-size", "4",
           "--max-seq-len", "16", "--lr", "3e-3", "--no-progress", "--device", "cpu", "--strategy", strategy,
           "--out", str(out))
    logged = json.loads((out / "best_metrics.json").read_text())
    # DDP once failed here: the unused LM head left DDP waiting for gradients that never came
    assert parallel.is_sharded(runfolder.latest_checkpoint(out)) == (strategy == "fsdp")
    assert not parallel.is_sharded(out / "best")
    twinlm(1, "evaluate", "--task", "classify", "--model", str(out / "best"), "--data", str(tmp_path / "dev.tsv"),
           "--out", str(tmp_path / "scored.json"))
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert abs(scored["accuracy"] - logged["accuracy"]) < 1e-9 and abs(scored["f1"] - logged["f1"]) < 1e-9
