"""`answer-trt serve`: its arguments and its handler (registered by ``answer_trt.cli``)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError

SERVE_EXTRA_HINT = 'install the serve extra: pip install -c constraints.txt -e ".[serve]"'


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    s: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve generate over HTTP with Ray Serve (cross-request step-level batching)")
    add_source_arguments(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="default 8000")
    add_batcher_arguments(s)
    s.add_argument("--lora-dir", type=Path, metavar="DIR",
                   help="list DIR's LoRA .safetensors files at GET /sdapi/v1/loras (the served engines keep their "
                        "fused LoRAs: a request's <lora:> tags must match them)")
    s.add_argument("--address", default=None,
                   help="join a running Ray cluster (`auto` on one of its machines, or HEAD:6379) and place the "
                        "replicas across its machines; the engines folder must exist at the same path on each")
    s.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs each replica reserves (default: 1 for tensorrt engines, 0 otherwise; 0.5 puts two "
                        "replicas on one GPU)")
    s.add_argument("--no-batching", action="store_true",
                   help="one request at a time (the baseline cross-request batching is measured against)")
    s.set_defaults(handler=serve_command)
    return s


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--engines", type=Path, help="engines folder made by `answer-trt build`")
    source.add_argument("--model", help="model to build into the cache on first use (default `tiny`)")


def add_batcher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model (Ray Serve replicas; default 1)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="requests waiting to join a replica's batch before it answers 503 (default: no limit)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="most UNet rows per batched call (default: what the engines were built for)")


def serve_config(args: argparse.Namespace, **overrides: Any) -> Any:
    """The ``ServeConfig`` of ``args``; a ``--model`` is built into the cache first (with its
    ``--variant`` and ``--lora``s; an ``--engines`` folder must have been built with them)."""
    from answer_trt.loaders import build_cached, check_built_weights, engine_limits
    from answer_trt.manifest import read_manifest, verify_files
    from answer_trt.serving.app import ServeConfig, check_serve_flags
    from answer_trt.serving.batcher import check_max_rows

    fields: dict[str, Any] = dict(replicas=args.replicas, max_queue=args.max_queue, max_rows=args.max_rows)
    fields.update(overrides)
    check_serve_flags(fields.get("host", "127.0.0.1"), fields.get("port", 8000), fields["replicas"],
                      fields["max_queue"], fields["max_rows"])  # before a build
    variant, loras = getattr(args, "variant", None), getattr(args, "lora", None)
    model_config = getattr(args, "config", None)
    if args.engines is not None:
        if model_config is not None:
            raise UserInputError("--config gives a single-file --model its configs; an --engines folder was built "
                                 "with them already: drop --config")
        engines = Path(args.engines)
        manifest = read_manifest(engines)
        check_built_weights(engines, manifest, variant, tuple(loras) if loras else None, getattr(args, "vae", None))
        verify_files(engines, manifest)  # here, once: a mismatch is one line, not a failed deployment
    else:
        model = "tiny" if args.model is None else args.model
        engines = build_cached(model, log=lambda msg: print(msg, file=sys.stderr), variant=variant,
                               loras=tuple(loras or ()), config=model_config, vae=getattr(args, "vae", None),
                               controlnets=tuple(getattr(args, "controlnet", None) or ()))
        manifest = read_manifest(engines)
    check_max_rows(fields["max_rows"], engine_limits(engines, manifest))  # here, before a replica starts
    gpus = getattr(args, "gpus_per_replica", None)
    if gpus is None:
        gpus = 1.0 if manifest.runs_on_cuda else 0.0
    lora_dir = getattr(args, "lora_dir", None)
    if lora_dir is not None:
        from answer_trt.prompts.lora_dir import check_lora_dir

        lora_dir = check_lora_dir(lora_dir).resolve()
    return ServeConfig(engines=engines, verify=False, replica_gpus=gpus, lora_dir=lora_dir, **fields)


def import_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise UserInputError(f"`answer-trt serve` needs Ray Serve: {SERVE_EXTRA_HINT}") from None


def serve_command(args: argparse.Namespace) -> int:
    import_ray()
    from answer_trt.serving.app import check_serve_flags, start, stop
    from answer_trt.serving.ports import PortInUseError, check_port_free

    check_serve_flags(args.host, args.port, args.replicas, args.max_queue, args.max_rows)
    try:
        check_port_free(args.host, args.port)  # before a build and before Ray starts
    except PortInUseError as exc:
        print(f"answer-trt: error: {exc}", file=sys.stderr)
        return 1
    config = serve_config(args, host=args.host, port=args.port, batching=not args.no_batching, address=args.address)
    try:
        url = start(config)
        # After ray.init, which installs its own: `docker stop` and `kill` shut down as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"answer-trt: serving {url} (the page at /; POST /v1/generate, the OpenAI images API at "
              f"/v1/images/generations, A1111's /sdapi/v1/txt2img, /openapi.json; "
              f"{config.replicas} replica(s), batching {'on' if config.batching else 'off'}); Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("answer-trt: stopping", file=sys.stderr)
    finally:
        try:
            stop()
        except KeyboardInterrupt:  # a second Ctrl-C: leave the rest to Ray's exit hooks
            print("answer-trt: stopped without waiting for Ray to shut down", file=sys.stderr)
    return 0


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
