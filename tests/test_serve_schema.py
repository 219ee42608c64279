"""`twinlm serve` under a property-based run of its own OpenAPI schema (schemathesis): whatever the schema lets a
client send (and some of what it does not), no endpoint answers 5xx, every error has the one JSON shape, and every
200 JSON body matches the schema. In process (ASGI transport, no network), tiny random models of every paradigm
(causal, masked, hybrid) and task (classify, QA, NER), a bounded number of examples per operation."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from test_serve import build_models  # noqa: E402
from twinlm.loading import load  # noqa: E402
from twinlm.serve.app import create_app  # noqa: E402
from twinlm.serve.limits import Limits  # noqa: E402

EXAMPLES = 20  # per operation; each drawn body is sent as drawn and to one model of each kind serving the endpoint


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folders = build_models(tmp_path_factory.mktemp("serve-schema"), hybrid=True)
    # Small caps keep every drawn request cheap (a drawn max_tokens of 10**9 is a 422, not a long decode).
    limits = Limits(max_tokens_cap=8, max_input_tokens=48, max_wait_ms=1, timeout_s=30, max_body_bytes=1 << 16)
    return create_app({name: load(path) for name, path in folders.items()}, limits)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# Every operation in the schema (test_operations_are_all_here keeps the list honest).
OPERATIONS = [("GET", "/health"), ("GET", "/info"), ("GET", "/metrics"), ("GET", "/v1/models"),
              ("POST", "/v1/embeddings"), ("POST", "/v1/fill-mask"), ("POST", "/v1/classify"),
              ("POST", "/v1/answer"), ("POST", "/v1/tag"), ("POST", "/v1/score"), ("POST", "/v1/tokenize"),
              ("POST", "/v1/mask-predict"), ("POST", "/v1/completions")]


def test_operations_are_all_here(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


def _content_type(response) -> str:
    value = response.headers.get("content-type", [""])
    return value[0] if isinstance(value, list) else value


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_server_errors(app, api_schema, method, path):
    """Bodies drawn from the schema (valid ones, and invalid ones that break it): each sent as drawn, then to a
    model of each kind that serves the endpoint (a drawn model name is almost never served)."""
    operation = api_schema[path][method]
    served = app.state.registry.served
    endpoint = path.removeprefix("/v1/") if path.startswith("/v1/") else None
    # One model per kind that serves the endpoint (the three task models share the embeddings code path).
    kinds = {(s.config.paradigms, s.task is not None): n for n, s in reversed(served.items())
             if endpoint in s.endpoints}
    able = sorted(kinds.values())
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if method == "POST" else [])
    strategy = st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes))

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case):
        bodies = [case.body]
        if isinstance(case.body, dict):
            bodies += [{**case.body, "model": n} for n in able]
        for body in bodies:
            if body is not case.body:
                case.body = body
            response = case.call()
            where = f"{method} {path} {body!r:.300}"
            assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                err = response.json()["error"]
                assert set(err) == {"message", "type", "param"} and err["message"], where
            elif _content_type(response).startswith("application/json"):
                case.validate_response(response, checks=[response_schema_conformance])

    check()
