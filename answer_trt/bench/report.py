"""The bench report as a terminal table, and a structural check of its JSON."""

from __future__ import annotations

from typing import Any

from answer_trt.bench.suite import REPORT_FORMAT, BenchReport

STAGES = ("text_ms", "denoise_ms", "step_ms", "decode_ms", "total_ms")


def format_table(report: BenchReport) -> str:
    m = report.model
    c = report.config
    lines = [
        f"model {m['name']} ({m['backend']}, {m['precision']}), {m['width']}x{m['height']} px, batch {c.batch}, "
        f"{c.steps} steps, {c.runs} runs after {c.warmup} warm-up; {report.machine['processor']}, "
        f"{report.machine.get('gpu') or str(report.machine['cpu_count']) + ' cpus'}; times in ms as median / p90 / "
        "min",
        f"{'method':<16}{'calls/step':>10}" + "".join(f"{s[:-3]:>22}" for s in STAGES) + f"{'img/s':>9}",
    ]
    for r in report.results:
        name = (r.method + ("" if r.fused else " (unfused)") + (" (graph)" if r.graphed else "")
                + ("" if r.workflow == "txt2img" else f" {r.workflow}"))
        cells = "".join(
            f"{getattr(r, s).median:>8.2f}/{getattr(r, s).p90:>6.2f}/{getattr(r, s).min:>6.2f}" for s in STAGES
        )
        lines.append(f"{name:<16}{r.unet_calls_per_step:>10.2f}{cells}{r.images_per_s:>9.2f}")
    for r in report.results:  # img2img / inpainting: the encoder's time and the shorter loop
        if r.encode_ms is not None:
            e = r.encode_ms
            lines.append(f"{r.method} {r.workflow}: encode (VAE encoder + noising) {e.median:.2f}/{e.p90:.2f}/"
                         f"{e.min:.2f} ms; {r.denoising_steps} of {c.steps} steps (strength "
                         f"{'default' if c.strength is None else f'{c.strength:g}'}: expected denoise share "
                         f"{r.denoising_steps / c.steps:.2f})")
    if report.baseline_step_ms is not None:
        b = report.baseline_step_ms
        lines.append(f"{'plain torch':<16}{3.0:>10.2f}{'':>22}{'':>22}"
                     f"{b.median:>8.2f}/{b.p90:>6.2f}/{b.min:>6.2f}   (ANSWER, eager, one call per branch)")
    o = report.overhead_us_per_step
    lines.append(
        f"runtime overhead per step (null denoiser, batch {c.batch}): answer-trt ANSWER "
        f"{o['answer_trt_answer']:.1f} us, CFG {o['answer_trt_cfg']:.1f} us; plain PyTorch ANSWER "
        f"{o['plain_torch_answer']:.1f} us"
    )
    if report.ratios:
        lines.append("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in report.ratios.items()))
    mem = report.peak_memory_mb
    device = "n/a" if mem["device_peak_allocated"] is None else f"{mem['device_peak_allocated']:.0f} MB"
    lines.append(f"peak memory: host {mem['host_peak_rss']:.0f} MB, device {device}")
    return "\n".join(lines)


def validate_report_json(data: dict[str, Any]) -> list[str]:
    """Problems with a bench JSON (empty when it is well formed)."""
    problems: list[str] = []
    if data.get("format") != REPORT_FORMAT:
        problems.append(f"format is {data.get('format')!r}, expected {REPORT_FORMAT}")
    for key in ("config", "machine", "versions", "model", "results", "overhead_us_per_step", "ratios",
                "peak_memory_mb"):
        if key not in data:
            problems.append(f"missing {key}")
    for i, result in enumerate(data.get("results", [])):
        for stage in STAGES:
            s = result.get(stage, {})
            if not all(isinstance(s.get(k), (int, float)) for k in ("median", "p90", "min")):
                problems.append(f"results[{i}].{stage} lacks median/p90/min")
            elif not 0 <= s["min"] <= s["median"] <= s["p90"]:
                problems.append(f"results[{i}].{stage} is not ordered min <= median <= p90")
        if not result.get("images_per_s", 0) > 0:
            problems.append(f"results[{i}].images_per_s is not positive")
    for key in ("answer_trt_answer", "answer_trt_cfg", "plain_torch_answer"):
        if not data.get("overhead_us_per_step", {}).get(key, 0) > 0:
            problems.append(f"overhead_us_per_step.{key} missing")
    if not data.get("peak_memory_mb", {}).get("host_peak_rss", 0) > 0:
        problems.append("peak_memory_mb.host_peak_rss missing")
    for key in ("torch", "onnxruntime", "answer_trt"):
        if key not in data.get("versions", {}):
            problems.append(f"versions.{key} missing")
    return problems
