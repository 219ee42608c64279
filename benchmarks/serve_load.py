"""Load on `twinlm serve` (127.0.0.1 only; bounded: a fixed request count per case and a time limit; stops itself).

Classification at concurrency 1/8/32 and generation with 1/4/8 concurrent streams, with batching on (max batch 32,
8 streams decoded together) and off (batch size 1, one stream at a time). Prints one JSON line per case: requests/s,
tokens/s, p50/p99 latency, errors (must be 0), the server's peak RSS; then a summary line with the two ratios the
issue targets (classify batched/unbatched at 32; generation tokens/s 8 streams / 1 stream, batching on).

    .venv/bin/python benchmarks/serve_load.py                     # tiny models built here, ~1-2 minutes
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


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """A classifier and a causal LM with the 'tiny' preset (2 layers, d_model 128) and a BPE tokenizer."""
    import torch

    from twinlm import checkpoint as ckpt
    from twinlm.config import preset
    from twinlm.heads import TaskModel
    from twinlm.model import LanguageModel
    from twinlm.tokenizer import train_tokenizer

    text = folder / "text.txt"
    text.write_text("\n".join(f"the film number {i} was {w} and the plot was {v}" for i in range(300)
                              for w, v in (("good", "dull"), ("bad", "great"))) + "\n")
    tok = train_tokenizer([text], kind="bpe", vocab_size=2000)
    torch.manual_seed(0)
    lm = LanguageModel(preset("tiny", vocab_size=tok.vocab_size, attention="bidirectional"))
    head = TaskModel(lm, "classify", 2)
    cfg = lm.config.replace(extra={"task": {"task": "classify", "labels": ["neg", "pos"], "max_seq_len": 128}})
    cls = ckpt.save_model(folder / "cls", model_state=head.state_dict(), config=cfg, tokenizer=tok)
    clm = LanguageModel(preset("tiny", vocab_size=tok.vocab_size, attention="causal"))
    return cls, ckpt.save_model(folder / "clm", model_state=clm.state_dict(), config=clm.config, tokenizer=tok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
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
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
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
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(batch), str(streams), str(port), str(cls), str(clm)],
                            env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classify", type=Path, help="a fine-tuned classify model (default: a tiny one built here)")
    ap.add_argument("--clm", type=Path, help="a causal model (default: a tiny one built here)")
    ap.add_argument("--requests", type=int, default=160, help="classify requests per case")
    ap.add_argument("--completions", type=int, default=16, help="completions per generation case")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens per completion")
    ap.add_argument("--limit-s", type=float, default=60, help="time limit per case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cls, clm = (args.classify, args.clm) if args.classify and args.clm else tiny_models(Path(tmp))
        rows = []
        for batching, batch, streams in (("on", 32, 8), ("off", 1, 1)):
            proc, base = serve(cls, clm, batch, streams)
            try:
                for c in (1, 8, 32):
                    rows.append(asyncio.run(run_case(base, "classify", c, args.requests, 0, args.limit_s)))
                    rows[-1]["batching"] = batching
                    rows[-1]["mean_batch"] = mean_batch(base, "classify")
                    print(json.dumps(rows[-1]), flush=True)
                for c in (1, 4, 8):
                    rows.append(asyncio.run(run_case(base, "generate", c, max(args.completions, c), args.tokens,
                                                     args.limit_s)))
                    rows[-1]["batching"] = batching
                    print(json.dumps(rows[-1]), flush=True)
                rss = peak_rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(10)
            print(json.dumps({"batching": batching, "server_peak_rss_mb": round(rss, 1)}), flush=True)

    def pick(kind: str, c: int, batching: str, key: str) -> float:
        return next(r[key] for r in rows if (r["case"], r["concurrency"], r["batching"]) == (kind, c, batching))

    print(json.dumps({"summary": True, "errors": sum(r["errors"] for r in rows),
                      "classify_32_batched_over_unbatched": round(pick("classify", 32, "on", "requests_per_s")
                                                                  / pick("classify", 32, "off", "requests_per_s"), 2),
                      "generate_8_streams_over_1_tokens_per_s": round(pick("generate", 8, "on", "tokens_per_s")
                                                                      / pick("generate", 1, "on", "tokens_per_s"), 2)}))


if __name__ == "__main__":
    main()
