"""The page `answer-trt serve` shows at / (issue 24, item 4), end to end in a real headless
browser: Debian's chromium (/usr/bin/chromium) driven by Playwright's Python package (its own
browser download cannot work here), a new empty profile, 127.0.0.1 only. The test types a
prompt, clicks, waits for the CFG and ANSWER images, checks they are PNGs of the requested
size with their parameters, that the CFG one equals `answer-trt generate`'s image for the
same seed (0 levels), that it downloads as that PNG, and that the page loaded nothing from
elsewhere; a screenshot is saved under the test's tmp folder. .ci/run installs chromium."""

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
    assert (tmp_path / "page.png").stat().st_size > 0
    # nothing but the server itself (and the images' data: URLs)
    assert requested and all(url.startswith((server + "/", "data:")) for url in requested), requested
