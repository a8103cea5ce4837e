"""The page `answer-trt serve` shows at / (issue 24, item 4), end to end in a real headless
browser: Debian's chromium (/usr/bin/chromium) driven by Playwright's Python package (its own
browser download cannot work here), a new empty profile, 127.0.0.1 only. The test types a
prompt, clicks, waits for the CFG and ANSWER images, checks they are PNGs of the requested
size with their parameters, that the CFG one equals `answer-trt generate`'s image for the
same seed (0 levels), that it downloads as that PNG, and that the page loaded nothing from
elsewhere; a screenshot is saved under the test's tmp folder. Issue 33: an image uploaded, a mask
drawn on it with the mouse, the page inpaints through A1111's img2img route (docs/page-inpainting.png
is that test's screenshot). .ci/run installs chromium."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

from answer_trt.bench.load import free_port  # noqa: E402
from answer_trt.config import ANSWER_GUIDANCE_MIN_SIGMA  # noqa: E402

HOST = "127.0.0.1"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000  # the most any wait in the browser may take

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium, as root; .ci/run does it)")


@pytest.fixture(scope="module")
def server() -> Any:
    from answer_trt.loaders import build_cached
    from answer_trt.serving import app

    engines = build_cached("tiny")  # the cache folder `answer-trt generate --model tiny` uses
    config = app.ServeConfig(engines, host=HOST, port=free_port(HOST), verify=False, replica_cpus=0.5)
    try:
        yield app.start(config)
    finally:
        app.stop()


def open_browser(playwright: Any, profile: Path) -> Any:
    """Chromium with the project's flags and a new empty profile (``--user-data-dir``)."""
    profile.mkdir()
    assert not any(profile.iterdir())
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
        viewport={"width": 1100, "height": 760}, accept_downloads=True)


def decode(data_url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return base64.b64decode(data_url[len(prefix):])


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_the_page_shows_cfg_and_answer_side_by_side_and_cfg_is_the_clis_image(server, tmp_path):
    prompt, seed, steps = "a green circle and a red square", 42, 10
    requested: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(server + "/", timeout=WAIT_MS)
            # CFG and ANSWER are the default methods
            checked = page.eval_on_selector_all("input[name=method]:checked", "boxes => boxes.map(b => b.value)")
            assert checked == ["cfg", "answer"]
            page.fill("#prompt", prompt)
            page.fill("#seed", str(seed))
            page.fill("#steps", str(steps))
            page.fill("#width", "32")
            page.fill("#height", "32")
            page.click("#generate")
            shown = {}
            for method in ("cfg", "answer"):
                box = f".result[data-method={method}]"
                page.wait_for_selector(f"{box} img", timeout=WAIT_MS)
                shown[method] = decode(page.get_attribute(f"{box} img", "src") or "")
                assert page.inner_text(f"{box} .time").endswith(" s")
                assert json.loads(page.inner_text(f"{box} .params"))["method"] == method
            with page.expect_download(timeout=WAIT_MS) as download:
                page.click(".result[data-method=cfg] a.download")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            # the random button draws a new seed
            page.click("#random-seed")
            assert page.input_value("#seed") != str(seed)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()

    for method, png in shown.items():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (32, 32), method
        assert image.info["method"] == method and image.info["seed"] == str(seed) and image.info["prompt"] == prompt
    assert not np.array_equal(pixels(shown["cfg"]), pixels(shown["answer"]))
    assert saved.name == f"answer-trt-cfg-seed{seed}.png" and saved.read_bytes() == shown["cfg"]

    from answer_trt.cli import main

    out = tmp_path / "cli.png"
    assert main(["generate", prompt, "--model", "tiny", "--method", "cfg", "--seed", str(seed), "--steps", str(steps),
                 "--width", "32", "--height", "32", "-o", str(out)]) == 0
    assert np.array_equal(pixels(shown["cfg"]), pixels(out.read_bytes()))  # 0 levels
    # ANSWER as the page sends it is the CLI's default ANSWER (its guidance interval resolved per method)
    assert main(["generate", prompt, "--model", "tiny", "--seed", str(seed), "--steps", str(steps),
                 "--width", "32", "--height", "32", "-o", str(out)]) == 0
    assert np.array_equal(pixels(shown["answer"]), pixels(out.read_bytes()))
    assert json.loads(Image.open(io.BytesIO(shown["answer"])).info["answer-trt"])["guidance_min_sigma"] == \
        ANSWER_GUIDANCE_MIN_SIGMA
    assert (tmp_path / "page.png").stat().st_size > 0
    # nothing but the server itself (and the images' data: URLs)
    assert requested and all(url.startswith((server + "/", "data:")) for url in requested), requested


def test_the_page_inpaints_an_uploaded_image_where_the_mask_is_drawn(server, tmp_path):
    """Issue 33: upload an image, draw the mask with the mouse, generate: the page calls A1111's
    img2img route with the image and the drawn mask, and each method's image keeps the input
    outside the mask and repaints inside it; CFG's equals the Python API's inpainting with the
    mask the request carried."""
    from answer_trt.synthetic.dataset import family_example

    example = family_example("pair", 7, 0)  # a yellow circle (left) and a green triangle (right), 32x32
    source = tmp_path / "input.png"
    Image.fromarray(example.image).save(source)
    prompt, seed, steps, strength = "a yellow circle and a red square", 3, 12, "1"
    bodies: list[dict[str, Any]] = []
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.on("request", lambda r: bodies.append(json.loads(r.post_data or "{}"))
                    if r.url.endswith("/sdapi/v1/img2img") else None)
            page.goto(server + "/", timeout=WAIT_MS)
            page.set_input_files("#image", str(source))
            page.wait_for_selector("#view:not(.empty)", timeout=WAIT_MS)
            page.fill("#prompt", prompt)
            page.fill("#seed", str(seed))
            page.fill("#steps", str(steps))
            page.fill("#strength", strength)
            assert page.input_value("#strength-value") == strength
            page.fill("#brush", "8")
            page.fill("#mask-blur", "0")
            box = page.locator("#view").bounding_box()
            assert box is not None
            # the right third of the image, in strokes of an 8-pixel brush (the view is 8x the image)
            x0, x1 = box["x"] + box["width"] * 0.72, box["x"] + box["width"] * 0.9
            page.mouse.move(x0, box["y"] + 4)
            page.mouse.down()
            for k, y in enumerate(np.linspace(box["y"] + 4, box["y"] + box["height"] - 4, 9)):
                page.mouse.move(x1 if k % 2 else x0, float(y), steps=4)
                page.mouse.move(x0 if k % 2 else x1, float(y), steps=4)
            page.mouse.up()
            page.click("#generate")
            shown = {}
            for method in ("cfg", "answer"):
                card = f".result[data-method={method}]"
                page.wait_for_selector(f"{card} img", timeout=WAIT_MS)
                shown[method] = decode(page.get_attribute(f"{card} img", "src") or "")
                params = json.loads(page.inner_text(f"{card} .params"))
                assert params["method"] == method and params["inpainting"] is True and params["strength"] == 1
            page.screenshot(path=str(tmp_path / "page-inpainting.png"), full_page=True)
        finally:
            browser.close()

    # the requests carried the image and the drawn mask: white over the right part only
    assert sorted(b["method"] for b in bodies) == ["answer", "cfg"]
    body = bodies[0]
    assert base64.b64decode(body["init_images"][0].split(",", 1)[1]) == source.read_bytes()
    mask = pixels(base64.b64decode(body["mask"].split(",", 1)[1]))
    assert mask.shape == (32, 32, 3) and (mask[..., 0] == mask[..., 2]).all()
    white = mask[..., 0] >= 128
    assert white[:, 24:28].all() and not white[:, :18].any(), white.astype(int)
    assert body["denoising_strength"] == 1 and body["mask_blur"] == 0 and body["inpainting_fill"] == 1

    original = example.image.astype(np.int16)
    inside, outside = white, ~np.convolve(white.any(axis=0), np.ones(9), "same").astype(bool)[None].repeat(32, 0)
    for method, png in shown.items():
        image = pixels(png)
        assert image.shape == (32, 32, 3), method
        kept = np.abs(image - original)[outside].mean()
        changed = np.abs(image - original)[inside].mean()
        assert kept < 12 and changed > 3 * kept, (method, kept, changed)  # outside kept, inside repainted
    assert not np.array_equal(pixels(shown["cfg"]), pixels(shown["answer"]))

    from answer_trt.loaders import from_engines

    pipe = from_engines(server_folder(), verify=False)
    alone = pipe(prompt, image=source, mask_image=Image.fromarray(mask[..., 0].astype(np.uint8)), mask_blur=0,
                 strength=1.0, steps=steps, seed=seed, guidance_scale=7.5, method="cfg", prompt_syntax="a1111")
    assert np.abs(pixels(shown["cfg"]) - np.asarray(alone.images[0], dtype=np.int16)).max() <= 1
    assert (tmp_path / "page-inpainting.png").stat().st_size > 0


def server_folder() -> Path:
    from answer_trt.loaders import build_cached

    return build_cached("tiny")


def test_the_page_sends_an_uploaded_mask_as_given_and_refuses_one_of_another_size(server, tmp_path):
    """The mask upload: one of the image's size is sent as it was (white = repaint); one of
    another size is refused on the page, in one line, before any request."""
    from answer_trt.synthetic.dataset import family_example

    source, mask, small = tmp_path / "input.png", tmp_path / "mask.png", tmp_path / "small.png"
    Image.fromarray(family_example("pair", 7, 1).image).save(source)
    values = np.zeros((32, 32), np.uint8)
    values[4:28, 18:30] = 255
    Image.fromarray(values).save(mask)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    bodies: list[dict[str, Any]] = []
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.on("request", lambda r: bodies.append(json.loads(r.post_data or "{}"))
                    if r.url.endswith("/sdapi/v1/img2img") else None)
            page.goto(server + "/", timeout=WAIT_MS)
            page.set_input_files("#image", str(source))
            page.wait_for_selector("#view:not(.empty)", timeout=WAIT_MS)
            page.set_input_files("#mask-file", str(small))
            page.wait_for_function("document.getElementById('image-hint').textContent.includes('16x16')",
                                   timeout=WAIT_MS)
            assert "choose a mask of the image's size" in page.inner_text("#image-hint")
            page.set_input_files("#mask-file", str(mask))
            page.uncheck("input[name=method][value=answer]")
            page.fill("#steps", "4")
            page.click("#generate")
            page.wait_for_selector(".result[data-method=cfg] img", timeout=WAIT_MS)
        finally:
            browser.close()
    assert len(bodies) == 1 and bodies[0]["method"] == "cfg" and bodies[0]["denoising_strength"] == 0.75
    sent = pixels(base64.b64decode(bodies[0]["mask"].split(",", 1)[1]))
    assert np.array_equal(sent[..., 0], values) and np.array_equal(sent[..., 1], values)
