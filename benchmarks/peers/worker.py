"""A persistent peer worker for benchmarks/peers/run.py, run in the peer's own
environment: it loads its pipeline once, then answers requests, one JSON object per
line on stdin, with one JSON object per line on stdout (library output goes to stderr).

Requests::

    {"cmd": "run", "method": "cfg", "jobs": [[prompt, seed], ...], "steps": 30,
     "guidance_scale": 7.5, "size": 32, "save_dir": "/tmp/x" or null}
    {"cmd": "quit"}

Replies: ``{"ready": true, "versions": {...}, "threads": {...}}`` once loaded; then per
run ``{"seconds": [...], "images": [paths]}`` (seconds per image: the whole pipeline
call, prompt to PIL image, one image per call); ``{"error": "..."}`` on failure.

Peers: ``answer-trt`` (engines folder; methods cfg and answer, answer-trt's defaults),
``optimum`` (optimum's ORTStableDiffusionPipeline on an exported folder; cfg),
``diffusers`` (StableDiffusionPipeline, eager fp32 on the CPU; cfg), ``answer-trt-openvino``
(an engines folder built with ``--backend openvino``), ``optimum-intel`` (optimum-intel's
OVStableDiffusionPipeline on an ``optimum-cli export openvino`` folder, fp32; cfg).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

PACKAGES = ("answer-trt", "torch", "numpy", "onnxruntime", "onnx", "diffusers", "transformers", "tokenizers",
            "huggingface_hub", "optimum", "optimum-onnx", "pillow", "openvino", "optimum-intel")

# (prompt, seed, method, steps, guidance scale, size) -> HxWx3 uint8 image
Generate = Callable[[str, int, str, int, float, int], np.ndarray]


def versions() -> dict[str, str]:
    """Installed versions of the libraries that matter, in this environment."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = sys.version.split()[0]
    return found


def all_versions() -> dict[str, str]:
    """Every distribution installed in this environment (``pip freeze``'s content)."""
    return dict(sorted((d.metadata["Name"], d.version) for d in metadata.distributions()))


def load_answer_trt(folder: Path, threads: int) -> tuple[Generate, dict[str, Any]]:
    """answer-trt's engines with its own session settings, except the intra-op thread
    count, which is set to the benchmark's (the build's measured choice is overridden
    so that every peer runs on the same threads)."""
    from answer_trt.backends.ort import SessionSettings
    from answer_trt.loaders import from_engines

    pipe = from_engines(folder, session=SessionSettings(intra_op_threads=threads))

    def generate(prompt: str, seed: int, method: str, steps: int, scale: float, size: int) -> np.ndarray:
        result = pipe.generate(prompt, method=method, steps=steps, guidance_scale=scale, seed=seed,
                               height=size, width=size)
        return np.asarray(result.images[0].convert("RGB"))

    ort_threads = sorted({e.session.get_session_options().intra_op_num_threads
                          for e in pipe.engines.values() if hasattr(e, "session")})
    if pipe.backend == "openvino":  # OpenVINO engines: the build's measured thread count and shape policy
        return generate, {"openvino_inference_threads": sorted({e.threads for e in pipe.engines.values()}),
                          "openvino_static_shapes": sorted({e.static for e in pipe.engines.values()})}
    return generate, {"ort_intra_op": ort_threads, "session": SessionSettings(intra_op_threads=threads).describe()}


def _diffusers_cfg(pipe: Any) -> Generate:
    """CFG through a pipeline with diffusers' call (optimum's ONNX Runtime and OpenVINO ones are
    diffusers' StableDiffusionPipeline over their sessions): the initial latents drawn from a CPU
    generator of the seed, exactly as diffusers draws them."""
    import torch

    def generate(prompt: str, seed: int, method: str, steps: int, scale: float, size: int) -> np.ndarray:
        _only_cfg(method)
        generator = torch.Generator("cpu").manual_seed(seed)
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=scale, height=size, width=size,
                   generator=generator, output_type="pil")
        return np.asarray(out.images[0].convert("RGB"))

    return generate


def load_optimum_intel(folder: Path, threads: int, hint: str = "f32") -> tuple[Generate, dict[str, Any]]:
    """optimum-intel's ``OVStableDiffusionPipeline`` on its exported IR folder, compiled for
    the CPU in fp32 (``INFERENCE_PRECISION_HINT`` f32: OpenVINO's default on a CPU with
    bf16 is bf16; ``hint="bf16"``: that default, asked for by name) with the latency hint, the
    benchmark's thread count (``INFERENCE_NUM_THREADS``; answer-trt's OpenVINO engines keep their
    build's measured count), and its default dynamic shapes."""
    from optimum.intel import OVStableDiffusionPipeline

    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
    pipe = OVStableDiffusionPipeline.from_pretrained(folder, ov_config=config, compile=True)
    pipe.set_progress_bar_config(disable=True)

    generate = _diffusers_cfg(pipe)
    unet = pipe.unet.request  # the compiled UNet
    return generate, {"openvino_inference_threads": [int(unet.get_property("INFERENCE_NUM_THREADS"))],
                      "openvino_precision": str(unet.get_property("INFERENCE_PRECISION_HINT"))}


def load_optimum(folder: Path, threads: int, spinning: bool = True) -> tuple[Generate, dict[str, Any]]:
    """``spinning=False`` turns ONNX Runtime's spin-waiting off, as answer-trt does
    (optimum leaves it on)."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    pipe = ORTStableDiffusionPipeline.from_pretrained(folder, session_options=options,
                                                      provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)

    return _diffusers_cfg(pipe), {"ort_intra_op": [threads], "ort_spinning": spinning}


def load_diffusers(folder: Path, threads: int) -> tuple[Generate, dict[str, Any]]:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, seed: int, method: str, steps: int, scale: float, size: int) -> np.ndarray:
        _only_cfg(method)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=scale, height=size, width=size,
                       generator=generator, output_type="pil")
        return np.asarray(out.images[0].convert("RGB"))

    return generate, {}


def _only_cfg(method: str) -> None:
    if method != "cfg":
        raise ValueError(f"this peer runs only cfg, not {method!r}")


LOADERS: dict[str, Callable[[Path, int], tuple[Generate, dict[str, Any]]]] = {
    "answer-trt": load_answer_trt,
    "optimum": load_optimum,
    "optimum-no-spinning": lambda folder, threads: load_optimum(folder, threads, spinning=False),
    "diffusers": load_diffusers,
    "answer-trt-openvino": load_answer_trt,
    "optimum-intel": load_optimum_intel,
    "optimum-intel-bf16": lambda folder, threads: load_optimum_intel(folder, threads, hint="bf16"),
}


def run_request(generate: Generate, request: dict[str, Any]) -> dict[str, Any]:
    """Time each image of a ``run`` request; save them (outside the timing) when asked."""
    seconds, images = [], []
    save_dir = Path(request["save_dir"]) if request.get("save_dir") else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    for i, (prompt, seed) in enumerate(request["jobs"]):
        start = time.perf_counter()
        image = generate(prompt, int(seed), request["method"], int(request["steps"]),
                         float(request["guidance_scale"]), int(request["size"]))
        seconds.append(time.perf_counter() - start)
        if save_dir is not None:
            path = save_dir / f"{i:03d}.npy"
            np.save(path, image)
            images.append(str(path))
    return {"seconds": seconds, "images": images}


def serve(generate: Generate, requests: IO[str], replies: IO[str]) -> None:
    """Answer requests until ``quit`` or end of input."""
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("cmd") == "quit":
                return
            if request.get("cmd") != "run":
                raise ValueError(f"unknown command {request.get('cmd')!r}")
            reply = run_request(generate, request)
        except Exception as exc:  # reported to the driver, which stops the run
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description="persistent peer worker (benchmarks/peers/run.py starts it)")
    parser.add_argument("--peer", required=True, choices=sorted(LOADERS))
    parser.add_argument("--folder", required=True, type=Path, help="engines / exported ONNX / model folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # The protocol owns the real stdout; everything else printed (by Python or C code) goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(args.threads)
    try:
        generate, threads = LOADERS[args.peer](args.folder, args.threads)
    except Exception as exc:
        traceback.print_exc()
        replies.write(json.dumps({"error": f"loading {args.peer}: {type(exc).__name__}: {exc}"}) + "\n")
        replies.flush()
        return 1
    threads["torch"] = torch.get_num_threads()
    replies.write(json.dumps({"ready": True, "versions": versions(), "environment": all_versions(),
                              "python_executable": sys.executable, "threads": threads}) + "\n")
    replies.flush()
    serve(generate, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
