"""`twinlm serve`: the HTTP API and the web playground over the models given with --model NAME=PATH.

The command registry wires it in from ``add_arguments`` and ``run_command`` (or ``COMMANDS``). Needs the ``serve``
extra: ``pip install 'twinlm[serve]'``.
"""

from __future__ import annotations

import argparse

from .errors import ConfigError

HELP = "serve models over HTTP (OpenAI-compatible completions/embeddings, fill-mask, tasks) with a web playground"
EXAMPLE = "twinlm serve --model clm=runs/quickstart/clm --model mlm=runs/quickstart/mlm"
KEY_EXAMPLE = ("twinlm serve --model sentiment=runs/sst2 --port 8080 --api-key s3cret --max-batch-size 32   "
               "# Bearer key required")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .serve.limits import Limits

    d = Limits()
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a model to serve under NAME (repeatable): a run, checkpoint, model or Hugging Face folder, "
                        "or hf:ORG/NAME; requests can only use these")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1, /info, /metrics")
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; CORS is off without it)")
    p.add_argument("--max-input-tokens", type=int, default=d.max_input_tokens)
    p.add_argument("--max-tokens-cap", type=int, default=d.max_tokens_cap, help="most new tokens per completion")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="per-request time limit in seconds")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests per model and endpoint "
                                                                     "before 503 + Retry-After")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="1 turns batching off")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="completions decoded together per model")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def parse_models(specs: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--model {spec!r}: write NAME=PATH, e.g. --model clm=runs/quickstart/clm")
        if name in models:
            raise ConfigError(f"--model {name}: the name is given twice")
        models[name.strip()] = path.strip()
    return models


def build_app(args: argparse.Namespace):  # noqa: ANN201 - FastAPI, imported lazily
    try:
        from .serve.app import create_app
        from .serve.limits import Limits
    except ImportError as exc:
        raise ConfigError(f"twinlm serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'twinlm[serve]'") from None
    from .loading import load

    try:
        limits = Limits(max_input_tokens=args.max_input_tokens, max_tokens_cap=args.max_tokens_cap,
                        max_body_bytes=args.max_body_bytes, timeout_s=args.timeout, max_queue=args.max_queue,
                        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                        max_streams=args.max_streams)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    loaded = {}
    for name, path in parse_models(args.model).items():
        loaded[name] = load(path, device=args.device)
        for note in loaded[name].info.get("notes", []):
            print(f"note: {name}: {note}")
        if loaded[name].tokenizer is None:
            raise ConfigError(f"--model {name}={path}: no tokenizer files; it cannot be served")
    return create_app(loaded, limits, api_key=args.api_key, cors_origins=args.cors)


def run_command(args: argparse.Namespace) -> None:
    """Load the models, then serve until interrupted."""
    app = build_app(args)
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use the models")
    print(f"twinlm serve: playground and API at http://{args.host}:{args.port}/ (OpenAPI at /openapi.json)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)


def _command():
    from .cli_registry import Command

    return Command("serve", HELP, examples=(EXAMPLE, KEY_EXAMPLE), add_arguments=add_arguments, run=run_command)


COMMANDS = [_command()]
