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
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install -e '.[serve]'")

from answer_trt.pipeline import Generation  # noqa: E402
from answer_trt.schema import GenerateRequest  # noqa: E402
from answer_trt.serving.batcher import StepBatcher  # noqa: E402
from answer_trt.serving.stats import Progress  # noqa: E402

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

    def progress(self) -> Progress:
        return self.batcher.progress()


class Answer:
    """An HTTP answer as ``requests`` gives it (what webuiapi reads)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content = status, body
        self.text = body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.content)


def call(app: Any, method: str, path: str, body: Any = None, chunks: list[bytes] | None = None) -> Answer:
    """One request through the ASGI app, in this thread: ``body`` as JSON with its
    Content-Length, or ``chunks`` sent as a chunked body (no Content-Length)."""
    if chunks is None:
        chunks = [b"" if body is None else json.dumps(body).encode()]
        framing = (b"content-length", str(len(chunks[0])).encode())
    else:
        framing = (b"transfer-encoding", b"chunked")
    headers = [(b"content-type", b"application/json"), framing]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "scheme": "http", "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "asgi": {"version": "3.0"}, "headers": headers}
    messages = iter([{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                     for i, chunk in enumerate(chunks)])
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
    records = [json.loads(Image.open(io.BytesIO(base64.b64decode(b))).info["answer-trt"]) for b in batch["images"]]
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



# ---- part 2: every field of A1111's body is honoured, harmless or refused ------------------------

# The fields of A1111's txt2img body (webui 1.10, modules/api/models.py:
# StableDiffusionTxt2ImgProcessingAPI, from StableDiffusionProcessing(Txt2Img).__init__ and the
# API's own additions), as a client can send them.
A1111_BODY = (
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
    "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "override_settings_restore_afterwards",
    "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "firstpass_image", "comments", "enable_hr",
    "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "force_task_id",
    "infotext")
# A value of each JSON type that no field takes as neutral (nor as its default).
ODD = {bool: True, int: 5, float: 0.5, str: "x", list: ["x"], dict: {"x": 1}}


def odd_value(name: str) -> Any:
    from typing import get_origin

    from answer_trt.serving.models import A1111_FIELDS

    annotation = A1111_FIELDS[name].annotation
    return ODD[get_origin(annotation) or annotation]


def test_the_table_classifies_every_field_of_a1111s_body_and_the_body_model_declares_them(app):
    from answer_trt.serving.models import A1111_FIELDS, Txt2ImgBody

    assert set(A1111_FIELDS) == set(A1111_BODY) | {"clip_skip"}
    assert set(A1111_FIELDS) <= set(Txt2ImgBody.model_fields)
    document = call(app, "GET", "/openapi.json").json()
    documented = document["components"]["schemas"]["Txt2ImgBody"]["properties"]
    assert documented["alwayson_scripts"]["description"].startswith("honoured: ControlNet's units only")
    assert documented["save_images"]["description"].startswith("harmless")
    uses = {f.use for f in A1111_FIELDS.values()}
    assert uses == {"honoured", "harmless", "refused"}


def refused_fields() -> list[str]:
    from answer_trt.serving.models import A1111_FIELDS

    return [name for name, f in A1111_FIELDS.items() if f.use == "refused"]


@pytest.mark.parametrize("name", refused_fields())
def test_a_refused_field_set_is_a_400_naming_it(app, name):
    message = refusal(app, sampler_name="DDIM", **{name: odd_value(name)})
    assert message.startswith(f"{name} is not supported by answer-trt ("), message
    assert "leave it out" in message


@pytest.mark.parametrize("body, named", [
    ({"override_settings": {"CLIP_stop_at_last_layers": 3}}, "clip_skip 3 is beyond this model's text encoder"),
    ({"clip_skip": 2, "override_settings": {"CLIP_stop_at_last_layers": 1}},
     "clip_skip 2 and override_settings CLIP_stop_at_last_layers 1 disagree"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "override_settings CLIP_stop_at_last_layers 13"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts 'ADetailer' is not supported"),
    ({"alwayson_scripts": {"controlnet": {"args": [{"image": "aGk=", "module": "none"}]}}},
     "alwayson_scripts controlnet: this server's engines were built without a ControlNet"),
    ({"script_args": [0.5]}, "script_args is not supported"),
    ({"script_name": "x/y/z plot"}, "script_name is not supported"),
    ({"override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"}},
     "override_settings sd_model_checkpoint 'sd_xl_base_1.0.safetensors' is not served here: this server runs "
     "'tiny-random'"),
    ({"override_settings": {"sd_vae": "vae-ft-mse-840000.safetensors"}}, "override_settings sd_vae"),
    ({"override_settings": {"CLIP_stop_at_last_layers": True}}, "override_settings CLIP_stop_at_last_layers true"),
    ({"override_settings": {"token_merging_ratio": 0.5}},
     "override_settings 'token_merging_ratio' is not a setting answer-trt honours"),
    ({"eta": 1.0, "sampler_name": "DDIM"}, "eta is not supported by answer-trt (answer-trt's DDIM has eta 0)"),
    ({"eta": 1.0}, "eta is not supported"),  # the model's own scheduler may be DDIM
    ({"scheduler": "karras"}, "scheduler 'karras' is not supported: send automatic or one of ddim, euler"),
    ({"scheduler": "ddim", "sampler_name": "Euler"}, "sampler_name 'Euler' and scheduler 'ddim' name different"),
    ({"hr_scale": 2, "enable_hr": True}, "enable_hr is not supported"),
    ({"frobnicate": 1}, "unknown field 'frobnicate'"),
    ({"seeds": [1, 2]}, "unknown field 'seeds'"),  # ours: A1111's seeds are seed + j
])
def test_what_the_picture_would_need_is_refused_naming_it(app, body, named):
    assert named in refusal(app, **body)


def test_harmless_fields_and_neutral_values_leave_the_picture_as_it_is(app):
    from answer_trt.serving.models import A1111_FIELDS

    harmless = {name: odd_value(name) for name, f in A1111_FIELDS.items() if f.use == "harmless"}
    neutral = {name: next(v for v in f.neutral if v is not None)
               for name, f in A1111_FIELDS.items() if f.use == "refused"}
    settings = {"override_settings": {"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": "tiny-random",
                                      "sd_vae": "Automatic", "eta_ddim": 0, "eta_noise_seed_delta": 0,
                                      "samples_format": "png"}}
    status, plain = txt2img(app, seed=7, sampler_name="Euler")
    assert status == 200, plain
    neutral["eta"] = 1.0  # webuiapi's default: changes A1111's DDIM only, and Euler is chosen
    status, loaded = txt2img(app, seed=7, sampler_name="Euler", **harmless, **neutral, **settings)
    assert status == 200, loaded
    assert np.array_equal(pixels(loaded["images"][0]), pixels(plain["images"][0]))


@pytest.mark.parametrize("name", ["s_noise", "denoising_strength", "hr_scale", "cfg_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_number_is_refused_even_in_a_harmless_field(app, name, value):
    """Python's JSON writes NaN and Infinity; JSON has neither, and no A1111 field means them
    (the hostile probe found the ignored float fields taking them)."""
    assert name in refusal(app, **{name: value})


def test_the_scheduler_field_takes_what_get_schedulers_lists(app):
    from answer_trt.serving.conventions import a1111_schedulers

    names = [s["name"] for s in call(app, "GET", "/sdapi/v1/schedulers").json()]
    assert names == [s["name"] for s in a1111_schedulers()] and names[0] == "automatic" and len(names) > 1
    import importlib.util

    from answer_trt.samplers import a1111_sampler

    for name in names[1:]:
        status, answer = txt2img(app, scheduler=name, steps=1)
        needs = (a1111_sampler(name) or None) and a1111_sampler(name).requires  # type: ignore[union-attr]
        if needs and importlib.util.find_spec(needs) is None:  # refused in one line: what to install
            assert status == 400 and f"pip install {needs}" in answer["error"], answer
            continue
        assert status == 200, answer
        assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).info["scheduler"] == name
    status, answer = txt2img(app, scheduler="Automatic", sampler_name="DDIM", steps=1)
    assert status == 200 and json.loads(answer["info"])["sampler_name"] == "DDIM"


# ---- part 3: the routes A1111's clients read ---------------------------------------------------

def test_options_report_the_served_model_and_the_settings_honoured(app):
    from answer_trt.schema import info as schema_info
    from answer_trt.schema import request_fields

    options = call(app, "GET", "/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "tiny-random" and options["CLIP_stop_at_last_layers"] == 1
    # each is accepted back, alone or all at once (a front end posts the whole object back)
    for name, value in options.items():
        answer = call(app, "POST", "/sdapi/v1/options", {name: value})
        assert answer.status_code == 200 and answer.json() is None, (name, answer.text)
        status, _ = txt2img(app, steps=1, override_settings={name: value})
        assert status == 200, name
    assert call(app, "POST", "/sdapi/v1/options", options).status_code == 200
    # the schedulers GET /sdapi/v1/schedulers lists are the schema's
    choices = next(schema_info(f).choices for f in request_fields() if f.name == "scheduler")
    listed = call(app, "GET", "/sdapi/v1/schedulers").json()
    assert [s["name"] for s in listed] == ["automatic", *choices]
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} <= set(listed[1])


@pytest.mark.parametrize("body, message", [
    ({"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"},
     "options sd_model_checkpoint 'v1-5-pruned-emaonly.safetensors' is not served here: this server runs "
     "'tiny-random'"),
    ({"CLIP_stop_at_last_layers": 2}, "options CLIP_stop_at_last_layers 2: this server keeps no settings between "
                                      "requests; send it with each txt2img request"),
    ({"sd_model_checkpoint": "tiny-random", "show_progressbar": True},
     "options 'show_progressbar' is not a setting answer-trt honours"),
    ([1, 2], 'the request body must be a JSON object such as {"CLIP_stop_at_last_layers": 1}'),
])
def test_options_refuse_what_they_cannot_honour_naming_it(app, body, message):
    answer = call(app, "POST", "/sdapi/v1/options", body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_the_empty_lists_are_empty_and_documented(app):
    for path in ("/sdapi/v1/loras", "/sdapi/v1/sd-vae", "/sdapi/v1/upscalers"):
        answer = call(app, "GET", path)
        assert answer.status_code == 200 and answer.json() == [], path
    assert call(app, "GET", "/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    paths = call(app, "GET", "/openapi.json").json()["paths"]
    assert {"/sdapi/v1/options", "/sdapi/v1/schedulers", "/sdapi/v1/loras", "/sdapi/v1/progress", "/sdapi/v1/sd-vae",
            "/sdapi/v1/upscalers", "/sdapi/v1/scripts"} <= set(paths)
    assert set(paths["/sdapi/v1/options"]) == {"get", "post"}
    assert "fused" in paths["/sdapi/v1/loras"]["get"]["summary"]
    ok = paths["/sdapi/v1/progress"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/ProgressResponse")


def test_progress_follows_the_requests_in_flight(app, batcher, pipe, monkeypatch):
    idle = call(app, "GET", "/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    assert idle["state"]["sampling_step"] == 0 and idle["state"]["sampling_steps"] == 0
    original, calls = pipe.denoiser, []
    second, gate = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:  # the second UNet call waits for the gate
        calls.append(1)
        if len(calls) == 2:
            second.set()
            assert gate.wait(60)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe, "denoiser", held)
    request = GenerateRequest("a red circle", method="cfg", steps=4, height=32, width=32)
    try:
        first = batcher.submit(request)
        assert second.wait(60)
        running = call(app, "GET", "/sdapi/v1/progress").json()
        assert running["state"]["job_count"] == 1 and running["state"]["sampling_steps"] == 4
        assert running["state"]["sampling_step"] == 1 and running["progress"] == 0.25
        assert running["eta_relative"] >= 0 and running["state"]["job"] == "answer-trt"
        queued = batcher.submit(request.replace(seed=1))  # waits: the worker is in the held call
        both = call(app, "GET", "/sdapi/v1/progress").json()
        assert both["state"]["job_count"] == 2 and both["progress"] == 1 / 8
    finally:
        gate.set()
    first.result(60), queued.result(60)
    done = call(app, "GET", "/sdapi/v1/progress").json()
    assert done["progress"] == 0 and done["state"]["job_count"] == 0


# ---- part 4: what the clients send when they connect and generate ----------------------------

def test_webuiapi_connects_reads_the_server_and_generates(app, monkeypatch):
    webuiapi = pytest.importorskip("webuiapi", reason="the webuiapi client is not installed: pip install -e '.[dev]'")
    import webuiapi.webuiapi as module

    session = Session(app)
    monkeypatch.setattr(module.requests, "Session", lambda: session)  # nothing leaves the process
    api = webuiapi.WebUIApi(host="127.0.0.1", port=7860, sampler="Euler", steps=3)  # reads /scripts
    assert api.has_controlnet is False
    assert api.util_get_current_model() == "tiny-random"
    assert api.util_get_model_names() == ["tiny-random"]
    api.util_set_model("tiny-random")  # POSTs sd_model_checkpoint back: accepted, nothing switched
    from answer_trt.samplers import a1111_sampler_names

    assert api.util_get_sampler_names() == sorted(a1111_sampler_names())
    assert "automatic" in api.util_get_scheduler_names() and "euler" in api.util_get_scheduler_names()
    assert api.get_loras() == [] and api.get_sd_vae() == [] and api.get_upscalers() == []
    api.util_wait_for_ready(check_interval=0.01)  # returns: progress 0, no job
    result = api.txt2img(prompt="a red circle", seed=3, width=32, height=32, batch_size=2, cfg_scale=5.0)
    assert result.info["all_seeds"] == [3, 4] and len(result.images) == 2 and result.images[0].size == (32, 32)
    skipped = api.txt2img(prompt="a red circle", seed=3, width=32, height=32, cfg_scale=5.0,
                          override_settings={"CLIP_stop_at_last_layers": 2})  # honoured: clip skip 2
    assert skipped.info["infotexts"] and skipped.images[0].info["clip_skip"] == "2"
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="a", width=32, height=32, sampler_name="DDIM")  # webuiapi's eta 1 changes A1111's DDIM
    assert refused.value.args[0] == 400 and json.loads(refused.value.args[1])["error"].startswith("eta is not")
    assert session.sent == [
        ("GET", "/sdapi/v1/scripts"), ("GET", "/sdapi/v1/options"), ("GET", "/sdapi/v1/sd-models"),
        ("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/samplers"),
        ("GET", "/sdapi/v1/schedulers"), ("GET", "/sdapi/v1/schedulers"), ("GET", "/sdapi/v1/loras"),
        ("GET", "/sdapi/v1/sd-vae"), ("GET", "/sdapi/v1/upscalers"), ("GET", "/sdapi/v1/progress"),
        ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/txt2img")]


def test_a_chat_front_end_connects_picks_the_model_and_generates(app):
    """Open WebUI's AUTOMATIC1111 engine: it checks the URL with /options, lists models,
    samplers and schedulers for its settings, sets the model (posting the options object back
    with sd_model_checkpoint changed) and then sends a small txt2img body."""
    options = call(app, "GET", "/sdapi/v1/options")
    assert options.status_code == 200
    current = options.json()["sd_model_checkpoint"]
    models = call(app, "GET", "/sdapi/v1/sd-models").json()
    assert [{"id": m["title"], "name": m["model_name"]} for m in models] == [{"id": current, "name": current}]
    samplers = [s["name"] for s in call(app, "GET", "/sdapi/v1/samplers").json()]
    schedulers = [s["name"] for s in call(app, "GET", "/sdapi/v1/schedulers").json()]
    assert "Euler" in samplers and "automatic" in schedulers
    chosen = {**options.json(), "sd_model_checkpoint": models[0]["title"]}
    assert call(app, "POST", "/sdapi/v1/options", chosen).status_code == 200
    body = {"prompt": "a red circle", "batch_size": 2, "width": 32, "height": 32, "steps": 3,
            "negative_prompt": "a blue square", "cfg_scale": 7, "sampler_name": "Euler", "scheduler": "automatic"}
    answer = call(app, "POST", "/sdapi/v1/txt2img", body)
    assert answer.status_code == 200, answer.text
    images = [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in answer.json()["images"]]
    assert [image.format for image in images] == ["PNG", "PNG"] and images[0].size == (32, 32)
    info = json.loads(answer.json()["info"])
    assert info["all_seeds"] == [info["seed"], info["seed"] + 1] and info["sd_model_name"] == current
    other = {**options.json(), "sd_model_checkpoint": "dreamshaper_8.safetensors"}
    refused = call(app, "POST", "/sdapi/v1/options", other)
    assert refused.status_code == 400 and "'dreamshaper_8.safetensors' is not served here" in refused.json()["error"]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/images/generations", "/sdapi/v1/txt2img"])
def test_a_chunked_body_above_the_limit_is_413_on_every_route(app: Any, path: str) -> None:
    """No Content-Length, 70 KiB in 1 KiB chunks: 413 in the route's convention (OpenAI's and
    A1111's routes answered FastAPI's 400 before)."""
    from answer_trt.serving.protocol import MAX_BODY_BYTES

    chunks = [b'{"prompt": "' + b"a" * 1000] + [b"a" * 1024] * 70 + [b'"}']
    answer = call(app, "POST", path, chunks=chunks)
    assert answer.status_code == 413
    body = answer.json()
    text = body["error"]["message"] if path.startswith("/v1/images") else body["error"]
    assert f"above the limit of {MAX_BODY_BYTES} bytes" in text


def test_a_chunked_body_within_the_limit_is_served(app: Any) -> None:
    raw = json.dumps({"prompt": "a red circle", **SIZE, "steps": 2}).encode()
    assert call(app, "POST", "/sdapi/v1/txt2img", chunks=[raw[:10], raw[10:]]).status_code == 200


def test_clip_skip_by_setting_or_field_equals_the_schemas_clip_skip(app, pipe):
    """A1111's CLIP_stop_at_last_layers (override_settings) and the clip_skip field both draw
    the image of answer-trt's own request with that clip_skip; 1 is the image without it."""
    status, by_setting = txt2img(app, seed=5, override_settings={"CLIP_stop_at_last_layers": 2})
    assert status == 200, by_setting
    status, by_field = txt2img(app, seed=5, clip_skip=2)
    status, plain = txt2img(app, seed=5, clip_skip=1)
    own = pipe.generate("a red circle", **SIZE, steps=3, seed=5, clip_skip=2)
    own_pixels = np.asarray(own.images[0].convert("RGB"), dtype=np.int16)
    assert (pixels(by_setting["images"][0]) == own_pixels).all() and (pixels(by_field["images"][0]) == own_pixels).all()
    assert np.abs(pixels(plain["images"][0]) - own_pixels).max() > 0


def test_the_prompt_is_read_in_a1111s_syntax(app, pipe):
    """txt2img reads A1111's syntax (emphasis here) by default, as A1111 does, and records it;
    prompt_syntax "plain" reads the brackets as text."""
    status, a1111 = txt2img(app, prompt="a (red:1.6) circle", seed=4)
    assert status == 200, a1111
    record = json.loads(Image.open(io.BytesIO(base64.b64decode(a1111["images"][0]))).info["answer-trt"])
    assert record["prompt_syntax"] == "a1111"
    expected = pipe.generate("a (red:1.6) circle", prompt_syntax="a1111", steps=3, seed=4, **SIZE)
    assert np.abs(pixels(a1111["images"][0]) - np.asarray(expected.images[0], dtype=np.int16)).max() <= 1
    status, plain = txt2img(app, prompt="a (red:1.6) circle", seed=4, prompt_syntax="plain")
    assert status == 200 and np.abs(pixels(plain["images"][0]) - pixels(a1111["images"][0])).max() > 0
    assert "prompt editing" in refusal(app, prompt="a [cat:dog:0.5]")
