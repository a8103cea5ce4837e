"""Inpainting (issue 33): `pipe(prompt, image=, mask_image=, strength=, mask_blur=)` and
`generate --image --mask`, equal to diffusers' StableDiffusionInpaintPipeline /
StableDiffusionXLInpaintPipeline for ordinary (4-channel) UNets and inpainting (9-channel) UNets
built here in code, through ONNX Runtime engines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.infotext import RECORD
from answer_trt.iospec import MASK, MASKED_IMAGE_LATENTS, UNET
from answer_trt.manifest import read_manifest
from answer_trt.models.source import resolve_model

STEPS = 6


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


def square_mask(size: tuple[int, int]) -> Image.Image:
    """White (repaint) on a rectangle off the centre, black elsewhere."""
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 8: size[0] * 5 // 8, size[1] // 3: size[1] * 7 // 10] = 255
    return Image.fromarray(mask)


def as_levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def inpainting_model(name: str, folder):
    """``name``'s folder with its UNet replaced by a seeded random 9-channel inpainting UNet."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(resolve_model(name).path, folder)
    config = dict(UNet2DConditionModel.load_config(folder / "unet"))
    config["in_channels"] = 2 * config["out_channels"] + 1
    torch.manual_seed(5)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    out = {}
    for name in ("tiny-random", "tiny-sdxl"):
        for kind in ("4ch", "9ch"):
            model = (inpainting_model(name, tmp_path_factory.mktemp(name) / "model") if kind == "9ch"
                     else resolve_model(name).path)
            folder = tmp_path_factory.mktemp(name) / "engines"
            build(BuildConfig(model=str(model), out=folder, max_batch=2), log=lambda _m: None)
            sdxl = name == "tiny-sdxl"
            reference = (StableDiffusionXLInpaintPipeline if sdxl else StableDiffusionInpaintPipeline).from_pretrained(
                model)
            reference.set_progress_bar_config(disable=True)
            out[name, kind] = (answer_trt.load(folder), reference)
    return out


@pytest.mark.parametrize("name", ["tiny-random", "tiny-sdxl"])
@pytest.mark.parametrize("kind", ["4ch", "9ch"])
@pytest.mark.parametrize("scheduler", [None, "Euler a", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_cfg_inpainting_reproduces_diffusers(pipes, name, kind, scheduler, strength, monkeypatch):
    ours, reference = pipes[name, kind]
    assert ours.dims.inpaint_unet == (kind == "9ch")
    monkeypatch.setattr(reference, "scheduler", reference.scheduler)  # restored after the test
    if scheduler is not None:
        from answer_trt.schedulers import make_diffusers_scheduler

        reference.scheduler = make_diffusers_scheduler(reference.scheduler.config, scheduler)
        reference.scheduler.register_to_config(prediction_type=ours.prediction_type)
    image, mask = picture(ours.default_size), square_mask(ours.default_size)
    expected = reference("a cat and a dog", image=image, mask_image=mask, strength=strength,
                         num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator().manual_seed(7),
                         output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat and a dog", image=image, mask_image=mask, strength=strength, method="cfg",
                         steps=STEPS, guidance_scale=6.0, seed=7, scheduler=scheduler))
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2


@pytest.mark.parametrize("kind", ["4ch", "9ch"])
def test_mask_blur_is_diffusers_blur_of_the_mask(pipes, kind):
    ours, reference = pipes["tiny-random", kind]
    image, mask = picture(ours.default_size, 2), square_mask(ours.default_size)
    expected = reference("a cat", image=image, mask_image=reference.mask_processor.blur(mask, blur_factor=6),
                         strength=0.7, num_inference_steps=STEPS, guidance_scale=6.0,
                         generator=torch.Generator().manual_seed(3), output_type="np").images
    got = as_levels(ours("a cat", image=image, mask_image=mask, mask_blur=6, strength=0.7, method="cfg", steps=STEPS,
                         guidance_scale=6.0, seed=3))
    sharp = as_levels(ours("a cat", image=image, mask_image=mask, strength=0.7, method="cfg", steps=STEPS,
                           guidance_scale=6.0, seed=3))
    assert np.abs(got - (expected * 255).round().astype(np.int16)).max() <= 2
    assert np.abs(got - sharp).max() > 2  # the blur moved the binarized mask's corners


def test_the_inpainting_unet_takes_the_mask_inputs(pipes):
    ours, _ = pipes["tiny-random", "9ch"]
    assert ours.engines[UNET].spec.input_names[-2:] == [MASK, MASKED_IMAGE_LATENTS]
    assert ours.engines[UNET].spec.inputs[-2].shape == ("batch", 1, "latent_height", "latent_width")
    with pytest.raises(UserInputError, match="inpainting UNet"):
        ours("a cat", steps=2)
    with pytest.raises(UserInputError, match="inpainting UNet"):
        ours("a cat", image=picture(ours.default_size), steps=2)


@pytest.mark.parametrize("kind", ["4ch", "9ch"])
def test_answer_and_dns_run_and_differ_from_cfg(pipes, kind):
    ours, _ = pipes["tiny-random", kind]
    image, mask = picture(ours.default_size), square_mask(ours.default_size)
    images = {method: as_levels(ours("a cat", image=image, mask_image=mask, strength=0.8, method=method,
                                     steps=STEPS, guidance_scale=6.0, seed=2))
              for method in ("cfg", "answer", "dns")}
    assert np.abs(images["answer"] - images["cfg"]).max() > 2
    assert np.abs(images["dns"] - images["cfg"]).max() > 2


def test_png_records_the_mask_and_bad_masks_are_refused(pipes, tmp_path):
    ours, _ = pipes["tiny-random", "4ch"]
    size = ours.default_size
    image, mask = picture(size), square_mask(size)
    drawn = ours("a cat", image=image, mask_image=mask, steps=4, mask_blur=2).images[0]
    record = json.loads(drawn.info[RECORD])
    assert record["strength"] == 1.0  # StableDiffusionInpaintPipeline's default
    assert record["mask_blur"] == 2 and len(record["mask_sha256"]) == 64
    colour = Image.fromarray(np.asarray(picture(size)))
    cases = [
        ({"image": image, "mask_image": colour}, "has colours"),
        ({"image": image, "mask_image": mask.resize((size[1] // 2, size[0]))}, "give a mask of the image's size"),
        ({"mask_image": mask}, "pass the image to repaint"),
        ({"image": image, "mask_image": mask, "mask_blur": 65}, "mask_blur"),
        ({"image": image, "mask_blur": 3}, "mask_blur applies to inpainting"),
        ({"image": image, "mask_image": tmp_path / "missing.png"}, "no such file"),
        ({"image": image, "mask_image": mask, "mask_sha256": "ab" * 32}, "not the one the request names"),
    ]
    for fields, message in cases:
        with pytest.raises(UserInputError, match=message) as caught:
            ours("a cat", steps=4, **fields)
        assert "\n" not in str(caught.value)
    rgba = mask.convert("RGBA")  # greyscale content in an RGBA file: taken as its grey
    assert json.loads(ours("a cat", image=image, mask_image=rgba, steps=4).images[0].info[RECORD])["mask_sha256"] == \
        record["mask_sha256"]


def run_cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_cli_inpainting_and_replay(engines_dir, tmp_path, capsys):
    manifest = read_manifest(engines_dir)
    size = (manifest.height.opt, manifest.width.opt)
    source, mask, other = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "other.png"
    picture(size).save(source)
    square_mask(size).save(mask)
    Image.fromarray(255 - np.asarray(square_mask(size))).save(other)
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    assert run_cli("generate", "a dog", "--engines", engines_dir, "--steps", 4, "--image", source, "--mask", mask,
                   "--mask-blur", 2, "-o", out) == 0
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "--image", source, "--mask", mask,
                   "-o", again) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    capsys.readouterr()
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "--image", source, "--mask", other,
                   "-o", again) == 2
    assert "is not the mask" in capsys.readouterr().err
    assert run_cli("generate", "--from-png", out, "--engines", engines_dir, "--image", source, "-o", again) == 2
    assert "pass that mask with --mask" in capsys.readouterr().err
    assert run_cli("generate", "a dog", "--engines", engines_dir, "--mask", mask, "-o", again) == 2
    assert "--mask is inpainting's" in capsys.readouterr().err


def test_the_batcher_mixes_txt2img_img2img_and_inpainting_equal_to_one_at_a_time(ort_pipe):
    from answer_trt.img2img import load_init_image
    from answer_trt.inpaint import with_mask
    from answer_trt.schema import make_request
    from answer_trt.serving.batcher import StepBatcher

    size = ort_pipe.default_size
    image = load_init_image(picture(size, 4))
    masked = with_mask(image, square_mask(size))
    common = {"steps": STEPS, "height": size[0], "width": size[1]}
    jobs = [
        (make_request("a cat", {**common, "method": "cfg", "seed": 1}), None),
        (make_request("a dog", {**common, "method": "answer", "seed": 2, "strength": 0.5,
                                "image_sha256": image.sha256}), image),
        (make_request("a house", {**common, "method": "dns", "seed": 3, "strength": 0.8, "image_sha256": image.sha256,
                                  "mask_sha256": masked.mask_sha256}), masked),
        (make_request("a tree", {**common, "method": "cfg", "seed": 4, "scheduler": "Euler a",
                                 "image_sha256": image.sha256, "mask_sha256": masked.mask_sha256}), masked),
    ]
    with StepBatcher(ort_pipe) as batcher:
        tickets = [batcher.submit(request, init=init) for request, init in jobs]
        results = [ticket.result(timeout=120) for ticket in tickets]
        stats = batcher.stats()
    for (request, init), result in zip(jobs, results):
        alone = ort_pipe.run(request, init=init)
        assert np.abs(as_levels(result.images) - as_levels(alone.images)).max() <= 1, request.prompt
        assert result.timings.steps == alone.timings.steps
    assert results[1].timings.steps == STEPS // 2  # strength 0.5 runs half the steps
    assert stats.rows_per_call > 3  # requests shared UNet calls
    with StepBatcher(ort_pipe) as batcher, pytest.raises(UserInputError, match="none came with it"):
        batcher.submit(jobs[1][0])  # a request naming an image, without it


def test_infotext_has_a1111s_inpainting_keys_and_a_txt2img_png_none_of_them(pipes):
    ours, _ = pipes["tiny-random", "4ch"]
    size = ours.default_size
    text = ours("a cat", image=picture(size), mask_image=square_mask(size), mask_blur=3, strength=0.6,
                steps=5).images[0].info["parameters"]
    assert "Denoising strength: 0.6" in text and "Mask blur: 3" in text
    plain = ours("a cat", steps=2).images[0].info["parameters"]
    assert "Mask blur" not in plain and "Denoising strength" not in plain and "sha256" not in plain
