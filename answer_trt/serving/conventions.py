"""The conventions clients already speak, translated to and from answer-trt's request schema:
the OpenAI images API (``POST /v1/images/generations``) and AUTOMATIC1111's txt2img
(``POST /sdapi/v1/txt2img``, ``GET /sdapi/v1/samplers``, ``GET /sdapi/v1/sd-models``).

Pure functions over the pydantic bodies (``answer_trt.serving.models``) and the pipeline's
``Generation``: no HTTP, no Ray. A refusal is a ``UserInputError`` (one line); the routes
give it each convention's error shape.

Equal images: an OpenAI request of ``n`` images is one answer-trt request with ``batch=n``
(``answer-trt generate --batch n``); an A1111 request is ``n_iter`` requests of
``batch_size`` images, and image i of the whole request has seed ``seed + i``, as in A1111
(iteration k's images carry ``seeds`` ``seed + k * batch_size + j``, one generator each), so
each image equals a request of one image with its reported seed.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from typing import Any

from pydantic import BaseModel

from answer_trt.config import MAX_IMAGES
from answer_trt.errors import UserInputError
from answer_trt.img2img import MAX_IMAGE_PIXELS, InitImage
from answer_trt.pipeline import Generation
from answer_trt.samplers import A1111_SAMPLERS, OURS_IN_A1111, a1111_sampler_names
from answer_trt.schema import FIELD_NAMES, GenerateRequest, info, request_fields
from answer_trt.serving.models import (
    A1111_FIELDS,
    A1111_IMG2IMG_FIELDS,
    A1111_SETTINGS,
    A1111_TAKEN,
    IMAGE_FIELDS,
    OPENAI_TAKEN,
    A1111Field,
)
from answer_trt.serving.protocol import image_bytes, png_bytes
from answer_trt.serving.stats import Progress

# A1111 sampler name -> answer-trt scheduler. Only samplers whose update rule is ours: no
# ancestral ("Euler a") or Karras-schedule variants.
# A1111's "scheduler" (noise schedule) values that leave the sampler's own schedule in place.
A1111_DEFAULT_SCHEDULES = ("automatic", "default")
SIZE_PATTERN = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")


def _schema_extras(body: BaseModel, taken: tuple[str, ...]) -> dict[str, Any]:
    """The answer-trt fields a convention's body carries as extra fields (set, and not
    null), less those the convention's own fields stand for (``taken``)."""
    return {name: value for name, value in body.model_dump(exclude_unset=True).items()
            if name in FIELD_NAMES and name not in taken and value is not None}


# ---- OpenAI images API -------------------------------------------------------------------

class ModelNotFound(UserInputError):
    """An OpenAI request named a model this server does not run (the API's 404)."""


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """``"WxH"`` -> (height, width); ``None`` / ``"auto"``: the model's default size."""
    if size is None or size == "auto":
        return None, None
    match = SIZE_PATTERN.fullmatch(size)
    if not match:
        raise UserInputError(f"size must be WIDTHxHEIGHT in pixels (e.g. 512x512) or auto, got {size!r}")
    return int(match[2]), int(match[1])


def openai_request(body: BaseModel, model_name: str) -> GenerateRequest:
    """The answer-trt request of an OpenAI images request (``body``: ``OpenAIImagesBody``)."""
    fields: dict[str, Any] = dict(body)
    if fields["model"] is not None and fields["model"] != model_name:
        raise ModelNotFound(f"the model {fields['model']!r} is not served here: this server runs {model_name!r} "
                            "(GET /v1/models)")
    if fields["response_format"] == "url":
        raise UserInputError("response_format 'url' is not served (images are not stored): use b64_json")
    if fields["stream"]:
        raise UserInputError("stream is not supported: images come whole; leave it out")
    height, width = parse_size(fields["size"])
    request = GenerateRequest(fields["prompt"], batch=fields["n"], height=height, width=width,
                              **_schema_extras(body, OPENAI_TAKEN))
    request.sampling_config()  # the configuration's own checks, before anything is queued
    return request


def openai_response(generation: Generation, created: float | None = None) -> dict[str, Any]:
    """The ``ImagesResponse`` of one generation: every image as a base64 PNG with metadata."""
    images = [base64.b64encode(png_bytes(image)).decode("ascii") for image in generation.images]
    width, height = generation.images[0].size
    return {"created": int(time.time() if created is None else created),
            "data": [{"b64_json": b64, "revised_prompt": None} for b64 in images],
            "output_format": "png", "size": f"{width}x{height}"}


def openai_error(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": " ".join(message.split()), "type": kind, "param": param, "code": code}}


# ---- AUTOMATIC1111 txt2img ---------------------------------------------------------------

def sampler_scheduler(name: str | None) -> str | None:
    """Our scheduler for an A1111 sampler name (or one of our own names); ``None``: the model's."""
    if name is None or name == "":
        return None
    for ours, a1111 in OURS_IN_A1111.items():  # the samplers ours run alike: recorded by our name
        if name.lower() in (ours, a1111.lower()):
            return ours
    for known in a1111_sampler_names():  # the others by A1111's name (the schema takes both)
        if name.lower() == known.lower():
            return known
    raise UserInputError(f"unknown sampler_name {name!r}: choose one of {', '.join(a1111_sampler_names())} "
                         "(GET /sdapi/v1/samplers)")


def draw_seed() -> int:
    """A1111's seed -1: a random 32-bit seed."""
    return secrets.randbelow(2**32)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is(value: Any, accepted: Any) -> bool:
    """``value == accepted``, but true is not 1 nor 0 false (JSON's booleans are not numbers)."""
    return isinstance(value, bool) == isinstance(accepted, bool) and value == accepted


# Settings a request may carry (override_settings) at any of their values, but that POST
# /sdapi/v1/options may only confirm at the value GET reports: the server keeps no settings
# between requests, so a changed value there would be ignored.
PER_REQUEST_SETTINGS = ("CLIP_stop_at_last_layers",)


def sd_vae_values(vae_name: str | None) -> tuple[str, ...]:
    """The ``sd_vae`` values a server takes, the one GET /sdapi/v1/options reports first: with
    engines built with ``--vae`` (``vae_name``, as GET /sdapi/v1/sd-vae lists it), that name or
    Automatic (whatever the server runs); without, Automatic or None (the model's own VAE)."""
    return (vae_name, "Automatic") if vae_name else A1111_SETTINGS["sd_vae"].values


def check_settings(settings: dict[str, Any], model_name: str, where: str, kept: bool = False,
                   vae_name: str | None = None) -> None:
    """Refuse an A1111 setting answer-trt does not honour, or a value other than those it
    takes (``A1111_SETTINGS``; ``sd_vae``: ``sd_vae_values`` of the served ``vae_name``);
    ``where``: the field or route they came in, for the message.
    ``kept``: settings meant to last beyond one request (POST /sdapi/v1/options), where
    ``PER_REQUEST_SETTINGS`` take only the value GET reports (nothing is kept)."""
    for name, value in settings.items():
        if name == "sd_vae":
            if any(_is(value, v) for v in sd_vae_values(vae_name)):
                continue
            built = f"the engines hold {vae_name!r} (serve --vae)" if vae_name else "the engines hold the model's " \
                "own VAE"
            raise UserInputError(f"{where} sd_vae {_shown(value)} is not served here: {built}, built in, not "
                                 f"switched per request; send {' or '.join(_shown(v) for v in sd_vae_values(vae_name))}"
                                 " or leave it out (GET /sdapi/v1/sd-vae)")
        if kept and name in PER_REQUEST_SETTINGS and not _is(value, A1111_SETTINGS[name].values[0]):
            raise UserInputError(f"options {name} {_shown(value)}: this server keeps no settings between requests; "
                                 f"send it with each txt2img request (override_settings {{\"{name}\": "
                                 f"{_shown(value)}}}) instead")
        setting = A1111_SETTINGS.get(name)
        if setting is None:
            raise UserInputError(f"{where} {name!r} is not a setting answer-trt honours: leave it out (GET "
                                 f"/sdapi/v1/options lists those it takes)")
        if not setting.values:  # the served model
            if value != model_name:
                raise UserInputError(f"{where} {name} {_shown(value)} is not served here: this server runs "
                                     f"{model_name!r} (GET /sdapi/v1/sd-models); send that or leave it out")
        elif not any(_is(value, accepted) for accepted in setting.values):
            shown = " or ".join(_shown(v) for v in setting.values)
            raise UserInputError(f"{where} {name} {_shown(value)} is not supported ({setting.note}): send {shown} "
                                 "or leave it out")


def a1111_options(model_name: str, vae_name: str | None = None) -> dict[str, Any]:
    """``GET /sdapi/v1/options``: each setting answer-trt honours, at its value (``sd_vae``: the
    served ``--vae``'s name, or Automatic)."""
    options = {name: setting.values[0] if setting.values else model_name for name, setting in A1111_SETTINGS.items()}
    options["sd_vae"] = sd_vae_values(vae_name)[0]
    return options


def a1111_scheduler(schedule: str | None, sampler: str | None) -> str | None:
    """Our scheduler from A1111's ``sampler_name`` and ``scheduler`` (automatic: the
    sampler's; or one of ours, as GET /sdapi/v1/schedulers lists them)."""
    ours = sampler_scheduler(sampler)
    if schedule is None or schedule.lower() in A1111_DEFAULT_SCHEDULES:
        return ours
    if schedule.lower() == "karras" and ours is not None:  # A1111 1.9+: "DPM++ 2M" + "Karras"
        karras = f"{OURS_IN_A1111.get(ours, ours).removesuffix(' Karras')} Karras"
        if karras in A1111_SAMPLERS:
            return karras
    listed = a1111_schedulers()[1:]
    named = next((s["name"] for s in listed if schedule == s["name"]), None) or next(
        (s["name"] for s in listed if schedule.lower() in (s["name"].lower(), s["label"].lower())), None)
    if named is None:
        raise UserInputError(f"scheduler {schedule!r} is not supported: send automatic or one of "
                             f"{', '.join(s['name'] for s in a1111_schedulers()[1:])} (GET /sdapi/v1/schedulers)")
    if ours is not None and named != ours:
        raise UserInputError(f"sampler_name {sampler!r} and scheduler {schedule!r} name different schedulers: send "
                             "one of them (or scheduler automatic)")
    return named


def check_a1111_fields(body: BaseModel, model_name: str, scheduler: str | None,
                       table: dict[str, A1111Field] = A1111_FIELDS, vae_name: str | None = None) -> None:
    """Refuse each field of ``table`` (``A1111_FIELDS``; img2img's adds ``A1111_IMG2IMG_FIELDS``)
    the picture would need and answer-trt cannot honour (a refused field at a value other than
    its neutral ones, a setting of ``override_settings`` it does not take), naming the field.
    Fields of the schema are the schema's."""
    for name, spec in table.items():
        if spec.use != "refused" or name in FIELD_NAMES:
            continue
        value = getattr(body, name, None)
        if spec.only_with is not None and scheduler not in spec.only_with:
            continue
        if not any(_is(value, neutral) for neutral in spec.neutral):
            shown = " or ".join(_shown(v) for v in spec.neutral if v is not None)
            raise UserInputError(f"{name} is not supported by answer-trt ({spec.note}), got {_shown(value)}: send "
                                 f"{shown} or leave it out")
    check_settings(getattr(body, "override_settings", None) or {}, model_name, "override_settings", vae_name=vae_name)


def a1111_requests(body: BaseModel, seed: int, model_name: str,
                   image_fields: dict[str, Any] | None = None,
                   control_fields: dict[str, Any] | None = None, vae_name: str | None = None) -> list[GenerateRequest]:
    """One answer-trt request per iteration of an A1111 txt2img body (``Txt2ImgBody``), with
    ``seed`` already drawn for -1; ``model_name``, ``vae_name``: the served model and its
    ``--vae`` (``override_settings``).
    ``image_fields``: img2img's (``a1111_img2img``: the schema's ``IMAGE_FIELDS``);
    ``control_fields``: ControlNet's, from ``alwayson_scripts`` (``serving.control.a1111_control``)."""
    fields: dict[str, Any] = dict(body)
    sampler = fields["sampler_name"] if fields["sampler_name"] is not None else fields["sampler_index"]
    scheduler = a1111_scheduler(fields["scheduler"], sampler)
    check_a1111_fields(body, model_name, scheduler,
                       A1111_FIELDS if image_fields is None else {**A1111_FIELDS, **A1111_IMG2IMG_FIELDS}, vae_name)
    batch, iterations = fields["batch_size"], fields["n_iter"]
    if batch * iterations > MAX_IMAGES:
        raise UserInputError(f"batch_size * n_iter must be at most {MAX_IMAGES} images per request, "
                             f"got {batch * iterations}")
    if seed + iterations * batch - 1 > 2**64 - 1:
        raise UserInputError("seed + batch_size * n_iter - 1 (the last image's seed) must be below 2**64: use a "
                             "smaller seed")
    extras = _schema_extras(body, A1111_TAKEN if image_fields is None else A1111_TAKEN + IMAGE_FIELDS)
    extras.update(image_fields or {})
    extras.update(control_fields or {})
    extras.setdefault("prompt_syntax", "a1111")  # A1111's clients write A1111's syntax
    stop_at = (fields["override_settings"] or {}).get("CLIP_stop_at_last_layers")
    if stop_at is not None:  # A1111's setting is clip_skip by another name (checked by check_a1111_fields)
        if extras.get("clip_skip", stop_at) != stop_at:
            raise UserInputError(f"clip_skip {extras['clip_skip']} and override_settings CLIP_stop_at_last_layers "
                                 f"{stop_at} disagree: send one of them")
        extras["clip_skip"] = stop_at
    first = GenerateRequest(
        fields["prompt"], negative_prompt=fields["negative_prompt"] or None, steps=fields["steps"],
        guidance_scale=fields["cfg_scale"], scheduler=scheduler, seed=seed, height=fields["height"],
        width=fields["width"], batch=batch, seeds=image_seeds(seed, batch), **extras)
    first.sampling_config()
    return [first.replace(seed=seed + k * batch, seeds=image_seeds(seed + k * batch, batch))
            for k in range(iterations)]


def a1111_img2img(body: BaseModel, seed: int, model_name: str,
                  control: Any = None, vae_name: str | None = None) -> tuple[list[GenerateRequest], InitImage]:
    """An A1111 img2img body (``Img2ImgBody``) as ``a1111_requests`` and the input image (with
    its mask) they name: ``init_images`` (one), ``denoising_strength`` (absent: A1111's 0.75),
    ``mask`` with ``mask_blur`` (absent: A1111's 4); ``control``: a function of the output's
    (height, width) giving ControlNet's request fields (``serving.control.a1111_control``). With a
    mask, ``inpainting_fill`` other than 1 (original) and ``inpaint_full_res`` other than false are
    refused, naming the field (absent, they are A1111's defaults, 0 and true, which draw another picture)."""
    from answer_trt.img2img import load_init_image
    from answer_trt.inpaint import with_mask

    fields: dict[str, Any] = dict(body)
    images = fields["init_images"]
    if not images or len(images) != 1:
        raise UserInputError(f"init_images must hold one image (base64 PNG or JPEG), got {len(images or [])}")
    init = load_init_image(image_bytes(images[0], "init_images[0]"), fields["height"], fields["width"],
                           what="init_images[0]")
    strength = fields["denoising_strength"] if fields["denoising_strength"] is not None else 0.75
    image_fields: dict[str, Any] = {"strength": strength, "image_sha256": init.sha256}
    if fields["mask"] is not None:
        for name, kept, a1111 in (("inpaint_full_res", False, True), ("inpainting_fill", 1, 0)):
            value = fields[name] if fields[name] is not None else a1111  # absent: A1111's default
            if not _is(value, kept):
                raise UserInputError(f"{name} is not supported by answer-trt with a mask "
                                     f"({A1111_IMG2IMG_FIELDS[name].note}), got {_shown(value)}"
                                     f"{' (A1111 default)' if fields[name] is None else ''}: send {_shown(kept)}")
        blur = fields["mask_blur"] if fields["mask_blur"] is not None else 4
        init = with_mask(init, image_bytes(fields["mask"], "mask"), blur)
        image_fields.update(mask_sha256=init.mask_sha256, mask_blur=blur)
    control_fields = control(init.height, init.width) if control is not None else None
    requests = [request.replace(height=init.height, width=init.width)
                for request in a1111_requests(body, seed, model_name, image_fields, control_fields, vae_name)]
    return requests, init


def image_seeds(seed: int, batch: int) -> tuple[int, ...] | None:
    """A1111's seeds of a batch: ``seed + j`` for image j, each drawn from its own generator
    (the schema's ``seeds``); one image: its seed alone (``None``: the same noise)."""
    return tuple(seed + j for j in range(batch)) if batch > 1 else None


def _reported_seeds(request: GenerateRequest) -> list[int]:
    return list(request.seeds) if request.seeds else [request.seed + j for j in range(request.batch)]


def a1111_response(body: BaseModel, requests: list[GenerateRequest], generations: list[Generation]) -> dict[str, Any]:
    """A1111's txt2img response: ``images`` (base64 PNGs with metadata), ``parameters`` (the
    request, with the seed used) and ``info`` (JSON text)."""
    images = [image for generation in generations for image in generation.images]
    first = requests[0]
    seeds = [seed for request in requests for seed in _reported_seeds(request)]
    given = getattr(body, "subseed", None)
    subseed = given if isinstance(given, int) and not isinstance(given, bool) and given >= 0 else first.seed
    width, height = images[0].size
    sampler = OURS_IN_A1111.get(first.scheduler or "", first.scheduler)
    parameters = {**body.model_dump(), "seed": first.seed}
    info = {"prompt": first.prompt, "all_prompts": [first.prompt] * len(images),
            "negative_prompt": first.negative_prompt or "", "all_negative_prompts": [first.negative_prompt or ""]
            * len(images), "seed": first.seed, "all_seeds": seeds, "subseed": subseed,
            "all_subseeds": [subseed + i for i in range(len(images))], "subseed_strength": 0,
            "width": width, "height": height, "sampler_name": sampler, "cfg_scale": first.guidance_scale,
            "steps": first.steps, "batch_size": first.batch, "n_iter": len(requests), "method": first.method,
            "infotexts": [image.info.get("parameters", "") for image in images],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "sd_model_name": images[0].info.get("model")}
    return {"images": [base64.b64encode(png_bytes(image)).decode("ascii") for image in images],
            "parameters": parameters, "info": json.dumps(info)}


def a1111_samplers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``."""
    return [{"name": name, "aliases": [ours for ours, a1111 in OURS_IN_A1111.items() if a1111 == name],
             "options": {"scheduler_class": sampler.class_name, **{k: str(v) for k, v in sampler.options.items()}}}
            for name, sampler in A1111_SAMPLERS.items()]


def a1111_schedulers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers``: automatic (the sampler's own schedule), then each scheduler
    the request schema takes (its ``scheduler`` choices), labelled with its A1111 sampler name."""
    choices = next(info(f).choices for f in request_fields() if f.name == "scheduler") or ()
    labels = dict(OURS_IN_A1111)
    entries = [{"name": "automatic", "label": "Automatic", "aliases": list(A1111_DEFAULT_SCHEDULES[1:]),
                "default_rho": None, "need_inner_model": None}]
    return entries + [{"name": name, "label": labels.get(name, name), "aliases": [labels[name]] if name in labels
                       else [], "default_rho": None, "need_inner_model": None} for name in choices]


def a1111_models(model_name: str, backend: str) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/sd-models``: the one model this server runs (no server paths)."""
    return [{"title": model_name, "model_name": model_name, "hash": None, "sha256": None,
             "filename": f"{model_name} ({backend} engines)", "config": None}]


def a1111_progress(progress: Progress) -> dict[str, Any]:
    """``GET /sdapi/v1/progress`` from the batcher's requests: ``progress`` is the steps done
    over the steps of every request held, ``sampling_step(s)`` are the oldest's in flight."""
    held = (*progress.running, *progress.waiting)
    steps = sum(r.steps for r in held)
    done = sum(r.steps_done for r in held)
    fraction = done / steps if steps else 0.0
    current = held[0] if held else None
    elapsed = max((r.elapsed_s for r in progress.running), default=0.0)
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state = {"skipped": False, "interrupted": False, "stopping_generation": False,
             "job": "answer-trt" if held else "", "job_count": len(held), "job_timestamp": "0", "job_no": 0,
             "sampling_step": current.steps_done if current else 0,
             "sampling_steps": current.steps if current else 0}
    text = f"{len(progress.running)} in flight, {len(progress.waiting)} waiting" if held else None
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": None, "textinfo": text}


# ---- OpenAI image edits (POST /v1/images/edits) ---------------------------------------------

# The form fields of OpenAI's edits request answer-trt reads; others of OpenAI's are refused by
# name unless neutral; answer-trt's own request fields may come as form fields too.
OPENAI_EDIT_FIELDS = ("prompt", "n", "size", "response_format", "model", "quality", "user")
OPENAI_EDIT_FILES = ("image", "image[]", "mask")


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """``(fields, files)`` of a ``multipart/form-data`` body (the stdlib's MIME parser): a part
    with a filename, or named image / image[] / mask, is a file (its bytes), the others text."""
    from email.parser import BytesParser
    from email.policy import HTTP

    if not content_type.lower().startswith("multipart/form-data"):
        raise UserInputError("POST /v1/images/edits takes multipart/form-data (image, mask, prompt, ...), as OpenAI's "
                             f"clients send it; got Content-Type {content_type or 'none'!r}")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if not message.is_multipart():
        raise UserInputError("the multipart body could not be read: send it as OpenAI's clients do")
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise UserInputError("a part of the multipart body has no name")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None or name in OPENAI_EDIT_FILES:
            if name in files:
                raise UserInputError(f"{name}: send one file (answer-trt edits one image per request)")
            files[name] = data
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, files


def openai_mask(image: bytes | None, mask: bytes | None) -> Any:
    """The greyscale inpainting mask (white: repaint) of OpenAI's rule: the mask's, or without
    one the image's, fully transparent pixels (alpha 0) are edited. A PIL image."""
    import io

    import numpy as np
    from PIL import Image

    source, what = (mask, "mask") if mask is not None else (image, "image")
    try:
        with Image.open(io.BytesIO(source or b"")) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise UserInputError(f"{what} is {opened.width}x{opened.height}, above the cap of {MAX_IMAGE_PIXELS} "
                                     "pixels")
            rgba = opened.convert("RGBA") if "A" in opened.getbands() or opened.mode == "P" else None
    except (OSError, ValueError) as exc:
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"{what} is not a readable image: give a PNG") from None
    if rgba is None:
        if mask is not None:
            raise UserInputError("mask must be a PNG with an alpha channel: its transparent pixels are edited")
        raise UserInputError("image has no transparent pixels and no mask came with it: send a mask (PNG, "
                             "transparent where the image is edited) or an image with transparent areas")
    alpha = np.asarray(rgba)[..., 3]
    return Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8))


def openai_edit(content_type: str, body: bytes, model_name: str) -> tuple[GenerateRequest, InitImage]:
    """The answer-trt request (inpainting at strength 1, as OpenAI's edits repaint the masked area)
    and its input image of an OpenAI ``POST /v1/images/edits`` multipart body: ``image`` (one),
    ``mask`` (OpenAI's rule, ``openai_mask``), ``prompt``, ``n`` (the batch), ``size`` (resizes
    the image, Lanczos), ``model``, ``response_format`` (b64_json); answer-trt's request fields
    as further form fields."""
    from answer_trt.img2img import load_init_image
    from answer_trt.inpaint import with_mask
    from answer_trt.schema import field_kinds

    fields, files = parse_form(content_type, body)
    image = files.get("image", files.get("image[]"))
    if image is None:
        raise UserInputError("image is required: the PNG to edit (multipart file field image)")
    if "prompt" not in fields:
        raise UserInputError("prompt is required")
    model = fields.get("model")
    if model not in (None, "", model_name):
        raise ModelNotFound(f"the model {model!r} is not served here: this server runs {model_name!r} (GET /v1/models)")
    if fields.get("response_format", "b64_json") != "b64_json":
        raise UserInputError("response_format 'url' is not served (images are not stored): use b64_json")
    kinds = field_kinds()
    extras: dict[str, Any] = {}
    for name, text in fields.items():
        if name in OPENAI_EDIT_FIELDS:
            continue
        if name not in kinds or name in ("prompt", "batch", "height", "width", "strength", "image_sha256",
                                         "mask_sha256", "seeds"):
            raise UserInputError(f"{name} is not a field answer-trt takes for an edit: send "
                                 f"{', '.join(OPENAI_EDIT_FIELDS)} or answer-trt's request fields")
        kind = kinds[name]
        try:
            extras[name] = int(text) if kind == "int" else float(text) if kind == "float" else text
        except ValueError:
            raise UserInputError(f"{name} must be a number, got {text!r}") from None
        if kind == "bool":  # a form field's text
            extras[name] = {"true": True, "false": False}.get(text.lower(), text)
    try:
        n = int(fields.get("n", "1"))
    except ValueError:
        raise UserInputError(f"n must be an integer, got {fields['n']!r}") from None
    height, width = parse_size(fields.get("size"))
    init = load_init_image(image, height, width, what="image")
    init = with_mask(init, openai_mask(image, files.get("mask")), extras.get("mask_blur", 0))
    request = GenerateRequest(fields["prompt"], batch=n, height=init.height, width=init.width, strength=1.0,
                              image_sha256=init.sha256, mask_sha256=init.mask_sha256, **extras)
    request.sampling_config()
    return request, init
