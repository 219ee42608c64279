"""`twinlm serve`: every endpoint against the Python API, the error shape, streaming, batching, limits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402

from helpers import peaked_model  # noqa: E402
from twinlm import checkpoint as ckpt  # noqa: E402
from twinlm.data.tasks import cut_tokens  # noqa: E402
from twinlm.errors import ConfigError  # noqa: E402
from twinlm.finetune import answer, classify, tag  # noqa: E402
from twinlm.generate import generate  # noqa: E402
from twinlm.heads import TaskModel  # noqa: E402
from twinlm.loading import load  # noqa: E402
from twinlm.masked import mask_predict  # noqa: E402
from twinlm.pipelines import fill_mask  # noqa: E402
from twinlm.scoring import perplexity, pseudo_perplexity  # noqa: E402
from twinlm.serve.app import create_app  # noqa: E402
from twinlm.serve.batched import fill_mask_many, mask_predict_many, score_many  # noqa: E402
from twinlm.serve.limits import Limits, fit_text  # noqa: E402
from twinlm.tokenizer import train_tokenizer  # noqa: E402

LINES = ["the cat sat on the mat and the dog sat on the log",
         "alice went to paris and bob went to rome with carol",
         "once upon a time there was a story about a king",
         "我们 喜欢 语言 模型 。 今天 天气 很 好 。",
         "the film was good and the plot was great"] * 4
TASKS = {"classify": ["neg", "pos"], "qa": ["start", "end"], "ner": ["O", "B-PER", "I-PER"]}


def build_models(root, hybrid: bool = False) -> dict:
    """Folders of tiny random models sharing one BPE tokenizer: a causal LM, a masked LM (and with ``hybrid`` a
    hybrid one) and one fine-tuned model per task. Name -> folder."""
    (root / "text.txt").write_text("\n".join(LINES) + "\n")
    tok = train_tokenizer([root / "text.txt"], kind="bpe", vocab_size=300)
    vocab = tok.vocab_size
    out = {}
    kinds = [("clm", "causal", {}), ("mlm", "bidirectional", {})]
    if hybrid:
        kinds.append(("hybrid", "bidirectional", {"objective": "hybrid"}))
    for name, kind, extra in kinds:
        model = peaked_model(vocab, kind, positions=64, seed=1, **extra)
        out[name] = ckpt.save_model(root / name, model_state=model.state_dict(), config=model.config, tokenizer=tok)
    for task, labels in TASKS.items():
        lm = peaked_model(vocab, "bidirectional", positions=64, seed=2)
        torch.manual_seed(3)
        head = TaskModel(lm, task, len(labels))
        config = lm.config.replace(extra={"task": {"task": task, "labels": labels, "problem": "single_label",
                                                   "max_seq_len": 48, "doc_stride": 16, "max_answer_len": 8}})
        out[task] = ckpt.save_model(root / task, model_state=head.state_dict(), config=config, tokenizer=tok)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def loaded(folders):
    return {name: load(path) for name, path in folders.items()}


def make_client(loaded, **kw):
    api_key = kw.pop("api_key", None)
    return TestClient(create_app(loaded, Limits(**kw), api_key=api_key))


@pytest.fixture(scope="module")
def client(loaded):
    with make_client(loaded, max_wait_ms=20) as c:
        yield c


def post(client, path, **body):
    return client.post(path, json=body)


# ----------------------------------------------------------------------------------------------- service


def test_service_endpoints(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    by_name = {m["name"]: m for m in info["models"]}
    assert "completions" in by_name["clm"]["endpoints"] and "fill-mask" not in by_name["clm"]["endpoints"]
    assert by_name["classify"]["labels"] == ["neg", "pos"] and info["limits"]["max_batch_size"] == 16
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["clm", "mlm", *TASKS]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/completions", "/v1/embeddings", "/v1/fill-mask", "/v1/classify", "/v1/answer", "/v1/tag",
              "/v1/score"):
        assert p in paths
    page = client.get("/")
    assert page.status_code == 200 and "twinlm playground" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        got = client.get(asset)
        assert got.status_code == 200 and "http://" not in got.text and "https://" not in got.text  # offline
    post(client, "/v1/tokenize", model="clm", text="the cat")
    metrics = client.get("/metrics").text
    assert "twinlm_requests_total" in metrics and "twinlm_request_latency_seconds_bucket" in metrics


# ----------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("text", ["the cat sat on the [MASK] .", "我们 喜欢 [MASK] 模型"])
def test_fill_mask_equals_python(client, loaded, text):
    got = post(client, "/v1/fill-mask", model="mlm", text=text, top_k=3)
    assert got.status_code == 200, got.text
    want = fill_mask(loaded["mlm"].lm, loaded["mlm"].tokenizer, text, top_k=3)
    assert [[c["token_id"] for c in row] for row in got.json()["masks"]] == [[p.token_id for p in r] for r in want]
    assert got.json()["masks"][0][0]["score"] == pytest.approx(want[0][0].score, rel=1e-6)


@pytest.mark.parametrize("options", [{"temperature": 0.0}, {"temperature": 0.8, "top_k": 20, "top_p": 0.9,
                                                             "seed": 7}])
@pytest.mark.parametrize("prompt", ["the cat", "我们 喜欢"])
def test_completion_equals_python(client, loaded, options, prompt):
    got = post(client, "/v1/completions", model="clm", prompt=prompt, max_tokens=12, **options)
    assert got.status_code == 200, got.text
    body = got.json()
    want = generate(loaded["clm"].lm, loaded["clm"].tokenizer, prompt, max_new_tokens=12,
                    **{"seed": 0, **options})
    assert body["choices"][0]["text"] == want.text
    assert body["choices"][0]["finish_reason"] == want.finish_reason
    assert body["usage"]["completion_tokens"] == len(want.token_ids)


def sse(response) -> tuple[list[dict], bool]:
    chunks, done = [], False
    for line in response.text.splitlines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
        else:
            chunks.append(json.loads(line[6:]))
    return chunks, done


@pytest.mark.parametrize("prompt", ["once upon", "今天 天气"])
def test_stream_joins_to_the_completion(client, prompt):
    body = dict(model="clm", prompt=prompt, max_tokens=16, temperature=0.9, seed=11, stop=["zz"])
    whole = post(client, "/v1/completions", **body).json()["choices"][0]
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks, done = sse(streamed)
    assert done and len(chunks) > 2
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]


def test_embeddings_equal_python(client, loaded):
    texts = ["the cat sat", "我们 喜欢 语言 模型", "alice went to paris and bob went to rome"]
    got = post(client, "/v1/embeddings", model="mlm", input=texts).json()
    tok, lm = loaded["mlm"].tokenizer, loaded["mlm"].lm
    for item, text in zip(got["data"], texts, strict=True):
        want = lm.encode(torch.tensor([tok.encode(text, add_special=True)]))[0]
        assert torch.allclose(torch.tensor(item["embedding"]), want, atol=1e-5)
    one = post(client, "/v1/embeddings", model="clm", input="the cat").json()["data"][0]["embedding"]
    assert len(one) == loaded["clm"].config.d_model


def test_tasks_equal_python(client, loaded):
    c, q, n = loaded["classify"], loaded["qa"], loaded["ner"]
    texts = ["the film was good", "the plot was dull and boring"]
    got = post(client, "/v1/classify", model="classify", text=texts).json()["results"]
    assert [r["label"] for r in got] == [r["label"] for r in classify(c.model, c.tokenizer, texts)]
    question, context = "where did alice go ?", "alice went to paris and bob went to rome with carol"
    got = post(client, "/v1/answer", model="qa", question=question, context=context).json()
    want = answer(q.model, q.tokenizer, question, context)
    assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"])
    assert context[got["start"]:got["end"]] == got["answer"]
    text = "alice went to paris with bob"
    got = post(client, "/v1/tag", model="ner", text=text).json()["results"][0]
    want = tag(n.model, n.tokenizer, text)
    assert [(e["type"], e["start"], e["end"]) for e in got] == [(e["type"], e["start"], e["end"]) for e in want]


def test_scores_equal_python(client, loaded):
    text = "the cat sat on the mat"
    got = post(client, "/v1/score", model="clm", text=text).json()
    assert got["paradigm"] == "causal"
    assert got["scores"]["perplexity"] == pytest.approx(perplexity(loaded["clm"].lm, loaded["clm"].tokenizer,
                                                                   text).perplexity)
    got = post(client, "/v1/score", model="mlm", text=text).json()
    want = pseudo_perplexity(loaded["mlm"].lm, loaded["mlm"].tokenizer, text)
    assert got["scores"]["pseudo_perplexity"] == pytest.approx(want["pseudo_perplexity"])


def test_mask_predict_endpoint(client, loaded):
    got = post(client, "/v1/mask-predict", model="mlm", prompt="我们 喜欢", max_tokens=4, steps=2).json()
    want = mask_predict(loaded["mlm"].lm, loaded["mlm"].tokenizer, "我们 喜欢", max_new_tokens=4, steps=2)
    assert (got["token_ids"], got["text"]) == (want.token_ids, want.text)


LONG = "the cat sat on the mat and the dog sat on the log . " * 8  # over max_positions (64): windows, chunks


def _same_numbers(got, want):
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9) if isinstance(v, int) else \
            got[k] == pytest.approx(v, rel=1e-4), k


def test_batched_functions_equal_the_python_api(loaded):
    """fill-mask, mask-predict and scores of several inputs in shared padded passes equal the one-text calls; an
    input that fails its checks gets its own error in its place."""
    mlm, tok = loaded["mlm"].lm, loaded["mlm"].tokenizer
    masked = [("the [MASK] sat on the mat .", 3), ("我们 [MASK] 语言 [MASK] 。", 5), ("a [MASK]", 1), ("no blank", 2)]
    got = fill_mask_many(mlm, tok, masked)
    assert isinstance(got[3], ConfigError) and "[MASK]" in str(got[3])
    for row, (text, k) in zip(got[:3], masked[:3], strict=True):
        want = fill_mask(mlm, tok, text, top_k=k)
        assert [[(p.token_id, p.sequence) for p in r] for r in row] == [[(p.token_id, p.sequence) for p in r]
                                                                           for r in want]
        assert [p.score for r in row for p in r] == pytest.approx([p.score for r in want for p in r], rel=1e-4)
    asks = [("the cat", 6, 3), ("我们 喜欢", 3, 10), ("", 4, 1), ("once upon a time there was a", 8, 5),
            ("x " * 80, 4, 2)]
    got = mask_predict_many(mlm, tok, asks)
    assert isinstance(got[4], ConfigError) and "max_positions" in str(got[4])
    for gen, (prompt, n, steps) in zip(got[:4], asks[:4], strict=True):
        want = mask_predict(mlm, tok, prompt, max_new_tokens=n, steps=steps)
        assert (gen.token_ids, gen.text, gen.prompt_tokens) == (want.token_ids, want.text, want.prompt_tokens)
    hybrid = peaked_model(tok.vocab_size, "bidirectional", positions=64, seed=4, objective="hybrid")
    texts = ["the cat sat", LONG, "我们 喜欢 语言 模型 。", ""]
    for model, paradigm in ((loaded["clm"].lm, "causal"), (mlm, "masked"), (hybrid, "causal"), (hybrid, "masked")):
        other = "masked" if paradigm == "causal" else "causal"
        got = score_many(model, tok, [(t, paradigm) for t in texts] + [("a b", other)])
        assert isinstance(got[3], ConfigError) and "empty" in str(got[3])  # the empty text, alone
        assert isinstance(got[4], ConfigError) is (model is not hybrid)  # a paradigm the model lacks
        for scores, text in zip(got[:3], texts, strict=False):
            want = (perplexity(model, tok, text).to_dict() if paradigm == "causal"
                    else pseudo_perplexity(model, tok, text))
            _same_numbers(scores, want)


def test_encoder_endpoints_batched_equal_unbatched(loaded):
    """Concurrent fill-mask, score and mask-predict requests are answered from shared forward passes, with the same
    bodies as a server that runs every request alone (max_batch_size 1)."""
    asks = [("/v1/fill-mask", {"model": "mlm", "text": t, "top_k": 2}) for t in
            ("the [MASK] sat", "我们 喜欢 [MASK]", "alice went to [MASK] and [MASK]", "the film was [MASK]")]
    asks += [("/v1/score", {"model": m, "text": t}) for m in ("clm", "mlm") for t in ("the cat sat", LONG[:120])]
    asks += [("/v1/mask-predict", {"model": "mlm", "prompt": p, "max_tokens": n, "steps": s})
             for p, n, s in (("the cat", 4, 2), ("我们", 6, 4), ("once upon a time", 3, 3))]

    def answers(client):
        with ThreadPoolExecutor(len(asks)) as pool:
            return list(pool.map(lambda a: client.post(a[0], json=a[1]).json(), asks))

    with make_client(loaded, max_batch_size=1, max_wait_ms=0) as c:
        alone = answers(c)
    with make_client(loaded, max_batch_size=32, max_wait_ms=300) as c:
        batchers = c.app.state.registry.served["mlm"].batchers
        together = answers(c)
        runs = {op: batchers[op].batches for op in ("fill-mask", "score", "mask-predict")}
    assert runs["fill-mask"] < 4 and runs["mask-predict"] < 3  # several requests per forward batch
    for (path, _), a, b in zip(asks, alone, together, strict=True):
        if path == "/v1/score":
            assert a["paradigm"] == b["paradigm"]
            _same_numbers(b["scores"], a["scores"])
        elif path == "/v1/fill-mask":
            assert [[c["token_id"] for c in r] for r in a["masks"]] == [[c["token_id"] for c in r] for r in b["masks"]]
            assert [c["score"] for r in b["masks"] for c in r] == pytest.approx([c["score"] for r in a["masks"]
                                                                                for c in r], rel=1e-4)
        else:
            assert a == b


# ----------------------------------------------------------------------------------------------- errors


BAD = [
    ("/v1/fill-mask", {"model": "clm", "text": "a [MASK]"}, 400, "model", "mlm"),
    ("/v1/completions", {"model": "mlm", "prompt": "a"}, 400, "model", "clm"),
    ("/v1/classify", {"model": "qa", "text": "a"}, 400, "model", "classify"),
    ("/v1/classify", {"model": "nope", "text": "a"}, 404, "model", "not served"),
    ("/v1/classify", {"text": []}, 422, "text", "empty"),
    ("/v1/classify", {"text": "   "}, 422, "text", "empty"),
    ("/v1/classify", {"text": "a", "bogus": 1}, 422, "bogus", ""),
    ("/v1/classify", {"text": ["a", "b"], "text_pair": ["c"]}, 422, "text_pair", "pair"),
    ("/v1/completions", {"model": "clm", "max_tokens": 0}, 422, "max_tokens", ""),
    ("/v1/completions", {"model": "clm", "max_tokens": 500}, 422, "max_tokens", "256"),
    ("/v1/completions", {"model": "clm", "n": 2}, 422, "n", ""),
    ("/v1/completions", {"model": "clm", "top_p": 0}, 422, "top_p", ""),
    ("/v1/completions", {"model": "clm", "temperature": -1}, 422, "temperature", ""),
    ("/v1/completions", {"model": "clm", "prompt": "the cat " * 40, "max_tokens": 30}, 413, "prompt", "34"),
    ("/v1/completions", {"model": "clm", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop", "4"),
    ("/v1/fill-mask", {"model": "mlm", "text": "no blank here"}, 400, None, "[MASK]"),
    ("/v1/fill-mask", {"model": "mlm", "text": "the [MASK] " * 40}, 413, "text", "62"),
    ("/v1/embeddings", {"model": "mlm", "input": ["ok", "the cat " * 40]}, 413, "input.1", "62"),
    ("/v1/score", {"model": "clm", "text": "a b", "paradigm": "masked"}, 400, "paradigm", "causal"),
    ("/v1/answer", {"model": "qa", "question": "", "context": "x"}, 422, "question", ""),
    ("/v1/tag", {"model": "ner"}, 422, "text", "required"),
    # Were a 500 (NaN sampling), a 503 (a request bigger than the queue) and a 400 naming a CLI flag, not the field.
    ("/v1/completions", {"model": "clm", "temperature": 5e-324}, 422, "temperature", "greedy"),
    ("/v1/completions", {"model": "clm", "prompt": ["a"] * 65}, 422, "prompt", "at most 64"),
    ("/v1/answer", {"model": "qa", "question": "where did alice go ? " * 8, "context": "paris"}, 413, "question",
     "limit is 37"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "words"), BAD)
def test_bad_input(client, path, body, status, param, words):
    got = client.post(path, json=body)
    assert got.status_code == status, got.text
    err = got.json()["error"]
    assert set(err) == {"message", "type", "param"} and err["param"] == param and words in err["message"]


def test_more_errors(loaded, client):
    assert client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    for method, path, status in (("get", "/nowhere", 404), ("get", "/v1/classify", 405)):
        got = getattr(client, method)(path)
        assert got.status_code == status and set(got.json()["error"]) == {"message", "type", "param"}
    with make_client(loaded, max_body_bytes=200, max_input_tokens=8, api_key="s3cret") as small:
        assert small.get("/health").status_code == 200
        denied = small.post("/v1/tokenize", json={"text": "a"})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer s3cret"}
        big = small.post("/v1/tokenize", json={"text": "x" * 500}, headers=auth)
        assert big.status_code == 413 and "200-byte" in big.json()["error"]["message"]
        long = "the cat sat on the mat and the dog sat on the log"
        got = small.post("/v1/classify", json={"text": long}, headers=auth)
        assert got.status_code == 413 and got.json()["error"]["param"] == "text" and " 8 " in got.text
        got = small.post("/v1/classify", json={"text": long, "truncate": True}, headers=auth)
        assert got.status_code == 200
        got = small.post("/v1/completions", json={"model": "clm", "prompt": long, "truncate": True, "max_tokens": 3,
                                                  "temperature": 0}, headers=auth)
        assert got.status_code == 200 and got.json()["usage"]["prompt_tokens"] == 8


def test_truncate_keeps_what_the_model_reads(loaded):
    """`truncate: true` cuts the way the served classifier was trained to cut: head, or head-tail (first quarter of
    the room, last three quarters), on whole tokens, keeping the text's word breaks."""
    tok = loaded["classify"].tokenizer
    text = "alice went to paris and bob went to rome with carol and the dog sat on the log"
    ids = tok.hf.encode(text, add_special_tokens=False).ids
    for keep, want in (("head", ids[:8]), ("head-tail", cut_tokens(ids, 8, "head-tail"))):
        cut, n = fit_text(tok, text, 8, "text", True, keep)
        assert n == 8 and tok.hf.encode(cut, add_special_tokens=False).ids == want, keep
    assert fit_text(tok, text, 8, "text", True, "head-tail")[0] == "alice sat on the log"  # "alice" is 2 tokens
    assert fit_text(tok, text, 100, "text", True, "head-tail") == (text, len(ids))


# ----------------------------------------------------------------------------------------------- batching, limits


class Gate:
    """A forward pre-hook that counts calls and can hold them until released."""

    def __init__(self, module, hold=False, delay=0.0):
        self.calls, self.delay = 0, delay
        self.open = threading.Event()
        if not hold:
            self.open.set()
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.open.wait(10)
        if self.delay:
            time.sleep(self.delay)


def test_concurrent_requests_are_batched(loaded):
    texts = [f"the film was {w}" for w in ("good", "bad", "great", "dull", "fine", "poor", "nice", "ok")]
    single = classify(loaded["classify"].model, loaded["classify"].tokenizer, texts, batch_size=1)
    with make_client(loaded, max_wait_ms=200, max_batch_size=16) as c:
        app_models = c.app.state.registry.served
        gate = Gate(app_models["classify"].model)
        with ThreadPoolExecutor(len(texts)) as pool:
            got = list(pool.map(lambda t: post(c, "/v1/classify", model="classify", text=t).json(), texts))
        gate.handle.remove()
        assert gate.calls < len(texts)
        assert [g["results"][0]["label"] for g in got] == [s["label"] for s in single]
        for g, s in zip(got, single, strict=True):
            assert g["results"][0]["score"] == pytest.approx(s["score"], abs=1e-5)
        gate = Gate(app_models["mlm"].lm)
        with ThreadPoolExecutor(len(texts)) as pool:
            vecs = list(pool.map(lambda t: post(c, "/v1/embeddings", model="mlm", input=t).json(), texts))
        gate.handle.remove()
        assert gate.calls < len(texts)
        lm, tok = loaded["mlm"].lm, loaded["mlm"].tokenizer
        for v, t in zip(vecs, texts, strict=True):
            want = lm.encode(torch.tensor([tok.encode(t, add_special=True)]))[0]
            assert torch.allclose(torch.tensor(v["data"][0]["embedding"]), want, atol=1e-5)
        assert "twinlm_batch_size_bucket" in c.get("/metrics").text


def test_a_lone_request_does_not_wait_for_company(loaded):
    """With no other request in progress the batcher runs at once instead of waiting out max_wait_ms (here far
    longer than the request's time limit, so a wait would be a 504)."""
    with make_client(loaded, max_wait_ms=600_000, timeout_s=5) as c:
        for path, body in (("/v1/classify", {"model": "classify", "text": "a"}),
                           ("/v1/fill-mask", {"model": "mlm", "text": "a [MASK]"})):
            assert c.post(path, json=body).status_code == 200
        assert 'twinlm_requests_in_progress 1.0' in c.get("/metrics").text  # the /metrics request itself


def test_full_queue_answers_503_and_timeout_504(loaded):
    with make_client(loaded, max_queue=1, max_batch_size=1, max_wait_ms=0, timeout_s=5) as c:
        served = c.app.state.registry.served["classify"]
        gate = Gate(served.model, hold=True)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, c, "/v1/classify", model="classify", text="a")
            while gate.calls == 0:
                time.sleep(0.01)
            second = pool.submit(post, c, "/v1/classify", model="classify", text="b")
            while served.batchers["classify"].depth == 0:
                time.sleep(0.01)
            third = post(c, "/v1/classify", model="classify", text="c")
            assert third.status_code == 503 and third.headers["Retry-After"] == "1"
            assert third.json()["error"]["type"] == "overloaded_error"
            gate.open.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
        gate.handle.remove()
    with make_client(loaded, timeout_s=0.2) as c:
        gate = Gate(c.app.state.registry.served["classify"].model, hold=True)
        got = post(c, "/v1/classify", model="classify", text="a")
        gate.open.set()
        gate.handle.remove()
        assert got.status_code == 504 and got.json()["error"]["type"] == "timeout_error"


def test_streams_join_between_steps(loaded):
    """Requests join the running decoding loop (continuous batching) and each equals the Python API: a greedy one,
    and later a seeded sampling one and a greedy one with a shorter budget, each keeping its own settings."""
    asks = [("the cat", {"max_tokens": 20, "temperature": 0}),
            ("alice went to", {"max_tokens": 20, "temperature": 0.8, "top_k": 20, "seed": 7}),
            ("once upon a time there was", {"max_tokens": 6, "temperature": 0})]
    lm, tok = loaded["clm"].lm, loaded["clm"].tokenizer
    want = [generate(lm, tok, p, max_new_tokens=o["max_tokens"], stop_at_eos=True,
                     **{"seed": 0, **{k: v for k, v in o.items() if k != "max_tokens"}}).text for p, o in asks]
    with make_client(loaded) as c:
        engine = c.app.state.registry.served["clm"].engine
        gate = Gate(lm.backbone, delay=0.01)
        with ThreadPoolExecutor(len(asks)) as pool:
            futures = []
            for i, (prompt, options) in enumerate(asks):
                while engine.steps < 3 * i:
                    time.sleep(0.005)
                futures.append(pool.submit(post, c, "/v1/completions", model="clm", prompt=prompt, **options))
            texts = [f.result().json()["choices"][0]["text"] for f in futures]
        gate.handle.remove()
        assert engine.max_rows_seen >= 2 and engine.active == 0
        assert texts == want


def test_leaving_a_stream_frees_its_row(loaded):
    from twinlm.generate import GenerationConfig
    from twinlm.serve.routes import _sse

    with make_client(loaded) as c:
        engine = c.app.state.registry.served["clm"].engine
        gate = Gate(loaded["clm"].lm.backbone, delay=0.01)

        async def leave_early():
            req = engine.submit(loaded["clm"].tokenizer.encode("the cat"), GenerationConfig(max_new_tokens=40))
            events = _sse({"id": "x"}, [req], time.monotonic() + 30)
            first = await events.__anext__()
            await events.aclose()  # what the server does when the client disconnects
            for _ in range(200):
                if engine.active == 0:
                    break
                await asyncio.sleep(0.01)
            return first, engine.active, len(req.tokens)

        first, active, n = asyncio.run(leave_early())
        gate.handle.remove()
        assert first.startswith("data: ") and active == 0 and n < 40
