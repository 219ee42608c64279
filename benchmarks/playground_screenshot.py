"""A screenshot of the `twinlm serve` playground (docs/playground.png), re-made with one command.

Serves the models under uvicorn on 127.0.0.1 (a free port, this machine only), drives Debian's chromium with
Playwright for Python, runs one tab with fixed settings (a seeded completion streamed into the generate tab, both
paradigms on the side-by-side tab, or the attention masks) and saves a PNG of the page.

    .venv/bin/python benchmarks/playground_screenshot.py     # runs/quickstart/{clm,mlm} (make demo writes them)
    .venv/bin/python benchmarks/playground_screenshot.py --model clm=runs/quickstart-issue11/clm \\
        --model mlm=runs/quickstart-issue11/mlm --out docs/playground.png      # --tab side / masks for the others

docs/playground.png was made with the second command: the quickstart's tiny causal model (2 layers, d_model 128,
600 steps on Tiny Shakespeare) continuing "ROMEO: / What light is this" with seed 7, streamed piece by piece (the
thin lines between words are the pieces' borders).
Needs chromium (apt-get install chromium) and playwright (in the dev extra); nothing is fetched from the internet.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve(specs: list[str]):  # noqa: ANN201 - (uvicorn.Server, thread, base URL)
    """`twinlm serve --model ...` (the CLI's own app) under uvicorn on 127.0.0.1 and a free port, in a thread."""
    import uvicorn

    from twinlm.cli_serve import add_arguments, build_app

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    app = build_app(parser.parse_args([a for spec in specs for a in ("--model", spec)]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_tab(page, tab: str, prompt: str, seed: int, max_tokens: int) -> str:  # noqa: ANN001 - a Playwright page
    """Run ``tab`` in the playground with fixed settings; returns a one-line description of what is on screen."""
    page.click(f"#tabs button[data-tab={tab}]")
    if tab == "generate":
        page.fill("#gen-prompt", prompt)
        page.fill("#gen-seed", str(seed))
        page.fill("#gen-n", str(max_tokens))
        page.click("#gen-go")
        page.wait_for_selector("#gen-out[data-state=done]", timeout=120_000)
        return f"generate: {page.inner_text('#gen-out')!r} ({page.inner_text('#gen-meta')})"
    if tab == "side":
        page.fill("#side-prompt", prompt)
        page.fill("#side-n", str(max_tokens))
        page.click("#side-go")
        page.wait_for_selector("#side-mlm[data-state=done]", timeout=120_000)
        page.wait_for_selector("#side-clm[data-state=done]", timeout=120_000)
        return f"mask-predict: {page.inner_text('#side-mlm')!r}; causal: {page.inner_text('#side-clm')!r}"
    page.fill("#mask-text", " ".join(prompt.split()))
    page.wait_for_timeout(800)  # the view redraws 200 ms after the last keystroke
    return f"masks for {prompt!r}: {page.locator('#mask-causal tbody tr').count()} tokens"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", metavar="NAME=PATH",
                    help="a model to serve (repeatable); default runs/quickstart/clm and runs/quickstart/mlm")
    ap.add_argument("--tab", choices=["generate", "side", "masks"], default="generate")
    ap.add_argument("--prompt", default="ROMEO:\nWhat light is this")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "playground.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=600)
    args = ap.parse_args()

    specs = args.model or [f"{n}={REPO / 'runs' / 'quickstart' / n}" for n in ("clm", "mlm")]
    missing = [s for s in specs if not Path(s.partition("=")[2]).exists() and not s.partition("=")[2].startswith("hf:")]
    if missing:
        raise SystemExit(f"no model at {', '.join(missing)}: run `make demo` first, or pass --model NAME=PATH")
    if not Path(args.chromium).is_file():
        raise SystemExit(f"no chromium at {args.chromium}: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    server, thread, base = serve(specs)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                       else route.abort())  # nothing but this server
            page.goto(base + "/")
            page.wait_for_function("!document.getElementById('status').textContent.startsWith('connecting')")
            shown = run_tab(page, args.tab, args.prompt, args.seed, args.max_tokens)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    print(shown)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
