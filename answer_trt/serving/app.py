"""`answer-trt serve`: a Ray Serve deployment over one pipeline and one ``StepBatcher`` per
replica (the optional ``serve`` extra).

The HTTP side is a FastAPI app per replica (Ray Serve's ingress; routes, models and status
codes in ``answer_trt.serving.http``): answer-trt's own ``POST /v1/generate``, the OpenAI
images API, A1111's txt2img and the page at ``/``, all over this replica's batcher.
Cross-request batching is the batcher's, not Ray's ``@serve.batch``: every request a replica
holds is handed to the batcher at once, so ``max_ongoing_requests`` is set high.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from answer_trt.errors import UserInputError
from answer_trt.rules import check_int

if TYPE_CHECKING:
    from answer_trt.controlnet import ControlImages
    from answer_trt.img2img import InitImage
    from answer_trt.pipeline import Generation
    from answer_trt.schema import GenerateRequest
    from answer_trt.serving.stats import Progress

APP_NAME = "answer-trt"
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
    lora_dir: Path | None = None  # --lora-dir: the LoRA files GET /sdapi/v1/loras lists

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


# Each replica is a process with its own engines; more than this is a typo, not a deployment.
MAX_REPLICAS = 256


def check_serve_flags(host: str, port: int, replicas: int, max_queue: int | None, max_rows: int | None) -> None:
    """The flags of `answer-trt serve` that can be checked before anything is built or started."""
    check_int("--replicas", replicas)
    if replicas > MAX_REPLICAS:
        raise UserInputError(f"--replicas {replicas} is above the limit of {MAX_REPLICAS}: each replica is a process "
                             f"holding the engines; use {MAX_REPLICAS} or fewer")
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
        from answer_trt.serving.control import ServedControlNets

        self.pipeline = from_engines(config.engines, verify=config.verify)
        # Refusals name a rebuild command; over HTTP it must not carry the server's paths.
        self.pipeline.limits = replace(self.pipeline.limits, build=None)
        self.batcher = StepBatcher(self.pipeline, max_rows=config.max_rows, batching=config.batching,
                                   max_queue=config.max_queue)
        self.model_name, self.backend = self.pipeline.model_name, self.pipeline.backend
        self.controlnets = ServedControlNets.from_tags(self.pipeline.weights.controlnets)
        self.default_size = self.pipeline.default_size
        self.lora_dir = config.lora_dir
        # The VAE the engines were built with by --vae (GET /sdapi/v1/sd-vae lists it; None: the model's own).
        self.vae_name = self.pipeline.weights.vae_name if self.pipeline.weights.vae_hash else None
        self.replica = replica_identity()
        self.health = {"status": "ok", "model": self.pipeline.model_name, "backend": self.pipeline.backend,
                       "batching": config.batching, **self.replica}

    async def run(self, request: GenerateRequest, timeout_s: float | None = None,
                  init: InitImage | None = None, control: ControlImages | None = None) -> Generation:
        """The request's generation through this replica's batcher (its errors as raised:
        ``answer_trt.serving.http`` answers each with its status); ``init``: an img2img or
        inpainting request's input image; ``control``: its ControlNets' images. A client that
        hangs up cancels this coroutine, and with it the ticket."""
        ticket = self.batcher.submit(request, deadline_s=timeout_s, init=init, control=control)
        try:
            # shield: the ticket is cancelled through the batcher (below), never by asyncio
            # cancelling the batcher's future under it.
            generation: Generation = await asyncio.shield(asyncio.wrap_future(ticket.future))
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        return generation

    def stats(self) -> dict[str, Any]:
        """This replica's batcher counters, and which replica (and Ray node) it is."""
        return {**self.batcher.stats().as_dict(), **self.replica}

    def progress(self) -> Progress:
        """The requests this replica's batcher holds, with their steps done (A1111's /progress)."""
        return self.batcher.progress()

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve's ingress calls it after __init__
        from answer_trt.serving.http import make_api

        return make_api(self)

    def __del__(self) -> None:  # Ray Serve calls it when the replica shuts down
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()


def replica_identity() -> dict[str, Any]:
    """Which replica answers: its process id, Ray Serve's replica id and the Ray node it runs
    on (``/v1/health`` and ``/v1/stats`` carry them; the last two are ``None`` outside a
    Serve replica)."""
    identity: dict[str, Any] = {"pid": os.getpid(), "replica": None, "node_id": None}
    try:
        import ray
        from ray import serve

        identity["replica"] = serve.get_replica_context().replica_id.unique_id
        identity["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a replica (a test's server object): pid only
        pass
    return identity


def start(config: ServeConfig) -> str:
    """Start Ray (if needed) and Serve on ``config.host:config.port``, deploy, return the URL."""
    import ray
    from ray import serve

    if not ray.is_initialized() and config.address is not None:  # replicas go where the cluster has room
        ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    elif not ray.is_initialized():  # "local": a Ray of our own, even beside a `ray start` cluster on this machine
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(config.replicas * config.replica_cpus)),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    deployment = serve.deployment(
        name="generate", num_replicas=config.replicas,
        max_ongoing_requests=max(MIN_ONGOING_REQUESTS, 2 * (config.max_queue or 0)),
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    )(serve.ingress()(GenerateServer))  # the app: GenerateServer.__serve_build_asgi_app__
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
