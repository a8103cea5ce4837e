"""The GPU run's AOTInductor stages (issue 36): build, load and run ``--backend inductor``
engines, and the SDXL row-count puzzle. Called by ``stages.py`` in a stage's own process.

- ``inductor_tiny``: ``tiny`` built with ``--backend inductor`` for the run's device
  (compile s), loaded again (load s), ANSWER / CFG / DNS images against ONNX Runtime's
  (levels), and on CUDA ``--cuda-graph`` against eager.
- ``inductor_sd15`` / ``inductor_sdxl``: the random-weight full-size folder (made by
  ``fullsize.make_folder`` unless the eager stage made it), built for CUDA in fp16 with one
  image per call (rows 1..3) at the model's size; compile and load seconds; ``bench``'s
  suite (ANSWER, CFG, DNS; eager and CUDA graph; batch 1); the image checked finite.
- ``sdxl_rows``: the eager SDXL UNet at 1..4 rows, with cuDNN's autotuner off and on, and
  the kernels that take the time at 2 and at 3 rows (torch.profiler).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = Path(os.environ.get("GPU_RUN_MODELS", "/tmp/answer-trt-gpu-models"))


def _folder(kind: str, device: str) -> tuple[Path, dict[str, Any]]:
    """The random-weight ``kind`` folder, made here unless an earlier stage made it."""
    sys.path.insert(0, str(HERE))
    from fullsize import make_folder

    folder = MODELS / kind
    if (folder / "model_index.json").is_file():
        return folder, {"made_by": "an earlier stage"}
    started = time.perf_counter()
    facts = make_folder(kind, folder, device=device)
    return folder, {**facts, "make_s": round(time.perf_counter() - started, 1)}


def _build(model: str, out: Path, device: str, progress: dict[str, Any] | None = None, partial: Path | None = None,
           **config: Any) -> tuple[Any, float]:
    """Build inductor engines; each log line of the build is also recorded in
    ``progress["build_log"]`` with its second, and ``progress`` rewritten to ``partial``, so a
    stage cut short by its budget still says how far the compile got."""
    from answer_trt.build_config import BuildConfig
    from answer_trt.loaders import build_engines

    started = time.perf_counter()
    lines: list[str] = []
    if progress is not None:
        progress["build_log"] = lines

    def log(msg: str) -> None:
        lines.append(f"{time.perf_counter() - started:7.1f} s  {msg}")
        print(msg, file=sys.stderr, flush=True)
        if progress is not None and partial is not None:
            _write(partial, progress)

    result = build_engines(BuildConfig(model=model, out=out, backend="inductor", device=device, force=True, **config),
                           log=log)
    log("built")
    return result, round(time.perf_counter() - started, 1)


def _load(out: Path) -> tuple[Any, float]:
    from answer_trt.loaders import from_engines

    started = time.perf_counter()
    pipe = from_engines(out)
    return pipe, round(time.perf_counter() - started, 2)


def _write(path: Path, data: Any) -> None:
    from answer_trt.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _levels(a: Any, b: Any) -> int:
    import numpy as np

    pixels = [np.stack([np.asarray(im).astype(np.int16) for im in g.images]) for g in (a, b)]
    return int(abs(pixels[0] - pixels[1]).max())


def stage_inductor_tiny(device: str, work: Path) -> dict[str, Any]:
    import answer_trt

    out = work / "tiny-inductor"
    result: dict[str, Any] = {"device": device}
    built, result["build_s"] = _build("tiny", out, device, result, work / "inductor_tiny.partial.json",
                                      check=device == "cpu")
    result["precision"] = built.manifest.precision
    pipe, result["load_s"] = _load(out)
    result["load_over_build"] = round(result["load_s"] / result["build_s"], 4)
    reference = answer_trt.load("tiny")  # ONNX Runtime fp32 engines on the CPU (the cache's)
    kw: dict[str, Any] = dict(steps=30, seed=3, scheduler="ddim")
    result["levels_vs_onnxruntime"] = {}
    for method in ("answer", "cfg", "dns"):
        got = pipe.generate("a red circle and a blue square", method=method, **kw)
        ref = reference.generate("a red circle and a blue square", method=method, **kw)
        result["levels_vs_onnxruntime"][method] = _levels(got, ref)
        if method == "answer":
            got.images[0].save(work / f"tiny_inductor_{device}.png")
    one_row = pipe.generate("a red circle", guidance_scale=1.0, steps=4, seed=1)  # the 1-row call
    result["one_row_call_ok"] = len(one_row.images) == 1
    if device == "cuda":
        result["graph_vs_eager_levels"] = {}
        for method in ("answer", "cfg"):
            eager = pipe.generate("a green triangle", method=method, **kw)
            graphed = pipe.generate("a green triangle", method=method, cuda_graph=True, **kw)
            result["graph_vs_eager_levels"][method] = _levels(eager, graphed)
    result["ok"] = max(result["levels_vs_onnxruntime"].values()) <= (2 if device == "cpu" else 6)
    return result


def bench_inductor(kind: str, device: str, work: Path, runs: int, methods: tuple[str, ...] = ("answer", "cfg", "dns"),
                   graph_modes: tuple[bool, ...] = (True, False)) -> dict[str, Any]:
    """Build ``kind`` with inductor for CUDA (fp16, rows 1..3, the model's size), load it,
    run the bench suite (``methods``; graphed and/or eager) at batch 1; results written as
    they come."""
    import torch

    from answer_trt.bench.suite import BenchConfig, run_bench

    folder, facts = _folder(kind, device)
    result: dict[str, Any] = {"model": facts}
    partial = work / f"inductor_{kind}.partial.json"
    out = work / f"{kind}-inductor"
    _built, result["compile_s"] = _build(str(folder), out, device, result, partial, max_batch=1, check=False)
    _write(partial, result)
    del _built
    torch.cuda.empty_cache()
    pipe, result["load_s"] = _load(out)
    result["runs"] = []
    for graphed in graph_modes:
        torch.cuda.reset_peak_memory_stats()
        config = BenchConfig(methods=methods, steps=30, batch=1, runs=runs, warmup=1,
                             scheduler="ddim", cuda_graph=graphed)
        began = time.perf_counter()
        entry = run_bench(pipe, config).to_json()
        entry.update(cuda_graph=graphed, seconds=round(time.perf_counter() - began, 1))
        result["runs"].append(entry)
        _write(partial, result)
    generation = pipe.generate("a cat", steps=30, scheduler="ddim", seed=0, cuda_graph=True)
    generation.images[0].save(work / f"{kind}_inductor.png")
    import numpy as np

    result["image_finite"] = bool(np.isfinite(np.asarray(generation.images[0], dtype=np.float32)).all())
    result["ok"] = len(result["runs"]) == len(graph_modes) and result["image_finite"]
    return result


def stage_inductor_sd15(device: str, work: Path) -> dict[str, Any]:
    return bench_inductor("sd15", device, work, runs=3)


def stage_inductor_sdxl(device: str, work: Path) -> dict[str, Any]:
    return bench_inductor("sdxl", device, work, runs=2, methods=("answer", "cfg"), graph_modes=(True,))


def stage_sdxl_rows(device: str, work: Path) -> dict[str, Any]:
    """Why a 2-row eager SDXL UNet call was slower than a 3-row one: call times per row
    count with cuDNN's autotuner off (the default) and on, and the top kernels at 2 and 3 rows."""
    import torch

    from answer_trt.export.sample_inputs import sample_inputs
    from answer_trt.iospec import UNET
    from answer_trt.loaders import from_model_eager

    folder, facts = _folder("sdxl", device)
    pipe = from_model_eager(str(folder), device)
    engine: Any = pipe.engines[UNET]
    dims = pipe.dims.bind(1, 1024, 1024)

    def feeds(rows: int) -> dict[str, Any]:
        return sample_inputs(engine.spec, {**dims, "batch": rows}, torch.float32, device)

    def call_ms(rows: int, repeats: int = 5) -> float:
        x = feeds(rows)
        engine.run(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            engine.run(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return round(sorted(times)[len(times) // 2], 2)

    result: dict[str, Any] = {"model": facts, "call_ms": {}}
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        result["call_ms"][f"cudnn_benchmark={benchmark}"] = {rows: call_ms(rows) for rows in (1, 2, 3, 4)}
    torch.backends.cudnn.benchmark = False
    from torch.profiler import ProfilerActivity, profile

    result["top_kernels"] = {}
    for rows in (2, 3):
        x = feeds(rows)
        engine.run(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.run(x)
            torch.cuda.synchronize()
        events = sorted(prof.key_averages(), key=lambda e: -_device_time(e))[:8]
        result["top_kernels"][rows] = [{"name": e.key[:120], "ms": round(_device_time(e) / 1e3, 2),
                                        "calls": e.count} for e in events]
    result["ok"] = True
    return result


def _device_time(event: Any) -> float:
    """Total device microseconds of a profiler row (the attribute's name changed in torch 2.4)."""
    return float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0))
