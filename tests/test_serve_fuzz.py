"""Fuzz `answer-trt serve`'s HTTP API from its own /openapi.json with Schemathesis (issue 24,
item 7): every operation gets a fixed number of generated requests, valid and invalid, sent
to a Ray Serve server on 127.0.0.1 over `tiny` engines from the cache. No answer is a 5xx
(but the 504 of a `timeout_s` the request set itself), every status and body is one the
document declares, and every 4xx is a JSON error on one line. The run is bounded in
examples per operation, in seconds per request and in seconds overall."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="Schemathesis is not installed: pip install -e '.[dev]'")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from answer_trt.config import MAX_IMAGES, MAX_STEPS  # noqa: E402
from answer_trt.serving.http import OPENAI_PREFIXES  # noqa: E402
from tests.serve_process import local_server  # noqa: E402

HOST = "127.0.0.1"
EXAMPLES = 30  # generated requests per operation (valid and invalid)
CALL_TIMEOUT_S = 60.0  # the most one request may take
BUDGET_S = 600.0  # the whole fuzz, from the server's start (about 90 s here)
# Valid values of these fields above their cap are lowered to it: the fuzz is about the API,
# and a 1000-step ANSWER request (up to K calls a step in inner mode), or A1111's n_iter of
# 256 such requests, is minutes of CPU here. Values out of the schema's range are sent as drawn.
CAPS = {"steps": (3, MAX_STEPS), "n_iter": (2, MAX_IMAGES)}


@pytest.fixture(scope="module")
def server() -> Any:
    from answer_trt.loaders import build_cached

    with local_server(build_cached("tiny"), HOST) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server: str) -> Any:
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    schema.started = time.monotonic()  # the time limit counts from here
    return schema


def documented_operations() -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation /openapi.json documents, read from the app
    itself (no server needed to list them): a new route is fuzzed without a change here."""
    from answer_trt.serving.http import make_api

    class Stub:
        model_name, backend, health = "tiny", "onnxruntime", {}

    document = make_api(Stub()).openapi()  # type: ignore[arg-type]
    return [(method.upper(), path) for path, methods in document["paths"].items() for method in methods]


def lower_costs(case: Any) -> None:
    """Each field of ``CAPS`` with a valid value above its cap gets the cap."""
    if isinstance(case.body, dict):
        for name, (cap, high) in CAPS.items():
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and cap < value <= high:
                case.body[name] = cap


def error_line(path: str, body: Any) -> str:
    """The one-line message of a refusal: ``{"error": "..."}``, or OpenAI's
    ``{"error": {"message": "...", ...}}`` on its routes."""
    assert isinstance(body, dict) and "error" in body, body
    error = body["error"]
    if path.startswith(OPENAI_PREFIXES):
        assert isinstance(error, dict) and {"message", "type"} <= set(error), body
        error = error["message"]
    assert isinstance(error, str) and error.strip(), body
    return error


def refusals_are_one_line_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is JSON, with its message on one line."""
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
        message = error_line(case.operation.path, json.loads(response.content))
        assert "\n" not in message and "\r" not in message, message
    return None


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' not_a_server_error, less the 504 of a deadline the request set itself."""
    if response.status_code == 504 and isinstance(case.body, dict) and case.body.get("timeout_s") is not None:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection, refusals_are_one_line_json]


MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("method, path", documented_operations())
def test_no_request_the_schema_allows_or_refuses_is_a_server_error(api_schema, method, path, mode):
    operation = api_schema[path][method]
    takes_input = bool(operation.body or operation.query)
    if mode == schemathesis.GenerationMode.NEGATIVE and not takes_input:
        pytest.skip(f"{method} {path} takes no input to make invalid")
    spent = time.monotonic() - api_schema.started
    assert spent < BUDGET_S, f"the fuzz took over its time limit ({spent:.0f} s of {BUDGET_S:.0f} s)"
    count = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        lower_costs(case)
        count[0] += 1
        case.call_and_validate(checks=CHECKS, timeout=CALL_TIMEOUT_S)

    fuzz()
    assert count[0] >= (5 if takes_input else 1), count  # without input there is one request to send


@pytest.mark.slow
def test_the_server_documents_the_operations_fuzzed(api_schema):
    live = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert live == set(documented_operations()) and len(live) >= 8, live
