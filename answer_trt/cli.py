"""`answer-trt`: build, generate and info. User errors exit with code 2 and one line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from answer_trt.build_config import ControlNetSpec, LoraSpec
from answer_trt.config import METHODS
from answer_trt.errors import NonFiniteImageError, UserInputError, printable
from answer_trt.files import MAX_PNG_BYTES, check_writable_file, numbered_paths, read_bounded
from answer_trt.infotext import RECORD, parse_infotext
from answer_trt.iospec import COMPONENT_SETS, DEFAULT_PROMPT_CHUNKS
from answer_trt.rules import (
    BUILD_BACKENDS,
    DEFAULT_MAX_BATCH,
    DEVICES,
    LOAD_BACKENDS,
    PRECISIONS,
    check_int,
    check_seed,
    check_size,
    check_variant,
    parse_int,
    parse_size_range,
)
from answer_trt.samplers import SCHEDULER_NAMES
from answer_trt.schema import GenerateRequest, field_kinds, from_parameters, make_request, request_fields
from answer_trt.schema import info as schema_info

if TYPE_CHECKING:
    from answer_trt.manifest import GraphOptimization
    from answer_trt.pipeline import Pipeline

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """Every option's help ends with its default (where it has one and does not say it)."""
        action = super().add_argument(*args, **kwargs)
        default, text = action.default, action.help
        if action.option_strings and default not in (None, False, argparse.SUPPRESS) and text != argparse.SUPPRESS \
                and "default" not in (text or ""):
            shown = str(default).replace("%", "%%")
            action.help = f"{text} (default: {shown})" if text else f"default: {shown}"
        return action


T = TypeVar("T")


def _argument(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse ``type`` from one of ``answer_trt.rules``' checks: its message becomes
    argparse's usage error (exit code 2)."""

    def parse_argument(text: str) -> T:
        try:
            return parse(text)
        except UserInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse_argument.__name__ = name  # argparse names the type in "invalid <name> value"
    return parse_argument


_int = _argument(parse_int, "integer")
_at_least_1 = _argument(lambda text: check_int("the value", parse_int(text)), "integer >= 1")
_size = _argument(lambda text: check_size("size", parse_int(text, "size")), "size")
_size_or_range = _argument(parse_size_range, "size or range")


class _DrawnSeed(int):
    """A seed ``--seed random`` drew: ``_request`` prints it once the request is known to use it."""


def _parse_seed(text: str) -> int:
    """A seed, or ``random``: a seed drawn here (printed, and recorded in each PNG)."""
    if text.strip().lower() != "random":
        return check_seed(parse_int(text, "seed"))
    return _DrawnSeed(secrets.randbelow(2**32))


_seed = _argument(_parse_seed, "seed")
_variant = _argument(check_variant, "variant")
_lora = _argument(LoraSpec.parse, "FILE[:SCALE]")
_controlnet = _argument(ControlNetSpec.parse, "DIR[:SCALE]")


def _exact(bound: float | None) -> str:
    """A bound as written in a message: an int exactly (2**64 - 1 is not 2**64), a float
    without decimals."""
    return str(bound) if isinstance(bound, int) else f"{bound:.0f}"


def _bounded_int(flag: str, low: float | None, high: float | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_int(text, flag)
        if (low is not None and value < low) or (high is not None and value > high):
            raise UserInputError(f"{flag} must be an integer in {_exact(low)} .. {_exact(high)}, got {value}"
                                 if high is not None else f"{flag} must be an integer >= {_exact(low)}, got {value}")
        return value

    return _argument(parse, "integer")


def _request_type(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """The argparse type of a request field: sizes by the size rule, integers by their
    bounds, numbers as float, strings as they are."""
    field_info = schema_info(f)
    if f.name in ("height", "width"):
        return _size
    if f.name == "seed":
        return _seed
    if field_info.kind == "ints":
        return _integers(f"--{f.name.replace('_', '-')}", field_info.low, field_info.high)
    if field_info.kind == "int":
        return _bounded_int(f"--{f.name.replace('_', '-')}", field_info.low, field_info.high)
    return float if field_info.kind == "float" else str


def _integers(flag: str, low: float | None, high: float | None) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers, each within the bounds (``--seeds 5,6,7``)."""
    item = _bounded_int(flag, low, high)

    def parse(text: str) -> tuple[int, ...]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers (e.g. 5,6,7), got {text!r}")
        return tuple(item(part) for part in parts)

    parse.__name__ = "list of integers"
    return parse


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the request schema (``answer_trt.schema``), with its type,
    choices, default and help."""
    for f in request_fields():
        field_info = schema_info(f)
        if not field_info.cli:
            continue
        default = "" if f.default is None else f" (default {f.default})"
        if field_info.kind == "bool":  # a switch: --guess-mode
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true",
                                default=f.default, help=field_info.help)
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_request_type(f), default=f.default,
                            choices=field_info.choices, help=field_info.help + default)


def request_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields of parsed ``generate`` arguments (``Pipeline.generate`` keywords)."""
    return {f.name: getattr(args, f.name) for f in request_fields() if schema_info(f).cli}


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose which weights of a model are built or run: ``--variant``, ``--lora``."""
    parser.add_argument("--variant", type=_variant, help="the model's weights variant, e.g. fp16 for "
                        "unet/diffusion_pytorch_model.fp16.safetensors (as diffusers' from_pretrained(variant=...)); "
                        "default: the plain weights, or the one variant a folder holds them as")
    parser.add_argument("--config", metavar="DIR_OR_HUB_ID",
                        help="with a single-file --model (an A1111/CompVis .safetensors checkpoint): the diffusers "
                             "folder or hub id whose configs, scheduler and tokenizer to convert it with, or a "
                             "shipped name (answer-trt:sd1, sd2, sd2-base, sdxl); default: the configs answer-trt "
                             "ships for its family (offline; SD 2.x: v-prediction or epsilon as its UNet tells)")
    parser.add_argument("--lora", action="append", type=_lora, metavar="FILE[:SCALE]",
                        help="fuse this LoRA adapter (.safetensors in diffusers', peft's or kohya's format) into the "
                             "UNet and text encoders before export, scaled by SCALE (default 1); repeat for more")
    parser.add_argument("--vae", metavar="FILE_OR_DIR",
                        help="replace the model's VAE: a .safetensors VAE file (A1111's models/VAE, original or "
                             "diffusers keys) or a diffusers AutoencoderKL folder")
    parser.add_argument("--controlnet", action="append", type=_controlnet, metavar="DIR[:SCALE]",
                        help="build this diffusers ControlNet folder beside the UNet, its residuals times SCALE (0..2, "
                             "default 1); repeat for more (their residuals are summed); generate takes --control-image")


def _loras(args: argparse.Namespace) -> tuple[LoraSpec, ...]:
    return tuple(args.lora or ())


def _controlnets(args: argparse.Namespace) -> tuple[ControlNetSpec, ...]:
    return tuple(getattr(args, "controlnet", None) or ())


def add_cached_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="with --model --backend openvino: the engines' precision (default bf16 where the CPU "
                             "has native bf16, else fp32); a replay (--from-png) takes the image's")


def make_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="answer-trt", description="ANSWER-guided text-to-image on optimized engines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    b = sub.add_parser("build", help="export a model's components and build engines")
    b.add_argument("--model", default="tiny", help="diffusers folder, single-file .safetensors checkpoint (see "
                   "--config), hub id, or built-in name: `tiny` (default, "
                   "trained on coloured shapes), `tiny-random`, `tiny-sd21`, `tiny-sdxl`")
    b.add_argument("--out", required=True, type=Path, help="engines folder to write")
    add_weights_arguments(b)
    b.add_argument("--backend", default=BUILD_BACKENDS[0], choices=BUILD_BACKENDS)
    b.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="default: fp32 on onnxruntime, openvino and inductor for the CPU, fp16 on tensorrt and "
                        "inductor for CUDA (bf16: tensorrt, inductor, and openvino on a CPU with native bf16)")
    b.add_argument("--device", choices=DEVICES, default=DEVICES[0],
                   help="--backend inductor: compile for the CPU (default) or this machine's CUDA GPU")
    b.add_argument("--max-batch", type=_at_least_1, default=DEFAULT_MAX_BATCH,
                   help=f"most images per call (default {DEFAULT_MAX_BATCH})")
    b.add_argument("--max-prompt-chunks", type=_at_least_1, default=DEFAULT_PROMPT_CHUNKS,
                   help=f"longest A1111-syntax prompt, in chunks of 75 tokens (default {DEFAULT_PROMPT_CHUNKS}: 225 "
                        "tokens)")
    b.add_argument("--height", type=_size_or_range, help="image height H or range MIN:MAX (default: the model's)")
    b.add_argument("--width", type=_size_or_range, help="image width W or range MIN:MAX (default: the model's)")
    b.add_argument("--components", choices=tuple(COMPONENT_SETS), default="all",
                   help="all (default): the text encoder, UNet, VAE decoder and the VAE encoder that img2img needs; "
                        "txt2img: without the VAE encoder (a smaller folder)")
    b.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    b.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                   help="compare each built component with its torch reference (Polygraphy) before publishing; "
                        "default: on for fp16 and bf16, off for fp32")
    b.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                   help="onnxruntime: run ONNX Runtime's transformer optimizer on each graph, kept where it fuses, "
                        "matches the exported graph and is not slower (default: off; no gain measured on the CPU)")

    g = sub.add_parser("generate", help="generate images")
    g.add_argument("prompt", nargs="?", help="text prompt; an empty string means unconditional sampling")
    g.add_argument("--from-png", type=Path, help="redraw an image answer-trt wrote: its request is read from the PNG's "
                   "metadata (prompt and request flags then come from there; --engines/--model choose the engines)")
    source = g.add_mutually_exclusive_group()
    source.add_argument("--engines", type=Path, help="engines folder made by `answer-trt build`")
    source.add_argument("--model", help="model to build into the cache on first use (default `tiny`)")
    add_weights_arguments(g)
    g.add_argument("--backend", choices=LOAD_BACKENDS, default=None,
                   help="with --model: the engines built into the cache (default onnxruntime; openvino: "
                        "OpenVINO, see --precision), or torch to run it eagerly instead")
    add_cached_precision_argument(g)
    g.add_argument("--device", choices=DEVICES, default=DEVICES[0],
                   help="with --backend torch: cuda runs the model in fp16 on the GPU")
    add_request_arguments(g)
    g.add_argument("--lora-dir", type=Path, metavar="DIR",
                   help="with --prompt-syntax a1111: <lora:NAME:SCALE> tags choose DIR/NAME.safetensors at SCALE, "
                        "fused into engines built into the cache for that set (A1111's models/Lora)")
    g.add_argument("--image", type=Path, help="img2img: redraw this image (PNG/JPEG; its size is the output's "
                   "unless --height/--width resize it, Lanczos); --strength sets how much")
    g.add_argument("--mask", type=Path, help="inpainting: repaint --image where this greyscale mask of its size is "
                   "white, keep it where black (--mask-blur blurs it first)")
    g.add_argument("--control-image", type=Path, action="append", metavar="FILE",
                   help="ControlNet: the control image (resized to the output size, Lanczos); one for all "
                        "--controlnet folders, or one each in their order")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay each denoising step as a CUDA graph (GPU engines, ddim/euler, parallel mode)")
    g.add_argument("-o", "--output", type=Path, default=Path("answer.png"), help="PNG path (default answer.png)")

    bench = sub.add_parser("bench", help="latency and throughput per stage, side-by-side ratios")
    bsource = bench.add_mutually_exclusive_group()
    bsource.add_argument("--engines", type=Path, help="engines folder made by `answer-trt build`")
    bsource.add_argument("--model", help="model to build into the cache on first use (default `tiny`)")
    add_weights_arguments(bench)
    bench.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default answer,cfg,dns)")
    bench.add_argument("--steps", type=_at_least_1, default=30)
    bench.add_argument("--batch", type=_at_least_1, default=1)
    bench.add_argument("--runs", type=_at_least_1, default=5)
    bench.add_argument("--warmup", type=_int, default=1)
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.add_argument("--baseline", choices=("torch",), help="also time a plain PyTorch ANSWER loop")
    bench.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, metavar="NAME",
                       help="default: the model's own; ours (ddim, euler, dpm++) or A1111's names (\"Euler a\", ...)")
    bench.add_argument("--backend", choices=LOAD_BACKENDS, default=None,
                       help="with --model: the engines built into the cache (default onnxruntime; openvino: "
                            "OpenVINO, see --precision), or torch to run it eagerly instead")
    add_cached_precision_argument(bench)
    bench.add_argument("--device", choices=DEVICES, default=DEVICES[0],
                       help="with --backend torch: cuda runs the model on the GPU (fp16 rule)")
    bench.add_argument("--cuda-graph", action="store_true",
                       help="fused variants replay each step as a CUDA graph (unfused ANSWER stays eager)")
    bench.add_argument("--image", type=Path, help="also time img2img from this image (resized to the engines' "
                       "default size): its encoder call and int(steps x strength) steps, beside txt2img")
    bench.add_argument("--strength", type=float, default=None, help="with --image (default: diffusers', 0.8; "
                       "inpainting 1.0)")
    bench.add_argument("--mask", type=Path, help="with --image: time inpainting with this mask (white: repaint)")
    bench.add_argument("--mask-blur", type=_int, default=0, help="with --mask: blur radius in pixels (default 0)")

    i = sub.add_parser("info", help="print an engines folder's manifest")
    i.add_argument("folder", type=Path)

    from answer_trt.bench.load import add_load_parser  # serve and load: stdlib-only until they run
    from answer_trt.serving.cli_serve import add_serve_parser

    for served in (add_serve_parser(sub), add_load_parser(sub)):
        add_weights_arguments(served)
    return parser


# Set by Ctrl-C in the process's own command. Python can lose the KeyboardInterrupt itself (raised
# inside a __del__ or a weakref callback, it is printed as "ignored"); generate checks this at every step.
_CTRL_C = threading.Event()


def _on_ctrl_c(_signum: int, _frame: Any) -> None:
    _CTRL_C.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    _open_closed_streams()
    if argv is None:
        _set_ctrl_c(_on_ctrl_c)
    args = make_parser().parse_args(argv)
    try:
        os.getcwd()
    except FileNotFoundError:  # before torch loads: its libraries fail in their own words in a deleted folder
        _say("answer-trt: error: the current folder was deleted: cd to a folder that exists, then run again")
        return EXIT_FAILURE
    # Our own INFO lines; other libraries' warnings only (torch's exit-time INFO stats stay quiet).
    logging.basicConfig(level=logging.WARNING, format="answer-trt: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("answer_trt").setLevel(logging.INFO)
    try:
        code = _run(args, own_process=argv is None)
    finally:
        if argv is None:  # the process's own command: its exit code is decided, a second Ctrl-C must not undo it
            _ignore_ctrl_c()
    if argv is None and code == EXIT_INTERRUPTED:
        # Exit now, with 130: a Ctrl-C that arrived inside a C extension's import (onnxruntime's) can leave
        # the interpreter to end the process by SIGINT itself at shutdown (exit -2; seen by the hostile probe).
        # Everything of ours is closed or removed by now (PNGs and builds are staged).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)
    return code


def _set_ctrl_c(handler: Any) -> None:
    """SIGINT's handler, where Python lets one be set (the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def _ignore_ctrl_c() -> None:
    _set_ctrl_c(signal.SIG_IGN)


def _run(args: argparse.Namespace, own_process: bool) -> int:
    try:
        return _dispatch(args)
    except KeyboardInterrupt:  # what was being written is staged or temporary: nothing half-written stays
        return _interrupted(own_process)
    except Exception:
        # A Ctrl-C that a library turned into an error of its own is still a Ctrl-C: pybind11 modules
        # (onnxruntime's) report one during their import as ImportError("initialization failed").
        if _CTRL_C.is_set():
            return _interrupted(own_process)
        raise


def _interrupted(own_process: bool) -> int:
    if own_process:
        _ignore_ctrl_c()
    _say("answer-trt: interrupted; nothing was left half-written")
    return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    """The command's exit code; user errors and the machine's are one line each."""
    try:
        handlers = {"build": _build, "generate": _generate, "bench": _bench, "info": _info}
        return (handlers.get(args.command) or args.handler)(args)  # serve, load: set_defaults(handler=...)
    except UserInputError as exc:  # messages may quote a PNG's, a manifest's or a config's text
        if _CTRL_C.is_set():  # e.g. "not installed" from an import the Ctrl-C broke
            raise KeyboardInterrupt from None
        print(f"answer-trt: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteImageError as exc:
        print(f"answer-trt: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # stdout or stderr closed under us: nothing left to tell
        return EXIT_FAILURE
    except OSError as exc:  # the machine's side: a full disk, a folder we may not write, a name too long
        where = f" ({_shortened(str(exc.filename))})" if exc.filename else ""
        fix = "free some space" if exc.errno == errno.ENOSPC else "pick a path you can write (for the cache: set " \
            "ANSWER_TRT_CACHE to a writable folder)"
        _say(f"answer-trt: error: {exc.strerror or exc}{where}: {fix}, then run again")
        return EXIT_FAILURE


def _open_closed_streams() -> None:
    """A stdout or stderr the caller closed (``2>&-``) reads as the null device: messages
    are lost, the work is not (Python sets a closed standard stream to None)."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process


def _shortened(text: str, limit: int = 160) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (a path over the file
    system's limits stays one readable line)."""
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


def _say(line: str) -> None:
    try:
        print(printable(line), file=sys.stderr)
    except (OSError, ValueError):  # stderr itself is closed
        pass


def _build(args: argparse.Namespace) -> int:
    from answer_trt.build_config import BuildConfig
    from answer_trt.loaders import build_engines

    started = time.perf_counter()
    config = BuildConfig(
        model=args.model, out=args.out, backend=args.backend, precision=args.precision,
        max_batch=args.max_batch, height=args.height, width=args.width, force=args.force,
        check=args.check, optimize=args.optimize, variant=args.variant, loras=_loras(args), device=args.device,
        model_config=args.config, vae=args.vae,
        components=args.components, controlnets=_controlnets(args),
        max_prompt_chunks=args.max_prompt_chunks,
    )
    build_engines(config, log=lambda msg: print(msg, file=sys.stderr))
    print(f"answer-trt: build finished in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from answer_trt.bench.report import format_table
    from answer_trt.bench.suite import BenchConfig, run_bench
    from answer_trt.files import write_text_atomic

    config = BenchConfig(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), steps=args.steps,
        batch=args.batch, runs=args.runs, warmup=args.warmup, baseline=args.baseline, scheduler=args.scheduler,
        cuda_graph=args.cuda_graph, image=None if args.image is None else str(args.image), strength=args.strength,
        mask=None if args.mask is None else str(args.mask), mask_blur=args.mask_blur,
    )
    if args.json is not None:
        check_writable_file("--json", args.json)
    log = lambda msg: print(f"answer-trt: {msg}", file=sys.stderr)  # noqa: E731
    pipe = _load_pipeline(args, batch=args.batch, log=log)
    eager_unet = None
    if config.baseline == "torch":
        from answer_trt.models.lora import check_lora
        from answer_trt.models.source import load_model, resolve_model

        built = pipe.limits.build.model_config if pipe.limits.build is not None else None  # --engines: its --config
        source = resolve_model(pipe.model_name if args.model is None else args.model, args.variant,
                               args.config if args.model is not None else built)
        eager_unet = load_model(source.path, source.variant, [check_lora(spec) for spec in _loras(args)]).unet
    report = run_bench(pipe, config, eager_unet, log=log)
    print(format_table(report))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report.to_json(), indent=2) + "\n")
        print(f"answer-trt: wrote {args.json}", file=sys.stderr)
    return 0


def _load_pipeline(
    args: argparse.Namespace, height: int | None = None, width: int | None = None, batch: int = 1,
    log: Callable[[str], None] = print,
) -> Pipeline:
    """generate's and bench's pipeline: ``--engines``, ``--model`` run eagerly (``--backend
    torch [--device cuda]``), or ``--model`` built into the cache for this size and batch."""
    from answer_trt.loaders import build_cached, from_engines, from_model_eager

    precision = getattr(args, "precision", None)
    if precision is not None and (args.engines is not None or args.backend == "torch"):
        raise UserInputError(f"--precision {precision} chooses the engines built into the cache for --model: an "
                             "--engines folder has the precision it was built with, and --backend torch follows "
                             "--device; drop --precision")
    if precision == "bf16" and args.backend in (None, "onnxruntime"):
        raise UserInputError("--precision bf16 runs on OpenVINO: add --backend openvino (onnxruntime runs fp32)")
    if args.engines is not None:
        if args.backend == "torch":
            raise UserInputError("--backend torch runs a model, not engines: use --model with it")
        if args.config is not None:
            raise UserInputError("--config gives a single-file --model its configs; an --engines folder was built "
                                 "with them already: drop --config")
        pipe = from_engines(args.engines, expect_variant=args.variant,
                            expect_loras=_loras(args) if args.lora else None, expect_vae=args.vae)
        if _controlnets(args):
            from answer_trt.loaders import check_built_controlnets
            from answer_trt.manifest import read_manifest

            check_built_controlnets(args.engines, read_manifest(args.engines), _controlnets(args))
        return pipe
    if args.device != DEVICES[0] and args.backend != "torch":
        raise UserInputError(f"--device {args.device} applies to --backend torch: add --backend torch, or build "
                             "TensorRT engines for the GPU")
    model, variant, loras = "tiny" if args.model is None else args.model, args.variant, _loras(args)
    if args.backend == "torch":
        return from_model_eager(model, args.device, variant=variant, loras=loras, config=args.config, vae=args.vae,
                                controlnets=_controlnets(args))
    return from_engines(build_cached(model, height, width, batch, log=log, variant=variant, loras=loras,
                                     config=args.config, vae=args.vae, backend=args.backend or "onnxruntime",
                                     controlnets=_controlnets(args), precision=precision),
                        verify=False)


def _replay_precision(recorded: dict[str, Any], backend: str | None, png: Path) -> str | None:
    """The precision a replay of ``recorded`` builds OpenVINO engines in: the image's, so that it
    redraws to 0 levels (an fp32 image stays fp32 where bf16 became the default); None (the
    default) for other backends, or where this CPU lacks the image's bf16 (said on stderr)."""
    if backend != "openvino" or recorded.get("backend") != "openvino" or recorded.get("precision") not in ("fp32",
                                                                                                           "bf16"):
        return None
    if recorded["precision"] == "bf16":
        from answer_trt.backends.openvino import has_native_bf16

        if not has_native_bf16():
            _say(f"answer-trt: --from-png {png} was drawn in bf16, which this CPU lacks: redrawn in fp32 (a few "
                 "levels from the image)")
            return None
    return str(recorded["precision"])


def _check_output(path: Path, batch: int) -> None:
    """Refuse an output path that could not take ``batch`` PNGs, before any work."""
    check_writable_file("-o", path)
    if path.suffix.lower() != ".png":
        raise UserInputError(f"-o {path}: the output must be a .png file")
    for target in numbered_paths(path, batch):
        if target.is_dir():
            raise UserInputError(f"-o {path}: {target} is a folder; pick a file name")


def _generate(args: argparse.Namespace) -> int:
    from answer_trt.images import save_pngs

    request, index, recorded = _request(args)
    request, init = _input_image(args, request, recorded is not None)
    _check_output(args.output, 1 if index is not None else request.batch)
    _check_before_load(args, request)
    if init is None and request.strength is not None:
        raise UserInputError("--strength applies to img2img: give --image FILE, or leave --strength out")
    if request.mask_blur and (init is None or init.mask is None):
        raise UserInputError("--mask-blur applies to inpainting: give --image FILE --mask FILE, or leave --mask-blur "
                             "out")
    if args.lora_dir is not None:
        from answer_trt.prompts.lora_dir import lora_dir_loras

        args.lora = list(lora_dir_loras(args.lora_dir, _loras(args), request.prompt_syntax,
                                         (request.prompt, request.negative_prompt), engines=args.engines))
    if recorded is not None and args.engines is None:  # a replay's LoRAs, checked before anything is built
        from answer_trt.models.lora import check_lora
        from answer_trt.models.vae_file import vae_digest
        from answer_trt.pipeline import BuiltWeights

        vae = Path(args.vae).expanduser() if args.vae else None
        weights = BuiltWeights(loras=tuple(check_lora(spec).tag for spec in _loras(args)),
                               vae_hash=vae_digest(vae) if vae is not None and vae.exists() else None,
                               vae_name=vae.name if vae is not None else None)
        weights.check_replay(recorded, f"--from-png {args.from_png}")
    if recorded is not None and args.engines is None and args.precision is None:
        args.precision = _replay_precision(recorded, args.backend, args.from_png)
    started = time.perf_counter()
    pipe = _load_pipeline(args, request.height, request.width, request.batch,
                          log=lambda msg: print(msg, file=sys.stderr))
    loaded = time.perf_counter()
    if recorded is not None:  # a replay: with the LoRAs the image was drawn with
        pipe.weights.check_replay(recorded, f"--from-png {args.from_png}")
    control = _control_images(args, request, pipe)
    if control is not None and not request.control_image_sha256:  # a replay's is checked against the images
        request = request.replace(control_image_sha256=control.sha256)

    progress = _progress_bar(request.steps)
    try:
        result = pipe.run(request, cuda_graph=args.cuda_graph, callback=_step_callback(progress), init=init,
                          control=control)
    finally:
        if progress:
            progress.close()
    paths = save_pngs(result.images if index is None else result.images[index:index + 1], args.output)
    h, w = result.config.height, result.config.width
    assert h is not None and w is not None
    print(
        f"answer-trt: wrote {', '.join(map(str, paths))}; {result.timings.summary(len(paths), h, w)}; "
        f"load {loaded - started:.2f} s",
        file=sys.stderr,
    )
    return 0


def _control_images(args: argparse.Namespace, request: GenerateRequest, pipe: Pipeline) -> Any:
    """ControlNet: ``--control-image`` read at the output size (``answer_trt.controlnet``); a replay
    of an image drawn with control needs the same images (``control_image_sha256``), checked by the run."""
    if not args.control_image:
        if request.control_image_sha256:
            raise UserInputError(f"--from-png {args.from_png} was drawn with control image(s) (sha256 "
                                 f"{request.control_image_sha256[:16]}...): pass them with --control-image FILE")
        return None
    from answer_trt.controlnet import controlnet_engines, load_control_images

    if request.control_image_sha256 is None and args.from_png is not None:
        raise UserInputError(f"--from-png {args.from_png} was drawn without a control image: drop --control-image")
    height, width = request.height or pipe.default_size[0], request.width or pipe.default_size[1]
    images = [Path(p) for p in args.control_image]
    return load_control_images(images, len(controlnet_engines(pipe.engines)), height, width)


def _input_image(args: argparse.Namespace, request: GenerateRequest, replay: bool) -> tuple[GenerateRequest, Any]:
    """img2img: ``--image`` read (``answer_trt.img2img.load_init_image``, resized to --height/--width
    where given) and named in the request by its sha256, which sets the size; a replay of an image
    drawn from an input image needs that image again (same pixels), and one drawn without takes none."""
    if args.image is None:
        if args.mask is not None:
            raise UserInputError("--mask is inpainting's: pass the image to repaint with --image FILE")
        if request.image_sha256:
            raise UserInputError(f"--from-png {args.from_png} was drawn from an input image (sha256 "
                                 f"{request.image_sha256[:16]}...): pass that image with --image FILE")
        return request, None
    from answer_trt.img2img import load_init_image

    if replay and request.image_sha256 is None and request.strength is None:
        raise UserInputError(f"--from-png {args.from_png} was drawn without an input image: drop --image")
    init = load_init_image(args.image, request.height, request.width, what="--image")
    if replay and request.image_sha256 and request.image_sha256 != init.sha256:
        raise UserInputError(f"--image {args.image} is not the image --from-png {args.from_png} was drawn from (its "
                             f"pixels' sha256 is {init.sha256[:16]}..., the PNG records "
                             f"{request.image_sha256[:16]}...): pass that image")
    request = request.replace(image_sha256=init.sha256, height=init.height, width=init.width)
    if args.mask is None:
        if request.mask_sha256:
            raise UserInputError(f"--from-png {args.from_png} was inpainted with a mask (sha256 "
                                 f"{request.mask_sha256[:16]}...): pass that mask with --mask FILE")
        return request, init
    from answer_trt.inpaint import with_mask

    if replay and request.image_sha256 and not request.mask_sha256:
        raise UserInputError(f"--from-png {args.from_png} was drawn without a mask: drop --mask")
    init = with_mask(init, args.mask, request.mask_blur, what="--mask")
    if replay and request.mask_sha256 and request.mask_sha256 != init.mask_sha256:
        raise UserInputError(f"--mask {args.mask} is not the mask --from-png {args.from_png} was inpainted with: pass "
                             "that mask")
    return request.replace(mask_sha256=init.mask_sha256), init


def _check_before_load(args: argparse.Namespace, request: GenerateRequest) -> None:
    """What can be refused before engines are built or loaded: every request value and its
    cross-field rules (``GenerateRequest.sampling_config``), and ``--cuda-graph`` where the
    engines will not be on a CUDA GPU."""
    request.sampling_config()
    from answer_trt.controlnet import check_control_fields

    check_control_fields(request)
    if not args.cuda_graph:
        return
    if args.engines is not None:
        from answer_trt.manifest import read_manifest

        on_gpu = read_manifest(args.engines).runs_on_cuda
    else:
        on_gpu = args.backend == "torch" and args.device == "cuda"
    if not on_gpu:
        from answer_trt.pipeline import CUDA_GRAPH_NEEDS_GPU

        raise UserInputError(CUDA_GRAPH_NEEDS_GPU)


def _request(args: argparse.Namespace) -> tuple[GenerateRequest, int | None, dict[str, Any] | None]:
    """The request to draw, which image of its batch to write (``None``: all of them), and
    the image's metadata where it is a replay: from the flags, or from ``--from-png``'s
    metadata (its image at its ``batch_index``)."""
    if args.from_png is None:
        if args.prompt is None:
            raise UserInputError("give a PROMPT (or --from-png IMAGE to redraw an image answer-trt wrote)")
        keywords = request_keywords(args)
        if isinstance(args.seed, _DrawnSeed):
            if args.seeds is not None:
                raise UserInputError("--seed random with --seeds: --seeds gives every image its seed; leave --seed out")
            print(f"answer-trt: --seed random drew seed {args.seed}", file=sys.stderr)
            keywords["seed"] = int(args.seed)
        return make_request(args.prompt, keywords), None, None
    if args.prompt is not None:
        raise UserInputError("--from-png takes the prompt from the image: leave PROMPT out")
    from PIL import Image, UnidentifiedImageError

    try:
        # Read whole first: a FIFO would block Image.open, a device never end.
        data = read_bounded(Path(args.from_png), MAX_PNG_BYTES, what="PNG")
        with Image.open(io.BytesIO(data)) as image:
            own, text = image.info.get(RECORD), image.info.get("parameters")
        if isinstance(own, str):  # answer-trt's record
            recorded = json.loads(own)
        elif isinstance(text, str) and text.lstrip().startswith("{"):  # answer-trt's PNGs before the infotext
            recorded = json.loads(text)
        elif isinstance(text, str):  # A1111's infotext: what answer-trt supports of it
            recorded, ignored = parse_infotext(text, field_kinds())
            recorded.setdefault("prompt_syntax", "a1111")  # A1111 read its prompt in its own syntax
            if ignored:
                _say(f"answer-trt: --from-png {args.from_png}: redrawn without what answer-trt does not have: "
                     f"{', '.join(ignored)}")
        else:
            recorded = None
    except UserInputError:  # read_bounded's: not a regular file, or too large
        raise
    except Image.DecompressionBombError:  # its header claims more pixels than PIL will open
        raise UserInputError(f"--from-png {args.from_png}: the image claims a size no answer-trt image has; give a PNG "
                             "answer-trt wrote") from None
    except (OSError, UnidentifiedImageError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise UserInputError(f"--from-png {args.from_png}: not a readable PNG with answer-trt's metadata") from None
    request = from_parameters(recorded if isinstance(recorded, dict) else {})
    request.sampling_config()  # every recorded value checked (types included) before it is used
    index = recorded.get("batch_index", 0) if isinstance(recorded, dict) else 0
    if not isinstance(index, int) or not 0 <= index < request.batch:
        raise UserInputError(f"--from-png {args.from_png}: batch_index {index!r} is not an image of its batch")
    return request, index, recorded if isinstance(recorded, dict) else {}


class _Progress:
    def __init__(self, steps: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, unit="step", leave=False, file=sys.stderr)

    def update(self, _index: int, _total: int) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _step_callback(progress: _Progress | None) -> Callable[[int, int], None]:
    """generate's per-step callback: the progress bar, and a Ctrl-C whose KeyboardInterrupt was
    lost on the way (``_CTRL_C``) stops the run here."""

    def callback(index: int, total: int) -> None:
        if _CTRL_C.is_set():
            raise KeyboardInterrupt
        if progress is not None:
            progress.update(index, total)

    return callback


def _progress_bar(steps: int) -> _Progress | None:
    return _Progress(steps) if sys.stderr.isatty() else None


def _engines_folders(root: Path, manifest_name: str, depth: int = 2) -> list[Path]:
    """Folders under ``root`` (at most ``depth`` levels down) that hold a manifest, sorted."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        level = sorted(p for folder in level for p in _subfolders(folder))
        found += [p for p in level if (p / manifest_name).is_file()]
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def _info(args: argparse.Namespace) -> int:
    from answer_trt.manifest import MANIFEST_NAME, mismatched_files, read_manifest

    if args.folder.is_dir() and not (args.folder / MANIFEST_NAME).exists():
        listed = _engines_folders(args.folder, MANIFEST_NAME)
        if listed:  # a cache (or any folder of engines folders): what is in it
            print(f"{args.folder} holds {len(listed)} engines folder(s); `answer-trt info FOLDER` shows one:")
            for folder in listed:
                print(f"  {folder}")
            return 0
    manifest = read_manifest(args.folder)
    bad = mismatched_files(args.folder, manifest)
    lines = [
        f"engines:    {args.folder}",
        f"model:      {manifest.model_name} (sha256 {manifest.model_hash[:16]}...), "
        + (f"weights variant {manifest.variant}" if manifest.variant else
           "one single-file checkpoint" if manifest.single_file else "plain weights"),
        *([f"checkpoint: {manifest.single_file.family} single file (sha256 {manifest.single_file.sha256}), "
           f"configs and tokenizer from {manifest.single_file.config}"] if manifest.single_file else []),
        "loras:      " + ("none (build with --lora FILE[:SCALE] to fuse adapters)" if not manifest.loras else
                          f"{len(manifest.loras)} fused into the weights, in this order:"),
        *(f"  {entry.name}  scale {entry.scale!r}  sha256 {entry.sha256}  ({entry.path})" for entry in manifest.loras),
        "vae:        " + (f"{manifest.vae.name} ({manifest.vae.layout}, sha256 {manifest.vae.sha256}) in place of the "
                          f"model's ({manifest.vae.path})" if manifest.vae else "the model's own"),
        f"backend:    {manifest.backend}, {manifest.precision}"
        + (f", compiled for {manifest.device}" if manifest.device else "")
        + (f" (GPU compute capability {manifest.gpu_capability})" if manifest.gpu_capability else ""),
        f"built for:  batch <= {manifest.max_batch}, width {manifest.width} x height {manifest.height} px, "
        f"prompts <= {manifest.max_prompt_chunks} chunks of {manifest.info.dims.text_max_length - 2} tokens "
        f"(A1111 syntax), prediction {manifest.info.prediction_type}",
        f"key:        {manifest.key}",
        f"versions:   {', '.join(f'{k} {v}' for k, v in sorted(manifest.versions.items()))}",
        "components:",
    ]
    for name, entry in manifest.components.items():
        profile = ", ".join(f"{sym} {lo}..{hi} (opt {opt})" for sym, (lo, opt, hi) in entry.profile.items())
        lines.append(f"  {name:<13} {entry.file}  [{profile}]")
        for tensor in (*entry.spec.inputs, *entry.spec.outputs):
            kind = "in " if tensor in entry.spec.inputs else "out"
            lines.append(f"      {kind} {tensor.name:<22} {tensor.dtype:<8} {list(tensor.shape)}")
    lines.append(f"files:      {len(manifest.files)}, " + ("all match their checksums" if not bad else
                                                            f"MISMATCH: {', '.join(bad)}"))
    check = manifest.accuracy
    lines.append("accuracy:   " + ("not checked (build with --check)" if check is None else
                                   f"passed, {check.tool} against {check.reference}"))
    for name, result in (check.components.items() if check else ()):
        lines.append(f"  {name:<13} {result.precision}: max abs error {result.max_abs_error:.3g} (atol "
                     f"{result.atol:g}), max rel error {result.max_rel_error:.3g} (rtol {result.rtol:g})")
    lines += _optimization_lines(manifest.graph_optimization)
    if manifest.session is not None:
        measured = ", ".join(f"{'default' if k == '0' else k} {v:.2f} ms"
                             for k, v in manifest.session.unet_call_ms.items())
        session = manifest.session
        where = f"on {session.cpus} CPUs; used on machines with as many" if session.cpus else "used everywhere"
        threads = "OpenVINO inference threads" if manifest.backend == "openvino" else "intra-op threads"
        shapes = "" if session.static_shapes is None else f", {'static' if session.static_shapes else 'dynamic'} shapes"
        lines.append(f"session:    {threads} {session.intra_op_threads or 'default'}{shapes} "
                     f"(measured at build {where}, UNet call: {measured})")
    print("\n".join(printable(line) for line in lines))  # a manifest is someone else's file
    return 0 if not bad else EXIT_USAGE


def _optimization_lines(optimization: GraphOptimization | None) -> list[str]:
    """``answer-trt info``'s lines on the build-time graph optimization."""
    if optimization is None:
        return ["graphs:     as exported (build with --optimize to run ONNX Runtime's transformer optimizer)"]
    lines = [f"graphs:     {optimization.tool}"]
    for name, entry in optimization.components.items():
        fused = ", ".join(f"{op} {n}" for op, n in sorted(entry.fusions.items())) or "no fusions"
        line = f"  {name:<13} {'optimized' if entry.kept else 'as exported'} ({entry.note}): {fused}"
        if entry.max_abs_error is not None:
            line += f"; max abs error {entry.max_abs_error:.3g} vs the exported graph"
        if entry.exported_ms is not None and entry.optimized_ms is not None:
            line += f"; {entry.exported_ms:.2f} -> {entry.optimized_ms:.2f} ms per call"
        lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
