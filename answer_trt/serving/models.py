"""The HTTP request and response models (pydantic), derived from the request schema.

Every field of ``answer_trt.schema.GenerateRequest`` becomes a pydantic field with its
type, default, help text and bounds (``ge``/``le``, choices as an enum), so
``/openapi.json`` documents each one as the schema defines it: adding a field to the
schema adds it here, to ``POST /v1/generate``, and to the extra fields of the OpenAI and
A1111 endpoints. Value checks that need more than a bound stay with the configuration
(``GenerateRequest.sampling_config``), so a bad value reads the same on every surface.

Types are strict, as ``POST /v1/generate``'s own parser is: ``true`` is not an integer and
``"30"`` is not a number.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from answer_trt.config import MAX_IMAGES
from answer_trt.schema import info as schema_info
from answer_trt.schema import request_fields

_PYTHON_TYPES: dict[str, type] = {"str": str, "int": int, "float": float}


def schema_field(f: dataclasses.Field[Any], *, default: Any = dataclasses.MISSING,
                 description: str | None = None) -> tuple[Any, Any]:
    """A pydantic ``(annotation, Field)`` for one schema field: its kind (strict), choices
    (an enum), bounds, nullability, default and help."""
    fi = schema_info(f)
    annotation: Any
    if fi.choices:
        annotation = Literal[fi.choices]
    else:
        bounds: dict[str, Any] = {"strict": True}
        if fi.kind in ("int", "float", "ints"):
            bounds.update({k: v for k, v in (("ge", fi.low), ("le", fi.high)) if v is not None})
        if fi.kind == "float":
            bounds["allow_inf_nan"] = False
        if fi.kind == "ints":  # a list of bounded integers
            annotation = Annotated[list[Annotated[int, Field(**bounds)]], Field(min_length=1)]
        else:
            annotation = Annotated[_PYTHON_TYPES[fi.kind], Field(**bounds)]
    if fi.nullable:
        annotation = annotation | None
    value = f.default if default is dataclasses.MISSING else default
    text = description or fi.help + (f" ({fi.bounds})" if fi.bounds and not fi.choices else "")
    return annotation, Field(value, description=text)


def schema_fields(exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The schema's fields as pydantic field definitions, less ``exclude``."""
    return {f.name: schema_field(f) for f in request_fields() if f.name not in exclude}


_FIELDS = {f.name: f for f in request_fields()}
_FORBID = ConfigDict(extra="forbid")

# POST /v1/generate: every schema field (the prompt required) and how to answer. The route
# parses its body with answer_trt.serving.protocol (same fields, one-line messages); this
# model is what /openapi.json shows for it.
GenerateBody: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "GenerateBody",
    __config__=_FORBID,
    __doc__="The body of POST /v1/generate: the request schema's fields (answer_trt.schema).",
    prompt=(str, Field(description=schema_info(_FIELDS["prompt"]).help, strict=True)),
    **schema_fields(exclude=("prompt",)),
    response=(Literal["png", "json"], Field("png", description="png: the image itself; json: every image as "
                                            "base64 PNG and the parameters")),
    timeout_s=(float | None, Field(None, gt=0, allow_inf_nan=False,
                                   description="deadline for the whole request in seconds, queue included")),
)


class GenerateResponse(BaseModel):
    """``POST /v1/generate`` with ``"response": "json"``."""

    image_png_base64: str = Field(description="the first image: a PNG with the generation parameters as text "
                                              "chunks, base64")
    images_png_base64: list[str] = Field(description="every image of the batch, as above")
    parameters: dict[str, Any] = Field(description="the first image's generation parameters")


class ErrorResponse(BaseModel):
    """Every refusal of answer-trt's own endpoints (and of the A1111 ones)."""

    error: str = Field(description="what was wrong and what to change, on one line")


# OpenAI images API. The extra fields are answer-trt's (the schema's), less those the
# OpenAI fields carry: n -> batch, size -> width/height.
OPENAI_TAKEN = ("prompt", "batch", "width", "height")
OpenAIImagesBody: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "OpenAIImagesBody",
    __config__=_FORBID,
    __doc__="POST /v1/images/generations (the OpenAI images API) with answer-trt's own fields as extra fields.",
    prompt=(str, Field(description="text prompt", strict=True)),
    n=(int, Field(1, ge=1, le=MAX_IMAGES, strict=True, description="images for this prompt (answer-trt's batch)")),
    size=(str | None, Field(None, description="WIDTHxHEIGHT in pixels, e.g. 512x512; auto or absent: the model's "
                                              "default size")),
    response_format=(Literal["b64_json", "url"] | None, Field(
        None, description="b64_json (the default); url is not served: images are not stored")),
    model=(str | None, Field(None, description="the served model's name (GET /v1/models); absent: that model")),
    output_format=(Literal["png"] | None, Field(None, description="png only")),
    stream=(bool | None, Field(None, description="false only: images come whole")),
    quality=(str | None, Field(None, description="accepted and ignored")),
    style=(str | None, Field(None, description="accepted and ignored")),
    background=(str | None, Field(None, description="accepted and ignored")),
    moderation=(str | None, Field(None, description="accepted and ignored")),
    user=(str | None, Field(None, description="accepted and ignored")),
    **schema_fields(exclude=OPENAI_TAKEN),
)


class OpenAIImage(BaseModel):
    b64_json: str = Field(description="a PNG with the generation parameters as text chunks, base64")
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    """The OpenAI images API's response."""

    created: int
    data: list[OpenAIImage]
    output_format: str = "png"
    size: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The OpenAI API's error shape."""

    error: OpenAIErrorDetail


# A1111's txt2img. Its own names for the schema's fields; answer-trt's other fields (method,
# the guidance options) as extra fields. `scheduler` is A1111's noise-schedule name there,
# so ours is chosen by sampler_name. Fields of A1111 this server does not use are accepted
# and ignored, except those that would change the picture (refused when set).
A1111_TAKEN = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "width", "height", "batch",
               "scheduler", "seeds")
Txt2ImgBody: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Txt2ImgBody",
    __config__=ConfigDict(extra="allow"),
    __doc__="POST /sdapi/v1/txt2img (AUTOMATIC1111's API) with answer-trt's guidance fields as extra fields.",
    prompt=(str, Field("", description=schema_info(_FIELDS["prompt"]).help, strict=True)),
    negative_prompt=(str | None, Field(None, strict=True, description="text to steer away from; empty or absent: "
                                                                      "the model's empty-prompt condition")),
    steps=schema_field(_FIELDS["steps"]),
    cfg_scale=schema_field(_FIELDS["guidance_scale"]),
    width=schema_field(_FIELDS["width"]),
    height=schema_field(_FIELDS["height"]),
    seed=(int, Field(-1, ge=-1, le=2**64 - 1, strict=True, description="seed of the first image; -1: a random one "
                                                                         "(reported in info and parameters)")),
    batch_size=(int, Field(1, ge=1, le=MAX_IMAGES, strict=True, description="images per iteration (one generator, "
                                                                              "as answer-trt's batch)")),
    n_iter=(int, Field(1, ge=1, le=MAX_IMAGES, strict=True, description="iterations of batch_size images; image "
                                                                          "i of the request has seed + i")),
    sampler_name=(str | None, Field(None, description="DDIM, Euler or DPM++ 2M (GET /sdapi/v1/samplers); absent: "
                                                      "the model's own scheduler")),
    sampler_index=(str | None, Field(None, description="the older name of sampler_name (used when it is absent)")),
    scheduler=(str | None, Field(None, description="A1111's noise schedule: automatic only")),
    **schema_fields(exclude=A1111_TAKEN),
)


class Txt2ImgResponse(BaseModel):
    """A1111's txt2img response."""

    images: list[str] = Field(description="PNGs with the generation parameters as text chunks, base64")
    parameters: dict[str, Any] = Field(description="the request, with the seed that was used")
    info: str = Field(description="JSON text: seed, all_seeds, the prompts, size, sampler, infotexts, ...")


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SDModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
