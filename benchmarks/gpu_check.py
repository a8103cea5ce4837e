"""GPU check: full-size SD-1.5- and SDXL-shaped UNets (random weights, fp16) on one CUDA
GPU, timing one denoising step of ANSWER fused (one UNet call on 3 rows), ANSWER unfused
(three calls of 1 row), and CFG (one call on 2 rows), each eager and as a CUDA graph,
plus the max-abs difference between fused and unfused step outputs.

Needs no network: ``benchmarks/gpu/run.sh`` runs it as its ``unet`` stage, after installing
the carried wheels (``benchmarks/gpu/wheels.txt``).
Writes ``gpu_check.json`` (to $OUT when set) and prints a table. Runs the TensorRT path
where TensorRT imports and says so where it does not. Budget: under 8 minutes on an H100.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: answer_trt
from answer_trt.graphed import CudaGraphCapturer  # noqa: E402

WARMUP, ITERS = 5, 20
W, WN = 7.5, 7.5
G = (W + WN) / (1 + WN)

SD15: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768)
SDXL: dict[str, Any] = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# config, latent size, text dim, pooled dim
MODELS: dict[str, tuple[dict[str, Any], int, int, int]] = {"sd15": (SD15, 64, 768, 0), "sdxl": (SDXL, 128, 2048, 1280)}


def make_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        model: Any = UNet2DConditionModel(**config)
        return model.half().eval()


class Inputs:
    """Static device tensors for one image: x, z, c_p, c_0 (and SDXL's added conditions)."""

    def __init__(self, latent: int, text_dim: int, pooled: int, device: str = "cuda",
                 dtype: torch.dtype = torch.float16) -> None:
        gen = torch.Generator(device).manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen, device=device, dtype=dtype)

        self.x, self.z = randn(1, 4, latent, latent), randn(1, 4, latent, latent)
        self.c_p, self.c_0 = randn(1, 77, text_dim), randn(1, 77, text_dim)
        self.pooled = randn(1, pooled) if pooled else None
        self.time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=device, dtype=dtype)
        self.t = torch.full((1,), 500.0, device=device, dtype=dtype)


def unet_call(unet: Any, inputs: Inputs) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def call(latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        added = None
        if inputs.pooled is not None:
            added = {"text_embeds": inputs.pooled.expand(n, -1), "time_ids": inputs.time_ids.expand(n, -1)}
        return unet(latents, inputs.t.expand(n), encoder_hidden_states=cond, added_cond_kwargs=added).sample

    return call


def steps(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], i: Inputs) -> dict[str, Callable[[], Any]]:
    """One denoising step per method: UNet call(s), guidance in fp32, a DDIM-like update."""
    x_coef, e_coef, inv_sigma = 0.99, -0.05, 1.0 / 0.6
    cond3, cond2 = torch.cat([i.c_p, i.c_p, i.c_0]), torch.cat([i.c_p, i.c_0])

    def finish(ep: torch.Tensor, ep_z: torch.Tensor, e0_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e_dns = torch.lerp(ep_z.float(), e0_z.float(), 1 + WN)
        e_neg = e_dns + (i.x.float() - i.z.float()) * inv_sigma
        e = torch.lerp(e_neg, ep.float(), G)
        return i.x.float() * x_coef + e * e_coef, i.z.float() * x_coef + e_dns * e_coef

    def answer_fused() -> tuple[torch.Tensor, torch.Tensor]:
        ep, ep_z, e0_z = call(torch.cat([i.x, i.z, i.z]), cond3).chunk(3)
        return finish(ep, ep_z, e0_z)

    def answer_unfused() -> tuple[torch.Tensor, torch.Tensor]:
        return finish(call(i.x, i.c_p), call(i.z, i.c_p), call(i.z, i.c_0))

    def cfg() -> torch.Tensor:
        ep, e0 = call(torch.cat([i.x, i.x]), cond2).chunk(2)
        return i.x.float() * x_coef + torch.lerp(e0.float(), ep.float(), W) * e_coef

    return {"answer_fused": answer_fused, "answer_unfused": answer_unfused, "cfg": cfg}


def time_ms(fn: Callable[[], Any]) -> float:
    for _ in range(WARMUP):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(ITERS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / ITERS


def check_model(name: str) -> dict[str, Any]:
    config, latent, text_dim, pooled = MODELS[name]
    started = time.perf_counter()
    unet = make_unet(config)
    inputs = Inputs(latent, text_dim, pooled)
    call = unet_call(unet, inputs)
    result: dict[str, Any] = {"params_m": sum(p.numel() for p in unet.parameters()) / 1e6, "latent": latent}
    with torch.inference_mode():
        fns = steps(call, inputs)
        fused_x, fused_z = fns["answer_fused"]()
        unfused_x, unfused_z = fns["answer_unfused"]()
        result["max_abs_diff_fused_vs_unfused"] = max(
            float((fused_x - unfused_x).abs().max()), float((fused_z - unfused_z).abs().max()))
        for method, fn in fns.items():
            result[f"{method}_eager_ms"] = time_ms(fn)
    for method, fn in fns.items():  # capture outside inference_mode (graph pools need it)
        with torch.no_grad():
            result[f"{method}_graph_ms"] = time_ms(CudaGraphCapturer(warmup=3).capture(fn))
    result["seconds"] = time.perf_counter() - started
    del unet
    torch.cuda.empty_cache()
    return result


def tensorrt_status() -> str:
    from answer_trt.backends import tensorrt_available

    if not tensorrt_available():
        return "TensorRT not importable here: TensorRT path skipped"
    import tensorrt as trt

    return f"TensorRT {trt.__version__}: SD-1.5 UNet engine timed (UNet calls only)"


def check_tensorrt_sd15(workdir: Path) -> dict[str, Any]:
    """Export the SD-1.5 UNet (fp16) with answer-trt's exporter, build a plan for batch
    1..3, and time the UNet calls of each method through ``TensorRTEngine``."""
    import tensorrt as trt

    from answer_trt.backends.tensorrt import SharedDeviceMemory, TensorRTEngine
    from answer_trt.backends.torch_modules import UNetModule
    from answer_trt.export.onnx_export import export_onnx
    from answer_trt.export.sample_inputs import sample_inputs
    from answer_trt.export.tensorrt_build import build_plan
    from answer_trt.iospec import ModelDims, component_profiles, component_specs

    started = time.perf_counter()
    dims = ModelDims(77, 768, 4, 8, 64)
    spec = component_specs(dims)["unet"].with_dtype("float16")
    profile = component_profiles(dims, 1, 512, 512)["unet"]
    unet = make_unet(SD15)
    export_onnx(UNetModule(unet), spec, dims, workdir / "unet.onnx")
    del unet
    torch.cuda.empty_cache()
    build_plan(workdir / "unet.onnx", spec, profile, "fp16", workdir / "unet.plan", workdir / "timing.cache",
               log=lambda msg: print(msg, file=sys.stderr))
    engine = TensorRTEngine(workdir / "unet.plan", spec, profile, trt.Runtime(trt.Logger(trt.Logger.WARNING)),
                            SharedDeviceMemory(), rebuild_command="rerun gpu_check.py")
    feeds = {n: sample_inputs(spec, dims.bind(n, 512, 512), torch.float16, "cuda") for n in (1, 2, 3)}
    result: dict[str, Any] = {
        "answer_fused_unet_ms": time_ms(lambda: engine.run(feeds[3])),
        "answer_unfused_unet_ms": time_ms(lambda: [engine.run(feeds[1]) for _ in range(3)]),
        "cfg_unet_ms": time_ms(lambda: engine.run(feeds[2])),
    }
    fused = engine.run(feeds[3])["noise_pred"]
    rows = torch.cat([engine.run({k: v[i : i + 1] for k, v in feeds[3].items()})["noise_pred"] for i in range(3)])
    result["max_abs_diff_fused_vs_unfused"] = float((fused.float() - rows.float()).abs().max())
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tensorrt": tensorrt_status(),
        "iterations": ITERS,
        "models": {},
    }
    import diffusers

    report["diffusers"] = diffusers.__version__
    for name in MODELS:
        report["models"][name] = check_model(name)
        print(f"{name} done in {report['models'][name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    from answer_trt.backends import tensorrt_available

    if tensorrt_available():
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            report["tensorrt_sd15"] = check_tensorrt_sd15(Path(workdir))
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['gpu']}, torch {report['torch']}; {report['tensorrt']}")
    print(f"{'model':<6}{'method':<16}{'eager ms':>10}{'graph ms':>10}")
    for name, r in report["models"].items():
        for method in ("answer_fused", "answer_unfused", "cfg"):
            print(f"{name:<6}{method:<16}{r[method + '_eager_ms']:>10.2f}{r[method + '_graph_ms']:>10.2f}")
        speedup = r["answer_unfused_eager_ms"] / r["answer_fused_eager_ms"]
        print(f"{name}: fused vs unfused eager {speedup:.2f}x; max |fused - unfused| "
              f"{r['max_abs_diff_fused_vs_unfused']:.3g}")
    if "tensorrt_sd15" in report:
        t = report["tensorrt_sd15"]
        print(f"TensorRT sd15 UNet calls: fused {t['answer_fused_unet_ms']:.2f} ms, unfused "
              f"{t['answer_unfused_unet_ms']:.2f} ms, CFG {t['cfg_unet_ms']:.2f} ms; max |fused - unfused| "
              f"{t['max_abs_diff_fused_vs_unfused']:.3g}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
