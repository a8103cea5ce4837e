"""`answer-trt serve`: a Ray Serve deployment over one pipeline and one ``StepBatcher`` per
replica (the optional ``serve`` extra).

Routes: ``POST /v1/generate`` (body: ``answer_trt.serving.protocol``), ``GET /v1/health``,
``GET /v1/stats`` (the batcher's counters). A refused request is ``{"error": "<one line>"}``
with 400 (the request), 503 + ``Retry-After`` (queue full), 504 (its ``timeout_s`` passed)
or 500. Cross-request batching is the batcher's, not Ray's ``@serve.batch``: every request a
replica holds is handed to the batcher at once, so ``max_ongoing_requests`` is set high.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.rules import check_int

APP_NAME = "answer-trt"
ROUTES = {"/v1/generate": "POST", "/v1/health": "GET", "/v1/stats": "GET"}
# Requests a replica admits before Ray queues them in its proxy; the batcher's own queue
# (max_queue) is what refuses work, with a 503 the client can act on.
MIN_ONGOING_REQUESTS = 256
# How long serve.shutdown lets a replica finish its requests.
GRACEFUL_SHUTDOWN_S = 5.0

log = logging.getLogger("answer_trt.serving")


@dataclass(frozen=True)
class ServeConfig:
    """What ``answer-trt serve`` was asked for. ``engines`` is an engines folder (a model is
    built into the cache first, by the caller); ``verify``: check its checksums on load."""

    engines: Path
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_queue: int | None = None
    max_rows: int | None = None
    batching: bool = True
    verify: bool = True
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    app_name: str = APP_NAME
    route_prefix: str = "/"
    address: str | None = None  # a running Ray cluster (`auto`, or HEAD:6379); None: start Ray here

    def __post_init__(self) -> None:
        check_serve_flags(self.host, self.port, self.replicas, self.max_queue, self.max_rows)
        if isinstance(self.replica_gpus, bool) or not isinstance(self.replica_gpus, (int, float)) \
                or not 0.0 <= self.replica_gpus <= 64.0:
            raise UserInputError(f"--gpus-per-replica must be a number from 0 to 64 (0.5 puts two replicas on one "
                                 f"GPU), got {self.replica_gpus!r}")
        if self.address is not None and not self.address.strip():
            raise UserInputError("--address must name a Ray cluster: `auto` on one of its machines, or HEAD:6379")
        if not self.route_prefix.startswith("/"):
            raise UserInputError(f"route prefix {self.route_prefix!r} must start with '/'")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.route_prefix.rstrip('/')}"


def check_serve_flags(host: str, port: int, replicas: int, max_queue: int | None, max_rows: int | None) -> None:
    """The flags of `answer-trt serve` that can be checked before anything is built or started."""
    check_int("--replicas", replicas)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserInputError(f"--port must be an integer from 1 to 65535, got {port!r}")
    if max_queue is not None:
        check_int("--max-queue", max_queue)
    if max_rows is not None:
        check_int("--max-rows", max_rows, low=2)
    if not host:
        raise UserInputError("--host must name an address to listen on, e.g. 127.0.0.1")


class GenerateServer:
    """The deployment's class: one pipeline and one batcher in each replica process."""

    def __init__(self, config: ServeConfig) -> None:
        from answer_trt.loaders import from_engines
        from answer_trt.serving.batcher import StepBatcher

        self.pipeline = from_engines(config.engines, verify=config.verify)
        # Refusals name a rebuild command; over HTTP it must not carry the server's paths.
        self.pipeline.limits = replace(self.pipeline.limits, build=None)
        self.batcher = StepBatcher(self.pipeline, max_rows=config.max_rows, batching=config.batching,
                                   max_queue=config.max_queue)
        self.health = {"status": "ok", "model": self.pipeline.model_name, "backend": self.pipeline.backend,
                       "batching": config.batching, "pid": os.getpid()}

    async def __call__(self, request: Any) -> Any:  # a starlette Request -> Response
        from starlette.responses import JSONResponse

        path = _route(request.scope)
        method = ROUTES.get(path)
        if method is None:
            return _error(404, f"no route {path}: use {', '.join(f'{m} {p}' for p, m in ROUTES.items())}")
        if request.method != method:
            return _error(405, f"{path} takes {method}, not {request.method}", {"Allow": method})
        if path == "/v1/health":
            return JSONResponse(self.health)
        if path == "/v1/stats":
            return JSONResponse(self.batcher.stats().as_dict())
        return await self._generate(request)

    async def _generate(self, request: Any) -> Any:
        from starlette.responses import Response

        from answer_trt.errors import NonFiniteImageError
        from answer_trt.serving.batcher import DeadlineExceeded, QueueFullError, RequestCancelled
        from answer_trt.serving.protocol import parse_generate, render

        try:
            call = parse_generate(await request.body())
            ticket = self.batcher.submit(call.request, deadline_s=call.timeout_s)
        except QueueFullError as exc:
            return _error(503, str(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        except UserInputError as exc:
            return _error(400, str(exc))
        try:
            # shield: a disconnect cancels this task; the ticket is then cancelled through the
            # batcher (below), never by asyncio cancelling the batcher's future under it.
            generation = await asyncio.shield(asyncio.wrap_future(ticket.future))
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        except DeadlineExceeded as exc:
            return _error(504, str(exc))
        except RequestCancelled as exc:  # the replica is shutting down
            return _error(503, str(exc), {"Retry-After": "1"})
        except UserInputError as exc:  # found only when the work started (e.g. a step count the scheduler refuses)
            return _error(400, str(exc))
        except NonFiniteImageError as exc:
            return _error(500, str(exc))
        except Exception as exc:  # noqa: BLE001 - an engine failure fails this request, one line to the client
            log.exception("request failed")
            return _error(500, f"the server failed this request: {type(exc).__name__}: {exc}")
        body, content_type = await asyncio.to_thread(render, generation, call.response)  # PNG encoding
        return Response(body, media_type=content_type)

    def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()


def _route(scope: dict[str, Any]) -> str:
    """The path below the application's route prefix."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return "/" + path.strip("/")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    from answer_trt.serving.protocol import error_body

    return Response(error_body(message), status_code=status, headers=headers, media_type="application/json")


def start(config: ServeConfig) -> str:
    """Start Ray (if needed) and Serve on ``config.host:config.port``, deploy, return the URL."""
    import ray
    from ray import serve

    if not ray.is_initialized() and config.address is not None:  # replicas go where the cluster has room
        ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    elif not ray.is_initialized():
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(config.replicas * config.replica_cpus)),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    deployment = serve.deployment(
        name="generate", num_replicas=config.replicas,
        max_ongoing_requests=max(MIN_ONGOING_REQUESTS, 2 * (config.max_queue or 0)),
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    )(GenerateServer)
    serve.run(deployment.bind(config), name=config.app_name, route_prefix=config.route_prefix)
    return config.url


def remove(config: ServeConfig) -> None:
    """Take one application down, leaving Serve and Ray running."""
    from ray import serve

    serve.delete(config.app_name)


def stop() -> None:
    """Shut Serve and the Ray this process started down."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
