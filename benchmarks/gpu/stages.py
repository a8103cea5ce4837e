"""The GPU run: every CUDA path of answer-trt in one command, within a time budget.

``benchmarks/gpu/run.sh`` calls this with ``--out DIR``. Each stage runs in its own
process with its own time budget (cut to what is left of the whole run); a stage that
runs out is recorded as ``timeout`` and the next one starts. After every stage the
merged results are rewritten to ``DIR/gpu_run.json``, so a run cut short keeps what it
measured. Stages, in order of what matters most:

- ``imports``: the project and the libraries it needs import (fails fast: the run stops).
- ``smoke``: ``torch.cuda`` facts; ``answer-trt generate`` on ``tiny`` for 2 steps with
  ``--backend torch --device cuda``, and with ``--cuda-graph``; ``answer-trt bench``'s GPU path.
- ``tiny``: ``tiny`` on CUDA against the CPU reference image, graphed against eager, and
  the step-level batcher with 8 concurrent requests against sequential generation.
- ``sd15`` / ``sdxl``: random-weight full-size folders made on the GPU, then ``bench``'s
  suite: 30 DDIM steps, fp16, ANSWER (parallel, default), CFG and DNS, fused and unfused,
  eager and CUDA graph, batch 1 and 4, as far as the budget goes.
- ``tests``: the GPU-marked tests and the CPU tests that need no build, under this torch.
- ``unet``: ``benchmarks/gpu_check.py``, UNet calls only (the anchors' own measurement).
- ``compile``: ``torch.compile`` on the SD-1.5 UNet (compile time, step time).
- ``inductor_tiny``, ``inductor_sd15``, ``inductor_sdxl``, ``sdxl_rows``: AOTInductor
  engines (``--backend inductor``) built, loaded and timed, and the SDXL row-count puzzle
  (``inductor_stages.py``).
- ``img2img_tiny``, ``img2img_sd15``: the VAE encoder call and the img2img and inpainting loops
  at strength 0.6 timed beside txt2img (``image_stages.py``; tiny runs in the dry run too).
- ``tests``: on the GPU, the whole test suite under the machine's torch (pytest-xdist
  across its cores; test files whose libraries the machine lacks are reported, not run).
- ``compliance``: issue 37's confirmation of ANSWER's default on fresh prompts (seed 6000):
  both trained models, every family, w = 3, 5, 7.5, 256 prompts, CFG with and without the
  interval, today's default and the interval swept at 0.3, 0.5, 0.7
  (``answer_trt.synthetic.compliance --backend torch --device cuda``; minutes on a GPU, hours
  on our 2 cores). Its reports come back whole in gpu_run.json. Run it alone:
  ``--only imports,compliance``. The dry run draws 4 prompts of one family in 4 steps.

``--device cpu`` is the dry run CI runs: ``tiny`` only, CUDA-only stages and parts
recorded as ``skipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # inductor_stages, fullsize
# name -> (budget in seconds, needs CUDA), in order of what matters most now; the run's
# total (TOTAL_S, under the 8 minutes a run may take) skips what does not fit, and each
# skipped stage is recorded as such (run it with --only).
# AOTInductor's CUDA compile did not finish within 60 s (tiny), 150 s (SD-1.5) or 200 s (SDXL)
# on the H200 (2026-12-04): SD-1.5 gets most of a run, and SDXL a run of its own
# (`--only imports,inductor_sdxl --total-s 470`).
STAGES: dict[str, tuple[float, bool]] = {
    "imports": (40, False),
    "inductor_tiny": (90, False),
    "inductor_sd15": (300, True),
    "tests": (150, False),
    "inductor_sdxl": (450, True),
    "sdxl_rows": (40, True),
    "smoke": (60, False),
    "tiny": (50, False),
    "sd15": (110, True),
    "sdxl": (150, True),
    "unet": (60, True),
    "compile": (90, True),
    "img2img_tiny": (60, False),
    "img2img_sd15": (120, True),
    "compliance": (420, False),
}
TOTAL_S = 460.0


def _apply_budgets() -> None:
    """``GPU_RUN_BUDGETS`` (``--budgets``), e.g. ``sd15=150,compile=120``, overrides budgets."""
    for item in filter(None, os.environ.get("GPU_RUN_BUDGETS", "").split(",")):
        name, seconds = item.split("=")
        STAGES[name] = (float(seconds), STAGES[name][1])


_apply_budgets()
CPU_BUDGET_SCALE = 4  # the dry run's stages get this many times their budget (a 2-core CPU, maybe busy)
TINY_STEPS = 30


def cli(*args: str, timeout: float) -> dict[str, Any]:
    """Run ``answer-trt ARGS`` (from the source tree); returns rc, seconds and the output's tail."""
    started = time.perf_counter()
    # Not from ROOT: ``-m`` puts the working directory first on sys.path, ahead of PYTHONPATH.
    proc = subprocess.run([sys.executable, "-m", "answer_trt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())
    return {"args": list(args), "rc": proc.returncode, "seconds": round(time.perf_counter() - started, 2),
            "stderr_tail": proc.stderr[-1500:], "stdout_tail": proc.stdout[-3000:]}


# ---------------------------------------------------------------- stages (each in its own process)


def stage_imports(device: str, work: Path) -> dict[str, Any]:
    import importlib

    versions = {}
    for name in ("torch", "numpy", "diffusers", "transformers", "huggingface_hub", "safetensors", "tokenizers",
                 "PIL", "onnx", "onnxruntime", "pydantic", "filelock"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - recorded: which library is missing is the finding
            versions[name] = f"ERROR {type(exc).__name__}: {exc}"
    import answer_trt
    from answer_trt.backends.torch_eager import TorchEngine  # noqa: F401
    from answer_trt.graphed import CudaGraphCapturer  # noqa: F401
    from answer_trt.loaders import from_engines  # noqa: F401 - the manifest's pydantic, the build lock's filelock
    from answer_trt.serving.batcher import StepBatcher  # noqa: F401

    required = ("torch", "diffusers", "transformers", "safetensors", "tokenizers", "PIL", "pydantic", "filelock")
    missing = [n for n in required if str(versions[n]).startswith("ERROR")]
    return {"ok": not missing, "missing": missing, "versions": versions, "answer_trt": answer_trt.__file__,
            "python": platform.python_version()}


def stage_smoke(device: str, work: Path) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(name=props.name, capability=f"{props.major}.{props.minor}",
                     memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                     cudnn=torch.backends.cudnn.version())
    runs = {"eager": cli("generate", "a red circle", "--model", "tiny", "--backend", "torch", "--device", device,
                         "--steps", "2", "-o", str(_mkdir(work / "smoke") / "eager.png"), timeout=40)}
    if device == "cuda":
        runs["graph"] = cli("generate", "a red circle", "--model", "tiny", "--backend", "torch", "--device", device,
                            "--steps", "2", "--scheduler", "ddim", "--cuda-graph", "-o",
                            str(work / "smoke" / "graph.png"), timeout=40)
    runs["bench"] = cli("bench", "--model", "tiny", "--backend", "torch", "--device", device, "--steps", "2",
                        "--runs", "1", "--warmup", "1", "--methods", "answer,cfg", timeout=60)
    ok = all(r["rc"] == 0 for r in runs.values())
    return {"ok": ok, "cuda": facts, "runs": runs}


def stage_budget(name: str) -> float:
    """The seconds this stage's process has (the driver's cut of its budget, passed in
    ``GPU_RUN_STAGE_S``; the table's budget where it is run alone)."""
    return float(os.environ.get("GPU_RUN_STAGE_S") or STAGES[name][0])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pixels(generation: Any) -> Any:
    import numpy as np

    return np.stack([np.asarray(im).astype(np.int16) for im in generation.images])


def _levels(a: Any, b: Any) -> int:
    return int(abs(a - b).max())


def stage_tiny(device: str, work: Path) -> dict[str, Any]:
    """tiny on ``device`` vs the CPU fp32 reference; graphed vs eager; batcher vs sequential."""
    import answer_trt
    from answer_trt.serving.batcher import GenerateRequest, StepBatcher

    steps = TINY_STEPS if device == "cuda" else 6  # the dry run proves the path, quickly
    kw: dict[str, Any] = dict(steps=steps, seed=3, scheduler="ddim")
    cpu = answer_trt.load("tiny", backend="torch", device="cpu")
    pipe = answer_trt.load("tiny", backend="torch", device=device) if device == "cuda" else cpu
    result: dict[str, Any] = {"device": device, "steps": steps, "levels_vs_cpu": {}}
    for method in ("answer", "cfg", "dns"):
        ref = cpu.generate("a red circle and a blue square", method=method, **kw)
        got = pipe.generate("a red circle and a blue square", method=method, **kw) if pipe is not cpu else ref
        result["levels_vs_cpu"][method] = _levels(_pixels(ref), _pixels(got))
        if method == "answer":
            ref.images[0].save(work / "tiny_cpu.png")
            if pipe is not cpu:
                got.images[0].save(work / f"tiny_{device}.png")
    if device == "cuda":
        result["graph_vs_eager_levels"] = {}
        for method in ("answer", "cfg", "dns"):
            eager = pipe.generate("a green triangle", method=method, **kw)
            graphed = pipe.generate("a green triangle", method=method, cuda_graph=True, **kw)
            again = pipe.generate("a green triangle", method=method, cuda_graph=True, **kw)
            result["graph_vs_eager_levels"][method] = _levels(_pixels(eager), _pixels(graphed))
            result.setdefault("graph_replay_equal", []).append(bool((_pixels(graphed) == _pixels(again)).all()))
        result["graph_captures"] = pipe.graphs.captures
    else:
        result["graph_vs_eager_levels"] = "skipped (needs CUDA)"
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow circle and a red square",
               "a blue triangle", "", "a green square and a yellow triangle", "a red triangle"]
    methods = ("answer", "cfg", "dns", "answer", "cfg", "answer", "dns", "cfg")
    requests = [GenerateRequest(p, method=m, steps=steps, seed=i, scheduler="ddim")
                for i, (p, m) in enumerate(zip(prompts, methods))]
    started = time.perf_counter()
    with StepBatcher(pipe) as batcher:
        tickets = [batcher.submit(r) for r in requests]
        batched = [t.result(timeout=60) for t in tickets]
        calls = batcher.stats().calls
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    sequential = [pipe.run(r) for r in requests]
    sequential_s = time.perf_counter() - started
    result["batcher"] = {
        "requests": len(requests), "unet_calls": calls, "seconds": round(batched_s, 3),
        "sequential_seconds": round(sequential_s, 3),
        "max_levels_vs_sequential": max(_levels(_pixels(a), _pixels(b)) for a, b in zip(batched, sequential)),
    }
    result["ok"] = True  # ran through; the levels are the findings
    return result


def _bench_model(kind: str, device: str, work: Path, budget_s: float) -> dict[str, Any]:
    """Make the folder on the GPU, load it through answer-trt, run the bench suite per
    configuration while the budget lasts (results kept after each)."""
    import torch

    from answer_trt.bench.suite import BenchConfig, run_bench
    from answer_trt.loaders import from_model_eager

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fullsize import make_folder

    started = time.perf_counter()
    folder = Path(os.environ.get("GPU_RUN_MODELS", "/tmp/answer-trt-gpu-models")) / kind
    result: dict[str, Any] = {"folder": str(folder)}
    result["model"] = make_folder(kind, folder, device=device)
    result["make_s"] = round(time.perf_counter() - started, 1)
    loaded = time.perf_counter()
    pipe = from_model_eager(str(folder), device)
    result["load_s"] = round(time.perf_counter() - loaded, 1)
    configs = [(1, False, 3), (1, True, 3), (4, False, 2), (4, True, 2)]
    chosen = os.environ.get("GPU_RUN_BENCH")  # e.g. "sd15:4e,4g sdxl:1g" (a rerun of what was cut)
    if chosen:
        wanted = dict(item.split(":", 1) for item in chosen.split()).get(kind, "").split(",")
        configs = [c for c in configs if f"{c[0]}{'g' if c[1] else 'e'}" in wanted]
    configs = [c for c in configs if device == "cuda" or not c[1]]  # graphs need CUDA
    result["runs"] = []
    cost_per_image_run = 0.0  # seconds per image per timed run, from the last configuration
    for batch, graphed, runs in configs:
        estimate = cost_per_image_run * batch * (runs + 1)
        if time.perf_counter() - started + estimate > budget_s:
            result["runs"].append({"batch": batch, "cuda_graph": graphed, "skipped": f"budget (~{estimate:.0f} s)"})
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        config = BenchConfig(methods=("answer", "cfg", "dns"), steps=30, batch=batch, runs=runs, warmup=1,
                             scheduler="ddim", cuda_graph=graphed)
        report = run_bench(pipe, config)
        entry = report.to_json()
        seconds = time.perf_counter() - began
        cost_per_image_run = max(cost_per_image_run, seconds / batch / (runs + 1))
        entry.update(batch=batch, cuda_graph=graphed, seconds=round(seconds, 1))
        result["runs"].append(entry)
        _write(work / f"{kind}.partial.json", result)
    generation = pipe.generate("a cat", steps=30, scheduler="ddim", seed=0)
    generation.images[0].save(work / f"{kind}.png")
    result["ok"] = bool(result["runs"]) and all("results" in r for r in result["runs"][:2])
    return result


def stage_sd15(device: str, work: Path) -> dict[str, Any]:
    return _bench_model("sd15", device, work, stage_budget("sd15") - 15)


def stage_sdxl(device: str, work: Path) -> dict[str, Any]:
    return _bench_model("sdxl", device, work, stage_budget("sdxl") - 25)


def stage_tests(device: str, work: Path) -> dict[str, Any]:
    """On the GPU: the whole suite (``tests/``) under the machine's torch, spread over its
    cores with pytest-xdist where installed; files that cannot be collected there (a
    library the machine lacks: Ray, Playwright, ...) are listed, not run. In the dry run
    only the GPU test file (CI runs the others anyway)."""
    import importlib.util

    files = ["tests/test_gpu.py"] if device != "cuda" else ["tests"]
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not dry_run", "-rfE"]
    if device == "cuda":
        args += ["--continue-on-collection-errors", "--durations=5"]
        if importlib.util.find_spec("xdist") is not None:
            args += ["-n", str(min(os.cpu_count() or 1, 16))]
    # Stopped with SIGINT before the stage's budget runs out, so pytest still prints what ran.
    proc = subprocess.Popen([*args, *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate(timeout=stage_budget("tests") - 20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=12)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    lines = stdout.strip().splitlines()
    uncollected = sorted({line.split()[1] for line in lines if line.startswith("ERROR tests/") and "::" not in line})
    failed = [line for line in lines if line.startswith("FAILED ")]
    return {"ok": proc.returncode == 0, "files": files, "rc": proc.returncode, "summary": lines[-1] if lines else "",
            "not_collected": uncollected, "failed": failed[:40], "tail": stdout[-5000:] + stderr[-1500:]}


def stage_unet(device: str, work: Path) -> dict[str, Any]:
    env = dict(os.environ, OUT=str(work))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=stage_budget("unet") - 5)
    report = json.loads((work / "gpu_check.json").read_text()) if (work / "gpu_check.json").is_file() else None
    return {"ok": proc.returncode == 0, "rc": proc.returncode, "report": report, "stdout": proc.stdout[-3000:],
            "stderr": proc.stderr[-1500:]}


def stage_compile(device: str, work: Path) -> dict[str, Any]:
    """torch.compile of the SD-1.5 UNet in the torch backend: compile time, then ANSWER
    and CFG step times against the eager module on the same folder."""
    import torch

    from answer_trt.iospec import UNET
    from answer_trt.loaders import from_model_eager

    folder = Path(os.environ.get("GPU_RUN_MODELS", "/tmp/answer-trt-gpu-models")) / "sd15"
    if not (folder / "model_index.json").is_file():
        return {"ok": False, "skipped": "no sd15 folder (stage sd15 did not run)"}
    pipe = from_model_eager(str(folder), device)
    engine: Any = pipe.engines[UNET]
    result: dict[str, Any] = {}

    def step_ms(method: str) -> float:
        gen = pipe.generate("a cat", method=method, steps=30, scheduler="ddim")
        return gen.timings.denoise_s / 30 * 1e3

    partial = work / "compile.partial.json"
    step_ms("answer")  # warm-up
    result["eager_step_ms"] = {m: step_ms(m) for m in ("answer", "cfg")}
    _write(partial, result)
    eager_module = engine.module
    engine.module = torch.compile(eager_module)
    for method in ("answer", "cfg"):  # 3- and 2-row calls: both shapes compiled here
        began = time.perf_counter()
        pipe.generate("a cat", method=method, steps=2, scheduler="ddim")
        result[f"compile_{method}_s"] = round(time.perf_counter() - began, 1)
        _write(partial, result)
    result["compiled_step_ms"] = {m: step_ms(m) for m in ("answer", "cfg")}
    result["ok"] = True
    return result


def _inductor_stage(name: str) -> Callable[[str, Path], dict[str, Any]]:
    def run(device: str, work: Path) -> dict[str, Any]:
        import inductor_stages

        return getattr(inductor_stages, f"stage_{name}")(device, work)  # type: ignore[no-any-return]

    return run


def _image_stage(name: str) -> Callable[[str, Path], dict[str, Any]]:
    def run(device: str, work: Path) -> dict[str, Any]:
        import image_stages

        return getattr(image_stages, f"stage_{name}")(device, work)  # type: ignore[no-any-return]

    return run


# Issue 37's sweep: the candidates beside CFG (always run first) and today's default.
COMPLIANCE_METHODS = ("cfg-gmin=0.5,answer-K=4-parallel-min-sigma=0.5-wn=1,"
                      "answer-K=4-parallel-min-sigma=0.5-wn=1-gmin=0.3,answer-K=4-parallel-min-sigma=0.5-wn=1-gmin=0.5,"
                      "answer-K=4-parallel-min-sigma=0.5-wn=1-gmin=0.7")
COMPLIANCE_MODELS = ("tiny", "benchmarks/models/tiny-biased")


def stage_compliance(device: str, work: Path) -> dict[str, Any]:
    """Issue 37's sweep (see the module docstring), one compliance run per trained model, each
    within its share of the stage's budget; the reports whole in the result."""
    cuda = device == "cuda"
    reports: dict[str, Any] = {}
    for i, model in enumerate(COMPLIANCE_MODELS):
        out = work / f"compliance-{Path(model).name}.json"
        args = ["--model", str(ROOT / model) if "/" in model else model, "--backend", "torch", "--device", device,
                "--seed", "6000", "--steps", "30" if cuda else "4", "--prompts", "256" if cuda else "4",
                "--batch", "256" if cuda else "4",
                "--families", "all" if cuda else "pair", "--guidance-scales", "3,5,7.5" if cuda else "7.5",
                "--methods", COMPLIANCE_METHODS if cuda else "answer-K=4-parallel-min-sigma=0.5-wn=1-gmin=0.5",
                "--json", str(out)]
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "answer_trt.synthetic.compliance", *args], capture_output=True,
                              text=True, timeout=stage_budget("compliance") / (len(COMPLIANCE_MODELS) - i) - 5,
                              cwd=ROOT)
        reports[model] = {"rc": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
                          "report": json.loads(out.read_text()) if out.is_file() else None,
                          "tail": (proc.stdout[-2000:] + proc.stderr[-1500:]) if proc.returncode else ""}
    return {"ok": all(r["rc"] == 0 and r["report"] for r in reports.values()), "reports": reports}


STAGE_FUNCTIONS: dict[str, Callable[[str, Path], dict[str, Any]]] = {
    "imports": stage_imports, "smoke": stage_smoke, "tiny": stage_tiny, "sd15": stage_sd15, "sdxl": stage_sdxl,
    "tests": stage_tests, "unet": stage_unet, "compile": stage_compile, "compliance": stage_compliance,
    **{name: _inductor_stage(name) for name in ("inductor_tiny", "inductor_sd15", "inductor_sdxl", "sdxl_rows")},
    **{name: _image_stage(name) for name in ("img2img_tiny", "img2img_sd15")},
}


# ---------------------------------------------------------------- the driver


def _write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_stage(name: str, device: str, work: Path) -> int:
    """In the stage's own process: run it, write ``work/NAME.json``."""
    began = time.perf_counter()
    try:
        result = STAGE_FUNCTIONS[name](device, work)
        result["status"] = "ok" if result.get("ok") else "failed"
    except Exception as exc:  # noqa: BLE001 - the run goes on; the traceback is the finding
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = round(time.perf_counter() - began, 1)
    _write(work / f"{name}.json", result)
    return 0 if result["status"] == "ok" else 1


def drive(out: Path, device: str, only: list[str], total_s: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    # Stage files live apart from OUT: only a few files come back from the GPU machine.
    work = Path(tempfile.mkdtemp(prefix="answer-trt-gpu-run-"))
    started = time.perf_counter()
    report: dict[str, Any] = {"device": device, "total_budget_s": total_s, "stages": {}}
    summary = out / "gpu_run.json"
    for name, (budget, needs_cuda) in STAGES.items():
        if only and name not in only:
            continue
        left = total_s - (time.perf_counter() - started)
        if needs_cuda and device != "cuda":
            report["stages"][name] = {"status": "skipped", "why": "needs CUDA (dry run on the CPU)"}
        elif left < 10:
            report["stages"][name] = {"status": "skipped", "why": f"run budget spent ({left:.0f} s left)"}
        else:
            timeout = min(budget * (1 if device == "cuda" else CPU_BUDGET_SCALE), left)
            print(f"gpu run: stage {name} (budget {timeout:.0f} s)", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, __file__, "--stage", name, "--device", device, "--work",
                                       str(work)], timeout=timeout, capture_output=True, text=True,
                                      env=dict(os.environ, GPU_RUN_STAGE_S=str(timeout)))
                log = proc.stderr[-3000:]
                entry = json.loads((work / f"{name}.json").read_text()) if (work / f"{name}.json").is_file() \
                    else {"status": "error", "error": f"no result (rc {proc.returncode})"}
            except subprocess.TimeoutExpired as exc:
                partial = work / f"{name}.partial.json"
                entry = {"status": "timeout", "budget_s": round(timeout),
                         "partial": json.loads(partial.read_text()) if partial.is_file() else None}
                log = (exc.stderr or b"")[-3000:].decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            entry["wall_s"] = round(time.perf_counter() - began, 1)
            entry["log_tail"] = log
            report["stages"][name] = entry
            print(f"gpu run: stage {name}: {entry['status']} in {entry['wall_s']} s", file=sys.stderr, flush=True)
            if name == "imports" and entry["status"] != "ok":
                report["stopped"] = "imports failed: nothing else can run"
                _write(summary, report)
                return 1
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        _write(summary, report)
        for image in work.glob("*.png"):
            shutil.copyfile(image, out / image.name)
    bad = [n for n, e in report["stages"].items() if e["status"] not in ("ok", "skipped")]
    print(f"gpu run: {len(report['stages'])} stages in {report['elapsed_s']} s; not ok: {', '.join(bad) or 'none'}; "
          f"wrote {summary}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "gpu" / "out"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--only", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--total-s", type=float, default=TOTAL_S, help=f"the whole run's budget (default {TOTAL_S:g})")
    parser.add_argument("--budgets", default="", help="per-stage budgets in seconds, e.g. sd15=150,compile=120")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args.device, args.work)
    os.environ["GPU_RUN_BUDGETS"] = args.budgets  # the stages' own processes read it too
    _apply_budgets()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: stages are {', '.join(STAGES)}")
    return drive(args.out, args.device, only, args.total_s)


if __name__ == "__main__":
    sys.exit(main())
