"""Load on `twinlm serve` (127.0.0.1 only; bounded: a fixed request count per case and a time limit; stops itself).

Classification at concurrency 1/8/32 and generation with 1/4/8 concurrent streams, with batching on (max batch 32,
8 streams decoded together) and off (batch size 1, one stream at a time). Prints one JSON line per case: requests/s,
tokens/s, p50/p99 latency, errors (must be 0), the server's peak RSS; then a summary line with the two ratios the
issue targets (classify batched/unbatched at 32; generation tokens/s 8 streams / 1 stream, batching on).

Models: random-init ones built here with a preset (--preset tiny: 2 layers, d_model 128; --preset small: 6 layers,
d_model 512, where a forward pass costs more than the HTTP round trip around it, which is where batching pays), or
your own (--classify, --clm). Each client worker keeps one connection open, as a real client would.

--soak SECONDS runs a mixed load instead (classify at concurrency 8 and 4 generation streams, together, batching
on) for that long, samples the server's RSS every --sample-s seconds and says whether memory stayed flat (mean RSS
of the last minute within 5% of the first minute's).

    .venv/bin/python benchmarks/serve_load.py                                   # tiny models, ~1-2 minutes
    .venv/bin/python benchmarks/serve_load.py --preset small --requests 320     # mid-size models, ~5 minutes
    .venv/bin/python benchmarks/serve_load.py --soak 300                        # 5-minute mixed run, RSS samples
    .venv/bin/python benchmarks/serve_load.py --classify runs/sst2 --clm runs/quickstart/clm --requests 400

A real run with quickstart models needs a fine-tuned classifier (`twinlm finetune --task classify ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVER = """
import sys, uvicorn
from twinlm.loading import load
from twinlm.serve.app import create_app
from twinlm.serve.limits import Limits
batch, streams, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
models = {"cls": load(sys.argv[4]), "clm": load(sys.argv[5])}
limits = Limits(max_batch_size=batch, max_streams=streams, max_wait_ms=5 if batch > 1 else 0, max_queue=256,
                max_input_tokens=256)
uvicorn.run(create_app(models, limits), host="127.0.0.1", port=port, log_level="warning")
"""


def random_models(folder: Path, preset: str = "tiny") -> tuple[Path, Path]:
    """A classifier and a causal LM, random-init with ``preset`` (twinlm.config.PRESETS), and a BPE tokenizer."""
    import torch

    from twinlm import checkpoint as ckpt
    from twinlm.config import preset as make_config
    from twinlm.heads import TaskModel
    from twinlm.model import LanguageModel
    from twinlm.tokenizer import train_tokenizer

    text = folder / "text.txt"
    text.write_text("\n".join(f"the film number {i} was {w} and the plot was {v}" for i in range(300)
                              for w, v in (("good", "dull"), ("bad", "great"))) + "\n")
    tok = train_tokenizer([text], kind="bpe", vocab_size=2000)
    torch.manual_seed(0)
    lm = LanguageModel(make_config(preset, vocab_size=tok.vocab_size, attention="bidirectional"))
    head = TaskModel(lm, "classify", 2)
    cfg = lm.config.replace(extra={"task": {"task": "classify", "labels": ["neg", "pos"], "max_seq_len": 128}})
    cls = ckpt.save_model(folder / "cls", model_state=head.state_dict(), config=cfg, tokenizer=tok)
    clm = LanguageModel(make_config(preset, vocab_size=tok.vocab_size, attention="causal"))
    return cls, ckpt.save_model(folder / "clm", model_state=clm.state_dict(), config=clm.config, tokenizer=tok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS) or its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_case(base: str, kind: str, concurrency: int, requests: int, tokens: int, limit_s: float) -> dict:
    latencies, errors, generated = [], 0, 0
    todo = iter(range(requests))
    deadline = time.monotonic() + limit_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, generated
        for i in todo:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            try:
                if kind == "classify":
                    r = await client.post("/v1/classify", json={"model": "cls", "text": f"the film {i} was good"})
                    ok = r.status_code == 200
                else:
                    r = await client.post("/v1/completions", json={"model": "clm", "prompt": f"the film {i}",
                                                                    "max_tokens": tokens, "temperature": 0.8,
                                                                    "seed": i})
                    ok = r.status_code == 200
                    if ok:
                        generated += r.json()["usage"]["completion_tokens"]
            except httpx.HTTPError:
                ok = False
            errors += not ok
            latencies.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    # One kept-alive connection per worker: with httpx's default pool (20 kept alive) the workers past 20 would
    # open a new TCP connection for every request, and the benchmark would measure connection set-up.
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=pool) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"case": kind, "concurrency": concurrency, "requests": len(lat), "errors": errors,
            "requests_per_s": round(len(lat) / wall, 2), "tokens_per_s": round(generated / wall, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1) if lat else None,
            "wall_s": round(wall, 2)}


_seen: dict[str, tuple[float, float]] = {}


def mean_batch(base: str, op: str) -> float | None:
    """Mean inputs per forward batch since the last call, from the server's twinlm_batch_size histogram."""
    total = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        for key in total:
            if line.startswith(f"twinlm_batch_size_{key}{{") and f'op="{op}"' in line:
                total[key] += float(line.rsplit(" ", 1)[1])
    before = _seen.get(base + op, (0.0, 0.0))
    _seen[base + op] = (total["sum"], total["count"])
    count = total["count"] - before[1]
    return round((total["sum"] - before[0]) / count, 2) if count else None


def serve(cls: Path, clm: Path, batch: int, streams: int) -> tuple[subprocess.Popen, str]:
    """Start a server (batch size, streams) on a free port; warm it up (first calls import and allocate)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(batch), str(streams), str(port), str(cls), str(clm)],
                            env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                for path, body in (("/v1/classify", {"model": "cls", "text": "warm up"}),
                                   ("/v1/completions", {"model": "clm", "prompt": "warm", "max_tokens": 4})):
                    httpx.post(base + path, json=body, timeout=120).raise_for_status()
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def load_cases(cls: Path, clm: Path, args: argparse.Namespace) -> None:
    rows = []
    for batching, batch, streams in (("on", 32, 8), ("off", 1, 1)):
        proc, base = serve(cls, clm, batch, streams)
        try:
            for c in args.concurrency:
                rows.append(asyncio.run(run_case(base, "classify", c, args.requests, 0, args.limit_s)))
                rows[-1].update(batching=batching, mean_batch=mean_batch(base, "classify"))
                print(json.dumps(rows[-1]), flush=True)
            for c in args.streams:
                rows.append(asyncio.run(run_case(base, "generate", c, max(args.completions, c), args.tokens,
                                                 args.limit_s)))
                rows[-1]["batching"] = batching
                print(json.dumps(rows[-1]), flush=True)
            rss = rss_mb(proc.pid, "VmHWM")
        finally:
            stop(proc)
        print(json.dumps({"batching": batching, "server_peak_rss_mb": round(rss, 1)}), flush=True)

    def ratio(kind: str, top: tuple[int, str], bottom: tuple[int, str], key: str) -> float | None:
        got = {(r["concurrency"], r["batching"]): r[key] for r in rows if r["case"] == kind}
        return round(got[top] / got[bottom], 2) if top in got and bottom in got and got[bottom] else None

    hi_c, hi_s, lo_s = max(args.concurrency), max(args.streams), min(args.streams)
    print(json.dumps({"summary": True, "preset": args.preset, "errors": sum(r["errors"] for r in rows),
                      f"classify_{hi_c}_batched_over_unbatched": ratio("classify", (hi_c, "on"), (hi_c, "off"),
                                                                       "requests_per_s"),
                      f"generate_{hi_s}_streams_over_{lo_s}_tokens_per_s": ratio("generate", (hi_s, "on"),
                                                                                 (lo_s, "on"), "tokens_per_s")}))


async def _soak(base: str, pid: int, seconds: float, sample_s: float, tokens: int) -> dict:
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    async def sample() -> None:
        while time.monotonic() - t0 < seconds:
            samples.append((time.monotonic() - t0, rss_mb(pid)))
            await asyncio.sleep(sample_s)
        samples.append((time.monotonic() - t0, rss_mb(pid)))

    cases = await asyncio.gather(run_case(base, "classify", 8, 10**9, 0, seconds),
                                 run_case(base, "generate", 4, 10**9, tokens, seconds), sample())
    window = min(60.0, seconds / 3)  # the first and last minute (thirds of a run shorter than 3 minutes)
    end = samples[-1][0]
    first = [m for t, m in samples if t <= window]
    last = [m for t, m in samples if t >= end - window]
    a, b = statistics.mean(first), statistics.mean(last)
    return {"soak_s": round(end, 1), "window_s": window, "samples": len(samples),
            "rss_first_window_mb": round(a, 1), "rss_last_window_mb": round(b, 1),
            "rss_growth_mb": round(b - a, 1), "rss_peak_mb": round(rss_mb(pid, "VmHWM"), 1),
            "flat": b <= a * 1.05, "errors": sum(c["errors"] for c in cases[:2]),
            "classify": cases[0], "generate": cases[1],
            "rss_mb_series": [round(m, 1) for _, m in samples]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="size of the random-init models built here (tiny, mini, small, "
                                                     "base); ignored with --classify and --clm")
    ap.add_argument("--classify", type=Path, help="a fine-tuned classify model (default: one built here)")
    ap.add_argument("--clm", type=Path, help="a causal model (default: one built here)")
    ap.add_argument("--requests", type=int, default=160, help="classify requests per case")
    ap.add_argument("--completions", type=int, default=16, help="completions per generation case")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens per completion")
    ap.add_argument("--limit-s", type=float, default=60, help="time limit per case")
    ap.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32],
                    help="classify concurrencies (default 1,8,32)")
    ap.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 8],
                    help="concurrent generation streams (default 1,4,8)")
    ap.add_argument("--soak", type=float, metavar="SECONDS", help="a mixed run of this length instead of the cases: "
                                                                  "RSS sampled, flat or not")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval of --soak")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.classify and args.clm:
            cls, clm = args.classify, args.clm
        else:
            cls, clm = random_models(Path(tmp), args.preset)
        if args.soak is None:
            load_cases(cls, clm, args)
            return
        proc, base = serve(cls, clm, 32, 8)
        try:
            report = asyncio.run(_soak(base, proc.pid, args.soak, args.sample_s, args.tokens))
        finally:
            stop(proc)
        print(json.dumps({"soak": True, "preset": args.preset, **report}), flush=True)


if __name__ == "__main__":
    main()
