"""Seeds mean what they mean in diffusers: `--method cfg` reproduces the image of
diffusers' own pipeline for the same folder, seed, steps, size, scale and scheduler,
for SD 1.5, SD 2.1 (v-prediction) and SDXL, through ONNX Runtime engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.export.build import build
from answer_trt.models.source import resolve_model

STEPS = 6
CASES = [
    ("tiny-random", None),
    ("tiny-random", "a blue house"),
    ("tiny-sd21", None),
    ("tiny-sd21", "a blue house"),
    ("tiny-sdxl", None),
    ("tiny-sdxl", "a blue house"),
]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    out = {}
    for name in ("tiny-random", "tiny-sd21", "tiny-sdxl"):
        folder = tmp_path_factory.mktemp(name) / "engines"
        build(BuildConfig(model=name, out=folder, max_batch=1), log=lambda _m: None)
        reference_class = StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline
        reference = reference_class.from_pretrained(resolve_model(name).path)
        reference.set_progress_bar_config(disable=True)
        out[name] = (answer_trt.load(folder), reference)
    return out


def as_levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.mark.parametrize("name,negative", CASES)
@pytest.mark.parametrize("scheduler", [None, "euler", "ddim", "dpm++"])
def test_cfg_reproduces_diffusers(pipes, name, negative, scheduler, monkeypatch):
    ours, reference = pipes[name]
    monkeypatch.setattr(reference, "scheduler", reference.scheduler)  # restored after the test
    if scheduler is not None:
        from answer_trt.schedulers import make_diffusers_scheduler

        reference.scheduler = make_diffusers_scheduler(reference.scheduler.config, scheduler)
        # make_diffusers_scheduler sets epsilon for our sampler; diffusers must see the model's own type.
        reference.scheduler.register_to_config(prediction_type=ours.prediction_type)
    expected = reference(
        "a cat and a dog", negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=6.0,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat and a dog", method="cfg", negative_prompt=negative, steps=STEPS,
                         guidance_scale=6.0, seed=7, scheduler=scheduler))
    assert expected.std() > 5  # a non-trivial picture
    assert np.abs(got - expected).max() <= 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_guidance_rescale_on_v_prediction_reproduces_diffusers(pipes, seed):
    """diffusers rescales the model's own output (v on tiny-sd21; rescale_noise_cfg after CFG on
    it); answer-trt did it on the noise prediction and drew 18-25 levels off at phi 0.7."""
    ours, reference = pipes["tiny-sd21"]
    assert ours.prediction_type == "v_prediction"
    expected = reference("a cat and a dog", num_inference_steps=20, guidance_scale=6.0, guidance_rescale=0.7,
                         generator=torch.Generator().manual_seed(seed), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat and a dog", method="cfg", steps=20, guidance_scale=6.0, guidance_rescale=0.7,
                         seed=seed))
    assert np.abs(got - expected).max() <= 2
