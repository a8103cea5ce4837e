"""Runs the benchmark: every method on one engine, fused and unfused ANSWER, the
plain-PyTorch baseline and the null-denoiser overhead, all in one process so the
ratios compare like with like. Stage times are the pipeline's ``Timings``, read from
its ``StageClock`` (``perf_counter``, after a device synchronization on CUDA)."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from answer_trt.bench.plain_loop import diffusers_unet_call, null_unet, plain_answer_loop
from answer_trt.bench.stats import Summary, summarize
from answer_trt.conditioning import TextCondition
from answer_trt.config import MAX_IMAGES, MAX_STEPS, METHODS, GuidanceConfig
from answer_trt.errors import UserInputError
from answer_trt.guiders import make_guider
from answer_trt.iospec import MAX_BRANCHES
from answer_trt.pipeline import Pipeline
from answer_trt.rules import check_int
from answer_trt.sampler import Conditioning, Denoiser, sample
from answer_trt.schedulers import make_diffusers_scheduler, make_scheduler
from answer_trt.schema import make_request
from answer_trt.versions import library_versions

PROMPT = "a cat and a dog"
OVERHEAD_STEPS = 200
REPORT_FORMAT = 1
MAX_RUNS = 1000  # timed runs (and warm-up runs) per variant: a bench that ends


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = METHODS
    steps: int = 30
    batch: int = 1
    runs: int = 5
    warmup: int = 1
    baseline: str | None = None  # "torch": also time the plain PyTorch loop
    scheduler: str | None = None  # None: the model's own
    cuda_graph: bool = False  # fused variants replay each step as a CUDA graph (unfused ANSWER stays eager)
    # img2img / inpainting (``--image``, ``--strength``, ``--mask``): each method is timed from the
    # image (its encoder call and its int(steps x strength) steps) beside txt2img, fused only.
    image: str | None = None
    strength: float | None = None  # None: diffusers' default (img2img 0.8, inpainting 1.0)
    mask: str | None = None
    mask_blur: int = 0

    def __post_init__(self) -> None:
        if self.image is None and (self.strength is not None or self.mask is not None):
            raise UserInputError("--strength and --mask time img2img / inpainting: give the input image too "
                                 "(--image IN.png)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserInputError(f"--methods {','.join(self.methods)}: choose from {','.join(METHODS)}")
        for name, value, low, high in (("steps", self.steps, 1, MAX_STEPS), ("batch", self.batch, 1, MAX_IMAGES),
                                       ("runs", self.runs, 1, MAX_RUNS), ("warmup", self.warmup, 0, MAX_RUNS)):
            check_int(f"--{name}", value, low)
            if value > high:
                raise UserInputError(f"--{name} must be at most {high}, got {value}")
        if self.baseline not in (None, "torch"):
            raise UserInputError(f"--baseline {self.baseline}: the only baseline is `torch`")


@dataclass(frozen=True)
class MethodResult:
    method: str
    fused: bool
    text_ms: Summary
    denoise_ms: Summary
    step_ms: Summary
    decode_ms: Summary
    total_ms: Summary
    images_per_s: float
    unet_calls_per_step: float
    graphed: bool = False
    workflow: str = "txt2img"  # or "img2img", "inpaint" (BenchConfig.image)
    encode_ms: Summary | None = None  # img2img / inpainting: the input image's encoder call and noising
    denoising_steps: int = 0  # the steps run (img2img: int(steps x strength))


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    versions: dict[str, str]
    model: dict[str, Any]
    results: list[MethodResult] = field(default_factory=list)
    baseline_step_ms: Summary | None = None
    overhead_us_per_step: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float | None] = field(default_factory=dict)

    def result(self, method: str, fused: bool = True, workflow: str = "txt2img") -> MethodResult | None:
        return next((r for r in self.results if r.method == method and r.fused == fused
                     and r.workflow == workflow), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = REPORT_FORMAT
        data["config"]["methods"] = list(self.config.methods)
        return data


def run_bench(
    pipe: Pipeline,
    config: BenchConfig,
    eager_unet: Any = None,
    log: Callable[[str], None] = lambda _m: None,
) -> BenchReport:
    """``eager_unet``: the model's diffusers UNet, needed for ``baseline="torch"``."""
    height, width = pipe.default_size
    report = BenchReport(config, machine_info(), library_versions(), {
        "name": pipe.model_name, "backend": pipe.backend, "precision": pipe.precision,
        "height": height, "width": width,
        "latent_shape": [config.batch, pipe.dims.latent_channels, height // pipe.dims.vae_scale_factor,
                         width // pipe.dims.vae_scale_factor],
    })
    variants: list[Variant] = [(m, True, None) for m in config.methods]
    if config.image is not None:  # beside txt2img, from the image: the encoder and the shorter loop
        init = bench_init_image(pipe, config)
        variants += [(m, True, init) for m in config.methods]
    else:
        # Unfused as well where fusing joins the most branches (ANSWER's 3 rows): the fused speed-up.
        variants += [(m, False, None) for m in config.methods
                     if make_guider(GuidanceConfig(method=m)).peak_rows_per_image == MAX_BRANCHES]
    log(f"timing {', '.join(_variant_name(v) for v in variants)}, interleaved run by run")
    report.results = _time_variants(pipe, config, variants)
    if config.baseline == "torch":
        if eager_unet is None:
            raise UserInputError("--baseline torch needs the model's diffusers UNet: pass --model or an engines "
                                 "folder whose model is reachable")
        log("timing the plain PyTorch loop")
        report.baseline_step_ms = _time_plain_loop(pipe, config, eager_unet)
    log("timing runtime overhead with a null denoiser")
    report.overhead_us_per_step = runtime_overhead(pipe, config.batch)
    report.ratios = ratios(report)
    report.peak_memory_mb = peak_memory_mb()
    return report


# (method, fused, the input image of an img2img / inpainting variant or None for txt2img)
Variant = tuple[str, bool, Any]


def _fusion(fused: bool) -> str:
    return "fused" if fused else "unfused"


def bench_control(pipe: Pipeline) -> Any:
    """Engines with ControlNets are timed with them at work: a mid-grey control image of the
    default size (``answer_trt.controlnet``), as ``ControlImages``; None otherwise."""
    from answer_trt.controlnet import controlnet_engines, load_control_images

    count = len(controlnet_engines(pipe.engines))
    if not count:
        return None
    from PIL import Image

    height, width = pipe.default_size
    return load_control_images(Image.new("RGB", (width, height), (128, 128, 128)), count, height, width)


def _workflow(init: Any) -> str:
    return "txt2img" if init is None else ("img2img" if init.mask is None else "inpaint")


def _variant_name(variant: Variant) -> str:
    method, fused, init = variant
    return f"{method} ({_fusion(fused)}{'' if init is None else ', ' + _workflow(init)})"


def bench_init_image(pipe: Pipeline, config: BenchConfig) -> Any:
    """``config.image`` (and its mask) as an ``InitImage`` at the engines' default size (resized
    as ``generate --height/--width`` would: Lanczos), so the img2img runs match the txt2img ones.
    Raises ``UserInputError`` in one line for an unreadable image or mask."""
    from answer_trt.img2img import load_init_image
    from answer_trt.inpaint import with_mask

    height, width = pipe.default_size
    init = load_init_image(config.image, height, width, what="--image")
    return init if config.mask is None else with_mask(init, config.mask, config.mask_blur, what="--mask")


def _time_variants(pipe: Pipeline, config: BenchConfig, variants: list[Variant]) -> list[MethodResult]:
    """Round-robin over the variants, run by run, so that a slow spell of a noisy machine
    falls on every variant alike and the ratios stay fair."""
    samples: dict[int, dict[str, list[float]]] = {
        k: {"text": [], "encode": [], "denoise": [], "decode": [], "total": []} for k in range(len(variants))
    }
    calls = dict.fromkeys(range(len(variants)), 0)
    steps_run = dict.fromkeys(range(len(variants)), config.steps)
    control = bench_control(pipe)
    for run in range(config.warmup + config.runs):
        for k, (method, fused, init) in enumerate(variants):
            graphed = config.cuda_graph and fused
            fields = dict(method=method, steps=config.steps, batch=config.batch, seed=run, scheduler=config.scheduler)
            if init is not None:  # the image loaded once (bench_init_image): its hashes name it
                fields.update(strength=config.strength, image_sha256=init.sha256, height=init.height,
                              width=init.width, mask_sha256=init.mask_sha256,
                              mask_blur=config.mask_blur if init.mask is not None else None)
            if control is not None and not graphed:
                fields["control_image_sha256"] = control.sha256
            request = make_request(PROMPT, {k: v for k, v in fields.items() if v is not None})
            # A graphed step is one fused call; counting would wrap the denoiser anew each run, and
            # the graph cache keys on the denoiser (every run would capture again).
            with contextlib.nullcontext(None) if graphed else counting_unet_calls(pipe) as counter:
                result = pipe.run(request, fused=fused, cuda_graph=graphed, init=init,
                                  control=None if graphed else control)
            if run < config.warmup:
                continue
            t, into = result.timings, samples[k]
            into["text"].append(t.text_s * 1e3)
            into["encode"].append(t.encode_s * 1e3)
            into["denoise"].append(t.denoise_s * 1e3)
            into["decode"].append(t.decode_s * 1e3)
            into["total"].append(t.total_s * 1e3)
            steps_run[k] = t.steps
            calls[k] = t.steps if counter is None else counter.calls
    results = []
    for k, (method, fused, init) in enumerate(variants):
        into = samples[k]
        denoise, total = summarize(into["denoise"]), summarize(into["total"])
        results.append(MethodResult(
            method=method,
            fused=fused,
            text_ms=summarize(into["text"]),
            denoise_ms=denoise,
            step_ms=denoise.scaled(1.0 / steps_run[k]),
            decode_ms=summarize(into["decode"]),
            total_ms=total,
            images_per_s=config.batch / (total.median / 1e3),
            unet_calls_per_step=calls[k] / steps_run[k],
            graphed=config.cuda_graph and fused,
            workflow=_workflow(init),
            encode_ms=None if init is None else summarize(into["encode"]),
            denoising_steps=steps_run[k],
        ))
    return results


class _CountingDenoiser:
    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(latents, timesteps, cond)


@contextmanager
def counting_unet_calls(pipe: Pipeline) -> Iterator[_CountingDenoiser]:
    """Count the UNet calls of generations inside the block (checks the fused-call shape)."""
    original = pipe.denoiser
    counter = _CountingDenoiser(original)
    pipe.denoiser = counter
    try:
        yield counter
    finally:
        pipe.denoiser = original


def _plain_inputs(pipe: Pipeline, batch: int) -> tuple[torch.Tensor, TextCondition, TextCondition]:
    height, width = pipe.default_size
    c_p, c_0 = pipe.text.encode(PROMPT)
    if pipe.dims.time_ids_size:
        c_p, c_0 = (pipe.with_time_ids(c, height, width) for c in (c_p, c_0))
    f = pipe.dims.vae_scale_factor
    noise = torch.randn(batch, pipe.dims.latent_channels, height // f, width // f,
                        generator=torch.Generator().manual_seed(0)).to(pipe.device)
    c_p, c_0 = c_p.to(pipe.device), c_0.to(pipe.device)
    return noise, c_p.expand(batch), c_0.expand(batch)


def _time_plain_loop(pipe: Pipeline, config: BenchConfig, eager_unet: Any) -> Summary:
    noise, c_p, c_0 = _plain_inputs(pipe, config.batch)
    unet = diffusers_unet_call(eager_unet)
    per_step = []
    for run in range(config.warmup + config.runs):
        scheduler = make_diffusers_scheduler(pipe.scheduler_config)
        started = time.perf_counter()
        plain_answer_loop(unet, scheduler, noise, c_p, c_0, config.steps)
        if run >= config.warmup:
            per_step.append((time.perf_counter() - started) * 1e3 / config.steps)
    return summarize(per_step)


def runtime_overhead(pipe: Pipeline, batch: int, steps: int = OVERHEAD_STEPS, repeats: int = 5) -> dict[str, float]:
    """Median microseconds per step spent outside the denoiser: our sampler (ANSWER and
    CFG) and the plain PyTorch loop, both with a denoiser that returns at once."""
    noise, c_p, c_0 = _plain_inputs(pipe, batch)
    cond = Conditioning(c_p, c_0)

    def ours(method: str) -> float:
        scheduler = make_scheduler(pipe.scheduler_config)
        started = pipe.clock()
        sample(null_unet, noise, cond, scheduler, steps, GuidanceConfig(method=method))
        return (pipe.clock() - started) * 1e6 / steps

    def plain() -> float:
        scheduler = make_diffusers_scheduler(pipe.scheduler_config)
        started = pipe.clock()
        plain_answer_loop(null_unet, scheduler, noise, c_p, c_0, steps)
        return (pipe.clock() - started) * 1e6 / steps

    timers = {"answer_trt_answer": lambda: ours("answer"), "answer_trt_cfg": lambda: ours("cfg"),
              "plain_torch_answer": plain}
    return {name: summarize([timer() for _ in range(repeats)]).median for name, timer in timers.items()}


def ratios(report: BenchReport) -> dict[str, float]:
    """Side-by-side ratios of per-step medians from this one run."""
    out: dict[str, float] = {}
    answer, cfg, unfused = report.result("answer"), report.result("cfg"), report.result("answer", fused=False)
    if answer and cfg:
        out["answer_over_cfg_step"] = answer.step_ms.median / cfg.step_ms.median
    if answer and unfused:
        out["fused_speedup_over_unfused"] = unfused.step_ms.median / answer.step_ms.median
    if answer and report.baseline_step_ms:
        out["speedup_over_plain_torch"] = report.baseline_step_ms.median / answer.step_ms.median
    for image in report.results:  # img2img / inpainting's loop against txt2img's (expected: its share of the steps)
        text = report.result(image.method) if image.workflow != "txt2img" else None
        if text is not None:
            out[f"{image.workflow}_over_txt2img_denoise_{image.method}"] = (image.denoise_ms.median
                                                                            / text.denoise_ms.median)
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "clock": "perf_counter, device-synchronized per stage on CUDA",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def peak_memory_mb() -> dict[str, float | None]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    device = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"host_peak_rss": rss_kb / 1024, "device_peak_allocated": device}
