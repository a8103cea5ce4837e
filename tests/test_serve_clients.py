"""`answer-trt serve` as the clients people already run see it (issue 24, items 1-3): the
FastAPI ingress (/openapi.json from the request schema, 413 from Content-Length, FastAPI's
422 as a one-line 400), the OpenAI images API through the official `openai` package, and
A1111's txt2img through the `webuiapi` package. The server runs `tiny` engines from the
cache (what `answer-trt generate --model tiny` uses) on 127.0.0.1 and stops with the module;
every image is compared with the CLI's to 0 levels. Only 127.0.0.1 is contacted."""

from __future__ import annotations

import base64
import io
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install -e '.[dev]'")
webuiapi = pytest.importorskip("webuiapi", reason="the webuiapi client is not installed: pip install -e '.[dev]'")

from answer_trt.schema import FIELD_NAMES, request_fields  # noqa: E402
from answer_trt.schema import info as schema_info  # noqa: E402
from tests.serve_process import local_server  # noqa: E402

HOST = "127.0.0.1"
WAIT_S = 60.0  # the most any single request in here may take


@pytest.fixture(scope="module")
def engines() -> Path:
    from answer_trt.loaders import build_cached

    return build_cached("tiny")  # the cache folder `answer-trt generate --model tiny` uses


@pytest.fixture(scope="module")
def server(engines: Path) -> Any:
    with local_server(engines, HOST) as url:
        yield url


@pytest.fixture(scope="module")
def openapi(server: str) -> dict[str, Any]:
    with urllib.request.urlopen(server + "/openapi.json", timeout=WAIT_S) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def cli_pixels(tmp_path: Path, prompt: str, *flags: str, count: int = 1) -> list[np.ndarray]:
    """`answer-trt generate PROMPT --model tiny FLAGS -o ...`: the pixels of each image."""
    from answer_trt.cli import main

    out = tmp_path / "cli.png"
    assert main(["generate", prompt, "--model", "tiny", *flags, "-o", str(out)]) == 0
    paths = [out] + [out.with_name(f"cli-{i}.png") for i in range(1, count)]
    return [pixels(Image.open(path)) for path in paths]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---- item 1: the FastAPI ingress -----------------------------------------------------------

def test_openapi_documents_every_schema_field_with_its_bounds(openapi):
    schemas = openapi["components"]["schemas"]
    body = schemas["GenerateBody"]["properties"]
    assert set(body) == set(FIELD_NAMES) | {"response", "timeout_s", "control_image"}
    for f in request_fields():
        fi = schema_info(f)
        documented = body[f.name]
        options = documented.get("anyOf", [documented])
        assert fi.help in documented["description"], f.name
        if fi.choices:
            assert any(o.get("enum") == list(fi.choices) for o in options), f.name
        bounded = [o.get("items", o) for o in options]  # a list field ("ints") bounds its items
        if fi.low is not None:
            assert any(o.get("minimum") == fi.low for o in bounded), f.name
        if fi.high is not None:
            assert any(o.get("maximum") == fi.high for o in bounded), f.name
        assert any(o.get("type") == "null" for o in options) == fi.nullable, f.name
    assert body["steps"]["maximum"] == 1000 and body["seed"]["maximum"] == 2**64 - 1
    generate = openapi["paths"]["/v1/generate"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/GenerateBody")
    # the conventions carry the schema's own fields as extra fields, with the same bounds
    assert schemas["OpenAIImagesBody"]["properties"]["method"]["enum"] == ["answer", "cfg", "dns"]
    assert schemas["Txt2ImgBody"]["properties"]["chain_min_sigma"]["maximum"] == 1.0
    assert {"/v1/generate", "/v1/health", "/v1/stats", "/v1/images/generations", "/v1/models", "/sdapi/v1/txt2img",
            "/sdapi/v1/samplers", "/sdapi/v1/sd-models"} <= set(openapi["paths"])


def test_a_body_above_the_limit_is_413_from_its_content_length_before_it_is_sent(server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection((HOST, port), timeout=WAIT_S) as raw:
        # The headers only: a server that waited for the 10 MB body would never answer.
        raw.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 10000000\r\n\r\n{\"prompt\": ")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body[body.index(b"{"):]) == {
        "error": "the request body is 10000000 bytes, above the limit of 65536: send a shorter prompt"}


def test_fastapi_validation_errors_are_one_line_400s(server):
    status, body = post_json(server + "/sdapi/v1/txt2img", {"prompt": "a", "steps": True})
    assert status == 400 and body == {"error": "field 'steps': Input should be a valid integer, got True"}
    status, body = post_json(server + "/sdapi/v1/txt2img", {"prompt": "a", "width": 32, "height": 32, "steps": 0})
    assert status == 400 and "field 'steps'" in body["error"] and "greater than or equal to 1" in body["error"]
    # our own endpoint keeps its parser's messages
    status, body = post_json(server + "/v1/generate", {"prompt": "a", "stepz": 3})
    assert status == 400 and body["error"].startswith("unknown field 'stepz': did you mean 'steps'?")


# ---- item 2: the OpenAI images API ---------------------------------------------------------

@pytest.fixture(scope="module")
def openai_client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=WAIT_S)


def test_the_openai_client_gets_the_clis_images(openai_client, tmp_path):
    result = openai_client.images.generate(
        model="tiny", prompt="a red circle and a blue square", n=2, size="32x32", response_format="b64_json",
        extra_body={"seed": 3, "steps": 8, "method": "cfg", "guidance_scale": 5.0})
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    expected = cli_pixels(tmp_path, "a red circle and a blue square", "--seed", "3", "--steps", "8", "--method", "cfg",
                          "--guidance-scale", "5", "--batch", "2", count=2)
    assert len(images) == 2 and result.size == "32x32"
    for index, (image, cli) in enumerate(zip(images, expected)):
        assert image.format == "PNG" and image.size == (32, 32)
        recorded = json.loads(image.info["answer-trt"])
        assert recorded["seed"] == 3 and recorded["method"] == "cfg" and recorded["batch_index"] == index
        assert np.array_equal(pixels(image), cli), index  # 0 levels


def test_the_openai_client_sees_refusals_in_the_openai_error_shape(openai_client):
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.images.generate(prompt="a", size="32 by 32")
    assert bad.value.status_code == 400 and bad.value.body["type"] == "invalid_request_error"
    assert bad.value.body["message"] == "size must be WIDTHxHEIGHT in pixels (e.g. 512x512) or auto, got '32 by 32'"
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.images.generate(prompt="a", extra_body={"steps": 0})
    assert bad.value.body["param"] == "steps" and "\n" not in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.images.generate(prompt="a", extra_body={"colour": "red"})
    assert bad.value.body["param"] == "colour" and bad.value.body["message"].startswith("unknown field 'colour'")
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.images.generate(prompt="a", response_format="url")
    assert "url' is not served" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.images.generate(prompt="a", model="dall-e-3")
    assert missing.value.body["code"] == "model_not_found" and "'tiny'" in missing.value.body["message"]
    assert [m.id for m in openai_client.models.list()] == ["tiny"]


# ---- item 3: A1111's txt2img -------------------------------------------------------------

@pytest.fixture(scope="module")
def webui(server: str) -> Any:
    host, port = server.removeprefix("http://").rsplit(":", 1)
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=6)


def test_webuiapi_txt2img_gets_the_clis_images(webui, engines, tmp_path):
    result = webui.txt2img(prompt="a yellow triangle", negative_prompt="a blue circle", seed=11, cfg_scale=5.0,
                           width=32, height=32, steps=6, sampler_name="Euler", n_iter=2)
    assert result.info["all_seeds"] == [11, 12] and result.info["seed"] == 11 and result.parameters["seed"] == 11
    assert result.info["sampler_name"] == "Euler" and len(result.images) == 2
    flags = ["--negative-prompt", "a blue circle", "--guidance-scale", "5", "--width", "32", "--height", "32",
             "--steps", "6", "--scheduler", "euler"]
    for image, seed in zip(result.images, (11, 12)):
        assert image.format == "PNG" and image.size == (32, 32) and image.info["seed"] == str(seed)
        assert json.loads(image.info["answer-trt"])["scheduler"] == "euler"
        (cli,) = cli_pixels(tmp_path, "a yellow triangle", "--seed", str(seed), *flags)
        assert np.array_equal(pixels(image), cli), seed  # 0 levels


def test_webuiapi_random_seed_is_drawn_and_reported(webui, server):
    # eta 0: webuiapi sends A1111's eta 1 by default, which makes A1111's DDIM stochastic (refused)
    result = webui.txt2img(prompt="a red square", seed=-1, width=32, height=32, steps=2, sampler_name="DDIM", eta=0)
    seed = result.info["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32 and result.parameters["seed"] == seed
    assert result.images[0].info["seed"] == str(seed) and result.images[0].info["scheduler"] == "ddim"
    # answer-trt's own fields ride along as extra fields (webuiapi's txt2img has no keyword for them)
    status, body = post_json(server + "/sdapi/v1/txt2img", {"prompt": "a red square", "width": 32, "height": 32,
                                                             "steps": 2, "seed": 5, "method": "cfg"})
    assert status == 200 and json.loads(body["info"])["method"] == "cfg"
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.info["method"] == "cfg" and image.info["seed"] == "5"


def test_webuiapi_samplers_models_and_refusals(webui):
    from answer_trt.samplers import a1111_sampler_names

    assert webui.util_get_sampler_names() == sorted(a1111_sampler_names())
    assert webui.util_get_model_names() == ["tiny"]
    with pytest.raises(RuntimeError) as refused:
        webui.txt2img(prompt="a", width=32, height=32, sampler_name="Euler b")
    status, text = refused.value.args
    assert status == 400 and json.loads(text)["error"].startswith(
        "unknown sampler_name 'Euler b': choose one of DDIM, Euler, Euler a, DPM++ 2M")
    seeded = [webui.txt2img(prompt="a red circle", width=32, height=32, steps=4, seed=7, sampler_name="Euler a")
              for _ in range(2)]  # ancestral: its noise follows the seed
    assert seeded[0].images[0].tobytes() == seeded[1].images[0].tobytes()
    with pytest.raises(RuntimeError) as refused:
        webui.txt2img(prompt="a", width=32, height=32, sampler_name="Euler", enable_hr=True)
    assert refused.value.args[0] == 400 and "enable_hr is not supported" in refused.value.args[1]


# ---- image inputs through the same clients (issue 33, item 4) -------------------------------

def _shapes_png(tmp_path: Path, transparent_box: bool = False) -> Path:
    """A 32x32 picture to edit (a red disc on grey); optionally with a transparent square
    (OpenAI's rule: transparent pixels are repainted)."""
    yy, xx = np.mgrid[0:32, 0:32]
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[...] = (128, 128, 128, 255)
    rgba[(yy - 16) ** 2 + (xx - 12) ** 2 < 40] = (220, 30, 30, 255)
    if transparent_box:
        rgba[8:24, 18:30, 3] = 0
    path = tmp_path / ("edit.png" if transparent_box else "init.png")
    Image.fromarray(rgba, "RGBA" if transparent_box else "RGBA").save(path)
    return path


def test_the_openai_client_edits_an_image_as_the_cli_inpaints_it(openai_client, tmp_path):
    """openai's ``images.edit`` (multipart) on `serve`: the transparent area is repainted; the
    picture equals the CLI's inpainting with that area as the mask, at strength 1."""
    edit = _shapes_png(tmp_path, transparent_box=True)
    with edit.open("rb") as image:
        result = openai_client.images.edit(image=image, prompt="a blue square", n=1, size="32x32",
                                           extra_body={"seed": 4, "steps": 6, "method": "cfg"})
    (item,) = result.data
    got = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    assert got.size == (32, 32) and json.loads(got.info["answer-trt"])["image_sha256"]
    alpha = np.asarray(Image.open(edit))[..., 3]
    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8)).save(mask)
    rgb = tmp_path / "edit-rgb.png"
    Image.open(edit).convert("RGB").save(rgb)
    (cli,) = cli_pixels(tmp_path, "a blue square", "--image", str(rgb), "--mask", str(mask), "--strength", "1",
                        "--seed", "4", "--steps", "6", "--method", "cfg")
    assert np.abs(pixels(got) - cli).max() <= 1
    kept = alpha == 255  # outside the mask the picture is (nearly) the original
    assert np.abs(pixels(got)[kept] - pixels(Image.open(rgb))[kept]).mean() < np.abs(
        pixels(got)[~kept] - pixels(Image.open(rgb))[~kept]).mean()


def test_webuiapi_img2img_gets_the_clis_image(webui, tmp_path):
    init = _shapes_png(tmp_path)
    result = webui.img2img(images=[Image.open(init).convert("RGB")], prompt="a red circle", seed=9, cfg_scale=5.0,
                           width=32, height=32, steps=6, sampler_name="Euler", denoising_strength=0.6)
    assert len(result.images) == 1 and result.info["seed"] == 9
    (cli,) = cli_pixels(tmp_path, "a red circle", "--image", str(init), "--strength", "0.6", "--seed", "9",
                        "--guidance-scale", "5", "--steps", "6", "--scheduler", "euler")
    assert np.abs(pixels(result.images[0]) - cli).max() <= 1


def test_webuiapi_inpainting_names_what_to_set_then_draws(webui, tmp_path):
    """webuiapi sends A1111's inpainting defaults (masked content "fill", "only masked" region),
    whose pictures answer-trt does not draw: refused naming them; with inpainting_fill 1
    ("original") and the whole picture, it inpaints."""
    init = Image.open(_shapes_png(tmp_path)).convert("RGB")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 8, 30, 24))
    with pytest.raises(RuntimeError) as refused:
        webui.img2img(images=[init], mask_image=mask, prompt="a blue square", width=32, height=32, steps=4)
    status, text = refused.value.args
    assert status == 400 and "\n" not in json.loads(text)["error"]
    assert "inpainting_fill" in text or "inpaint_full_res" in text
    result = webui.img2img(images=[init], mask_image=mask, prompt="a blue square", width=32, height=32, steps=12,
                           seed=2, inpainting_fill=1, inpaint_full_res=False, denoising_strength=1.0, mask_blur=0)
    got = pixels(result.images[0])
    outside = np.asarray(mask) == 0
    assert np.abs(got[outside] - pixels(init)[outside]).mean() < np.abs(got[~outside] - pixels(init)[~outside]).mean()
