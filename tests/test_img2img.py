"""img2img (issue 33): the VAE encoder component, `pipe(prompt, image=, strength=)` and
`generate --image --strength`, equal to diffusers' img2img pipelines for the tiny SD-1.x and
SDXL models through ONNX Runtime engines, with the model's own scheduler and others."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.img2img import MAX_IMAGE_PIXELS, image_sha256, load_init_image, strength_start
from answer_trt.infotext import RECORD
from answer_trt.iospec import VAE_ENCODER
from answer_trt.manifest import read_manifest
from answer_trt.models.source import resolve_model

STEPS = 6


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


def as_levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    out = {}
    for name in ("tiny-random", "tiny-sdxl"):
        folder = tmp_path_factory.mktemp(name) / "engines"
        build(BuildConfig(model=name, out=folder, max_batch=2), log=lambda _m: None)
        reference_class = StableDiffusionXLImg2ImgPipeline if name == "tiny-sdxl" else StableDiffusionImg2ImgPipeline
        reference = reference_class.from_pretrained(resolve_model(name).path)
        reference.set_progress_bar_config(disable=True)
        out[name] = (answer_trt.load(folder), reference)
    return out


@pytest.mark.parametrize("name", ["tiny-random", "tiny-sdxl"])
@pytest.mark.parametrize("scheduler", [None, "euler", "Euler a", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_cfg_img2img_reproduces_diffusers(pipes, name, scheduler, strength, monkeypatch):
    ours, reference = pipes[name]
    monkeypatch.setattr(reference, "scheduler", reference.scheduler)  # restored after the test
    if scheduler is not None:
        from answer_trt.schedulers import make_diffusers_scheduler

        reference.scheduler = make_diffusers_scheduler(reference.scheduler.config, scheduler)
        reference.scheduler.register_to_config(prediction_type=ours.prediction_type)
    image = picture(ours.default_size)
    expected = reference("a cat and a dog", image=image, strength=strength, num_inference_steps=STEPS,
                         guidance_scale=6.0, generator=torch.Generator().manual_seed(7), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat and a dog", image=image, strength=strength, method="cfg", steps=STEPS,
                         guidance_scale=6.0, seed=7, scheduler=scheduler))
    assert expected.std() > 5  # a non-trivial picture
    assert np.abs(got - expected).max() <= 2


@pytest.mark.parametrize("name", ["tiny-random", "tiny-sdxl"])
def test_per_image_generators_reproduce_diffusers(pipes, name):
    """A list of generators: each image samples the encoder's distribution and its noise from its own."""
    ours, reference = pipes[name]
    image = picture(ours.default_size, seed=1)
    expected = reference("a red circle", image=image, strength=0.7, num_inference_steps=STEPS, guidance_scale=5.0,
                         num_images_per_prompt=2,
                         generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="np").images
    got = as_levels(ours("a red circle", image=np.asarray(image), strength=0.7, method="cfg", steps=STEPS,
                         guidance_scale=5.0, seeds=[3, 4]))
    assert np.abs(got - (expected * 255).round().astype(np.int16)).max() <= 2
    assert np.abs(got[0] - got[1]).max() > 10  # two seeds, two images


def test_answer_and_dns_run_and_differ_from_cfg(pipes):
    ours, _ = pipes["tiny-random"]
    image = picture(ours.default_size)
    images = {method: as_levels(ours("a cat", image=image, strength=0.8, method=method, steps=STEPS,
                                     guidance_scale=6.0, seed=2))
              for method in ("cfg", "answer", "dns")}
    assert np.abs(images["answer"] - images["cfg"]).max() > 2
    assert np.abs(images["dns"] - images["cfg"]).max() > 2
    inner = as_levels(ours("a cat", image=image, strength=0.8, method="answer", mode="inner", steps=STEPS,
                           guidance_scale=6.0, seed=2))
    assert np.abs(inner - images["cfg"]).max() > 2


def test_strength_picks_the_steps_as_diffusers(pipes):
    """strength 1 runs every timestep of text to image (from the image noised to the first, which
    diffusers does not replace by pure noise); 0.5 the last half; diffusers' get_timesteps."""
    ours, reference = pipes["tiny-random"]
    image = load_init_image(picture(ours.default_size))
    txt2img = ours.plan(answer_trt.schema.make_request("a cat", {"steps": 10}))
    for strength, steps in ((1.0, 10), (0.5, 5), (0.55, 5), (0.09, 0)):
        assert strength_start(10, strength) == 10 - steps
        if not steps:
            continue
        request = answer_trt.schema.make_request("a cat", {"steps": 10, "strength": strength, "height": image.height,
                                                           "width": image.width, "image_sha256": image.sha256})
        plan = ours.plan(request, image)
        assert plan.denoising_steps == steps
        assert plan.rule.timesteps.tolist() == txt2img.rule.timesteps[10 - steps:].tolist()
        reference.scheduler.set_timesteps(10)
        assert reference.get_timesteps(10, strength, "cpu")[1] == steps
    with pytest.raises(UserInputError, match="runs no denoising step"):
        ours("a cat", image=picture(ours.default_size), strength=0.09, steps=10)


def test_png_records_the_input_image_and_strength(pipes):
    ours, _ = pipes["tiny-random"]
    image = picture(ours.default_size)
    result = ours("a cat", image=image, strength=0.5, steps=4)
    record = json.loads(result.images[0].info[RECORD])
    assert record["image_sha256"] == image_sha256(np.asarray(image))
    assert record["strength"] == 0.5
    assert "Denoising strength: 0.5" in result.images[0].info["parameters"]
    default = json.loads(ours("a cat", image=image, steps=5).images[0].info[RECORD])
    assert default["strength"] == 0.8  # diffusers' StableDiffusionImg2ImgPipeline default
    sdxl, _ = pipes["tiny-sdxl"]
    drawn = sdxl("a cat", image=picture(sdxl.default_size), steps=4).images[0]
    assert json.loads(drawn.info[RECORD])["strength"] == 0.3  # StableDiffusionXLImg2ImgPipeline's


def test_one_image_three_ways_same_hash_and_pixels(tmp_path):
    image = picture((64, 48))
    image.save(tmp_path / "in.png")
    loaded = [load_init_image(v) for v in (image, tmp_path / "in.png", str(tmp_path / "in.png"), np.asarray(image))]
    assert len({init.sha256 for init in loaded}) == 1
    for init in loaded[1:]:
        assert torch.equal(init.pixels, loaded[0].pixels)
    assert loaded[0].pixels.shape == (1, 3, 64, 48)
    assert loaded[0].pixels.min() >= -1.0 and loaded[0].pixels.max() <= 1.0
    resized = load_init_image(image, 32, 32)
    assert resized.pixels.shape == (1, 3, 32, 32) and resized.sha256 == loaded[0].sha256  # the input's hash
    rgba = load_init_image(image.convert("RGBA"))
    assert rgba.sha256 == loaded[0].sha256


def test_bad_images_are_refused_in_one_line(pipes, tmp_path):
    ours, _ = pipes["tiny-random"]
    (tmp_path / "text.png").write_text("not an image")
    big = tmp_path / "big.png"
    Image.new("L", (4097, 4097)).save(big)
    assert 4097 * 4097 > MAX_IMAGE_PIXELS
    cases = [
        ({"image": tmp_path / "text.png"}, "not a readable image"),
        ({"image": tmp_path / "missing.png"}, "no such file"),
        ({"image": big}, "above the cap"),
        ({"image": np.zeros((64, 64))}, r"\[height, width, 3\]"),
        ({"image": np.full((64, 64, 3), 2.0)}, r"\[0, 1\]"),
        ({"image": picture((64, 64)), "strength": 1.5}, r"in \(0, 1\]"),
        ({"image": picture((64, 64)), "strength": 0.0}, r"in \(0, 1\]"),
        ({"strength": 0.5}, "strength applies to img2img"),
        ({"image_sha256": "ab" * 32}, "names an input image"),
        ({"image": picture((64, 64)), "image_sha256": "ab" * 32}, "not the one the request names"),
        ({"image": picture((64, 72))}, "img2img draws at the input image's size, here 72x64"),
        ({"image": picture((64, 64)), "width": 128}, "width must be a multiple of 16 in 64..64"),
        ({"image": picture((64, 64)), "cuda_graph": True}, "text to image only"),
    ]
    for fields, message in cases:
        with pytest.raises(UserInputError, match=message) as caught:
            ours("a cat", steps=4, **fields)
        assert "\n" not in str(caught.value)


def test_folder_without_encoder_refuses_with_the_rebuild_command(tmp_path):
    folder = tmp_path / "txt2img"
    build(BuildConfig(model="tiny-random", out=folder, max_batch=1, components="txt2img"), log=lambda _m: None)
    manifest = read_manifest(folder)
    assert VAE_ENCODER not in manifest.components
    assert not (folder / "vae_encoder.onnx").exists()
    assert "--components txt2img" in manifest.build_command(folder)
    pipe = answer_trt.load(folder)
    assert len(pipe("a cat", steps=2).images) == 1  # text to image as before
    with pytest.raises(UserInputError, match="without the VAE encoder") as caught:
        pipe("a cat", image=picture((64, 64)), steps=2)
    assert f"answer-trt build --model tiny-random --out {folder}" in str(caught.value)
    assert "--components" not in str(caught.value)  # the default, all, adds the encoder


def test_encoder_is_built_and_checked(engines_dir):
    manifest = read_manifest(engines_dir)
    entry = manifest.components[VAE_ENCODER]
    assert entry.spec.input_names == ["images"]
    assert entry.spec.output_names == ["latent_mean", "latent_std"]
    assert entry.profile["batch"] == (1, manifest.max_batch, manifest.max_batch)


def run_cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_cli_img2img_and_replay(engines_dir, tmp_path, capsys):
    source, other = tmp_path / "in.png", tmp_path / "other.png"
    picture((64, 64)).save(source)
    picture((64, 64), seed=5).save(other)
    out = tmp_path / "out.png"
    assert run_cli("generate", "a dog", "--engines", engines_dir, "--steps", 6, "--image", source, "--strength", 0.5,
                   "-o", out) == 0
    again = tmp_path / "again.png"
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "--image", source, "-o", again) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    capsys.readouterr()
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "--image", other, "-o", again) == 2
    assert "is not the image" in capsys.readouterr().err
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "-o", again) == 2
    assert "pass that image with --image" in capsys.readouterr().err


def test_the_encoder_follows_the_decoders_precision_rule():
    from answer_trt.iospec import VAE_DECODER
    from answer_trt.precision import component_dtype

    for precision in ("fp16", "bf16", "fp32"):
        for upcast in (False, True):
            assert component_dtype(VAE_ENCODER, precision, upcast) == component_dtype(VAE_DECODER, precision, upcast)
    assert component_dtype(VAE_ENCODER, "fp16", force_upcast=True) == "float32"  # SDXL's VAE
    assert component_dtype(VAE_ENCODER, "fp16", force_upcast=False) == "float16"
