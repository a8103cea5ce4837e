"""The wire format of ``POST /v1/generate``: a JSON body -> a ``GenerateCall`` (the request for
the batcher and how to answer it), and a ``Generation`` -> the response body.

Every refusal is a ``UserInputError`` whose one-line message names the field and what to
change; value checks are the configuration's own (``answer_trt.config``), so a bad value
reads as it does from ``Pipeline.generate``. No Ray here.
"""

from __future__ import annotations

import base64
import difflib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from answer_trt.errors import UserInputError
from answer_trt.images import png_info
from answer_trt.infotext import RECORD
from answer_trt.pipeline import Generation
from answer_trt.rules import check_choice
from answer_trt.schema import FieldInfo, GenerateRequest, request_fields
from answer_trt.schema import info as schema_info

RESPONSE_FORMATS = ("png", "json")
# A prompt is at most 77 tokens (plain) or --max-prompt-chunks x 75 (A1111 syntax), a few KiB of
# text; a larger body is a mistake or abuse.
MAX_BODY_BYTES = 64 * 1024
EXAMPLE = '{"prompt": "a red circle and a blue square"}'


@dataclass(frozen=True)
class Kind:
    """The JSON type a field takes; ``nullable``: ``null`` is allowed (the default then)."""

    name: str
    test: Callable[[object], bool]
    nullable: bool = False

    def describe(self) -> str:
        return f"{self.name} or null" if self.nullable else self.name


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _kind(info: FieldInfo) -> Kind:
    """A schema field's JSON type."""
    test, name = {"str": (lambda v: isinstance(v, str), "a string"), "int": (_is_int, "an integer"),
                  "float": (_is_number, "a number"), "bool": (lambda v: isinstance(v, bool), "true or false"),
                  "ints": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers")}[info.kind]
    return Kind(name, test, info.nullable)


# The fields a client may send: the request schema's, with their JSON types.
REQUEST_FIELDS: dict[str, Kind] = {f.name: _kind(schema_info(f)) for f in request_fields()}
# How to answer: the response format, and a deadline for the whole request (queue included).
# ControlNet's images travel beside the request (``answer_trt.serving.control.generate_control``).
OPTION_FIELDS: dict[str, Kind] = {"response": Kind("a string", lambda v: isinstance(v, str)),
                                   "timeout_s": Kind("a number", _is_number, nullable=True),
                                   "control_image": Kind("a base64 image or a list of them", lambda v: isinstance(
                                       v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v)),
                                       nullable=True)}
FIELDS = {**REQUEST_FIELDS, **OPTION_FIELDS}


@dataclass(frozen=True)
class GenerateCall:
    """One parsed ``POST /v1/generate``."""

    request: GenerateRequest
    response: str = "png"
    timeout_s: float | None = None
    control_image: str | list[str] | None = None  # base64, as sent: loaded at the output size by the route


def parse_generate(body: bytes, limit: int = MAX_BODY_BYTES) -> GenerateCall:
    """The request in ``body`` (a JSON object of at most ``limit`` bytes), checked field by field."""
    fields = _fields(_decode(body, limit))
    options = {name: fields.pop(name) for name in OPTION_FIELDS if name in fields}
    request = GenerateRequest(**fields)
    request.sampling_config()  # the checks Pipeline.generate makes before looking at the engines
    response = check_choice("response", options.get("response", "png"), RESPONSE_FORMATS)
    if request.batch > 1 and response == "png":
        raise UserInputError(f"batch {request.batch} gives {request.batch} images and a png response holds one: "
                             'send "response": "json" (or batch 1)')
    timeout_s = options.get("timeout_s")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UserInputError(f"timeout_s must be a positive number of seconds (or null for none), got {timeout_s}")
    return GenerateCall(request, response, None if timeout_s is None else float(timeout_s),
                        options.get("control_image"))


def _decode(body: bytes, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    if len(body) > limit:
        raise UserInputError(f"the request body is {len(body)} bytes, above the limit of {limit}: "
                             "send a shorter prompt" + (" or smaller images" if limit > MAX_BODY_BYTES else ""))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"the request body is not UTF-8 text: send a JSON object such as {EXAMPLE}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno}): send a JSON object such as {EXAMPLE}") from None
    except RecursionError:
        raise UserInputError(f"the request body is nested too deeply: send a JSON object such as {EXAMPLE}") from None
    except UserInputError:  # a duplicate field or a NaN, refused by the hooks above
        raise
    except ValueError:  # e.g. an integer past Python's 4300-digit conversion limit
        raise UserInputError("a number in the request body has too many digits: send numbers within each field's "
                             "bounds (see the fields' help)") from None
    if not isinstance(value, dict):
        raise UserInputError(f"the request body must be a JSON object such as {EXAMPLE}, got {_json_type(value)}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise UserInputError(f"field {key!r} appears more than once: send it once")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise UserInputError(f"{name} is not a JSON number: send a finite number")


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``body``, each of its kind; nulls dropped so the defaults apply."""
    for name in body:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserInputError(f"unknown field {name!r}: {hint}the fields are {', '.join(FIELDS)}")
    if "prompt" not in body:
        raise UserInputError("field 'prompt' is missing: send the text to draw (an empty string means "
                             "unconditional sampling)")
    fields = {}
    for name, value in body.items():
        kind = FIELDS[name]
        if value is None and kind.nullable:
            continue
        if not kind.test(value):
            raise UserInputError(f"field {name!r} must be {kind.describe()}, got {_shown(value)}")
        fields[name] = value
    return fields


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(value: object, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG, its ``info`` (the generation parameters) as text chunks."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(image))
    return buffer.getvalue()


def image_bytes(value: Any, where: str) -> bytes:
    """The bytes of a base64 image field (a ``data:image/...;base64,`` prefix allowed);
    ``UserInputError`` naming ``where`` when it is not a non-empty base64 string."""
    if not isinstance(value, str) or not value:
        raise UserInputError(f"{where} must be a base64 PNG or JPEG")
    try:
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
    except ValueError:
        raise UserInputError(f"{where} is not base64: send the image file's bytes in base64") from None


def render(generation: Generation, response: str) -> tuple[bytes, str]:
    """The response body and its content type."""
    png = png_bytes(generation.images[0])
    if response == "png":
        return png, "image/png"
    body = {"image_png_base64": base64.b64encode(png).decode("ascii"),
            "images_png_base64": [base64.b64encode(png_bytes(im)).decode("ascii") for im in generation.images],
            "parameters": json.loads(generation.params[RECORD])}
    return json.dumps(body).encode(), "application/json"


def error_body(message: str) -> bytes:
    """``{"error": "<one line>"}``."""
    return json.dumps({"error": " ".join(message.split())}).encode()
