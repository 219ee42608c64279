"""Kill-and-resume soak: SIGKILL training runs at random moments, resume with `--resume auto`, check nothing is lost.

    python benchmarks/soak.py                      # 20 kills each for MLM, CLM, hybrid and fine-tuning
    python benchmarks/soak.py --kills 3 --runs clm # a small proof that it works

For each kind of run it first trains once without interruption (the reference). Then it starts the same command
with `--resume auto` and kills it (SIGKILL, no chance to clean up) at a random moment, again and again, until the
run reaches its last step; a run that finishes before enough kills were made counts as one round and a fresh round
starts in a new folder. About 40% of the kills (and every kill until one has landed inside a save) are aimed at a
checkpoint write: the child process runs the real CLI with a slowed writer (every file fsync of a checkpoint sleeps
``--slow-save`` seconds) and marks the start and end of each save in a file, so the parent can wait for a save to
begin and kill inside it, and can tell afterwards whether a kill landed inside one.

Checked after every kill: every checkpoint-NNNNNNN folder (and best/) on disk verifies (sizes and SHA-256 against its
manifest) and loads. Checked at the end of every round: the final weights and optimizer state, the logged loss
curve (every metrics.jsonl row without its timing fields) and, for fine-tuning, best/ and best_metrics.json are
bit-identical to the reference; no temporary or old folder is left. Prints one JSON line per kind of run and a total
line: kills, kills_in_save (inside a checkpoint write or the pruning after it), kills_leaving_scratch (the kill left a
half-written temporary folder), resumes, rounds, and the failures: mismatches, unreadable_checkpoints, leftovers,
failed_starts, which must all be 0 (the script exits 1 otherwise). Timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("mlm", "clm", "hybrid", "finetune")
TIMING_FIELDS = ("elapsed_s", "tokens_per_s", "compile_s")


# --------------------------------------------------------------------------------------------------- the child


def child(marker: str, delay: float, argv: list[str]) -> int:
    """Run `twinlm ARGV` with a slowed checkpoint writer that writes 'b' to ``marker`` when a save begins and 'e'
    when it ends, 'p' and 'q' around the pruning after it (so a kill can be aimed at a save, and counted as inside
    one)."""
    from twinlm import checkpoint, train
    from twinlm.cli import main

    def mark(char: str) -> None:
        with open(marker, "a") as f:
            f.write(char)

    def bracket(fn: Any, begin: str, end: str) -> Any:
        def wrapped(*args: Any, **kw: Any) -> Any:
            mark(begin)
            try:
                return fn(*args, **kw)
            finally:
                mark(end)
        return wrapped

    real_fsync = checkpoint._fsync_file

    def slow_fsync(path: Path) -> None:
        time.sleep(delay)
        real_fsync(path)

    checkpoint._fsync_file = slow_fsync
    checkpoint._atomic_save = bracket(checkpoint._atomic_save, "b", "e")  # both checkpoints and best/ go through it
    train.prune_checkpoints = bracket(train.prune_checkpoints, "p", "q")
    return main(argv)


# --------------------------------------------------------------------------------------------------- set-up


def prepare(root: Path, n_chars: int) -> dict[str, Path]:
    """A character-level corpus (Tiny Shakespeare excerpt) and a small classification task made from its lines."""
    from twinlm.data.corpus import prepare_corpus
    from twinlm.tokenizer import train_tokenizer

    with resources.files("twinlm").joinpath("assets/tinyshakespeare.txt.gz").open("rb") as f:
        text = gzip.decompress(f.read()).decode()[:n_chars]
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text(text)
    tok = train_tokenizer([corpus], kind="char", vocab_size=400)
    prepare_corpus([corpus], tok, root / "data", val_fraction=0.1, workers=1, progress=False)
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 8 and "\t" not in ln]
    rows = [f"{ln}\t{'long' if len(ln.split()) >= 7 else 'short'}" for ln in lines[:240]]
    (root / "train.tsv").write_text("text\tlabel\n" + "\n".join(rows[:200]) + "\n")
    (root / "dev.tsv").write_text("text\tlabel\n" + "\n".join(rows[200:]) + "\n")
    return {"data": root / "data", "train": root / "train.tsv", "dev": root / "dev.tsv"}


def command(kind: str, paths: dict[str, Path], out: Path, opts: argparse.Namespace) -> list[str]:
    """The `twinlm` arguments of one kind of run (small, so a run is seconds long)."""
    common = ["--device", "cpu", "--no-progress", "--log-every", "1", "--save-every", str(opts.save_every),
              "--keep-last", "2", "--seed", "0", "--out", str(out)]
    if kind == "finetune":
        return ["finetune", "--task", "classify", "--init", str(paths["mlm_reference"]), "--train",
                str(paths["train"]), "--eval", str(paths["dev"]), "--epochs", str(opts.epochs), "--batch-size", "8",
                "--max-seq-len", "48", "--lr", "1e-3", "--patience", "100", *common]
    hybrid = ["--hybrid", "clm:1,mlm:2,clm:1"] if kind == "hybrid" else []
    return ["pretrain", "--objective", kind, *hybrid, "--data", str(paths["data"]), "--preset", "tiny",
            "--seq-len", "32", "--batch-size", "4", "--max-steps", str(opts.max_steps), "--lr", "3e-3",
            "--warmup-steps", "5", "--eval-every", str(opts.eval_every), "--dropout", "0.1", *common]


def child_env() -> dict[str, str]:
    # One thread: the same reduction order in every process, so a resumed run can be bit-identical.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def start(argv: list[str], marker: Path, delay: float, log: Path) -> subprocess.Popen:
    """The child process: this script in --child mode, output to ``log``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(marker), str(delay), "--", *argv]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)


# --------------------------------------------------------------------------------------------------- checks


def logged_rows(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its timing fields (what must be identical after any number of kills)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = {k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
        if set(row) != {"step"}:  # a compile-time row has nothing else
            rows.append(row)
    return rows


def unreadable(run: Path) -> list[str]:
    """Every checkpoint folder of the run (and best/) that does not verify or load, with the reason."""
    from twinlm import checkpoint as ckpt
    from twinlm.errors import TwinLMError
    from twinlm.runfolder import list_checkpoints

    bad = []
    folders = list_checkpoints(run) + ([run / "best"] if (run / "best").exists() else [])
    for folder in folders:
        try:
            ckpt.verify_checkpoint(folder, deep=True)
            ckpt.load_model_state(folder, verify=False)
            if (folder / "trainer_state.json").exists():
                ckpt.load_training_state(folder, verify=False)
        except TwinLMError as exc:
            bad.append(f"{folder.name}: {exc}")
    return bad


def leftovers(run: Path) -> list[str]:
    """Temporary or old siblings a save or prune left behind."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or
                                                                                ".old-" in p.name))


def differences(run: Path, reference: Path) -> list[str]:
    """What differs between a finished (killed and resumed) run and the uninterrupted reference."""
    import torch

    from twinlm import checkpoint as ckpt
    from twinlm.runfolder import list_checkpoints

    found = []
    if logged_rows(run) != logged_rows(reference):
        found.append("metrics.jsonl rows differ")
    last, want = list_checkpoints(run)[-1:], list_checkpoints(reference)[-1]
    if not last or last[0].name != want.name:
        return [*found, f"last checkpoint is {last[0].name if last else None}, reference {want.name}"]
    pairs = [(last[0], want)] + ([(run / "best", reference / "best")] if (reference / "best").exists() else [])
    for mine, theirs in pairs:
        a, b = ckpt.load_model_state(mine), ckpt.load_model_state(theirs)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            found.append(f"{mine.name}: weights differ")
    (_, opt_a, _), (_, opt_b, _) = ckpt.load_training_state(last[0]), ckpt.load_training_state(want)
    if json.dumps(opt_a["param_groups"]) != json.dumps(opt_b["param_groups"]) or not all(
            torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]) for i in opt_b["state"]
            for k in opt_b["state"][i] if torch.is_tensor(opt_b["state"][i][k])):
        found.append(f"{last[0].name}: optimizer state differs")
    if (reference / "best_metrics.json").exists() and (run / "best_metrics.json").read_text() != \
            (reference / "best_metrics.json").read_text():
        found.append("best_metrics.json differs")
    return found


# --------------------------------------------------------------------------------------------------- the soak


def steps_logged(run: Path) -> int:
    try:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return 0
    return max((r["step"] for r in rows if "loss" in r), default=0)


def reference_run(kind: str, paths: dict[str, Path], root: Path,
                  opts: argparse.Namespace) -> tuple[Path, float, float]:
    """The uninterrupted run (the same child, never killed): its folder, wall time and start-up time (until the
    first step is logged)."""
    out = root / f"{kind}-reference"
    t0 = time.perf_counter()
    proc = start(command(kind, paths, out, opts), root / f"{kind}-reference.marker", opts.slow_save,
                 root / f"{kind}-reference.log")
    startup = None
    while proc.poll() is None:
        if startup is None and steps_logged(out) > 0:
            startup = time.perf_counter() - t0
        time.sleep(0.01)
    if proc.returncode != 0:
        sys.exit(f"{kind} reference run failed:\n{(root / f'{kind}-reference.log').read_text()[-3000:]}")
    wall = time.perf_counter() - t0
    return out, wall, startup if startup is not None else wall / 2


def soak(kind: str, paths: dict[str, Path], root: Path, opts: argparse.Namespace, rng: random.Random) -> dict:
    """Kill and resume runs of one kind until ``opts.kills`` kills were made; returns the counts."""
    reference, ref_wall, startup = reference_run(kind, paths, root, opts)
    if kind == "mlm":
        paths["mlm_reference"] = reference
    total_steps = steps_logged(reference)
    counts = {"kills": 0, "kills_in_save": 0, "kills_leaving_scratch": 0, "resumes": 0, "rounds": 0,
              "mismatches": 0, "unreadable_checkpoints": 0, "leftovers": 0, "failed_starts": 0}
    problems: list[str] = []
    t0 = time.perf_counter()
    while counts["kills"] < opts.kills:
        counts["rounds"] += 1
        run = root / f"{kind}-round{counts['rounds']}"
        starts = 0
        while True:
            starts += 1
            marker, log = root / f"{kind}.marker", root / f"{kind}-{counts['rounds']}-{starts}.log"
            marker.unlink(missing_ok=True)
            before = set(leftovers(run)) if run.exists() else set()
            proc = start(command(kind, paths, run, opts) + ["--resume", "auto"], marker, opts.slow_save, log)
            killed = False
            if counts["kills"] < opts.kills:
                # Aimed at a save for about --save-share of the kills, and always until one has landed inside one.
                aim = rng.random() < opts.save_share or counts["kills_in_save"] == 0
                killed = kill_at_random(proc, marker, aim, (startup, ref_wall), total_steps, steps_logged(run),
                                        opts, rng)
            rc = proc.wait()
            if "resumed from" in log.read_text():
                counts["resumes"] += 1
            if killed:
                counts["kills"] += 1
                text = marker.read_text() if marker.exists() else ""
                counts["kills_in_save"] += text.endswith(("b", "p"))
                counts["kills_leaving_scratch"] += bool(run.exists() and set(leftovers(run)) - before)
                bad = unreadable(run) if run.exists() else []
                counts["unreadable_checkpoints"] += len(bad)
                problems += bad
                continue
            if rc != 0:
                counts["failed_starts"] += 1
                problems.append(f"{log.name}: exit {rc}: {log.read_text()[-1500:]}")
                break
            found = differences(run, reference)
            left = leftovers(run)
            counts["mismatches"] += len(found)
            counts["leftovers"] += len(left)
            problems += found + [f"left behind: {name}" for name in left]
            break
        if counts["failed_starts"]:
            break
        if not opts.keep:
            shutil.rmtree(run, ignore_errors=True)
    return {"run": kind, **counts, "steps": total_steps, "reference_wall_s": round(ref_wall, 1),
            "soak_wall_s": round(time.perf_counter() - t0, 1), "problems": problems[:10]}


def kill_at_random(proc: subprocess.Popen, marker: Path, aim: bool, timing: tuple[float, float], total_steps: int,
                   done: int, opts: argparse.Namespace, rng: random.Random) -> bool:
    """SIGKILL the child at a random moment, or with ``aim`` inside one of its next checkpoint writes; False when
    it finished first."""
    if aim:
        # Aimed at a save: wait for the first or second one to begin, then a random moment inside its window
        # (a checkpoint has ~6 files, each fsync slowed by --slow-save).
        nth = rng.choice((1, 2))
        while proc.poll() is None:
            if marker.exists() and marker.read_text().count("b") >= nth:
                time.sleep(rng.uniform(0.0, 8 * opts.slow_save))
                break
            time.sleep(0.002)
    else:
        # Anywhere from late start-up (resume, log truncation) to the end of what is left of the run.
        startup, wall = timing
        left = max(0.1, 1 - done / max(total_steps, 1))
        deadline = time.perf_counter() + rng.uniform(0.5 * startup, startup + (wall - startup) * left)
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.005)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait() == -signal.SIGKILL  # not when it had just exited by itself


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        marker, delay, sep, *argv = sys.argv[2:]
        assert sep == "--"
        sys.exit(child(marker, float(delay), argv))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(KINDS), help=f"comma-separated, from {', '.join(KINDS)}")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per kind of run (at least)")
    parser.add_argument("--max-steps", type=int, default=60, help="pretraining steps")
    parser.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs (25 steps each)")
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--slow-save", type=float, default=0.02, help="seconds each checkpoint file fsync sleeps")
    parser.add_argument("--save-share", type=float, default=0.4, help="fraction of kills aimed at a save")
    parser.add_argument("--chars", type=int, default=60_000, help="corpus size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep every round's run folder")
    opts = parser.parse_args()
    kinds = [k.strip() for k in opts.runs.split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in KINDS]:
        parser.error(f"unknown run kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    root = Path(opts.out) if opts.out else Path(tempfile.mkdtemp(prefix="twinlm-soak-"))
    rng = random.Random(opts.seed)
    t0 = time.perf_counter()
    try:
        paths = prepare(root / "inputs", opts.chars)
        if "finetune" in kinds and "mlm" not in kinds:  # fine-tuning starts from the MLM reference run
            paths["mlm_reference"] = reference_run("mlm", paths, root, opts)[0]
        rows = []
        for kind in kinds:
            rows.append(soak(kind, paths, root, opts, rng))
            print(json.dumps(rows[-1]), flush=True)
        keys = ("kills", "kills_in_save", "kills_leaving_scratch", "resumes", "rounds", "mismatches",
                "unreadable_checkpoints", "leftovers", "failed_starts")
        total = {"run": "total", **{k: sum(r[k] for r in rows) for k in keys},
                 "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(total), flush=True)
    finally:
        if not opts.out and not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    if total["mismatches"] or total["unreadable_checkpoints"] or total["leftovers"] or total["failed_starts"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
