"""AUTOMATIC1111's `POST /sdapi/v1/img2img` (issue 33, item 4), without Ray: the FastAPI app
called in-process over a real ``StepBatcher`` on tiny-random's ONNX Runtime engines. Its images
equal the Python API's (`pipe(prompt, image=, mask_image=, strength=, mask_blur=)`) for the same
seed; what answer-trt cannot draw is a 400 naming the field."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install -e '.[serve]'")

from answer_trt.img2img import InitImage  # noqa: E402
from answer_trt.pipeline import Generation  # noqa: E402
from answer_trt.schema import GenerateRequest  # noqa: E402
from answer_trt.serving.batcher import StepBatcher  # noqa: E402
from answer_trt.serving.stats import Progress  # noqa: E402
from tests.test_serve_a1111 import call  # noqa: E402


class ImageServer:
    """What ``GenerateServer`` is to the routes, over a batcher made here (no Ray)."""

    def __init__(self, batcher: StepBatcher) -> None:
        self.batcher = batcher
        self.model_name, self.backend = batcher.pipeline.model_name, batcher.pipeline.backend
        self.health = {"status": "ok", "model": self.model_name, "backend": self.backend}

    async def run(self, request: GenerateRequest, timeout_s: float | None = None,
                  init: InitImage | None = None) -> Generation:
        ticket = self.batcher.submit(request, deadline_s=timeout_s, init=init)
        generation: Generation = await asyncio.wrap_future(ticket.future)
        return generation

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats().as_dict()

    def progress(self) -> Progress:
        return self.batcher.progress()


@pytest.fixture(scope="module")
def batcher(ort_pipe) -> Iterator[StepBatcher]:
    with StepBatcher(ort_pipe) as batcher:
        yield batcher


@pytest.fixture(scope="module")
def app(batcher: StepBatcher) -> Any:
    from answer_trt.serving.http import make_api

    return make_api(ImageServer(batcher))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


def square_mask(size: tuple[int, int]) -> Image.Image:
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 8: size[0] * 5 // 8, size[1] // 3: size[1] * 7 // 10] = 255
    return Image.fromarray(mask)


def levels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def img2img(app: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    answer = call(app, "POST", "/sdapi/v1/img2img", {"prompt": "a red circle", "steps": 6, "seed": 5,
                                                      "cfg_scale": 6, **body})
    return answer.status_code, answer.json()


def test_img2img_and_inpainting_equal_the_python_api(app, ort_pipe):
    size = ort_pipe.default_size
    image, mask = picture(size), square_mask(size)
    status, answer = img2img(app, init_images=[png_b64(image)], denoising_strength=0.5,
                             inpaint_full_res=True, inpainting_fill=0)  # A1111's defaults, read only with a mask
    assert status == 200, answer
    alone = ort_pipe("a red circle", image=image, strength=0.5, steps=6, seed=5, guidance_scale=6.0, method="answer")
    assert np.abs(levels(answer["images"][0]) - np.asarray(alone.images[0], dtype=np.int16)).max() <= 1
    assert "Denoising strength: 0.5" in json.loads(answer["info"])["infotexts"][0]
    status, answer = img2img(app, init_images=["data:image/png;base64," + png_b64(image)], mask=png_b64(mask),
                             mask_blur=2, inpainting_fill=1, inpaint_full_res=False, batch_size=2)
    assert status == 200, answer
    alone = ort_pipe("a red circle", image=image, mask_image=mask, mask_blur=2, strength=0.75, steps=6,
                     seeds=[5, 6], guidance_scale=6.0, method="answer")
    for got, want in zip(answer["images"], alone.images):
        assert np.abs(levels(got) - np.asarray(want, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("body,named", [
    ({"init_images": []}, "init_images must hold one image"),
    ({"init_images": ["!!"]}, "init_images[0] is not base64"),
    ({"init_images": [base64.b64encode(b"not an image").decode()]}, "not a readable image"),
    ({"mask": "MASK"}, "inpaint_full_res is not supported by answer-trt with a mask"),
    ({"mask": "MASK", "inpaint_full_res": False}, "inpainting_fill is not supported by answer-trt with a mask"),
    ({"resize_mode": 1}, "resize_mode is not supported"),
    ({"denoising_strength": 0.0}, "strength must be a number in (0, 1]"),
])
def test_what_answer_trt_cannot_draw_is_a_400_naming_it(app, ort_pipe, body, named):
    size = ort_pipe.default_size
    body = {"init_images": [png_b64(picture(size))], **body}
    if body.get("mask") == "MASK":
        body["mask"] = png_b64(square_mask(size))
    status, answer = img2img(app, **body)
    assert status == 400, answer
    assert named in answer["error"] and "\n" not in answer["error"]


def test_the_image_route_takes_image_sized_bodies(app, ort_pipe):
    """A 512 x 512 photo as base64 is far above the 64 KiB of the text routes."""
    from answer_trt.serving.http import IMAGE_BODY_BYTES
    from answer_trt.serving.protocol import MAX_BODY_BYTES

    size = ort_pipe.default_size
    padding = "x" * (2 * MAX_BODY_BYTES)  # a large prompt makes the body large without a large image
    # plain syntax: as A1111's syntax the padding would be 1748 chunks, refused as too long a prompt
    status, answer = img2img(app, init_images=[png_b64(picture(size))], prompt=padding, steps=2,
                             prompt_syntax="plain")
    assert status == 200, answer
    answer = call(app, "POST", "/sdapi/v1/txt2img", {"prompt": padding})
    assert answer.status_code == 413 and "a shorter prompt" in answer.text
    assert IMAGE_BODY_BYTES >= 32 * 2**20


def post_form(app: Any, path: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A multipart/form-data POST through the ASGI app, as OpenAI's clients send edits."""
    from urllib3.filepost import encode_multipart_formdata

    body, content_type = encode_multipart_formdata(fields)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
             "scheme": "http", "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "asgi": {"version": "3.0"}, "headers": headers}
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def png_bytes(image: Image.Image) -> bytes:
    return base64.b64decode(png_b64(image))


def test_openai_edits_inpaint_where_the_mask_is_transparent(app, ort_pipe):
    size = ort_pipe.default_size
    image, mask = picture(size, 3), square_mask(size)
    openai_mask = Image.fromarray(np.dstack([np.zeros((*size, 3), np.uint8), 255 - np.asarray(mask)]))  # RGBA
    status, answer = post_form(app, "/v1/images/edits", {
        "image": ("in.png", png_bytes(image), "image/png"), "mask": ("mask.png", png_bytes(openai_mask), "image/png"),
        "prompt": "a red circle", "n": "2", "method": "cfg", "seed": "4"})
    assert status == 200, answer
    alone = ort_pipe("a red circle", image=image, mask_image=mask, strength=1.0, batch=2, seed=4, method="cfg")
    assert len(answer["data"]) == 2
    for got, want in zip(answer["data"], alone.images):
        assert np.abs(levels(got["b64_json"]) - np.asarray(want, dtype=np.int16)).max() <= 1
    # No mask: the image's own transparent pixels are edited.
    transparent = Image.fromarray(np.dstack([np.asarray(image), 255 - np.asarray(mask)]))
    status, answer = post_form(app, "/v1/images/edits", {
        "image": ("in.png", png_bytes(transparent), "image/png"), "prompt": "a red circle", "method": "cfg",
        "seed": "4"})
    assert status == 200, answer
    refusals = [
        ({"image": ("in.png", png_bytes(image), "image/png"), "prompt": "x"}, "no transparent pixels"),
        ({"image": ("in.png", png_bytes(image), "image/png"), "mask": ("m.png", png_bytes(mask), "image/png"),
          "prompt": "x"}, "alpha channel"),
        ({"prompt": "x"}, "image is required"),
        ({"image": ("in.png", png_bytes(transparent), "image/png"), "prompt": "x", "response_format": "url"}, "url"),
        ({"image": ("in.png", png_bytes(transparent), "image/png"), "prompt": "x", "style": "vivid"}, "style"),
    ]
    for fields, named in refusals:
        status, answer = post_form(app, "/v1/images/edits", fields)
        assert status == 400 and named in answer["error"]["message"], answer
    status, answer = post_form(app, "/v1/images/edits", {
        "image": ("in.png", png_bytes(transparent), "image/png"), "prompt": "x", "model": "dall-e-2"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"

