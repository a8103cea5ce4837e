"""The wire format of `answer-trt serve` (answer_trt.serving.protocol), without Ray: every
refusal is a one-line UserInputError naming the field, bool is not an integer, and the JSON
response carries the PNG and the parameters."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from answer_trt.errors import UserInputError
from answer_trt.serving.batcher import GenerateRequest
from answer_trt.serving.protocol import (
    FIELDS,
    MAX_BODY_BYTES,
    REQUEST_FIELDS,
    GenerateCall,
    error_body,
    parse_generate,
    png_bytes,
    render,
)

ROOT = Path(__file__).resolve().parents[1]


def parse(body: object) -> GenerateCall:
    return parse_generate(json.dumps(body).encode())


def refusal(body: bytes | object) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(UserInputError) as info:
        parse_generate(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_full_request_parses_into_the_batchers_request_and_options():
    body = {"prompt": "a red circle", "method": "cfg", "negative_prompt": "a blue square", "steps": 12,
            "guidance_scale": 5, "negative_scale": 2.5, "dns_steps": 3, "mode": "inner", "chain_min_sigma": 0.25,
            "drift_tau": None, "guidance_rescale": 0.5, "scheduler": "euler", "seed": 2**64 - 1, "height": 32,
            "width": 32, "response": "json", "timeout_s": 2.5}
    call = parse(body)
    assert call.response == "json" and call.timeout_s == 2.5
    expected = {k: v for k, v in body.items() if k not in ("response", "timeout_s")}
    assert call.request == GenerateRequest(**expected)


def test_defaults_and_nulls_are_the_pipelines_defaults():
    assert parse({"prompt": ""}) == GenerateCall(GenerateRequest(""), "png", None)
    nulls = {name: None for name, kind in FIELDS.items() if kind.nullable}
    assert parse({"prompt": "a", **nulls}) == GenerateCall(GenerateRequest("a"), "png", None)


def test_every_wire_field_is_a_field_of_the_batchers_request():
    import dataclasses

    assert set(REQUEST_FIELDS) == {f.name for f in dataclasses.fields(GenerateRequest)}


@pytest.mark.parametrize("body, expected", [
    (b"{bad", "the request body is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
              "column 2): send a JSON object such as"),
    (b"", "the request body is not valid JSON (Expecting value at line 1 column 1)"),
    (b"\xff\xfe", "the request body is not UTF-8 text"),
    (b"[1, 2]", "the request body must be a JSON object such as {\"prompt\": \"a red circle and a blue square\"}, "
                "got an array"),
    (b'"a red circle"', "the request body must be a JSON object such as"),
    (b"null", "must be a JSON object such as {\"prompt\": \"a red circle and a blue square\"}, got null"),
    (b'{"prompt": "a", "prompt": "b"}', "field 'prompt' appears more than once: send it once"),
    (b'{"prompt": "a", "guidance_scale": NaN}', "NaN is not a JSON number: send a finite number"),
    (b'{"prompt": "a", "seed": Infinity}', "Infinity is not a JSON number"),
])
def test_a_body_that_is_not_a_json_object_is_refused(body, expected):
    assert expected in refusal(body)


def test_a_body_beyond_the_limit_is_refused_before_parsing():
    message = refusal(b" " * (MAX_BODY_BYTES + 1))
    assert message == (f"the request body is {MAX_BODY_BYTES + 1} bytes, above the limit of {MAX_BODY_BYTES}: "
                       "send a shorter prompt")


def test_deep_nesting_within_the_size_limit_is_refused_in_one_line():
    assert "nested too deeply" in refusal(b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")


def test_unknown_fields_are_refused_with_a_suggestion():
    assert refusal({"prompt": "a", "stepz": 3}).startswith(
        "unknown field 'stepz': did you mean 'steps'? the fields are prompt, negative_prompt, method, steps,")
    assert refusal({"prompt": "a", "colour": 2}).startswith("unknown field 'colour': the fields are prompt,")


def test_the_prompt_is_required():
    assert refusal({"steps": 3}) == ("field 'prompt' is missing: send the text to draw (an empty string means "
                                     "unconditional sampling)")
    assert refusal({"prompt": None}) == "field 'prompt' must be a string, got null"


@pytest.mark.parametrize("field, value, expected", [
    ("steps", True, "field 'steps' must be an integer, got true"),  # bool is not int
    ("seed", False, "field 'seed' must be an integer, got false"),
    ("height", True, "field 'height' must be an integer or null, got true"),
    ("guidance_scale", True, "field 'guidance_scale' must be a number, got true"),
    ("negative_scale", False, "field 'negative_scale' must be a number or null, got false"),
    ("steps", 30.0, "field 'steps' must be an integer, got 30.0"),
    ("steps", "30", "field 'steps' must be an integer, got \"30\""),
    ("dns_steps", None, "field 'dns_steps' must be an integer, got null"),
    ("method", 1, "field 'method' must be a string, got 1"),
    ("negative_prompt", ["a"], "field 'negative_prompt' must be a string or null, got [\"a\"]"),
    ("prompt", {"text": "x" * 80}, "field 'prompt' must be a string, got {\"text\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxx..."),
    ("timeout_s", "1", "field 'timeout_s' must be a number or null, got \"1\""),
    ("response", None, "field 'response' must be a string, got null"),
])
def test_wrong_types_are_refused_naming_the_field(field, value, expected):
    assert refusal({"prompt": "a", field: value}) == expected


def generate_message(**kwargs: object) -> str:
    """What ``Pipeline.generate`` says for the same values (its configuration's checks)."""
    from answer_trt.config import GuidanceConfig, SamplingConfig

    guidance = {k: kwargs.pop(k) for k in list(kwargs) if k in GuidanceConfig.__dataclass_fields__}
    with pytest.raises(UserInputError) as info:
        SamplingConfig(guidance=GuidanceConfig(**guidance), **kwargs)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("dns_steps", -1), ("seed", -1), ("seed", 2**64), ("height", 33), ("width", 8192),
    ("method", "best"), ("mode", "serial"), ("chain_min_sigma", 1.5), ("guidance_rescale", 2),
    ("drift_tau", -1.0), ("negative_scale", -2),
])
def test_bad_values_get_the_pipelines_own_message(field, value):
    assert refusal({"prompt": "a", field: value}) == generate_message(**{field: value})


def test_bad_scheduler_response_and_timeout_are_refused():
    assert refusal({"prompt": "a", "scheduler": "lms"}).startswith(
        "unknown scheduler 'lms': choose one of ddim, euler, dpm++, DDIM, Euler, Euler a, DPM++ 2M")
    assert refusal({"prompt": "a", "response": "gif"}) == "unknown response 'gif': choose one of png, json"
    for bad in (0, -1, -0.5):
        assert refusal({"prompt": "a", "timeout_s": bad}).startswith("timeout_s must be a positive number of seconds")


def test_the_json_response_carries_the_png_with_its_metadata_and_the_parameters():
    from answer_trt.pipeline import Generation, Timings

    image = Image.new("RGB", (8, 8), (200, 10, 10))
    parameters = {"prompt": "a red circle", "seed": 3, "steps": 12, "drift_tau": None}
    params = {k: str(v) for k, v in parameters.items()}
    params["answer-trt"] = json.dumps(parameters, sort_keys=True)
    image.info.update(params)
    generation = Generation([image], params, Timings(0.0, 0.0, 0.0, 1), None)  # type: ignore[arg-type]

    png, content_type = render(generation, "png")
    assert content_type == "image/png" and png == png_bytes(image)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.info["seed"] == "3" and json.loads(decoded.info["answer-trt"]) == parameters
    assert list(decoded.getdata())[0] == (200, 10, 10)

    body, content_type = render(generation, "json")
    assert content_type == "application/json"
    data = json.loads(body)
    assert set(data) == {"image_png_base64", "images_png_base64", "parameters"}
    assert base64.b64decode(data["image_png_base64"]) == png
    assert [base64.b64decode(i) for i in data["images_png_base64"]] == [png]  # every image of a batch
    assert data["parameters"] == parameters


def test_error_bodies_are_one_line():
    assert json.loads(error_body("first\nsecond  third")) == {"error": "first second third"}


def test_importing_the_runtime_the_cli_and_the_serving_modules_never_imports_ray():
    code = ("import sys, answer_trt, answer_trt.cli, answer_trt.serving, answer_trt.serving.protocol, "
            "answer_trt.serving.client, answer_trt.serving.cli_serve, answer_trt.bench.load; "
            "answer_trt.cli.make_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
