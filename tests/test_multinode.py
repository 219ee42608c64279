"""Multi-node: two torchrun launches with --nnodes 2, one process each, meeting over loopback (c10d rendezvous).

The README's recipe, run as two "nodes" on this machine: they train together (FSDP, sharded checkpoint in the
shared output folder) and both end on the same model.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, prepared_corpus
from twinlm import distributed as parallel
from twinlm import runfolder

STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.dist
def test_two_nodes_over_loopback_train_together_and_agree(tmp_path):
    data = prepared_corpus(tmp_path / "corpus")
    args = ["pretrain", "--objective", "clm", "--data", str(data), "--preset", "tiny", "--seq-len", "32",
            "--log-every", "1", "--no-progress", "--eval-every", "1000", "--eval-blocks", "8", "--lr", "3e-3",
            "--warmup-steps", "2", "--max-steps", str(STEPS), "--device", "cpu"]
    # GLOO_SOCKET_IFNAME: the interface the ranks talk over (on real nodes, the one that reaches the other nodes)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "twinlm-two-nodes", "--rdzv-conf", "join_timeout=120", "--max-restarts", "0",
         "-m", "twinlm.cli", *args, "--batch-size", "4", "--strategy", "fsdp", "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env) for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            out, err = node.communicate(timeout=300)
            assert node.returncode == 0, err[-4000:]
            outputs.append(out)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    # each node prints its own evaluation of the final model: the same numbers, so the same weights on both
    finals = [re.search(r"done: step (\d+), val_loss ([\d.]+)", out) for out in outputs]
    assert all(finals), outputs
    assert finals[0].groups() == finals[1].groups() and finals[0][1] == str(STEPS)
    # the training losses are those of one process with the same global batch (2 nodes x 4 rows)
    single = subprocess.run([sys.executable, "-m", "twinlm.cli", *args, "--batch-size", "8",
                             "--out", str(tmp_path / "one")], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    two, one = losses(tmp_path / "run"), losses(tmp_path / "one")
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    assert all(abs(two[s] - one[s]) <= 1e-4 * max(1.0, abs(one[s])) for s in one), (two, one)
    # one shard per node in the shared output folder
    last = runfolder.latest_checkpoint(tmp_path / "run")
    assert parallel.is_sharded(last) and len(list((last / "shards").iterdir())) == 2
