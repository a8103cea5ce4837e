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
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model

from answer_trt.config import MAX_CLIP_SKIP, MAX_IMAGES
from answer_trt.schema import info as schema_info
from answer_trt.schema import request_fields

_PYTHON_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


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
# Unknown fields and non-finite numbers (JSON has neither NaN nor Infinity; Python writes them) are refused.
_FORBID = ConfigDict(extra="forbid", allow_inf_nan=False)

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
    control_image=(str | list[str] | None, Field(None, description="ControlNet: the control image (base64 PNG or "
                                                 "JPEG), one for every served ControlNet or a list, one each in "
                                                 "--controlnet order; resized to the output size (Lanczos)")),
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
# the guidance options) as extra fields. `scheduler` is A1111's noise-schedule name there:
# automatic, or one of ours (GET /sdapi/v1/schedulers). Every other field of A1111's body is in
# A1111_FIELDS (honoured, harmless or refused); a field in neither is refused as unknown.
A1111_TAKEN = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "width", "height", "batch",
               "scheduler", "seeds")
Use = Literal["honoured", "harmless", "refused"]


@dataclass(frozen=True)
class A1111Field:
    """How ``POST /sdapi/v1/txt2img`` treats one field of A1111's txt2img body.

    ``use``: ``honoured`` (it decides the picture, as in A1111), ``harmless`` (accepted and
    ignored: it does not change A1111's picture either, given what is refused), ``refused`` (a
    400 naming it unless its value is one of ``neutral``, those that leave A1111's picture the
    one answer-trt draws). ``only_with``: the schedulers (ours; ``None``: the model's own) for
    which a refused field's value matters (A1111's eta changes DDIM only); ``None``: all.
    ``annotation``: its JSON type (``None`` for the honoured fields ``Txt2ImgBody`` declares
    with the schema's bounds). ``note``: what answer-trt does with it, on one line."""

    use: Use
    note: str
    annotation: Any = None
    neutral: tuple[Any, ...] = (None,)
    only_with: tuple[str | None, ...] | None = None


def _refused(annotation: Any, note: str, *neutral: Any, only_with: tuple[str | None, ...] | None = None
             ) -> A1111Field:
    return A1111Field("refused", note, annotation, (None, *neutral), only_with)


def _harmless(annotation: Any, note: str) -> A1111Field:
    return A1111Field("harmless", note, annotation)


_HIRES = "read only with enable_hr, which is refused"
# Every field of A1111's txt2img body (StableDiffusionTxt2ImgProcessingAPI, webui 1.10), and
# clip_skip (other A1111-style servers' name for CLIP_stop_at_last_layers). The one table.
A1111_FIELDS: dict[str, A1111Field] = {
    # honoured: the picture follows them, as in A1111
    "prompt": A1111Field("honoured", "the prompt (A1111's emphasis syntax)"),
    "negative_prompt": A1111Field("honoured", "the negative prompt"),
    "seed": A1111Field("honoured", "image i of the request has seed + i; -1 draws one"),
    "batch_size": A1111Field("honoured", "images per iteration"),
    "n_iter": A1111Field("honoured", "iterations"),
    "steps": A1111Field("honoured", "denoising steps"),
    "cfg_scale": A1111Field("honoured", "the guidance scale"),
    "width": A1111Field("honoured", "image width"),
    "height": A1111Field("honoured", "image height"),
    "sampler_name": A1111Field("honoured", "DDIM, Euler or DPM++ 2M (GET /sdapi/v1/samplers)"),
    "sampler_index": A1111Field("honoured", "the older name of sampler_name"),
    "scheduler": A1111Field("honoured", "automatic, or one of GET /sdapi/v1/schedulers"),
    "override_settings": A1111Field("honoured", "the settings of GET /sdapi/v1/options, at their values only",
                                    dict[str, Any]),
    # harmless: accepted and ignored, the picture is A1111's without them
    "send_images": _harmless(bool, "images are always sent"),
    "save_images": _harmless(bool, "nothing is saved on the server"),
    "do_not_save_samples": _harmless(bool, "nothing is saved on the server"),
    "do_not_save_grid": _harmless(bool, "no grid is made"),
    "override_settings_restore_afterwards": _harmless(bool, "no setting is changed"),
    "force_task_id": _harmless(str, "A1111's progress task id"),
    "comments": _harmless(dict[str, Any], "infotext comments"),
    "disable_extra_networks": _harmless(bool, "no extra networks (LoRAs are fused at build time)"),
    "subseed": _harmless(int, "read only with subseed_strength above 0, which is refused"),
    "s_tmin": _harmless(float, "read only with s_churn above 0, which is refused"),
    "s_tmax": _harmless(float, "read only with s_churn above 0, which is refused"),
    "s_noise": _harmless(float, "read only by ancestral samplers and s_churn, neither served"),
    "refiner_switch_at": _harmless(float, "read only with refiner_checkpoint, which is refused"),
    "denoising_strength": _harmless(float, _HIRES),
    "firstphase_width": _harmless(int, _HIRES),
    "firstphase_height": _harmless(int, _HIRES),
    "hr_scale": _harmless(float, _HIRES),
    "hr_upscaler": _harmless(str, _HIRES),
    "hr_second_pass_steps": _harmless(int, _HIRES),
    "hr_resize_x": _harmless(int, _HIRES),
    "hr_resize_y": _harmless(int, _HIRES),
    "hr_checkpoint_name": _harmless(str, _HIRES),
    "hr_sampler_name": _harmless(str, _HIRES),
    "hr_scheduler": _harmless(str, _HIRES),
    "hr_prompt": _harmless(str, _HIRES),
    "hr_negative_prompt": _harmless(str, _HIRES),
    # refused unless neutral: answer-trt cannot draw A1111's picture with them
    "enable_hr": _refused(bool, "no hires fix", False),
    "restore_faces": _refused(bool, "no face restoration", False),
    "tiling": _refused(bool, "no tiling", False),
    "styles": _refused(list[str], "no saved prompt styles: put them into the prompt", []),
    "subseed_strength": _refused(float, "no variation seeds", 0),
    "seed_resize_from_h": _refused(int, "no seed resize", -1, 0),
    "seed_resize_from_w": _refused(int, "no seed resize", -1, 0),
    "eta": _refused(float, "answer-trt's DDIM has eta 0", 0, only_with=("ddim", "DDIM", None)),
    "s_min_uncond": _refused(float, "no skipping of the negative branch by s_min_uncond", 0),
    "s_churn": _refused(float, "no churn", 0),
    "refiner_checkpoint": _refused(str, "no refiner: the server has one model", "", "None"),
    "firstpass_image": _refused(str, "no first-pass image", ""),
    "infotext": _refused(str, "no parameters from infotext: send the fields", ""),
    "script_name": _refused(str, "no scripts", "", "None"),
    "script_args": _refused(list[Any], "no scripts", []),
    "alwayson_scripts": A1111Field("honoured", "ControlNet's units only, as the extension takes them: {\"controlnet\": "
                                   "{\"args\": [{\"image\", \"module\": \"none\", \"model\", \"weight\", "
                                   "\"guidance_start\", \"guidance_end\", \"control_mode\"}]}} (GET "
                                   "/controlnet/model_list); other scripts are refused", dict[str, Any]),
    "clip_skip": A1111Field("honoured", "clip skip, A1111's count (1: no skip); the schema's field", int),
}


@dataclass(frozen=True)
class A1111Setting:
    """One A1111 setting answer-trt honours (``GET /sdapi/v1/options``, ``override_settings``):
    the values it takes (``()``: the served model's name) and what it means here."""

    annotation: type
    values: tuple[Any, ...]
    note: str


A1111_SETTINGS: dict[str, A1111Setting] = {
    "sd_model_checkpoint": A1111Setting(str, (), "the served model (GET /sdapi/v1/sd-models): one per server"),
    "CLIP_stop_at_last_layers": A1111Setting(int, tuple(range(1, MAX_CLIP_SKIP + 1)),
                                             "clip skip, A1111's count (1: no skip); the request's clip_skip"),
    "sd_vae": A1111Setting(str, ("Automatic", "None"), "the VAE built into the engines: the model's own (Automatic "
                           "or None), or serve --vae's, by the name GET /sdapi/v1/sd-vae lists (or Automatic)"),
    "eta_ddim": A1111Setting(float, (0.0,), "DDIM's eta: 0"),
    "eta_noise_seed_delta": A1111Setting(int, (0,), "A1111's ENSD: 0 (seeds as given)"),
    "samples_format": A1111Setting(str, ("png",), "images are PNG"),
}


def _a1111_description(name: str) -> str:
    f = A1111_FIELDS[name]
    if f.use == "refused":
        shown = " or ".join(json.dumps(v) for v in f.neutral)
        return f"refused unless {shown} ({f.note})"
    return f"{f.use}: {f.note}"


_A1111_OWN: dict[str, tuple[Any, Any]] = dict(
    prompt=(str, Field("", description=schema_info(_FIELDS["prompt"]).help, strict=True)),
    negative_prompt=(str | None, Field(None, strict=True, description="text to steer away from; empty or absent: "
                                                                      "the model's empty-prompt condition")),
    steps=schema_field(_FIELDS["steps"]),
    cfg_scale=schema_field(_FIELDS["guidance_scale"]),
    width=schema_field(_FIELDS["width"]),
    height=schema_field(_FIELDS["height"]),
    seed=(int, Field(-1, ge=-1, le=2**64 - 1, strict=True, description="seed of the first image, image i has seed "
                                                                         "+ i; -1: a random one (reported in info "
                                                                         "and parameters)")),
    batch_size=(int, Field(1, ge=1, le=MAX_IMAGES, strict=True, description="images per iteration")),
    n_iter=(int, Field(1, ge=1, le=MAX_IMAGES, strict=True, description="iterations of batch_size images; image "
                                                                          "i of the request has seed + i")),
    sampler_name=(str | None, Field(None, description="DDIM, Euler or DPM++ 2M (GET /sdapi/v1/samplers); absent: "
                                                      "the model's own scheduler")),
    sampler_index=(str | None, Field(None, description="the older name of sampler_name (used when it is absent)")),
    scheduler=(str | None, Field(None, description="A1111's noise schedule: automatic (the sampler's), or one of "
                                                   "GET /sdapi/v1/schedulers")),
)
def _img2img_description(name: str) -> str:
    f = A1111_IMG2IMG_FIELDS[name]
    if f.use == "refused":
        return f"refused unless {' or '.join(json.dumps(v) for v in f.neutral)} ({f.note})"
    return f"{f.use}: {f.note}"


def _strict(annotation: Any) -> Any:
    """A table field's type as JSON has it: a number or a boolean is not the other (pydantic's lax
    mode would take ``true`` for an integer, against the published schema)."""
    return Annotated[annotation, Strict()] if annotation in (int, float, bool, str) else annotation


Txt2ImgBody: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Txt2ImgBody",
    __config__=_FORBID,
    __doc__="POST /sdapi/v1/txt2img (AUTOMATIC1111's API) with answer-trt's guidance fields as extra fields. "
            "Every field of A1111's body is here, honoured, harmless (ignored) or refused (unless neutral).",
    **{**_A1111_OWN,
       **{name: (_strict(f.annotation) | None, Field(None, description=_a1111_description(name)))
          for name, f in A1111_FIELDS.items() if name not in _A1111_OWN},
       **schema_fields(exclude=A1111_TAKEN),  # a schema field (e.g. a future clip_skip) is the schema's
       "prompt_syntax": schema_field(_FIELDS["prompt_syntax"], default="a1111")},  # A1111's clients write its syntax
)


# A1111's img2img (StableDiffusionImg2ImgProcessingAPI): txt2img's body (A1111_FIELDS, where
# denoising_strength is the strength here) and these fields. The inpainting ones at A1111's
# defaults (inpainting_fill 0, inpaint_full_res true) mean nothing without a mask; with one,
# what answer-trt cannot draw is refused (answer_trt.serving.conventions.a1111_img2img).
IMAGE_FIELDS = ("strength", "image_sha256", "mask_sha256", "mask_blur")  # the schema's: set from the fields below
A1111_IMG2IMG_FIELDS: dict[str, A1111Field] = {
    "init_images": A1111Field("honoured", "the image to redraw: one base64 PNG or JPEG (a data: URL prefix is "
                              "accepted); its size is the output's unless width/height resize it (Lanczos)", list[str]),
    "denoising_strength": A1111Field("honoured", "the strength (diffusers' meaning: the share of the steps run); "
                                     "absent: A1111's 0.75", float),
    "mask": A1111Field("honoured", "inpainting: a greyscale mask of the image's size, white repainted (base64)", str),
    "mask_blur": A1111Field("honoured", "inpainting: the mask blurred by this radius before it is binarized "
                            "(diffusers' rule, not A1111's soft overlay); absent: A1111's 4", int),
    "mask_blur_x": _harmless(int, "mask_blur is read"),
    "mask_blur_y": _harmless(int, "mask_blur is read"),
    "inpainting_fill": _harmless(int, "with a mask only 1 (original) is drawn: send it (absent is A1111's 0)"),
    "inpaint_full_res": _harmless(bool, "with a mask only false (the whole picture) is drawn: send it (absent is "
                                  "A1111's true)"),
    "inpaint_full_res_padding": _harmless(int, "read only with inpaint_full_res"),
    "inpainting_mask_invert": _refused(int, "white is repainted: invert the mask yourself", 0),
    "resize_mode": _refused(int, "the image is resized to width/height (Lanczos), A1111's 0", 0),
    "image_cfg_scale": _harmless(float, "read only by instruct-pix2pix models"),
    "initial_noise_multiplier": _refused(float, "the noise is as drawn", 1, 1.0),
    "include_init_images": _harmless(bool, "the input image is not sent back"),
    "latent_mask": _refused(str, "no separate latent mask", ""),
    "mask_round": _harmless(bool, "the mask is binarized at 0.5 (diffusers' mask processor)"),
}

Img2ImgBody: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Img2ImgBody",
    __config__=_FORBID,
    __doc__="POST /sdapi/v1/img2img (AUTOMATIC1111's API): txt2img's body and the image fields, with answer-trt's "
            "guidance fields as extra fields.",
    **{**_A1111_OWN,
       **{name: (_strict(f.annotation) | None, Field(None, description=_a1111_description(name)))
          for name, f in A1111_FIELDS.items() if name not in _A1111_OWN and name != "denoising_strength"},
       **schema_fields(exclude=A1111_TAKEN + IMAGE_FIELDS),
       **{name: (_strict(f.annotation) | None, Field(None, description=_img2img_description(name)))
          for name, f in A1111_IMG2IMG_FIELDS.items()}},
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


# A1111's other routes: what its clients read when they connect (webui 1.10's response shapes).
A1111Options: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "A1111Options",
    __doc__="GET /sdapi/v1/options: the A1111 settings answer-trt honours, at their values (POST takes them back).",
    **{name: (setting.annotation, Field(description=setting.note)) for name, setting in A1111_SETTINGS.items()},
)


class SchedulerItem(BaseModel):
    """One of GET /sdapi/v1/schedulers: automatic, or a scheduler of the request schema."""

    name: str = Field(description="the value of txt2img's scheduler (answer-trt's scheduler name)")
    label: str = Field(description="its A1111 sampler name, where it has one")
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class ScriptsList(BaseModel):
    """GET /sdapi/v1/scripts: controlnet where the engines have ControlNets, else none (other scripts are
    refused)."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ControlNetModelList(BaseModel):
    """GET /controlnet/model_list (the ControlNet extension's): the served ControlNets."""

    model_list: list[str] = Field(description="'name [sha256 prefix]' of each served ControlNet, in --controlnet order")


class ControlNetModuleList(BaseModel):
    """GET /controlnet/module_list (the ControlNet extension's): the preprocessors run here."""

    module_list: list[str] = Field(description="'none' alone: no preprocessor runs; send processed control images")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = Field(description="answer-trt while requests are held, else empty")
    job_count: int = Field(description="requests the batcher holds: in flight and waiting")
    job_timestamp: str = "0"
    job_no: int = Field(description="the request sampling_step is of: 0, the oldest in flight")
    sampling_step: int = Field(description="steps done by the oldest request in flight")
    sampling_steps: int = Field(description="its steps")


class ProgressResponse(BaseModel):
    """GET /sdapi/v1/progress: A1111's shape, from the batcher's requests in flight."""

    progress: float = Field(description="steps done / steps of every request held (0 when idle)")
    eta_relative: float = Field(description="seconds left, estimated from the oldest request's time so far")
    state: ProgressState
    current_image: str | None = Field(None, description="always null: no previews")
    textinfo: str | None = None
