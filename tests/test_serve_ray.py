"""`answer-trt serve` end to end: Ray Serve started once for this module on 127.0.0.1 (a free
port) with two applications over `tiny` engines built into tmp_path: the default one, and one
whose batcher holds a single waiting request. Every request loop is bounded in count and
time, and only 127.0.0.1 is contacted."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")

from answer_trt.bench.load import free_port  # noqa: E402
from answer_trt.errors import UserInputError  # noqa: E402
from answer_trt.serving.client import AnswerTrtClient, ServerError  # noqa: E402

HOST = "127.0.0.1"
SMALL_PREFIX = "/small"
WAIT_S = 60.0  # the most any single wait in here may take


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path_factory.mktemp("serve-engines") / "tiny"
    build(BuildConfig(model="tiny", out=out, max_batch=4), log=lambda _m: None)  # 12 UNet rows per call
    return out


@pytest.fixture(scope="module")
def server(engines: Path) -> Any:
    from answer_trt.serving import app

    port = free_port(HOST)
    main = app.ServeConfig(engines, host=HOST, port=port, verify=False, replica_cpus=0.5)
    # One ANSWER request in flight at a time (3 rows) and one waiting: the third is refused.
    small = app.ServeConfig(engines, host=HOST, port=port, verify=False, replica_cpus=0.5, max_queue=1,
                            max_rows=3, app_name="small-queue", route_prefix=SMALL_PREFIX)
    try:
        url = app.start(main)
        app.start(small)
        yield url
    finally:
        app.stop()


@pytest.fixture(scope="module")
def client(server: str) -> AnswerTrtClient:
    return AnswerTrtClient(server, timeout_s=WAIT_S)


@pytest.fixture(scope="module")
def local_pipe(engines: Path) -> Any:
    from answer_trt.loaders import from_engines

    return from_engines(engines)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def post(url: str, body: bytes) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(url + "/v1/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


REQUESTS = [
    {"prompt": "a red circle", "method": "answer"},
    {"prompt": "a blue square and a green triangle", "method": "cfg", "guidance_scale": 5.0},
    {"prompt": "a yellow triangle", "method": "dns", "dns_steps": 2},
    {"prompt": "a green circle and a red square", "method": "cfg", "negative_prompt": "a blue circle"},
    {"prompt": "", "method": "answer", "mode": "inner", "dns_steps": 2},
    {"prompt": "a blue triangle", "method": "answer", "scheduler": "euler"},
    {"prompt": "a yellow square and a blue circle", "method": "answer", "chain_min_sigma": 0.0},
    {"prompt": "a red square", "method": "cfg", "guidance_rescale": 0.7},
]


def test_concurrent_requests_come_back_as_pipeline_generate_makes_them_and_share_unet_calls(client, local_pipe):
    jobs = [{**REQUESTS[i % len(REQUESTS)], "seed": 100 + i, "steps": 20} for i in range(16)]
    before = client.stats()
    start = threading.Barrier(8, timeout=WAIT_S)

    def send(job: dict[str, Any]) -> bytes:
        if job["seed"] < 108:
            start.wait()  # the first eight leave together
        return client.generate(**job)

    with ThreadPoolExecutor(8) as pool:
        pngs = list(pool.map(send, jobs))
    after = client.stats()

    for job, png in zip(jobs, pngs):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.info["seed"] == str(job["seed"])
        assert json.loads(image.info["answer-trt"])["prompt"] == job["prompt"]
        expected = np.asarray(local_pipe.generate(**job).images[0], dtype=np.int16)
        assert np.abs(pixels(png) - expected).max() <= 1, job
    calls, rows = after["calls"] - before["calls"], after["rows"] - before["rows"]
    # One request alone makes one call per step with at most 3 rows; batched, calls carry
    # the rows of several requests.
    assert calls < 16 * 20
    assert rows / calls > 3.0, (rows, calls)
    assert after["rows_per_call"] > 1 and after["completed"] - before["completed"] == 16


def test_the_json_response_and_the_image_helper(client):
    png, parameters = client.generate_json("a red circle", method="cfg", steps=4, seed=5)
    assert parameters["seed"] == 5 and parameters["method"] == "cfg" and parameters["steps"] == 4
    image = client.generate_image("a red circle", method="cfg", steps=4, seed=5)
    assert np.array_equal(np.asarray(image.convert("RGB"), dtype=np.int16), pixels(png))


def test_health_stats_and_routes(server, client):
    health = client.health()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["batching"] is True
    stats = client.stats()
    assert {"queue_length", "active", "completed", "cancelled", "expired", "calls", "rows", "rows_per_call",
            "calls_per_second", "uptime_s"} <= set(stats)
    for path, method, status in (("/v1/nothing", "GET", 404), ("/v1/generate", "GET", 405),
                                 ("/v1/stats", "POST", 405)):
        request = urllib.request.Request(server + path, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=WAIT_S)
        assert info.value.code == status and "error" in json.loads(info.value.read())


def test_bad_requests_get_400_with_the_one_line_message(server, local_pipe):
    cases = [
        (b'{"prompt": "a", ', "the request body is not valid JSON"),
        (b'["a red circle"]', "the request body must be a JSON object"),
        (b'{"prompt": "a", "stepz": 3}', "unknown field 'stepz': did you mean 'steps'?"),
        (b'{"prompt": "a", "steps": true}', "field 'steps' must be an integer, got true"),
        (b'{"prompt": "a", "seed": -1}', "seed must be an integer from 0 to 2**64 - 1"),
    ]
    for body, expected in cases:
        status, _, answer = post(server, body)
        assert status == 400 and expected in answer["error"] and "\n" not in answer["error"], (body, answer)
    # Found against the engines, by the batcher: Pipeline.generate's message, less the server's paths.
    with pytest.raises(UserInputError) as local:
        local_pipe.generate("a", height=64)
    status, _, answer = post(server, b'{"prompt": "a", "height": 64}')
    assert status == 400 and "\n" not in answer["error"]
    assert answer["error"].split("rebuild with")[0] == str(local.value).split("rebuild with")[0]
    assert str(local_pipe.limits.build.out) in str(local.value)  # the local hint names the folder ...
    assert str(local_pipe.limits.build.out) not in answer["error"]  # ... not over HTTP
    assert "--height 64" in answer["error"]


def test_queue_overflow_is_503_with_retry_after_and_the_rest_succeed(server):
    small = AnswerTrtClient(server + SMALL_PREFIX, timeout_s=WAIT_S)
    start = threading.Barrier(6, timeout=WAIT_S)

    def send(seed: int) -> bytes | ServerError:
        start.wait()
        try:
            return small.generate("a red circle", steps=200, seed=seed)
        except ServerError as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(send, range(6)))
    refused = [o for o in outcomes if isinstance(o, ServerError)]
    served = [o for o in outcomes if isinstance(o, bytes)]
    assert refused and served and len(refused) + len(served) == 6
    for exc in refused:
        assert exc.status == 503 and "queue is full" in exc.message
        assert exc.retry_after_s is not None and exc.retry_after_s >= 1
    assert all(Image.open(io.BytesIO(png)).size == (32, 32) for png in served)


def test_a_deadline_that_passes_is_504(client):
    with pytest.raises(ServerError) as info:
        client.generate("a red circle", steps=500, timeout_s=0.05)
    assert info.value.status == 504 and "timeout" in info.value.message


def test_a_client_that_hangs_up_cancels_its_request_and_the_server_goes_on(server, client):
    before = client.stats()["cancelled"]
    body = json.dumps({"prompt": "a blue square", "steps": 800, "seed": 1}).encode()
    with socket.create_connection((HOST, int(server.rsplit(":", 1)[1])), timeout=WAIT_S) as raw:
        raw.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.5)  # let it reach the batcher
    deadline = time.monotonic() + WAIT_S
    while client.stats()["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.stats()["cancelled"] == before + 1
    png = client.generate("a red circle", method="cfg", steps=4)
    assert Image.open(io.BytesIO(png)).size == (32, 32)
