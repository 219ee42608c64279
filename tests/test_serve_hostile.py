"""`twinlm serve` against hostile clients, live under uvicorn on 127.0.0.1 (nothing leaves the machine).

Slow senders (a byte at a time), clients that vanish mid-stream, oversize bodies and prompts, malformed JSON, wrong
types and a flood past the queue bound. The promises: every answer is 4xx in the one error shape, except the
documented 503 (+ Retry-After) for a full queue; /health answers throughout; the process's memory stays flat.
Every case is bounded in count and time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import peaked_model  # noqa: E402
from twinlm import checkpoint as ckpt  # noqa: E402
from twinlm.loading import load  # noqa: E402
from twinlm.serve.app import create_app  # noqa: E402
from twinlm.serve.limits import Limits  # noqa: E402
from twinlm.tokenizer import train_tokenizer  # noqa: E402

LIMITS = Limits(max_queue=3, max_batch_size=2, max_wait_ms=2, timeout_s=4, max_body_bytes=16_384,
                max_input_tokens=24, max_tokens_cap=32, max_streams=2)
LINES = ["the cat sat on the mat and the dog sat on the log", "alice went to paris and bob went to rome",
         "我们 喜欢 语言 模型 。 今天 天气 很 好 。"] * 4


class Hold:
    """A forward pre-hook on a module: counts calls, sleeps ``delay`` in each, and blocks while ``closed``."""

    def __init__(self, module, delay: float = 0.0, closed: bool = False) -> None:
        self.calls, self.delay = 0, delay
        self.gate = threading.Event()
        if not closed:
            self.gate.set()
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        self.gate.wait(20)
        if self.delay:
            time.sleep(self.delay)

    def remove(self) -> None:
        self.gate.set()
        self.handle.remove()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, port, app) of a live server with a causal and a masked model under tight limits."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "text.txt").write_text("\n".join(LINES) + "\n")
    tok = train_tokenizer([root / "text.txt"], kind="bpe", vocab_size=300)
    loaded = {}
    for name, kind in (("clm", "causal"), ("mlm", "bidirectional")):
        model = peaked_model(tok.vocab_size, kind, positions=64, seed=1)
        folder = ckpt.save_model(root / name, model_state=model.state_dict(), config=model.config, tokenizer=tok)
        loaded[name] = load(folder)
    app = create_app(loaded, LIMITS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and the server's threads do not fight over cores
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    live = uvicorn.Server(uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=live.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not live.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", port, app
    live.should_exit = True
    thread.join(10)
    sock.close()
    torch.set_num_threads(threads)


def healthy(base: str) -> bool:
    got = httpx.get(f"{base}/health", timeout=10)
    return got.status_code == 200 and got.json()["status"] == "ok"


def error_shaped(response) -> bool:
    body = response.json()
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param"}


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes or stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def post_bytes(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


# ----------------------------------------------------------------------------------------------- bad bodies


HOSTILE = [
    ("/v1/completions", b'{"model": "clm", "prompt": "the cat"'),  # truncated JSON
    ("/v1/completions", b'{"model": "clm", "prompt": "\xff\xfe"}'),  # not UTF-8
    ("/v1/completions", b"[" * 5000 + b"]" * 5000),  # nested past Python's recursion limit
    ("/v1/completions", b'{"model": "clm", "prompt": "\\ud800"}'),  # a lone surrogate
    ("/v1/completions", b'{"model": "clm", "prompt": 5}'),
    ("/v1/completions", b'{"model": ["clm"], "prompt": "a"}'),
    ("/v1/completions", b'{"model": "clm", "max_tokens": "many"}'),
    ("/v1/completions", b'{"model": "clm", "max_tokens": 1000000000000000000000000000000}'),
    ("/v1/completions", b'{"model": "clm", "temperature": NaN}'),
    ("/v1/completions", b'{"model": "clm", "top_p": Infinity}'),
    ("/v1/completions", b'{"model": "clm", "seed": -1}'),
    ("/v1/completions", b'{"model": "clm", "prompt": [], "max_tokens": 2}'),
    ("/v1/completions", b'{"model": "clm", "prompt": "' + b"the cat " * 40 + b'"}'),  # over max_input_tokens
    ("/v1/completions", b'{"model": "clm", "stop": [""]}'),
    ("/v1/embeddings", b'{"model": "mlm", "input": {"a": 1}}'),
    ("/v1/embeddings", b'{"model": "mlm", "input": [null]}'),
    ("/v1/fill-mask", b'{"model": "mlm", "text": "no mask", "top_k": 3}'),
    ("/v1/fill-mask", b'{"model": "mlm", "text": "[MASK]", "top_k": -1}'),
    ("/v1/score", b'{"model": "mlm", "text": 3.5}'),
    ("/v1/tokenize", b'{"model": "nope", "text": "a"}'),
    ("/v1/tokenize", b"null"),
    ("/v1/tokenize", b'"just a string"'),
    ("/v1/mask-predict", b'{"model": "mlm", "max_tokens": 9999}'),
    ("/v1/completions", b"x" * 20_000),  # over max_body_bytes
]


@pytest.mark.parametrize("path, body", HOSTILE, ids=range(len(HOSTILE)))
def test_malformed_oversize_and_wrong_typed_bodies_get_a_4xx_in_the_error_shape(server, path, body):
    base, port, _ = server
    reply = httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text[:300])
    assert error_shaped(reply)


@pytest.mark.parametrize("text", ["\0" * 10, "\u200b\ufeff\u2028", "a\r\n\tb", "🙂" * 20, "[MASK]" * 30])
def test_odd_but_valid_text_is_answered(server, text):
    """NUL, zero-width and line-separator characters, emoji and special-token look-alikes are text: 200."""
    base, port, _ = server
    got = httpx.post(f"{base}/v1/embeddings", json={"model": "mlm", "input": text, "truncate": True}, timeout=30)
    assert got.status_code == 200 and len(got.json()["data"]) == 1, got.text[:300]
    got = httpx.post(f"{base}/v1/completions", json={"model": "clm", "prompt": text, "max_tokens": 3,
                                                     "truncate": True}, timeout=30)
    assert got.status_code == 200, got.text[:300]


def test_transport_level_abuse_gets_4xx_or_a_closed_connection(server):
    """Bodies longer or shorter than their Content-Length, a huge header line, a chunked body past the limit,
    a wrong content type, an unknown method, a TLS hello: never a 5xx (a 4xx, a plain answer, or the connection
    closed), and the server answers the next client."""
    base, port, _ = server
    cases = [
        post_bytes("/v1/tokenize", b'{"text": "a"}', "text/plain"),
        b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\nConnection: close\r\n\r\n{\"text\": \"a\"}",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n",
        b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n\r\n" + b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n",
        b"BREW /v1/tokenize HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello on the plain port
    ]
    for case in cases:
        status = status_of(raw(port, case))
        assert status < 500, (status, case[:80])
        assert healthy(base)


# ----------------------------------------------------------------------------------------------- slow, gone


def test_a_byte_at_a_time_sender_is_cut_off_and_health_answers_meanwhile(server):
    base, port, _ = server
    body = json.dumps({"model": "mlm", "text": "the cat sat"}).encode()
    head = (f"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        sent, cut_off = 0, False
        start = time.monotonic()
        while sent < len(body) and time.monotonic() - start < LIMITS.timeout_s + 4:
            try:
                s.sendall(body[sent:sent + 1])
            except OSError:  # the server closed the connection on us
                cut_off = True
                break
            sent += 1
            assert healthy(base)  # a slow client holds no thread or lock the others need
            time.sleep(0.25)
        s.settimeout(10)
        reply = s.recv(65536)
    assert sent < len(body) and (cut_off or status_of(reply) == 408), (sent, reply[:200])
    if reply:
        assert b"request body" in reply


def test_a_client_gone_mid_stream_frees_its_row(server):
    base, port, app = server
    engine = app.state.registry.served["clm"].engine
    slow = Hold(app.state.registry.served["clm"].lm.backbone, delay=0.05)
    try:
        for _ in range(3):
            body = json.dumps({"model": "clm", "prompt": "the cat", "max_tokens": 30, "stream": True}).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(post_bytes("/v1/completions", body))
                got = b""
                while b"data: " not in got:
                    got += s.recv(4096)
                assert got.startswith(b"HTTP/1.1 200")
            # the socket is closed: the server notices, cancels the request and drops its row
            deadline = time.monotonic() + 20
            while engine.active and time.monotonic() < deadline:
                assert healthy(base)
                time.sleep(0.05)
            assert engine.active == 0
    finally:
        slow.remove()
    done = httpx.post(f"{base}/v1/completions", json={"model": "clm", "prompt": "the cat", "max_tokens": 4},
                      timeout=30)
    assert done.status_code == 200 and done.json()["choices"][0]["finish_reason"] in ("length", "stop")


# ----------------------------------------------------------------------------------------------- flood


def test_a_flood_past_the_queue_gets_503s_and_health_throughout(server):
    """The model is held while 12 requests arrive: 1 runs, max_queue (3) wait, the other 8 get 503 with
    Retry-After at once; /health answers while the model is held; released, the waiting ones succeed."""
    base, port, app = server
    served = app.state.registry.served["mlm"]
    hold = Hold(served.lm.backbone, closed=True)
    try:
        with ThreadPoolExecutor(12) as pool:
            first = pool.submit(httpx.post, f"{base}/v1/embeddings", json={"model": "mlm", "input": "a"},
                                timeout=30)
            deadline = time.monotonic() + 20
            while hold.calls == 0:
                assert time.monotonic() < deadline, "the first request never reached the model"
                time.sleep(0.01)
            rest = [pool.submit(httpx.post, f"{base}/v1/embeddings", json={"model": "mlm", "input": f"a {i}"},
                                timeout=30) for i in range(11)]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in rest) < 11 - LIMITS.max_queue and time.monotonic() < deadline:
                time.sleep(0.02)
            assert healthy(base)
            refused = [f.result() for f in rest if f.done()]
            hold.gate.set()
            answers = [first.result()] + [f.result() for f in rest]
    finally:
        hold.remove()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * (1 + LIMITS.max_queue) + [503] * (11 - LIMITS.max_queue), codes
    assert all(r.status_code == 503 and r.headers["Retry-After"] == "1" and error_shaped(r) for r in refused)
    gen = [httpx.post(f"{base}/v1/completions", json={"model": "clm", "prompt": "a", "max_tokens": 2},
                      timeout=30) for _ in range(2)]
    assert all(g.status_code == 200 for g in gen)


# ----------------------------------------------------------------------------------------------- memory


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_rounds_of_hostile_traffic_leave_memory_flat(server):
    """The same hostile mix three times over: after the first round (allocator and caches warm), resident
    memory grows by less than 40 MB in two more rounds, and every answer was a 2xx or a 4xx."""
    base, port, _ = server

    def round_of_abuse() -> list[int]:
        codes = []
        for path, body in HOSTILE:
            codes.append(httpx.post(base + path, content=body, headers={"content-type": "application/json"},
                                    timeout=30).status_code)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # leave mid-request
                s.sendall(post_bytes("/v1/embeddings", b'{"model": "mlm", "input": "the cat sat"}')[:-10])
        codes.append(httpx.post(f"{base}/v1/completions", json={"model": "clm", "prompt": "the cat", "max_tokens":
                                                                8, "stream": True}, timeout=30).status_code)
        return codes

    codes = round_of_abuse()
    warm = rss_mb()
    for _ in range(2):
        codes += round_of_abuse()
    grown = rss_mb() - warm
    print(f"RSS {warm:.1f} MB after the first round, {grown:+.1f} MB after two more")
    assert all(c < 500 for c in codes), sorted(set(codes))
    assert grown < 40, f"RSS grew by {grown:.1f} MB over two rounds"
    assert healthy(base)
