"""The playground in a real browser: Debian's chromium, driven by Playwright for Python, against a live
`twinlm serve` (the CLI's own app, under uvicorn on 127.0.0.1 and a free port).

- generate: the streamed text arrives in several pieces over time (a MutationObserver records each DOM update),
  and the pieces join to the completion the API gives for the same seed;
- QA (a model fine-tuned here in a few seconds): the answer span the API returns is highlighted in the context,
  also after an emoji and Chinese text (offsets count code points);
- masks: the bidirectional view lights every cell, the causal view the lower triangle, for the API's tokens.

Skips with its reason when /usr/bin/chromium (or $TWINLM_CHROMIUM) or playwright is missing; `.ci/run` installs
chromium, so CI always runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

CHROMIUM = Path(os.environ.get("TWINLM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.is_file():
    pytest.skip(f"no chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set TWINLM_CHROMIUM; "
                ".ci/run installs it", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("playwright for Python is not installed (it is in the dev extra: pip install -e '.[dev]')",
                allow_module_level=True)
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
uvicorn = pytest.importorskip("uvicorn")

import httpx  # noqa: E402

from helpers import peaked_model  # noqa: E402
from twinlm import checkpoint as ckpt  # noqa: E402
from twinlm.cli_serve import add_arguments, build_app  # noqa: E402
from twinlm.config import ModelConfig  # noqa: E402
from twinlm.finetune import FinetuneOptions, finetune_run  # noqa: E402
from twinlm.model import LanguageModel  # noqa: E402
from twinlm.tokenizer import train_tokenizer  # noqa: E402
from twinlm.train import TrainConfig  # noqa: E402

LINES = ["the cat sat on the mat and the dog sat on the log",
         "alice went to paris and bob went to rome with carol",
         "once upon a time there was a story about a king",
         "the film was good and the plot was great"] * 4
FILL = ["the", "film", "was", "a", "story", "of", "and", "it", "plot", "acting", "very", "quite", "with", "cast"]
YEARS = ["12", "1999", "2004", "1875"]
STEP_DELAY_S = 0.01  # per decoding step: a tiny model on CPU is so fast that a whole reply could be one TCP read


def _squad(path: Path, n: int, rng: random.Random) -> None:
    paragraphs = []
    for i in range(n):
        year = rng.choice(YEARS)
        words = [rng.choice(FILL) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randrange(len(words) + 1), year)
        context = " ".join(words)
        start = len(" ".join(words[:words.index(year)])) + (1 if words.index(year) else 0)
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": "when was the film",
                                                          "answers": [{"text": year, "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny causal model (BPE) and a QA model fine-tuned here on synthetic 'when was the film' questions."""
    root = tmp_path_factory.mktemp("browser")
    (root / "text.txt").write_text("\n".join(LINES) + "\n")
    tok = train_tokenizer([root / "text.txt"], kind="bpe", vocab_size=300)
    clm = peaked_model(tok.vocab_size, "causal", positions=64, seed=1)
    ckpt.save_model(root / "clm", model_state=clm.state_dict(), config=clm.config, tokenizer=tok)

    (root / "qa.txt").write_text("\n\n".join(" ".join(FILL + YEARS + ["when"]) for _ in range(5)))
    wp = train_tokenizer([root / "qa.txt"], kind="wordpiece", vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    base = LanguageModel(ModelConfig(vocab_size=wp.vocab_size, n_layers=2, d_model=64, n_heads=4, d_ff=128,
                                     max_positions=128, pad_token_id=wp.pad_id))
    ckpt.save_model(root / "base", model_state=base.state_dict(), config=base.config, tokenizer=wp)
    rng = random.Random(2)
    _squad(root / "train.json", 120, rng)
    _squad(root / "dev.json", 30, rng)
    cfg = TrainConfig(batch_size=16, lr=3e-3, warmup_steps=5, eval_every=None, save_every=None, log_every=50,
                      device="cpu", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains several times faster on one thread than on two
    try:
        finetune_run(root / "base", root / "train.json", root / "dev.json", root / "qa", FinetuneOptions("qa", 32),
                     cfg, epochs=3)
    finally:
        torch.set_num_threads(threads)
    return {"clm": root / "clm", "qa": root / "qa"}


@pytest.fixture(scope="module")
def server(folders):
    """`twinlm serve --model clm=... --model qa=...` (the CLI's app) under uvicorn on 127.0.0.1:FREE_PORT."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args(["--model", f"clm={folders['clm']}", "--model", f"qa={folders['qa']}"]))
    backbone = app.state.registry.served["clm"].lm.backbone
    slow = backbone.register_forward_pre_hook(lambda module, args: time.sleep(STEP_DELAY_S))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the port is ours before uvicorn starts: no race for a "free" one
    port = sock.getsockname()[1]
    live = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=live.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not live.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok"
    yield base
    live.should_exit = True
    thread.join(10)
    slow.remove()
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    # Nothing but the server itself: a playground that reached for the internet would show up here.
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
               else (problems.append(f"outside request: {route.request.url}"), route.abort()))
    page.set_default_timeout(15_000)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('clm')")
    yield page
    context.close()
    assert not problems, problems


def test_generate_streams_text_in_pieces(page, server):
    settings = {"prompt": "once upon a time", "temperature": 0.8, "top_k": 20, "top_p": 0.95, "max_tokens": 24,
                "seed": 7}
    page.click("#tabs button[data-tab=generate]")
    page.fill("#gen-prompt", settings["prompt"])
    for field, key in (("#gen-t", "temperature"), ("#gen-k", "top_k"), ("#gen-p", "top_p"),
                       ("#gen-n", "max_tokens"), ("#gen-seed", "seed")):
        page.fill(field, str(settings[key]))
    # One record per DOM update (a MutationObserver callback): when, how many pieces, how much text.
    page.evaluate("""() => {
        const out = document.getElementById('gen-out');
        window.updates = [];
        new MutationObserver(() => window.updates.push([performance.now(), out.querySelectorAll('.piece').length,
            out.textContent.length])).observe(out, {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#gen-go")
    page.wait_for_selector("#gen-out[data-state=done]")
    updates = page.evaluate("window.updates")
    growing = [u for before, u in zip(updates, updates[1:], strict=False) if u[1] > before[1]]
    assert len(growing) >= 3, f"the text arrived in {len(growing) + 1} DOM updates, not as a stream: {updates}"
    assert growing[-1][0] - updates[0][0] > 2 * STEP_DELAY_S * 1000, updates  # spread over time, not one burst
    assert all(b[2] >= a[2] for a, b in zip(updates, updates[1:], strict=False)), "the text only grows"

    streamed = "".join(page.eval_on_selector_all("#gen-out .piece", "els => els.map(e => e.textContent)"))
    want = httpx.post(f"{server}/v1/completions", json={"model": "clm", **settings}, timeout=30).json()
    assert streamed == want["choices"][0]["text"] and streamed
    assert page.inner_text("#gen-out b") == settings["prompt"]
    meta = page.inner_text("#gen-meta")
    assert f"finished: {want['choices'][0]['finish_reason']}" in meta, meta


@pytest.mark.parametrize("context", ["the plot was quite dull and the film of 1999 was a story with a cast",
                                     "🎬 电影 · the acting was very good and the film of 2004 was a story"])
def test_qa_highlights_the_answer_span(page, server, context):
    question = "when was the film"
    page.click("#tabs button[data-tab=qa]")
    page.fill("#qa-q", question)
    page.fill("#qa-c", context)
    page.click("#qa-go")
    mark = page.wait_for_selector("#qa-out mark.answer")
    want = httpx.post(f"{server}/v1/answer", json={"model": "qa", "question": question, "context": context},
                      timeout=30).json()
    assert want["answer"] == context[want["start"]:want["end"]] and want["answer"]
    assert mark.text_content() == want["answer"]
    assert page.inner_text("#qa-answer") == want["answer"]
    # The highlight sits at the API's offsets: the text before it is the context's first `start` characters.
    before = page.evaluate("""() => {
        const ctx = document.querySelector('#qa-out .ctx'), mark = ctx.querySelector('mark.answer');
        const range = document.createRange();
        range.setStart(ctx, 0);
        range.setEndBefore(mark);
        return range.toString();
    }""")
    assert before == context[:want["start"]]
    assert page.text_content("#qa-out .ctx") == context
    assert page.locator("#qa-out mark").count() == 1
    assert want["answer"] in {"1999", "2004"}  # the fine-tuned model does find the year


def test_mask_view_matches_the_tokens(page, server):
    text = "the cat sat on the mat with a dog"
    tokens = httpx.post(f"{server}/v1/tokenize", json={"model": "clm", "text": text}, timeout=30).json()["tokens"]
    shown = ["".join("·" if c.isspace() else c for c in t) or "∅" for t in tokens]  # as the playground labels them
    n = len(tokens)
    page.click("#tabs button[data-tab=masks]")
    page.fill("#mask-text", text)
    page.wait_for_function("""want => {
        const got = [...document.querySelectorAll('#mask-causal thead th')].slice(1).map(th => th.textContent);
        return got.length === want.length && got.every((t, i) => t === want[i]);
    }""", arg=shown)
    assert page.locator("#mask-bi td.see").count() == n * n
    assert page.locator("#mask-causal td.see").count() == n * (n + 1) // 2
    assert page.locator("#mask-causal td:not(.see)").count() == n * (n - 1) // 2
    # Row i, column j: the causal mask lights j <= i only.
    lit = page.eval_on_selector_all("#mask-causal tbody tr", "rows => rows.map(r => [...r.querySelectorAll('td')]"
                                    ".map(td => td.classList.contains('see')))")
    assert lit == [[j <= i for j in range(n)] for i in range(n)]
