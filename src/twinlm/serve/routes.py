"""The endpoints. Each picks its model (Registry.pick), checks the input against the limits, and awaits a batched
call (Served.run) or the model's decoding loop (generation.Engine) under the per-request timeout."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..scoring import default_paradigm
from . import schemas as S
from .errors import ApiError, error_body
from .limits import check_max_tokens, fit_text
from .models import Registry, Served

router = APIRouter()


def _state(request: Request) -> tuple[Registry, Any]:
    return request.app.state.registry, request.app.state.limits


async def _batched(request: Request, served: Served, op: str, inputs: list[Any]) -> list[Any]:
    """The outputs of a batched call under the per-request time limit (504 after it)."""
    limits = request.app.state.limits
    try:
        return await served.run(op, inputs, limits.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, f"the request took longer than the {limits.timeout_s:g} s limit") from None


def _texts(value: str | list[str], field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ApiError(422, f"{field} is an empty list; give at least one text", field)
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(422, f"{field}{'' if isinstance(value, str) else f'.{i}'} is empty", field)
    return texts


def _limit(served: Served, room_for_specials: int | None = None) -> int:
    """Tokens one input may have: the server's limit, and when the text must fit the model at once, its room."""
    limit = served.limits.max_input_tokens
    if room_for_specials is not None:
        limit = min(limit, served.config.max_positions - room_for_specials)
    return limit


def _fit_all(served: Served, texts: list[str], field: str, truncate: bool, limit: int,
             keep: str = "head") -> list[str]:
    many = len(texts) > 1
    return [fit_text(served.tokenizer, t, limit, f"{field}.{i}" if many else field, truncate, keep)[0]
            for i, t in enumerate(texts)]


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------- info


@router.get("/v1/models", tags=["models"])
async def list_models(request: Request) -> dict[str, Any]:
    reg, _ = _state(request)
    return {"object": "list", "data": [S.ModelCard(id=n, created=s.created, paradigms=list(s.config.paradigms),
                                                   task=s.task, endpoints=s.endpoints).model_dump()
                                       for n, s in reg.served.items()]}


# ----------------------------------------------------------------------------------------------- encoders


@router.post("/v1/embeddings", response_model=S.EmbeddingResponse, tags=["encoders"])
async def embeddings(body: S.EmbeddingRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "embeddings")
    texts = _fit_all(served, _texts(body.input, "input"), "input", body.truncate, _limit(served, 2))
    rows = [served.tokenizer.encode(t, add_special=True) for t in texts]
    vecs = await _batched(request, served, "embeddings", rows)
    n = sum(len(r) for r in rows)
    return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vecs)], "model": served.name,
            "usage": {"prompt_tokens": n, "total_tokens": n}}


@router.post("/v1/fill-mask", response_model=S.FillMaskResponse, tags=["encoders"])
async def fill_mask(body: S.FillMaskRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "fill-mask")
    text = _fit_all(served, [body.text], "text", body.truncate, _limit(served, 2))[0]
    (preds,) = await _batched(request, served, "fill-mask", [(text, body.top_k)])
    return {"model": served.name, "masks": [[p.__dict__ for p in row] for row in preds]}


@router.post("/v1/classify", response_model=S.ClassifyResponse, tags=["tasks"])
async def classify(body: S.ClassifyRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "classify")
    # A head-tail classifier reads an over-long text's first quarter and last three quarters: cut the same way here.
    keep = (served.loaded.info.get("task") or {}).get("truncation") or "head"
    texts = _fit_all(served, _texts(body.text, "text"), "text", body.truncate, _limit(served), keep)
    pairs: list[str | None] = [None] * len(texts)
    if body.text_pair is not None:
        pairs = _fit_all(served, _texts(body.text_pair, "text_pair"), "text_pair", body.truncate,  # type: ignore
                         _limit(served), keep)
        if len(pairs) != len(texts):
            raise ApiError(422, f"text_pair has {len(pairs)} texts and text {len(texts)}; give one pair per text",
                           "text_pair")
    results = await _batched(request, served, "classify", list(zip(texts, pairs, strict=True)))
    return {"model": served.name, "results": results}


@router.post("/v1/answer", response_model=S.AnswerResponse, tags=["tasks"])
async def answer(body: S.AnswerRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "answer")
    # The question must leave the context room in a window (twinlm.data.tasks.featurize_qa: [CLS] q [SEP] at
    # least 8 context tokens [SEP]); it keeps at most 64 question tokens anyway.
    room = (served.loaded.info.get("task") or {}).get("max_seq_len", 128) - 3 - 8
    question = _fit_all(served, [body.question], "question", body.truncate, min(_limit(served), max(room, 1)))[0]
    context = _fit_all(served, [body.context], "context", body.truncate, _limit(served))[0]
    (span,) = await _batched(request, served, "answer", [(question, context)])
    return {"model": served.name, **{k: _finite(v) for k, v in span.items()}}


@router.post("/v1/tag", response_model=S.TagResponse, tags=["tasks"])
async def tag(body: S.TagRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "tag")
    texts = _fit_all(served, _texts(body.text, "text"), "text", body.truncate, _limit(served))
    return {"model": served.name, "results": await _batched(request, served, "tag", texts)}


@router.post("/v1/score", response_model=S.ScoreResponse, tags=["encoders"])
async def score(body: S.ScoreRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "score")
    paradigm = body.paradigm or default_paradigm(served.model)
    if paradigm not in served.config.paradigms:
        raise ApiError(400, f"model {served.name!r} is a {served.kind}; it has no {paradigm} score", "paradigm")
    text = _fit_all(served, [body.text], "text", body.truncate, _limit(served))[0]
    (scores,) = await _batched(request, served, "score", [(text, paradigm)])
    return {"model": served.name, "paradigm": paradigm, "scores": {k: _finite(v) for k, v in scores.items()}}


@router.post("/v1/tokenize", response_model=S.TokenizeResponse, tags=["encoders"])
async def tokenize(body: S.TokenizeRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "tokenize")
    text = _fit_all(served, [body.text], "text", body.truncate, _limit(served))[0] if body.text else ""
    ids = served.tokenizer.encode(text)
    return {"model": served.name, "ids": ids, "tokens": [served.tokenizer.decode([i]) for i in ids]}


@router.post("/v1/mask-predict", response_model=S.MaskPredictResponse, tags=["generation"])
async def mask_predict(body: S.MaskPredictRequest, request: Request) -> dict[str, Any]:
    served = _state(request)[0].pick(body.model, "mask-predict")
    check_max_tokens(body.max_tokens, served.limits.max_tokens_cap)
    prompt = _fit_all(served, [body.prompt], "prompt", False, _limit(served, 2 + body.max_tokens))[0] \
        if body.prompt else ""
    (gen,) = await _batched(request, served, "mask-predict", [(prompt, body.max_tokens, body.steps)])
    return {"model": served.name, "text": gen.text, "token_ids": gen.token_ids}


# ----------------------------------------------------------------------------------------------- completions


MIN_TEMPERATURE = 1e-6


def _generation_config(body: S.CompletionRequest) -> Any:
    from ..generate import GenerationConfig

    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(422, "stop takes at most 4 non-empty strings", "stop")
    if 0 < body.temperature < MIN_TEMPERATURE:
        # logits / t overflows float32 (every logit inf, the softmax NaN) long before t reaches 0.
        raise ApiError(422, f"temperature is {body.temperature:g}; use 0 for greedy decoding or at least "
                            f"{MIN_TEMPERATURE:g}", "temperature")
    return GenerationConfig(max_new_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                            top_p=body.top_p, seed=body.seed, stop_strings=tuple(stops))


def _prompt_ids(served: Served, prompts: list[str], max_tokens: int, truncate: bool) -> list[list[int]]:
    from ..generate import encode_prompts

    room = min(served.config.max_positions - max_tokens, served.limits.max_input_tokens)
    if room < 1:
        raise ApiError(422, f"max_tokens is {max_tokens}; model {served.name!r} takes at most "
                            f"{served.config.max_positions - 1} new tokens (max_positions "
                            f"{served.config.max_positions})", "max_tokens")
    out = []
    for i, ids in enumerate(encode_prompts(served.tokenizer, prompts)):
        if len(ids) > room:
            if not truncate:
                field = "prompt" if len(prompts) == 1 else f"prompt.{i}"
                raise ApiError(413, f"{field} has {len(ids)} tokens; with max_tokens={max_tokens} the limit is "
                                    f"{room} tokens (send \"truncate\": true to keep the last {room})", field)
            ids = ids[-room:]
        out.append(ids)
    return out


@router.post("/v1/completions", response_model=S.CompletionResponse, tags=["generation"],
             responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}})
async def completions(body: S.CompletionRequest, request: Request) -> Any:
    served = _state(request)[0].pick(body.model, "completions")
    check_max_tokens(body.max_tokens, served.limits.max_tokens_cap)
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise ApiError(422, "prompt is an empty list", "prompt")
    if len(prompts) > served.limits.max_queue:  # could never fit the queue: not an overload to retry
        raise ApiError(422, f"prompt is a list of {len(prompts)} prompts; this server takes at most "
                            f"{served.limits.max_queue} per request", "prompt")
    config = _generation_config(body)
    ids = _prompt_ids(served, prompts, body.max_tokens, body.truncate)
    engine = served.engine
    reqs = []
    try:
        for p in ids:
            reqs.append(engine.submit(p, config, incremental=body.stream))  # type: ignore[union-attr]
    except ApiError:
        for r in reqs:
            r.cancel()
        raise
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": served.name}
    deadline = time.monotonic() + served.limits.timeout_s
    if body.stream:
        return StreamingResponse(_sse(head, reqs, deadline), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        choices, completion_tokens = [], 0
        for index, req in enumerate(reqs):
            parts, reason, n = [], None, 0
            async for kind, *rest in _events(req, deadline):
                if kind == "piece":
                    parts.append(rest[0])
                else:
                    reason, n = rest
            choices.append({"text": "".join(parts), "index": index, "logprobs": None, "finish_reason": reason})
            completion_tokens += n
    finally:
        for r in reqs:
            r.cancel()
    prompt_tokens = sum(len(p) for p in ids)
    return {**head, "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                                                  completion_tokens, "total_tokens": prompt_tokens +
                                                  completion_tokens}}


async def _events(req: Any, deadline: float) -> AsyncIterator[tuple]:
    """A request's ("piece", text) events, ending with ("done", reason, n); errors and the deadline raise."""
    loop = asyncio.get_running_loop()
    # One timer for the whole request (not a wait_for, and its task, per event): at the deadline it puts a
    # "timeout" event in the queue.
    timer = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0.0), req.events.put_nowait, ("timeout",))
    try:
        while True:
            event = await req.events.get()
            if event[0] == "timeout":
                req.cancel()
                raise ApiError(504, "the completion took longer than the per-request time limit")
            if event[0] == "error":
                raise ApiError(500, f"decoding failed: {type(event[1]).__name__}: {event[1]}")
            yield event
            if event[0] == "done":
                return
    finally:
        timer.cancel()


async def _sse(head: dict[str, Any], reqs: list[Any], deadline: float) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text piece, a last chunk per prompt with its finish_reason, [DONE].
    Leaving early (client gone, timeout) cancels the requests, which frees their rows before the next step."""
    try:
        for index, req in enumerate(reqs):
            async for kind, *rest in _events(req, deadline):
                text, reason = (rest[0], None) if kind == "piece" else ("", rest[0])
                chunk = {**head, "choices": [{"text": text, "index": index, "logprobs": None,
                                              "finish_reason": reason}]}
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps(error_body(exc.message, exc.type, exc.param), ensure_ascii=False)}\n\n"
    finally:
        for r in reqs:
            r.cancel()
    yield "data: [DONE]\n\n"
