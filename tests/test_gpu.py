"""The CUDA paths of the torch backend: one precision rule, inputs kept in float32 and
on the device, graph capture beside another CUDA thread, NaN blamed on the right
component, and ``bench``'s GPU flags. The pure logic is tested on the CPU; the tests
marked ``gpu`` need a CUDA GPU (``benchmarks/gpu/run.sh`` runs them there)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import answer_trt
from answer_trt.backends.torch_eager import TorchEngine
from answer_trt.config import GuidanceConfig
from answer_trt.errors import NonFiniteImageError, UserInputError
from answer_trt.graphed import refusal
from answer_trt.iospec import TEXT_ENCODER, UNET, VAE_DECODER, ModelDims, component_specs
from answer_trt.precision import torch_dtype
from answer_trt.schedulers import make_scheduler, make_step_rule

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SDXL_DIMS = ModelDims(text_max_length=77, text_hidden_size=64, latent_channels=4, vae_scale_factor=8,
                      default_latent_size=8, pooled_size=32, time_ids_size=6)


def test_one_precision_rule_for_the_torch_backend_and_the_builds():
    assert torch_dtype(UNET, "fp16", force_upcast=True) == torch.float16
    assert torch_dtype(VAE_DECODER, "fp16", force_upcast=False) == torch.float16
    assert torch_dtype(VAE_DECODER, "fp16", force_upcast=True) == torch.float32  # SDXL's VAE
    assert torch_dtype(TEXT_ENCODER, "fp16", force_upcast=False) == torch.float32
    assert all(torch_dtype(c, "fp32", False) == torch.float32 for c in (UNET, VAE_DECODER, TEXT_ENCODER))


class _Recorder(nn.Module):
    """Records the dtype and device of every argument; returns the sample."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, str]] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        self.seen = [(a.dtype, a.device.type) for a in args]
        return args[0]


def test_timesteps_and_time_ids_are_fed_in_float32_to_a_half_unet():
    spec = component_specs(SDXL_DIMS)[UNET]
    recorder = _Recorder()
    engine = TorchEngine(recorder, spec, dtype=torch.float16)
    feeds = {"sample": torch.zeros(2, 4, 8, 8), "timestep": torch.full((2,), 981.0),
             "encoder_hidden_states": torch.zeros(2, 77, 64), "text_embeds": torch.zeros(2, 32),
             "time_ids": torch.zeros(2, 6)}
    engine.run(feeds)
    dtypes = dict(zip(spec.input_names, (d for d, _ in recorder.seen)))
    assert dtypes == {"sample": torch.float16, "timestep": torch.float32, "encoder_hidden_states": torch.float16,
                      "text_embeds": torch.float16, "time_ids": torch.float32}


def test_the_sampler_hands_the_denoiser_float32_timesteps_on_the_latents_device(problem):
    from answer_trt.sampler import sample
    from tests.toys import ToyDenoiser

    noise, cond = problem
    seen: list[torch.Tensor] = []
    toy = ToyDenoiser()

    def denoiser(latents: torch.Tensor, t: torch.Tensor, c):  # type: ignore[no-untyped-def]
        seen.append(t)
        return toy(latents, t, c)

    sample(denoiser, noise, cond, make_scheduler({}, "ddim"), 4, GuidanceConfig())
    assert seen and all(t.dtype == torch.float32 and t.device == noise.device for t in seen)


def test_a_ddim_config_with_clip_sample_is_refused_for_graphs_with_the_real_reason():
    config = {"_class_name": "DDIMScheduler", "clip_sample": True, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012}
    scheduler = make_scheduler(config)
    reason = refusal(GuidanceConfig(), make_step_rule(scheduler, 5), scheduler)
    assert reason is not None and "clip_sample" in reason and "needs --scheduler ddim" not in reason
    euler = make_scheduler(config, "euler")
    assert refusal(GuidanceConfig(), make_step_rule(euler, 5), euler) is None
    inner = refusal(GuidanceConfig(mode="inner"), make_step_rule(euler, 5), euler)
    assert inner is not None and "--mode parallel" in inner


@pytest.fixture(scope="module")
def tiny_torch():
    return answer_trt.load("tiny", backend="torch", device="cpu")


def test_nan_from_the_unet_is_blamed_on_the_unet_not_the_vae(tiny_torch, monkeypatch):
    monkeypatch.setattr(tiny_torch, "denoiser", lambda x, t, c: torch.full_like(x, float("nan")))
    with pytest.raises(NonFiniteImageError, match="UNet") as caught:
        tiny_torch.generate("a red circle", steps=2)
    assert "VAE" not in str(caught.value)


def test_nan_from_the_vae_names_the_vae_and_a_fix_that_applies_to_the_backend(tiny_torch, monkeypatch):
    monkeypatch.setattr(tiny_torch, "vae_decode", lambda latents: torch.full((1, 3, 32, 32), float("inf")))
    tiny_torch.precision = "fp16"  # as on CUDA
    try:
        with pytest.raises(NonFiniteImageError, match="VAE decoder") as caught:
            tiny_torch.generate("a red circle", steps=2)
    finally:
        tiny_torch.precision = "fp32"
    message = str(caught.value)
    assert "--device cpu" in message and "rebuild" not in message


def test_bench_runs_the_torch_backend_and_refuses_a_device_without_it(tmp_path, capsys):
    from answer_trt.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--backend", "torch", "--steps", "2", "--runs", "1", "--warmup", "0",
                 "--methods", "cfg", "--json", str(out)]) == 0
    assert '"backend": "torch"' in out.read_text()
    assert main(["bench", "--model", "tiny", "--device", "cuda", "--steps", "2"]) == 2
    assert "--device cuda applies to --backend torch" in capsys.readouterr().err


def test_the_gpu_run_dry_run_on_the_cpu(tmp_path):
    """``benchmarks/gpu/run.sh --device cpu``: tiny only, CUDA stages recorded as skipped,
    every other stage ok, results in gpu_run.json (CI runs this, so the script cannot rot)."""
    import json
    import os
    import subprocess
    import sys

    if not torch.cuda.is_available():
        env = dict(os.environ, WHEELS=str(tmp_path / "no-wheels"), PYTHON=sys.executable)  # this venv's Python
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--device", "cpu", "--out",
                               str(tmp_path / "out"), "--only", "imports,smoke,tiny,sd15"], env=env,
                              capture_output=True, text=True, timeout=600)
        report = json.loads((tmp_path / "out" / "gpu_run.json").read_text())
        stages = report["stages"]
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert [stages[s]["status"] for s in ("imports", "smoke", "tiny")] == ["ok"] * 3
        assert stages["sd15"]["status"] == "skipped"
        assert stages["tiny"]["batcher"]["max_levels_vs_sequential"] <= 2  # batch-size rounding (1 seen)
        assert (tmp_path / "out" / "gpu_run.log").is_file() and (tmp_path / "out" / "tiny_cpu.png").is_file()
    else:
        pytest.skip("a GPU is present: run.sh runs the real stages there")


def test_the_gpu_run_dry_run_times_img2img_and_inpainting(tmp_path):
    """Issue 33: the GPU run's img2img stages on the CPU (their own run, so the other stages'
    budget is theirs): ``img2img_tiny`` times the encoder and the img2img / inpainting loops, 3
    of 5 steps at strength 0.6, beside txt2img; ``img2img_sd15`` needs CUDA and is skipped."""
    import json
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run.sh runs the real stages there")
    env = dict(os.environ, WHEELS=str(tmp_path / "no-wheels"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--device", "cpu", "--out",
                           str(tmp_path / "out"), "--only", "imports,img2img_tiny,img2img_sd15"], env=env,
                          capture_output=True, text=True, timeout=600)
    stages = json.loads((tmp_path / "out" / "gpu_run.json").read_text())["stages"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert stages["img2img_sd15"]["status"] == "skipped"
    image = stages["img2img_tiny"]
    assert image["status"] == "ok", image.get("error")
    for workflow in ("img2img", "inpaint"):
        runs = image[workflow]["results"]
        assert runs[f"answer {workflow}"]["steps"] == 3 and runs["answer txt2img"]["steps"] == 5
        assert runs[f"cfg {workflow}"]["encode_ms"] > 0 and runs["cfg txt2img"]["encode_ms"] is None
        assert image[workflow]["ratios"][f"{workflow}_over_txt2img_denoise_answer"] > 0


# ---------------------------------------------------------------- on a CUDA GPU


@pytest.mark.gpu
@needs_cuda
def test_the_torch_backend_on_cuda_follows_the_precision_rule():
    pipe = answer_trt.load("tiny-sdxl", backend="torch", device="cuda")
    assert pipe.engines[UNET].dtype == torch.float16  # type: ignore[attr-defined]
    assert pipe.engines[TEXT_ENCODER].dtype == torch.float32  # type: ignore[attr-defined]
    assert pipe.engines[VAE_DECODER].dtype == torch.float32  # type: ignore[attr-defined]  # force_upcast
    result = pipe.generate("a cat", steps=3)
    assert result.images[0].size == (64, 64)


@pytest.mark.gpu
@needs_cuda
def test_conditions_are_on_the_device_before_the_first_unet_call():
    pipe = answer_trt.load("tiny-sdxl", backend="torch", device="cuda")
    config = pipe.request_config("a cat", steps=2)
    cond, noise = pipe.prepare("a cat", None, config)
    for c in (cond.positive, cond.negative):
        assert all(t.device.type == "cuda" for t in c.feeds().values())
    assert noise.device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_graph_capture_while_another_thread_runs_cuda_work():
    pipe = answer_trt.load("tiny", backend="torch", device="cuda")
    stop = threading.Event()

    def busy() -> None:
        a = torch.randn(256, 256, device="cuda")
        while not stop.is_set():
            a = (a @ a).tanh()
        torch.cuda.synchronize()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        graphed = pipe.generate("a red circle", steps=5, scheduler="ddim", cuda_graph=True)
    finally:
        stop.set()
        worker.join()
    eager = pipe.generate("a red circle", steps=5, scheduler="ddim")
    import numpy as np

    diff = np.abs(np.asarray(graphed.images[0]).astype(int) - np.asarray(eager.images[0]).astype(int)).max()
    assert diff <= 2  # fp16: the graph's guidance reads its scalars from a device table (2 levels seen on an H200)


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_request_for_engines_without_the_torch_backend_says_what_to_add():
    from answer_trt.cli import main

    assert main(["generate", "x", "--device", "cuda", "-o", "/tmp/x.png"]) == 2
    with pytest.raises(UserInputError):
        answer_trt.load("tiny", backend="nonsense")


def test_the_gpu_run_dry_run_draws_issue_37s_sweep_small(tmp_path):
    """Issue 37's sweep as a GPU stage (``compliance``): on the CPU, 4 prompts of one family per
    trained model, both reports back whole in gpu_run.json with CFG and the candidate scored."""
    import json
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run.sh runs the real stages there")
    env = dict(os.environ, WHEELS=str(tmp_path / "no-wheels"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--device", "cpu", "--out",
                           str(tmp_path / "out"), "--only", "imports,compliance"], env=env,
                          capture_output=True, text=True, timeout=900)
    stage = json.loads((tmp_path / "out" / "gpu_run.json").read_text())["stages"]["compliance"]
    assert proc.returncode == 0 and stage["status"] == "ok", proc.stdout[-3000:]
    for model in ("tiny", "benchmarks/models/tiny-biased"):
        report = stage["reports"][model]["report"]
        assert report["prompt_seed"] == 6000 and report["device"] == "cpu" and report["backend"] == "torch"
        labels = [m["label"] for m in report["cells"][0]["methods"]]
        assert labels == ["cfg", "answer K=4 parallel min-sigma=0.5 wn=1 gmin=0.5"]
