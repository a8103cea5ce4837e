"""Per-call latency of one model's UNet under ONNX Runtime (fp32) and OpenVINO (fp32 and
bf16), from engines folders built by ``answer-trt build``, in one process, calls alternating
(the machine's cores are shared, so only ratios within one run mean anything).

    python -m benchmarks.openvino_unet --model tiny --work /tmp/ov-bench --rounds 6

Builds (or reuses) ``<work>/onnxruntime-fp32``, ``<work>/openvino-fp32`` and
``<work>/openvino-bf16`` (bf16 only where the CPU has native bf16), then times (OpenVINO
with dynamic shapes, and with a static-shape model compiled for the call: ``--shapes``) one
ANSWER-shaped UNet call (3 rows per image: ``--batch`` x 3, the built size, 77 tokens) per
runtime per round, after a warm-up, and prints the median per runtime, its ratio to ONNX
Runtime's, and each output's max abs difference from ONNX Runtime's. Each runtime runs with
the thread count its build measured (the manifest's record), as ``answer-trt generate`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUNTIMES = {"onnxruntime-fp32": ("onnxruntime", "fp32"), "openvino-fp32": ("openvino", "fp32"),
            "openvino-bf16": ("openvino", "bf16")}


def unet_engine(folder: Path, static: bool = False) -> Any:
    """The UNet engine of ``folder`` alone, as the loader makes it (threads from the manifest),
    with dynamic shapes or (``static``, OpenVINO) a static-shape model per call shape."""
    from answer_trt.manifest import read_manifest

    manifest = read_manifest(folder)
    entry = manifest.components["unet"]
    threads = manifest.session.threads_here(os.cpu_count()) if manifest.session is not None else 0
    if manifest.backend == "openvino":
        from answer_trt.backends.openvino import OpenVinoEngine, inference_precision

        hint = inference_precision("unet", manifest.precision, manifest.info.vae_force_upcast)
        return OpenVinoEngine(folder / entry.file, entry.spec, entry.profile, hint, threads, static=static)
    from answer_trt.backends.ort import OnnxRuntimeEngine, SessionSettings

    return OnnxRuntimeEngine(folder / entry.file, entry.spec, entry.profile,
                             settings=SessionSettings(intra_op_threads=threads))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--work", type=Path, required=True, help="where the engines folders are built")
    parser.add_argument("--batch", type=int, default=1, help="images per call (rows: 3 x batch)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--shapes", choices=("dynamic", "static", "both"), default="both",
                        help="OpenVINO's shape policies to time (a full-size UNet: one policy per run fits in less "
                             "memory)")
    args = parser.parse_args(argv)

    from answer_trt.backends.openvino import cpu_capabilities
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build
    from answer_trt.export.sample_inputs import sample_inputs

    runtimes = {k: v for k, v in RUNTIMES.items() if v[1] != "bf16" or "BF16" in cpu_capabilities()}
    engines = {}
    for label, (backend, precision) in runtimes.items():
        folder = args.work / label
        build(BuildConfig(model=args.model, out=folder, backend=backend, precision=precision,
                          max_batch=max(args.batch, 1), check=False), log=lambda _m: None)
        if backend == "onnxruntime":
            engines[label] = unet_engine(folder)
            continue
        for policy in ("dynamic", "static") if args.shapes == "both" else (args.shapes,):
            engines[f"{label} {policy}"] = unet_engine(folder, static=policy == "static")
    spec, profile = engines["onnxruntime-fp32"].spec, engines["onnxruntime-fp32"].profile
    binding = {symbol: opt for symbol, (_low, opt, _high) in profile.items()}
    binding["batch"] = 3 * args.batch
    feeds = sample_inputs(spec, binding, torch.float32)
    outputs = {label: engine.run(feeds)[spec.output_names[0]] for label, engine in engines.items()}  # warm-up
    times: dict[str, list[float]] = {label: [] for label in engines}
    labels = list(engines)
    for round_ in range(args.rounds):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            started = time.perf_counter()
            engines[label].run(feeds)
            times[label].append((time.perf_counter() - started) * 1e3)
    base = statistics.median(times["onnxruntime-fp32"])
    shape = "x".join(str(d) for d in feeds[spec.input_names[0]].shape)
    print(f"model {args.model}, UNet call with sample {shape}, median of {args.rounds} alternating calls, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("| runtime, precision | ms per call | vs ONNX Runtime | max abs diff vs ONNX Runtime |")
    print("|---|---|---|---|")
    reference = outputs["onnxruntime-fp32"].numpy()
    for label in labels:
        median = statistics.median(times[label])
        diff = float(np.abs(outputs[label].float().numpy() - reference).max())
        print(f"| {label} | {median:,.1f} | {base / median:.2f}x | {diff:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
