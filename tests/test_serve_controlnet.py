"""ControlNet over `serve` (issue 34, item 5), without Ray: the FastAPI app called in-process over a
real ``StepBatcher`` on tiny-random's ONNX Runtime engines built with tiny ControlNets made in
code. The control images of `POST /v1/generate` (`control_image`) and of A1111's ControlNet
extension units (`alwayson_scripts.controlnet.args`) draw the Python API's images for the same
request; `/controlnet/model_list`; bad units are one-line 400s before any work; the batcher
runs control requests with different images in one call, each equal to its own generation."""

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

import answer_trt  # noqa: E402
from answer_trt.build_config import BuildConfig, ControlNetSpec  # noqa: E402
from answer_trt.controlnet import ControlImages  # noqa: E402
from answer_trt.export.build import build  # noqa: E402
from answer_trt.img2img import InitImage  # noqa: E402
from answer_trt.infotext import RECORD  # noqa: E402
from answer_trt.pipeline import Generation  # noqa: E402
from answer_trt.schema import GenerateRequest, make_request  # noqa: E402
from answer_trt.serving.batcher import StepBatcher  # noqa: E402
from answer_trt.serving.control import ServedControlNets  # noqa: E402
from answer_trt.serving.stats import Progress  # noqa: E402
from tests.test_controlnet import MODEL, make_controlnet, picture  # noqa: E402
from tests.test_serve_a1111 import call  # noqa: E402

STEPS = 4


class ControlServer:
    """What ``GenerateServer`` is to the routes, over a batcher made here (no Ray)."""

    def __init__(self, batcher: StepBatcher) -> None:
        pipe = batcher.pipeline
        self.batcher = batcher
        self.model_name, self.backend = pipe.model_name, pipe.backend
        self.health = {"status": "ok", "model": self.model_name, "backend": self.backend}
        self.controlnets = ServedControlNets.from_tags(pipe.weights.controlnets)
        self.default_size = pipe.default_size

    async def run(self, request: GenerateRequest, timeout_s: float | None = None, init: InitImage | None = None,
                  control: ControlImages | None = None) -> Generation:
        ticket = self.batcher.submit(request, deadline_s=timeout_s, init=init, control=control)
        generation: Generation = await asyncio.wrap_future(ticket.future)
        return generation

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats().as_dict()

    def progress(self) -> Progress:
        return self.batcher.progress()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve-controlnet")
    controlnet = make_controlnet(MODEL, root / "edges", 1)
    folder = root / "engines"
    build(BuildConfig(model=MODEL, out=folder, max_batch=4, controlnets=(ControlNetSpec(controlnet, 0.8),)),
          log=lambda _m: None)
    return {"controlnet": controlnet, "folder": folder, "pipe": answer_trt.load(folder)}


@pytest.fixture(scope="module")
def batcher(world) -> Iterator[StepBatcher]:
    with StepBatcher(world["pipe"]) as batcher:
        yield batcher


@pytest.fixture(scope="module")
def app(batcher: StepBatcher) -> Any:
    from answer_trt.serving.http import make_api

    return make_api(ControlServer(batcher))


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def levels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def own(images) -> np.ndarray:
    return np.asarray(images[0].convert("RGB"), dtype=np.int16)


def unit(control: Image.Image, **fields: Any) -> dict[str, Any]:
    """A unit as webuiapi's ControlNetUnit.to_dict sends it."""
    return {"image": png_b64(control), "mask": None, "module": "none", "model": "edges", "weight": 1.0,
            "resize_mode": "Resize and Fill", "low_vram": False, "processor_res": 512, "threshold_a": 64,
            "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
            "pixel_perfect": False, "hr_option": "Both", "enabled": True, **fields}


def txt2img(app: Any, units: list[dict[str, Any]], script: str = "ControlNet", **fields: Any):
    body = {"prompt": "a cat", "seed": 5, "steps": STEPS, "cfg_scale": 6.0, "sampler_name": "Euler",
            "alwayson_scripts": {script: {"args": units}}, **fields}
    return call(app, "POST", "/sdapi/v1/txt2img", body)


def test_generate_with_control_image_equals_the_python_api(app, world):
    pipe = world["pipe"]
    control = picture(pipe.default_size, 1)
    answer = call(app, "POST", "/v1/generate", {"prompt": "a cat", "steps": STEPS, "seed": 3, "response": "json",
                                                "control_image": png_b64(control), "guess_mode": True,
                                                "controlnet_conditioning_scale": 0.6})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = pipe("a cat", control_image=control, steps=STEPS, seed=3, guess_mode=True,
                    controlnet_conditioning_scale=0.6)
    assert np.abs(levels(body["image_png_base64"]) - own(expected)).max() <= 1
    record = json.loads(Image.open(io.BytesIO(base64.b64decode(body["image_png_base64"]))).info[RECORD])
    assert record["guess_mode"] is True and record["control_image_sha256"] == json.loads(
        expected[0].info[RECORD])["control_image_sha256"]
    plain = call(app, "POST", "/v1/generate", {"prompt": "a cat", "steps": STEPS, "seed": 3, "response": "json"})
    assert np.abs(levels(plain.json()["image_png_base64"]) - own(expected)).max() > 5


def test_a1111_units_draw_the_python_apis_image(app, world):
    pipe = world["pipe"]
    control = picture(pipe.default_size, 2)
    answer = txt2img(app, [unit(control, weight=0.5, guidance_start=0.25, guidance_end=0.75,
                                control_mode="ControlNet is more important")])
    assert answer.status_code == 200, answer.text
    expected = pipe("a cat", control_image=control, steps=STEPS, seed=5, guidance_scale=6.0, scheduler="euler",
                    prompt_syntax="a1111", controlnet_conditioning_scale=0.5, control_guidance_start=0.25,
                    control_guidance_end=0.75, guess_mode=True)
    image = answer.json()["images"][0]
    assert np.abs(levels(image) - own(expected)).max() <= 1
    record = json.loads(Image.open(io.BytesIO(base64.b64decode(image))).info[RECORD])
    assert record["controlnet_conditioning_scale"] == 0.5 and record["guess_mode"] is True
    # A disabled unit is skipped: the plain picture.
    skipped = txt2img(app, [unit(control, enabled=False)])
    plain = pipe("a cat", steps=STEPS, seed=5, guidance_scale=6.0, scheduler="euler", prompt_syntax="a1111")
    assert np.abs(levels(skipped.json()["images"][0]) - own(plain)).max() <= 1


def test_a1111_img2img_takes_units_at_the_input_images_size(app, world):
    pipe = world["pipe"]
    init, control = picture(pipe.default_size, 3), picture(pipe.default_size, 4)
    body = {"prompt": "a dog", "seed": 2, "steps": STEPS, "cfg_scale": 6.0, "sampler_name": "Euler",
            "init_images": [png_b64(init)], "denoising_strength": 0.6,
            "alwayson_scripts": {"controlnet": {"args": [unit(control)]}}}
    answer = call(app, "POST", "/sdapi/v1/img2img", body)
    assert answer.status_code == 200, answer.text
    expected = pipe("a dog", image=init, strength=0.6, control_image=control, steps=STEPS, seed=2,
                    guidance_scale=6.0, scheduler="euler", prompt_syntax="a1111", controlnet_conditioning_scale=1.0)
    assert np.abs(levels(answer.json()["images"][0]) - own(expected)).max() <= 1


def test_model_and_module_lists_and_scripts(app, world):
    models = call(app, "GET", "/controlnet/model_list").json()["model_list"]
    assert len(models) == 1 and models[0].startswith("edges [") and models[0].endswith("]")
    assert call(app, "GET", "/controlnet/module_list").json() == {"module_list": ["none"]}
    assert call(app, "GET", "/sdapi/v1/scripts").json() == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    # The unit may name the model by its listed title.
    control = picture(world["pipe"].default_size, 5)
    assert txt2img(app, [unit(control, model=models[0])]).status_code == 200


@pytest.mark.parametrize(("change", "message"), [
    ({"module": "canny"}, "module 'canny': preprocessors are not run here"),
    ({"model": "depth"}, "model 'depth' is not served here: choose one of 'edges ["),
    ({"weight": 2.5}, "weight must be a number in 0 .. 2"),
    ({"control_mode": "My prompt is more important"}, "control_mode 'My prompt is more important' is not supported"),
    ({"control_mode": 7}, "control_mode 7: send one of"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start 0.8 must be below guidance_end 0.2"),
    ({"image": "not base64!"}, "image is not base64"),
    ({"mask": "aGk="}, "ControlNet masks (inpaint units) are not supported"),
    ({"effective_region_mask": None}, "'effective_region_mask' is not a unit field answer-trt takes"),
])
def test_bad_units_are_one_line_400s(app, world, change, message):
    control = picture(world["pipe"].default_size, 6)
    answer = txt2img(app, [unit(control, **change)])
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert "\n" not in answer.json()["error"]


def test_other_refusals(app, world):
    size = world["pipe"].default_size
    other = txt2img(app, [], script="ADetailer")
    assert other.status_code == 400 and "alwayson_scripts 'ADetailer' is not supported" in other.json()["error"]
    wide = txt2img(app, [unit(picture((size[0], size[1] * 2)))])
    assert wide.status_code == 400 and "aspect ratio" in wide.json()["error"]
    two = txt2img(app, [unit(picture(size)), unit(picture(size, 1))])
    assert two.status_code == 400 and "one enabled unit per served ControlNet" in two.json()["error"]
    many = call(app, "POST", "/v1/generate", {"prompt": "a cat", "control_image": [png_b64(picture(size))] * 2})
    assert many.status_code == 400 and "2 images for 1 ControlNet" in many.json()["error"]
    scale = call(app, "POST", "/v1/generate", {"prompt": "a cat", "control_image": png_b64(picture(size)),
                                               "controlnet_conditioning_scale": 3})
    assert scale.status_code == 400 and "controlnet_conditioning_scale" in scale.json()["error"]
    guess = call(app, "POST", "/v1/generate", {"prompt": "a cat", "guess_mode": True})
    assert guess.status_code == 400 and "guess_mode is ControlNet's" in guess.json()["error"]
    named = call(app, "POST", "/v1/generate", {"prompt": "a cat", "control_image_sha256": "ab" * 32})
    assert named.status_code == 400 and "drawn with control image" in named.json()["error"]


def test_the_batcher_runs_control_requests_with_different_images_in_one_call(world):
    """Control requests (other images, scales, windows, guess mode) share a key, so UNet calls; a
    plain request has its own; each equals its own generation. One call on the rows of two control
    requests equals the calls on each (every row reads its own control)."""
    import torch

    from answer_trt.conditioning import cat_conditions
    from answer_trt.controlnet import load_control_images

    pipe = world["pipe"]
    size = pipe.default_size
    images = [picture(size, 10), picture(size, 11)]
    controls = [load_control_images(images[0], 1, *size), load_control_images(images[1], 1, *size), None]
    requests = [make_request("a cat", {"steps": STEPS, "seed": 1, "method": "cfg",
                                       "control_image_sha256": controls[0].sha256}),
                make_request("a dog", {"steps": STEPS, "seed": 2, "method": "answer", "guess_mode": True,
                                       "controlnet_conditioning_scale": 0.4, "control_guidance_end": 0.5,
                                       "control_image_sha256": controls[1].sha256}),
                make_request("a bird", {"steps": STEPS, "seed": 3, "method": "cfg"})]
    with StepBatcher(pipe) as batcher:
        plans = [pipe.plan(r, control=c) for r, c in zip(requests, controls)]
        keys = [batcher._key(p, c) for p, c in zip(plans, controls)]
        tickets = [batcher.submit(r, control=c) for r, c in zip(requests, controls)]
        results = [t.result() for t in tickets]
    assert keys[0] == keys[1] != keys[2]
    for request, image, result in zip(requests, [*images, None], results):
        keywords = {k: v for k, v in request.keywords().items() if k != "control_image_sha256"}
        expected = pipe.generate(request.prompt, **({"control_image": image} if image is not None else {}), **keywords)
        assert np.abs(own(result.images) - own(expected.images)).max() <= 1
    # One call on both requests' rows (a step of each) equals a call on each alone.
    conds, latents = [], []
    for plan, control in zip(plans[:2], controls[:2]):
        cond, noise = pipe.prepare(plan.request.prompt, None, plan.config, "plain")
        cond = pipe.attach_control(plan, cond, control)
        conds += [cond.positive, cond.negative]
        latents += [noise, noise]
    t = torch.full((4,), float(plans[0].rule.timesteps[0]))
    together = pipe.denoiser(torch.cat(latents), t, cat_conditions(conds))
    alone = torch.cat([pipe.denoiser(torch.cat(latents[i:i + 2]), t[:2], cat_conditions(conds[i:i + 2]))
                       for i in (0, 2)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    assert (together[:2] - together[2:]).abs().max() > 1e-3  # the two requests' rows differ


# ---- a live server (Ray Serve on 127.0.0.1) and the webuiapi client -----------------------------

@pytest.fixture(scope="module")
def live(world) -> Iterator[str]:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
    from tests.serve_process import local_server

    with local_server(world["folder"], "127.0.0.1") as url:
        yield url


def test_webuiapi_controlnet_units_on_a_live_server(live, world):
    """webuiapi's ControlNetUnit through `alwayson_scripts` (its "ControlNet" key), its model list,
    and a refused preprocessor as a 400 the client sees."""
    webuiapi = pytest.importorskip("webuiapi", reason="the webuiapi client is not installed: pip install -e '.[dev]'")
    import requests

    host, port = live.removeprefix("http://").rsplit(":", 1)
    webui = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=STEPS)
    models = webui.controlnet_model_list()
    assert models and models[0].startswith("edges [") and webui.controlnet_module_list() == ["none"]
    pipe = world["pipe"]
    control = picture(pipe.default_size, 20)
    height, width = pipe.default_size
    # alwayson_scripts given: webuiapi puts the units into it, and its default is one dict shared by every
    # later call in this process (a mutable default argument), which would carry them into other tests.
    result = webui.txt2img(prompt="a cat", seed=9, cfg_scale=6.0, steps=STEPS, sampler_name="Euler", width=width,
                           height=height, alwayson_scripts={},
                           controlnet_units=[webuiapi.ControlNetUnit(image=control, model=models[0], weight=0.7,
                                                                     control_mode=2)])
    expected = pipe("a cat", control_image=control, steps=STEPS, seed=9, guidance_scale=6.0, scheduler="euler",
                    prompt_syntax="a1111", controlnet_conditioning_scale=0.7, guess_mode=True)
    assert np.abs(np.asarray(result.image.convert("RGB"), dtype=np.int16) - own(expected)).max() <= 1
    body = {"prompt": "a cat", "steps": 2, "alwayson_scripts": {"controlnet": {"args": [
        {"image": png_b64(control), "module": "canny", "model": models[0]}]}}}
    answer = requests.post(live + "/sdapi/v1/txt2img", json=body, timeout=60)
    assert answer.status_code == 400 and "module 'canny': preprocessors are not run here" in answer.json()["error"]


def test_the_page_hides_the_control_input_until_the_server_lists_controlnets(app):
    """The served HTML: the ControlNet box starts hidden and is shown from GET controlnet/model_list."""
    html = call(app, "GET", "/").text
    assert '<fieldset class="image" id="control-box" hidden>' in html
    assert 'fetch(base + "controlnet/model_list")' in html and 'id="control-image"' in html


def test_the_page_takes_a_control_image_in_chromium(live, world, tmp_path):
    """Headless Debian chromium (Playwright), 127.0.0.1 only: the ControlNet box is shown for this
    folder, a control image uploaded, CFG drawn through POST /v1/generate: the Python API's image."""
    from tests.test_serve_page import CHROMIUM, WAIT_MS, decode, open_browser

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    pipe = world["pipe"]
    control = picture(pipe.default_size, 30)
    control.save(tmp_path / "control.png")
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.goto(live + "/", timeout=WAIT_MS)
            page.wait_for_selector("#control-box:not([hidden])", timeout=WAIT_MS)
            assert page.inner_text("#control-models").startswith("edges [")
            page.set_input_files("#control-image", str(tmp_path / "control.png"))
            page.fill("#control-weight", "0.6")
            page.uncheck("input[name=method][value=answer]")
            page.fill("#prompt", "a cat")
            page.fill("#seed", "4")
            page.fill("#steps", str(STEPS))
            page.wait_for_function("() => controlUrl !== null", timeout=WAIT_MS)
            page.click("#generate")
            page.wait_for_selector(".result[data-method=cfg] img", timeout=WAIT_MS)
            shown = decode(page.get_attribute(".result[data-method=cfg] img", "src") or "")
            page.screenshot(path=str(tmp_path / "page-controlnet.png"), full_page=True)
        finally:
            browser.close()
    expected = pipe("a cat", control_image=control, steps=STEPS, seed=4, method="cfg", guidance_scale=7.5,
                    controlnet_conditioning_scale=0.6)
    got = np.asarray(Image.open(io.BytesIO(shown)).convert("RGB"), dtype=np.int16)
    assert json.loads(Image.open(io.BytesIO(shown)).info[RECORD])["controlnet_conditioning_scale"] == 0.6
    assert np.abs(got - own(expected)).max() <= 1
