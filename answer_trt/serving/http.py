"""The HTTP face of `answer-trt serve`: one FastAPI app per replica, Ray Serve's ingress.

Routes (documented in ``/openapi.json`` and ``/docs``, request and response models derived
from the request schema: ``answer_trt.serving.models``):

- answer-trt's own: ``POST /v1/generate`` (body parsed by ``answer_trt.serving.protocol``),
  ``GET /v1/health``, ``GET /v1/stats``; a refusal is ``{"error": "<one line>"}``.
- the OpenAI images API: ``POST /v1/images/generations``, ``GET /v1/models``; refusals in
  the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``.
- AUTOMATIC1111's (what its clients and chat front ends call): ``POST /sdapi/v1/txt2img``
  (every field of A1111's body honoured, harmless or refused: ``models.A1111_FIELDS``),
  ``GET``/``POST /sdapi/v1/options`` (the settings answer-trt honours, ``models.A1111_SETTINGS``;
  one model, nothing is switched), ``GET /sdapi/v1/samplers``, ``/schedulers``, ``/sd-models``,
  ``/progress`` (the batcher's requests in flight), and the honest empty lists ``/loras``
  (LoRAs are fused at build time), ``/sd-vae``, ``/upscalers``, ``/scripts``; refusals as
  answer-trt's.
- ControlNet (a replica whose engines have ControlNets): ``POST /v1/generate``'s
  ``control_image``, the ControlNet extension's units in txt2img's and img2img's
  ``alwayson_scripts`` and its ``GET /controlnet/model_list`` and ``/module_list``
  (``answer_trt.serving.control``); those bodies then take ``IMAGE_BODY_BYTES``.
- ``GET /``: the page that shows CFG and ANSWER side by side (``page.html``, no external assets).

Status codes: 400 the request (FastAPI's 422 included), 404 (an unknown route or OpenAI
model), 405, 413 (a body above ``MAX_BODY_BYTES``, refused from its Content-Length before
it is read), 503 + ``Retry-After`` (queue full, or the replica is stopping), 504 (the
request's ``timeout_s`` passed), 500. No Ray in here: the server object is handed in.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from answer_trt.controlnet import ControlImages
from answer_trt.errors import NonFiniteImageError, UserInputError
from answer_trt.img2img import InitImage
from answer_trt.pipeline import Generation
from answer_trt.prompts.lora_dir import a1111_loras
from answer_trt.schema import GenerateRequest
from answer_trt.serving import conventions
from answer_trt.serving.control import SCRIPT as CONTROLNET_SCRIPT
from answer_trt.serving.control import ServedControlNets, a1111_control, generate_control
from answer_trt.serving.models import (
    A1111Options,
    ControlNetModelList,
    ControlNetModuleList,
    ErrorResponse,
    GenerateBody,
    GenerateResponse,
    Img2ImgBody,
    LoraItem,
    OpenAIError,
    OpenAIImagesBody,
    OpenAIImagesResponse,
    ProgressResponse,
    Sampler,
    SchedulerItem,
    ScriptsList,
    SDModel,
    SDVaeItem,
    Txt2ImgBody,
    Txt2ImgResponse,
    UpscalerItem,
)
from answer_trt.serving.protocol import EXAMPLE, MAX_BODY_BYTES, error_body, parse_generate, render
from answer_trt.serving.stats import Progress
from answer_trt.serving.tickets import DeadlineExceeded, QueueFullError, RequestCancelled

log = logging.getLogger("answer_trt.serving")

OPENAI_PREFIXES = ("/v1/images/", "/v1/models")
OPTIONS_EXAMPLE = '{"CLIP_stop_at_last_layers": 1}'  # a body POST /sdapi/v1/options takes
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Server(Protocol):
    """What the routes need of a replica (``answer_trt.serving.app.GenerateServer``)."""

    model_name: str
    backend: str
    health: dict[str, Any]

    async def run(self, request: GenerateRequest, timeout_s: float | None = None,
                  init: InitImage | None = None, control: ControlImages | None = None) -> Generation:
        """The request's generation (the batcher's errors as raised); ``init``: the input image
        (and mask) of an img2img or inpainting request; ``control``: its ControlNets' images.
        A replica may also have ``controlnets`` (``ServedControlNets``) and ``default_size``."""
        ...

    def stats(self) -> dict[str, Any]:
        """The batcher's counters."""
        ...

    def progress(self) -> Progress:
        """The requests the batcher holds, with their steps done."""
        ...


class ApiError(Exception):
    """A refusal: its status, one-line message, headers and (OpenAI) param and code."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.param, self.code = status, message, headers, param, code


# Routes whose body carries images (base64), and their limit: an input image and a mask of up to
# img2img.MAX_IMAGE_PIXELS as PNG, with room to spare. On a server with ControlNets the control
# images travel in txt2img's and /v1/generate's bodies too (``CONTROL_ROUTES``).
IMAGE_ROUTES = ("/sdapi/v1/img2img", "/v1/images/edits")
CONTROL_ROUTES = ("/sdapi/v1/txt2img", "/v1/generate")
IMAGE_BODY_BYTES = 64 * 2**20


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is above ``limit`` is answered 413
    before its body is read; a body sent without one (chunked) is read here up to the
    limit and answered 413 beyond it, in the route's convention, on every route. The routes
    that take images (``IMAGE_ROUTES``) have ``IMAGE_BODY_BYTES``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int,
                 image_routes: tuple[str, ...] = IMAGE_ROUTES) -> None:
        self.app, self.limit, self.image_routes = app, limit, image_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        images = route_path(scope) in self.image_routes
        limit, shorter = (IMAGE_BODY_BYTES, "smaller images") if images else (self.limit, "a shorter prompt")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            size = int(length) if length.isdigit() else -1
            if size < 0 or size > limit:
                message = (f"the request body is {size} bytes, above the limit of {limit}: send {shorter}"
                           if size >= 0 else "the Content-Length header is not a number of bytes")
                status = 413 if size >= 0 else 400
                await error_response(scope, status, message)(scope, receive, send)
                return
        else:
            # No Content-Length (a chunked body): read it here, up to the limit, and answer an
            # oversized one ourselves. Raised inside the app, FastAPI's body parsing would turn
            # the error into its own 400 on the routes with a body model (OpenAI, A1111).
            buffered = await self._read_body(receive, limit)
            if buffered is None:
                message = f"the request body is above the limit of {limit} bytes: send {shorter}"
                await error_response(scope, 413, message)(scope, receive, send)
                return
            receive = _replaying(buffered, receive)
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Receive, limit: int) -> list[Message] | None:
        """The request's messages up to the end of its body (or a disconnect); None once the
        body passes the limit."""
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                return messages
            received += len(message.get("body", b""))
            if received > limit:
                return None
            if not message.get("more_body", False):
                return messages


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first (as one body message), then the client's."""
    bodies = [m for m in messages if m.get("type") == "http.request"]
    pending: list[Message] = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in bodies),
                               "more_body": False}] if bodies else []
    pending += [m for m in messages if m.get("type") != "http.request"]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def route_path(scope: Scope) -> str:
    """The path below the application's route prefix."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return "/" + path.strip("/")


def error_response(scope: Scope, status: int, message: str, headers: Mapping[str, str] | None = None,
                   param: str | None = None, code: str | None = None) -> Response:
    """A refusal in the shape of the route's convention (OpenAI's, or ``{"error": ...}``)."""
    if route_path(scope).startswith(OPENAI_PREFIXES):
        return JSONResponse(conventions.openai_error(message, status, param, code), status_code=status,
                            headers=headers)
    return Response(error_body(message), status_code=status, headers=headers, media_type="application/json")


def validation_message(exc: RequestValidationError, example: str = EXAMPLE) -> tuple[str, str | None]:
    """One line for FastAPI's validation errors (its 422), and the field it names; ``example``:
    a body the route takes."""
    errors = list(exc.errors())
    if not errors:
        return "the request is not valid", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: send a JSON object such as {example}", None
    if field is None:
        return f"the request body must be a JSON object such as {example}: {first.get('msg', '')}", None
    if kind == "extra_forbidden":
        return f"unknown field {field!r}: see /openapi.json for the fields", field
    if kind == "missing":
        return f"field {field!r} is missing", field
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"field {field!r}: {first.get('msg', 'not valid')}, got {shown}", field


def served_controlnets(server: Server) -> ServedControlNets:
    """The replica's ControlNets (none where it has no ``controlnets``)."""
    served = getattr(server, "controlnets", None)
    return served if isinstance(served, ServedControlNets) else ServedControlNets()


def output_size(server: Server, height: int | None, width: int | None) -> tuple[int, int]:
    """A request's output size: its own, else the replica's default (what the control images are
    resized to)."""
    default = getattr(server, "default_size", None) or (512, 512)
    return height or default[0], width or default[1]


def _page() -> str:
    return importlib.resources.files("answer_trt.serving").joinpath("page.html").read_text(encoding="utf-8")


async def generations(server: Server, requests: list[GenerateRequest], timeout_s: float | None = None,
                      init: InitImage | None = None, control: ControlImages | None = None) -> list[Generation]:
    """Every request's generation, the batcher's errors as ``ApiError``; one that fails (or a
    client that hangs up) cancels the others. ``init``: the input image the requests name;
    ``control``: their ControlNets' images."""
    images: dict[str, Any] = {**({"init": init} if init is not None else {}),
                              **({"control": control} if control is not None else {})}
    tasks = [asyncio.ensure_future(server.run(request, timeout_s, **images)) for request in requests]
    try:
        return list(await asyncio.gather(*tasks))
    except QueueFullError as exc:
        raise ApiError(503, str(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}) from None
    except DeadlineExceeded as exc:
        raise ApiError(504, str(exc)) from None
    except RequestCancelled as exc:  # the replica is shutting down
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
    except UserInputError as exc:  # found only when the work started (e.g. a size the engines were not built for)
        raise ApiError(400, str(exc)) from None
    except NonFiniteImageError as exc:
        raise ApiError(500, str(exc)) from None
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - an engine failure fails this request, one line to the client
        log.exception("request failed")
        raise ApiError(500, f"the server failed this request: {type(exc).__name__}: {exc}") from None
    finally:
        for task in tasks:
            task.cancel()  # no-op for those done; the rest cancel their tickets


def make_api(server: Server) -> FastAPI:
    """The FastAPI app of one replica."""
    app = FastAPI(
        title="answer-trt", version="0.1.0",
        description="ANSWER-guided text-to-image on optimized engines: answer-trt's own endpoint, the OpenAI "
                    "images API and AUTOMATIC1111's txt2img over one step-level batcher.")
    controlled = len(served_controlnets(server)) > 0
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES,
                       image_routes=IMAGE_ROUTES + CONTROL_ROUTES if controlled else IMAGE_ROUTES)
    _handlers(app)
    _own_routes(app, server)
    _openai_routes(app, server)
    _a1111_routes(app, server)
    _document(app)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    return app


def _handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request.scope, exc.status, exc.message, exc.headers, exc.param, exc.code)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        example = OPTIONS_EXAMPLE if route_path(request.scope) == "/sdapi/v1/options" else EXAMPLE
        message, field = validation_message(exc, example)
        return error_response(request.scope, 400, message, param=field)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = route_path(request.scope)
        if exc.status_code == 404:
            routes = sorted(f"{sorted(r.methods or ())[0]} {r.path}" for r in app.routes
                            if isinstance(r, Route) and r.include_in_schema)
            message = f"no route {path}: use {', '.join(routes)}"
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            message = f"{path} takes {allow}, not {request.method}"
        else:
            message = str(exc.detail)
        return error_response(request.scope, exc.status_code, message, exc.headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the request: what to change, on one line"},
    413: {"model": ErrorResponse, "description": "the body is above the size limit"},
    503: {"model": ErrorResponse, "description": "the queue is full (Retry-After)"},
    504: {"model": ErrorResponse, "description": "the request's timeout_s passed"}}
_OPENAI_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {**value, "model": OpenAIError} for status, value in _REFUSALS.items()}


def _own_routes(app: FastAPI, server: Server) -> None:
    body_schema = {"$ref": "#/components/schemas/GenerateBody"}

    @app.post("/v1/generate", summary="Generate images (answer-trt's own endpoint)",
              responses={200: {"model": GenerateResponse, "content": {"image/png": {}},
                               "description": "the PNG (response png) or every image and the parameters (json)"},
                         **_REFUSALS},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": body_schema}}}})
    async def generate(request: Request) -> Response:
        served = served_controlnets(server)
        try:
            call = parse_generate(await request.body(), IMAGE_BODY_BYTES if len(served) else MAX_BODY_BYTES)
            control = None
            if call.control_image is not None:
                height, width = output_size(server, call.request.height, call.request.width)
                control = await asyncio.to_thread(generate_control, call.control_image, served, height, width)
                if not call.request.control_image_sha256:
                    call = replace(call, request=call.request.replace(control_image_sha256=control.sha256))
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        except ClientDisconnect:  # hung up before sending its whole body: nobody to answer, nothing to log
            raise ApiError(400, "the client hung up before sending the whole request body") from None
        generation, = await generations(server, [call.request], call.timeout_s, control=control)
        body, content_type = await asyncio.to_thread(render, generation, call.response)  # PNG encoding
        return Response(body, media_type=content_type)

    @app.get("/v1/health", summary="The replica's model, backend and pid")
    async def health() -> dict[str, Any]:
        return server.health

    @app.get("/v1/stats", summary="The batcher's counters (rows per UNet call, queue, ...)")
    async def stats() -> dict[str, Any]:
        return server.stats()


def _openai_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/images/generations", response_model=OpenAIImagesResponse, responses={
        **_OPENAI_REFUSALS, 404: {"model": OpenAIError, "description": "not the served model (GET /v1/models)"}},
              summary="The OpenAI images API (answer-trt's fields as extra fields)")
    async def images_generations(body: OpenAIImagesBody) -> dict[str, Any]:  # type: ignore[valid-type]
        try:
            request = conventions.openai_request(body, server.model_name)
        except conventions.ModelNotFound as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        generation, = await generations(server, [request])
        return await asyncio.to_thread(conventions.openai_response, generation)

    @app.post("/v1/images/edits", response_model=OpenAIImagesResponse, responses={
        **_OPENAI_REFUSALS, 404: {"model": OpenAIError, "description": "not the served model (GET /v1/models)"}},
              summary="OpenAI's image edits: inpainting where the mask (or the image) is transparent (multipart)")
    async def images_edits(request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            edit, init = await asyncio.to_thread(conventions.openai_edit, request.headers.get("content-type", ""),
                                                 body, server.model_name)
        except conventions.ModelNotFound as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        generation, = await generations(server, [edit], init=init)
        return await asyncio.to_thread(conventions.openai_response, generation)

    @app.get("/v1/models", summary="The served model (OpenAI's model list)")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                             "owned_by": "answer-trt"}]}


def served_vae(server: Server) -> str | None:
    """The name of the VAE the served engines were built with (``serve --vae``), or None."""
    name = getattr(server, "vae_name", None)
    return name if isinstance(name, str) and name else None


def _a1111_routes(app: FastAPI, server: Server) -> None:
    @app.post("/sdapi/v1/txt2img", response_model=Txt2ImgResponse, responses=_REFUSALS,
              summary="AUTOMATIC1111's txt2img (answer-trt's guidance fields as extra fields)")
    async def txt2img(body: Txt2ImgBody) -> dict[str, Any]:  # type: ignore[valid-type]
        seed = body.seed if body.seed != -1 else conventions.draw_seed()  # type: ignore[attr-defined]
        try:
            height, width = output_size(server, body.height, body.width)  # type: ignore[attr-defined]
            fields, control = await asyncio.to_thread(a1111_control, body.alwayson_scripts,  # type: ignore[attr-defined]
                                                      served_controlnets(server), height, width)
            requests = conventions.a1111_requests(body, seed, server.model_name, control_fields=fields,
                                                  vae_name=served_vae(server))
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        results = await generations(server, requests, control=control)
        return await asyncio.to_thread(conventions.a1111_response, body, requests, results)

    @app.post("/sdapi/v1/img2img", response_model=Txt2ImgResponse, responses=_REFUSALS,
              summary="AUTOMATIC1111's img2img and inpainting (answer-trt's guidance fields as extra fields)")
    async def img2img(body: Img2ImgBody) -> dict[str, Any]:  # type: ignore[valid-type]
        seed = body.seed if body.seed != -1 else conventions.draw_seed()  # type: ignore[attr-defined]
        loaded: list[ControlImages | None] = [None]

        def control(height: int, width: int) -> dict[str, Any]:
            fields, loaded[0] = a1111_control(body.alwayson_scripts,  # type: ignore[attr-defined]
                                              served_controlnets(server), height, width)
            return fields

        try:
            requests, init = await asyncio.to_thread(conventions.a1111_img2img, body, seed, server.model_name, control,
                                                     served_vae(server))
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None
        results = await generations(server, requests, init=init, control=loaded[0])
        return await asyncio.to_thread(conventions.a1111_response, body, requests, results)

    @app.get("/sdapi/v1/samplers", response_model=list[Sampler], summary="A1111's sampler list (ours)")
    async def samplers() -> list[dict[str, Any]]:
        return conventions.a1111_samplers()

    @app.get("/sdapi/v1/sd-models", response_model=list[SDModel], summary="A1111's model list (the served one)")
    async def sd_models() -> list[dict[str, Any]]:
        return conventions.a1111_models(server.model_name, server.backend)

    @app.get("/sdapi/v1/options", response_model=A1111Options,
             summary="A1111's settings: those answer-trt honours, at their values (sd_model_checkpoint: the served "
                     "model)")
    async def get_options() -> dict[str, Any]:
        return conventions.a1111_options(server.model_name, served_vae(server))

    @app.post("/sdapi/v1/options", response_model=None, responses=_REFUSALS,
              summary="A1111's settings: each must be one answer-trt honours, at its value (one model: nothing is "
                      "switched); answers null, as A1111")
    async def set_options(body: dict[str, Any]) -> None:
        try:
            conventions.check_settings(body, server.model_name, "options", kept=True, vae_name=served_vae(server))
        except UserInputError as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem],
             summary="A1111's scheduler list: automatic, then the request schema's schedulers (txt2img's scheduler)")
    async def schedulers() -> list[dict[str, Any]]:
        return conventions.a1111_schedulers()

    @app.get("/sdapi/v1/loras", response_model=list[LoraItem],
             summary="A1111's LoRA list: the files of serve --lora-dir (none without it); the served engines keep "
                     "the LoRAs fused at build time, none is switched per request")
    async def loras() -> list[dict[str, Any]]:
        try:
            return await asyncio.to_thread(a1111_loras, getattr(server, "lora_dir", None))
        except UserInputError as exc:  # the folder went away since serve started
            raise ApiError(400, str(exc)) from None

    @app.get("/sdapi/v1/sd-vae", response_model=list[SDVaeItem],
             summary="A1111's VAE list: the VAE the engines were built with (serve --vae; its file or folder name), "
                     "or empty where they hold the model's own VAE decoder; it is built in, not switched per request "
                     "(sd_vae Automatic)")
    async def sd_vae() -> list[dict[str, Any]]:
        name = served_vae(server)
        return [{"model_name": name, "filename": name}] if name else []

    @app.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem],
             summary="A1111's upscaler list: empty, there is no hires fix or upscaling")
    async def upscalers() -> list[dict[str, Any]]:
        return []

    @app.get("/sdapi/v1/scripts", response_model=ScriptsList,
             summary="A1111's script list: controlnet where the engines have ControlNets (alwayson_scripts' units), "
                     "else none (script_name and other scripts are refused)")
    async def scripts() -> dict[str, Any]:
        names = [CONTROLNET_SCRIPT] if len(served_controlnets(server)) else []
        return {"txt2img": names, "img2img": list(names)}

    @app.get("/controlnet/model_list", response_model=ControlNetModelList,
             summary="The ControlNet extension's model list: the served ControlNets as 'name [sha256 prefix]', in "
                     "--controlnet order (empty without)")
    async def controlnet_models() -> dict[str, Any]:
        return {"model_list": served_controlnets(server).model_list()}

    @app.get("/controlnet/module_list", response_model=ControlNetModuleList,
             summary="The ControlNet extension's preprocessor list: none runs here, so 'none' alone (send processed "
                     "control images)")
    async def controlnet_modules() -> dict[str, Any]:
        return {"module_list": ["none"]}

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse,
             summary="A1111's progress: the batcher's requests in flight and waiting (0 and an idle state when none)")
    async def progress() -> dict[str, Any]:
        return conventions.a1111_progress(server.progress())


def _document(app: FastAPI) -> None:
    """Put ``GenerateBody`` (documented, not validated, by FastAPI) into the OpenAPI components,
    and take out the 422 FastAPI documents for a body model: its refusals answer 400."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = default_openapi()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schema = GenerateBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):  # only the 422 named them
                components.pop(unused, None)
            components.update(schema.pop("$defs", {}))
            components["GenerateBody"] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
