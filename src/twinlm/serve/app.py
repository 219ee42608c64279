"""The FastAPI app: models given at start, limits, middleware (body size, API key, metrics), the routes and the
playground. ``create_app`` is all a caller needs; `twinlm serve` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ..loading import Loaded
from . import errors
from .errors import error_body
from .limits import Limits
from .metrics import Metrics
from .models import Registry, Served
from .routes import router

OPEN_PATHS = ("/", "/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/favicon.ico")


def create_app(models: dict[str, Loaded], limits: Limits | None = None, *, api_key: str | None = None,
               cors_origins: list[str] | None = None, workers: int = 1) -> FastAPI:
    """An app serving ``models`` (name -> Loaded) under ``limits``.

    api_key: when set, every /v1, /info and /metrics request needs ``Authorization: Bearer KEY``. cors_origins:
    allowed browser origins (none by default: CORS off). workers: threads running encoder batches.
    """
    if not models:
        raise ValueError("give at least one model to serve")
    limits = limits or Limits()
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="twinlm-batch")
    served = {name: Served(name, loaded, limits, metrics, executor) for name, loaded in models.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        for s in served.values():
            if s.engine is not None:
                s.engine.close()

    app = FastAPI(title="twinlm serve", version="0.1.0", lifespan=lifespan,
                  description="Masked and causal language models behind one API: OpenAI-compatible completions "
                              "and embeddings, fill-mask, classification, question answering, NER and scoring.")
    app.state.registry, app.state.limits, app.state.metrics = Registry(served), limits, metrics
    errors.install(app)
    app.include_router(router)

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(served)}

    @app.get("/info", tags=["service"])
    async def info() -> dict[str, Any]:
        return {"models": [s.describe() for s in served.values()], "limits": limits.to_dict(),
                "auth": api_key is not None}

    @app.get("/metrics", tags=["service"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    static = resources.files("twinlm.serve").joinpath("static")
    if static.joinpath("index.html").is_file():
        app.mount("/static", StaticFiles(directory=str(static)), name="static")

        @app.get("/", include_in_schema=False)
        async def playground() -> FileResponse:
            return FileResponse(str(static.joinpath("index.html")))

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, limits=limits, api_key=api_key, metrics=metrics)
    return app


class Guard:
    """Pure ASGI middleware (streams pass through untouched): counts requests and latency, refuses bodies over
    the size limit (413) and, with an API key, requests without ``Authorization: Bearer KEY`` (401)."""

    def __init__(self, app: Any, limits: Limits, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.limits, self.api_key, self.metrics = app, limits, api_key, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        label = path if path in ROUTE_LABELS else "other"
        start = time.perf_counter()
        status = {"code": 500}
        self.metrics.in_flight += 1

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self.metrics.latency.labels(label).observe(time.perf_counter() - start)
            await send(message)

        try:
            refusal = self._check(scope)
            if refusal is not None:
                await _reply(send_counted, *refusal)
                return
            receive, problem = await self._bounded(scope, receive)
            if problem == "too big":
                await _reply(send_counted, 413, f"request body is over the {self.limits.max_body_bytes}-byte limit",
                             None, {})
                return
            if problem == "too slow":
                await _reply(send_counted, 408, f"the request body did not arrive within the {self.limits.timeout_s:g}"
                             " s limit; send it all at once", None, {"Connection": "close"})
                return
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.requests.labels(label, str(status["code"])).inc()

    def _check(self, scope: dict) -> tuple | None:
        if self.api_key is None or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static/"):
            return None
        if scope.get("method") == "OPTIONS":
            return None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip(), self.api_key):
            return None
        return 401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", None, \
            {"WWW-Authenticate": "Bearer"}

    async def _bounded(self, scope: dict, receive: Any) -> tuple[Any, str | None]:
        """Read the body (at most the size limit, within the time limit) up front; replay it to the app.

        The time limit keeps a client that trickles its body (a byte a second) from holding a connection open
        for ever. Returns (receive for the app, None | "too big" | "too slow")."""
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return receive, None
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            return receive, "too big"
        try:
            return await asyncio.wait_for(self._read_body(receive), self.limits.timeout_s)
        except asyncio.TimeoutError:
            return receive, "too slow"

    async def _read_body(self, receive: Any) -> tuple[Any, str | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message]), None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limits.max_body_bytes:
                return receive, "too big"
            if not message.get("more_body"):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), None


ROUTE_LABELS = {"/v1/completions", "/v1/embeddings", "/v1/models", "/v1/fill-mask", "/v1/classify", "/v1/answer",
                "/v1/tag", "/v1/score", "/v1/tokenize", "/v1/mask-predict", "/health", "/info", "/metrics", "/"}


def _replay(messages: list[dict], then: Any = None) -> Any:
    pending = list(messages)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()  # after the body: http.disconnect when the client goes away
        return {"type": "http.disconnect"}

    return receive


async def _reply(send: Any, status: int, message: str, param: str | None, headers: dict[str, str]) -> None:
    body = json.dumps(error_body(message, errors.TYPES.get(status, "invalid_request_error"), param)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
