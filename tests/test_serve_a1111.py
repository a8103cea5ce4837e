"""AUTOMATIC1111's API as its clients use it (issue 31, item 6), without Ray: the FastAPI app of
``answer_trt.serving.http`` is called in-process (ASGI) over a real ``StepBatcher`` on the tiny
torch pipeline. Seeds of a batch (seed + j, each image equal to a request of one with its
seed), the field table (honoured, harmless, refused; nothing ignored that changes the
picture), override_settings, /options, /schedulers, /loras, /progress, /sd-vae, /upscalers,
and the requests webuiapi and a chat front end (Open WebUI) send when they connect."""

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

from answer_trt.pipeline import Generation  # noqa: E402
from answer_trt.schema import GenerateRequest  # noqa: E402
from answer_trt.serving.batcher import StepBatcher  # noqa: E402

SIZE = {"width": 32, "height": 32}


class BatcherServer:
    """What ``GenerateServer`` is to the routes, over a batcher made here (no Ray)."""

    def __init__(self, batcher: StepBatcher) -> None:
        self.batcher = batcher
        self.model_name, self.backend = batcher.pipeline.model_name, batcher.pipeline.backend
        self.health = {"status": "ok", "model": self.model_name, "backend": self.backend}

    async def run(self, request: GenerateRequest, timeout_s: float | None = None) -> Generation:
        ticket = self.batcher.submit(request, deadline_s=timeout_s)
        generation: Generation = await asyncio.wrap_future(ticket.future)
        return generation

    def stats(self) -> dict[str, Any]:
        return self.batcher.stats().as_dict()


class Answer:
    """An HTTP answer as ``requests`` gives it (what webuiapi reads)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content = status, body
        self.text = body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.content)


def call(app: Any, method: str, path: str, body: Any = None) -> Answer:
    """One request through the ASGI app, in this thread."""
    raw = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "scheme": "http", "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "asgi": {"version": "3.0"}, "headers": headers}
    messages = iter([{"type": "http.request", "body": raw, "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return Answer(status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


class Session:
    """The ``requests.Session`` webuiapi talks through, answered by the app in-process; it
    keeps the (method, path) of every request, as a client sends them."""

    def __init__(self, app: Any) -> None:
        self.app, self.sent = app, []

    def _path(self, url: str) -> str:
        return "/" + url.split("://", 1)[1].split("/", 1)[1]

    def get(self, url: str, **_: Any) -> Answer:
        self.sent.append(("GET", self._path(url)))
        return call(self.app, "GET", self._path(url))

    def post(self, url: str, json: Any = None, **_: Any) -> Answer:  # noqa: A002 - requests' keyword
        self.sent.append(("POST", self._path(url)))
        return call(self.app, "POST", self._path(url), json)


@pytest.fixture(scope="module")
def pipe() -> Any:
    import answer_trt

    return answer_trt.load("tiny-random", backend="torch")


@pytest.fixture(scope="module")
def batcher(pipe: Any) -> Iterator[StepBatcher]:
    with StepBatcher(pipe) as batcher:
        yield batcher


@pytest.fixture(scope="module")
def app(batcher: StepBatcher) -> Any:
    from answer_trt.serving.http import make_api

    return make_api(BatcherServer(batcher))


def txt2img(app: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    answer = call(app, "POST", "/sdapi/v1/txt2img", {"prompt": "a red circle", **SIZE, "steps": 3, **body})
    return answer.status_code, answer.json()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def refusal(app: Any, **body: Any) -> str:
    status, answer = txt2img(app, **body)
    assert status == 400, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"]
    return str(answer["error"])


# ---- part 1: the seeds of a batch ------------------------------------------------------------

def test_a_batch_has_seed_plus_j_and_each_image_is_the_request_of_its_seed(app):
    status, batch = txt2img(app, seed=3, batch_size=3, sampler_name="Euler")
    assert status == 200, batch
    info = json.loads(batch["info"])
    assert info["seed"] == 3 and info["all_seeds"] == [3, 4, 5]
    assert info["all_subseeds"] == [info["subseed"] + j for j in range(3)]
    records = [json.loads(Image.open(io.BytesIO(base64.b64decode(b))).info["parameters"]) for b in batch["images"]]
    assert [r["seeds"] for r in records] == [[3, 4, 5]] * 3 and [r["batch_index"] for r in records] == [0, 1, 2]
    for j, seed in enumerate((3, 4, 5)):
        status, alone = txt2img(app, seed=seed, sampler_name="Euler")
        assert status == 200 and json.loads(alone["info"])["all_seeds"] == [seed]
        difference = np.abs(pixels(batch["images"][j]) - pixels(alone["images"][0])).max()
        assert difference <= 1, (seed, difference)  # the batched UNet call may round differently


def test_iterations_continue_the_seeds_of_the_batches(app):
    status, answer = txt2img(app, seed=10, batch_size=2, n_iter=2, steps=1)
    assert status == 200 and json.loads(answer["info"])["all_seeds"] == [10, 11, 12, 13]
    assert len(answer["images"]) == 4


def test_the_last_images_seed_must_fit_in_64_bits(app):
    assert "the last image's seed" in refusal(app, seed=2**64 - 2, batch_size=3)
    status, _ = txt2img(app, seed=2**64 - 3, batch_size=3, steps=1)
    assert status == 200

