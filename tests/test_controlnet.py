"""ControlNet (issue 34): `build --controlnet DIR[:SCALE]` exports each ControlNet as its own
component and a UNet taking their residuals; `pipe(prompt, control_image=...)` and `generate
--control-image` run each step's rows through every ControlNet in one call and the UNet in one
call. CFG equals diffusers' StableDiffusionControlNetPipeline (one ControlNet, and two through
MultiControlNetModel) on the tiny SD-1.x model with tiny ControlNets made in code, loaded
through the real path (save_pretrained -> build -> ONNX Runtime engines)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.build_config import BuildConfig, ControlNetSpec
from answer_trt.cli import main
from answer_trt.controlnet import control_windows
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.infotext import RECORD
from answer_trt.iospec import CONTROLNETS, UNET
from answer_trt.manifest import read_manifest
from answer_trt.models.controlnet import residual_layout
from answer_trt.models.source import resolve_model

STEPS = 6
MODEL = "tiny-random"
# A ControlNet's zero convolutions (its residual heads) and its whole conditioning embedding: re-drawn
# so that the residuals depend on the control image's content (with only the embedding's last conv
# re-drawn they differ by 0.2% between a noise image and a white one, and a test could not tell
# the images apart; re-drawn whole, by over 100%).
HEADS = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")


def make_controlnet(model: str, out: Path, seed: int) -> Path:
    """``ControlNetModel.from_unet`` of ``model``'s UNet, its zero convolutions (the residual heads)
    and its conditioning embedding re-drawn from ``seed`` (``HEADS``) so the control image matters."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(resolve_model(model).path / "unet")
    controlnet = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(HEADS):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    controlnet.save_pretrained(out)
    return out


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8))


def as_levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    first, second = make_controlnet(MODEL, root / "cn-a", 1), make_controlnet(MODEL, root / "cn-b", 2)
    folders = {}
    for key, specs in (("one", [ControlNetSpec(first, 0.8)]),
                       ("two", [ControlNetSpec(first, 1.0), ControlNetSpec(second, 0.5)])):
        folders[key] = root / f"engines-{key}"
        build(BuildConfig(model=MODEL, out=folders[key], max_batch=2, controlnets=tuple(specs)), log=lambda _m: None)
    folders["plain"] = root / "engines-plain"
    build(BuildConfig(model=MODEL, out=folders["plain"], max_batch=2, components="txt2img"), log=lambda _m: None)
    return {"root": root, "controlnets": (first, second), "folders": folders,
            "pipes": {key: answer_trt.load(folder) for key, folder in folders.items()}}


def reference(world, controlnets):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    models = [ControlNetModel.from_pretrained(world["controlnets"][i]) for i in controlnets]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        resolve_model(MODEL).path, controlnet=models[0] if len(models) == 1 else models, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(ours, pipe, scheduler):
    if scheduler is not None:
        from answer_trt.schedulers import make_diffusers_scheduler

        pipe.scheduler = make_diffusers_scheduler(pipe.scheduler.config, scheduler)
        pipe.scheduler.register_to_config(prediction_type=ours.prediction_type)
    return pipe


@pytest.mark.parametrize("scheduler", [None, "DPM++ 2M"])
def test_cfg_with_one_controlnet_reproduces_diffusers(world, scheduler):
    ours = world["pipes"]["one"]
    pipe = with_scheduler(ours, reference(world, [0]), scheduler)
    control = picture(ours.default_size)
    expected = pipe("a cat and a dog", image=control, num_inference_steps=STEPS, guidance_scale=6.0,
                    controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat and a dog", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0,
                         seed=7, scheduler=scheduler))
    without = as_levels(ours("a cat and a dog", method="cfg", steps=STEPS, guidance_scale=6.0, seed=7,
                             scheduler=scheduler))
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2
    assert np.abs(without - expected).max() > 20  # the control does something
    other = as_levels(ours("a cat and a dog", control_image=picture(ours.default_size, 99), method="cfg", steps=STEPS,
                           guidance_scale=6.0, seed=7, scheduler=scheduler))
    assert np.abs(other - got).max() > 10  # and its image's content matters


@pytest.mark.parametrize("scheduler", [None, "Euler a"])
def test_two_controlnets_reproduce_multicontrolnet(world, scheduler):
    ours = world["pipes"]["two"]
    pipe = with_scheduler(ours, reference(world, [0, 1]), scheduler)
    images = [picture(ours.default_size, 3), picture(ours.default_size, 4)]
    expected = pipe("a red circle", image=images, num_inference_steps=STEPS, guidance_scale=5.0,
                    controlnet_conditioning_scale=[1.0, 0.5], num_images_per_prompt=2,
                    generator=torch.Generator().manual_seed(11), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a red circle", control_image=images, method="cfg", steps=STEPS, guidance_scale=5.0,
                         batch=2, seed=11, scheduler=scheduler))
    assert np.abs(got - expected).max() <= 2
    swapped = as_levels(ours("a red circle", control_image=images[::-1], method="cfg", steps=STEPS,
                             guidance_scale=5.0, batch=2, seed=11, scheduler=scheduler))
    assert np.abs(swapped - got).max() > 10  # each image goes to its own ControlNet


def test_control_guidance_window_reproduces_diffusers(world):
    ours = world["pipes"]["one"]
    pipe = reference(world, [0])
    control = picture(ours.default_size, 5)
    expected = pipe("a square", image=control, num_inference_steps=STEPS, guidance_scale=6.0,
                    controlnet_conditioning_scale=0.8, control_guidance_start=0.2, control_guidance_end=0.7,
                    generator=torch.Generator().manual_seed(3), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a square", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0, seed=3,
                         control_guidance_start=0.2, control_guidance_end=0.7))
    full = as_levels(ours("a square", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0, seed=3))
    assert np.abs(got - expected).max() <= 2
    assert np.abs(full - got).max() > 2


@pytest.mark.parametrize("scheduler", [None, "DPM++ 2M"])
def test_guess_mode_with_cfg_reproduces_diffusers(world, scheduler):
    """diffusers' guess_mode with CFG: the ControlNet on the conditional rows only, zero residuals
    on the unconditional ones, the residuals scaled by logspace(-1, 0) block by block."""
    ours = world["pipes"]["one"]
    pipe = with_scheduler(ours, reference(world, [0]), scheduler)
    control = picture(ours.default_size, 19)
    expected = pipe("a cat and a dog", image=control, num_inference_steps=STEPS, guidance_scale=4.0,
                    controlnet_conditioning_scale=0.8, guess_mode=True, generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = ours("a cat and a dog", control_image=control, method="cfg", steps=STEPS, guidance_scale=4.0, seed=7,
               scheduler=scheduler, guess_mode=True)
    normal = as_levels(ours("a cat and a dog", control_image=control, method="cfg", steps=STEPS,
                            guidance_scale=4.0, seed=7, scheduler=scheduler))
    assert np.abs(as_levels(got) - expected).max() <= 2
    assert np.abs(normal - expected).max() > 5  # guess mode draws another picture
    assert json.loads(got[0].info[RECORD])["guess_mode"] is True
    assert "Guess mode: True" in got[0].info["parameters"]


def test_guess_mode_two_controlnets_reproduce_multicontrolnet(world):
    ours = world["pipes"]["two"]
    pipe = reference(world, [0, 1])
    images = [picture(ours.default_size, 20), picture(ours.default_size, 21)]
    expected = pipe("a red circle", image=images, num_inference_steps=STEPS, guidance_scale=5.0,
                    controlnet_conditioning_scale=[1.0, 0.5], guess_mode=True,
                    generator=torch.Generator().manual_seed(2), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a red circle", control_image=images, method="cfg", steps=STEPS, guidance_scale=5.0,
                         seed=2, guess_mode=True))
    assert np.abs(got - expected).max() <= 2


def test_guess_factors_are_diffusers_guess_mode_scales(world):
    """ControlNetModel(guess_mode=True) equals its plain residuals times guess_factors' row."""
    from diffusers import ControlNetModel

    from answer_trt.controlnet import guess_factors

    controlnet = ControlNetModel.from_pretrained(world["controlnets"][0])
    args = (torch.randn(1, 4, 8, 8), torch.tensor([10.0]))
    kwargs = {"encoder_hidden_states": torch.randn(1, 77, 32), "controlnet_cond": torch.rand(1, 3, 64, 64),
              "conditioning_scale": 0.7, "return_dict": False}
    plain_down, plain_mid = controlnet(*args, **kwargs)
    guess_down, guess_mid = controlnet(*args, guess_mode=True, **kwargs)
    factors = guess_factors(torch.tensor([1.0, 0.0]), len(plain_down) + 1)
    assert factors[1].tolist() == [1.0] * (len(plain_down) + 1)
    assert factors[0, 0].item() == pytest.approx(0.1) and factors[0, -1].item() == pytest.approx(1.0)
    for plain, guessed, factor in zip((*plain_down, plain_mid), (*guess_down, guess_mid), factors[0]):
        torch.testing.assert_close(plain * factor, guessed, rtol=1e-5, atol=1e-6)


def test_guess_mode_under_answer_controls_the_prompt_rows_only(world):
    """ANSWER's rows on c_p (x, and z between anchors) get the control, the c_0 row none."""
    from answer_trt.conditioning import Conditioning, TextCondition
    from answer_trt.controlnet import ControlImages, attach_control

    hidden = torch.zeros(1, 77, 32)
    images = ControlImages(torch.rand(1, 1, 3, 64, 64), ("ab" * 32,))
    cond = attach_control(Conditioning(TextCondition(hidden), TextCondition(hidden + 1)), images, [0.8],
                          torch.tensor([[0.0, 1000.0]]), 2, torch.device("cpu"), guess_mode=True)
    assert cond.positive.control_scale.tolist() == [[pytest.approx(0.8)]] * 2
    assert cond.negative.control_scale.tolist() == [[0.0], [0.0]]
    assert cond.positive.control_guess.tolist() == [1.0, 1.0]
    ours = world["pipes"]["one"]
    control = picture(ours.default_size, 22)
    guessed = as_levels(ours("a cat", control_image=control, method="answer", steps=4, seed=1, guess_mode=True))
    normal = as_levels(ours("a cat", control_image=control, method="answer", steps=4, seed=1))
    assert np.isfinite(guessed).all() and np.abs(guessed - normal).max() > 2


def test_windows_follow_diffusers_controlnet_keep():
    timesteps = torch.tensor([900.0, 700.0, 500.0, 300.0, 100.0])
    # diffusers: keep[i] = not (i / 5 < 0.2 or (i + 1) / 5 > 0.8): steps 1, 2, 3.
    assert control_windows(timesteps, 0.2, 0.8, 2).tolist() == [[300.0, 700.0]] * 2
    low, high = control_windows(timesteps, 0.5, 0.55, 1)[0].tolist()
    assert low > high  # no step kept: an empty window


@pytest.mark.parametrize("method", ["answer", "dns"])
def test_answer_and_dns_run_with_control_and_differ_from_without(world, method):
    ours = world["pipes"]["one"]
    control = picture(ours.default_size, 6)
    with_control = as_levels(ours("a cat", control_image=control, method=method, steps=4, seed=1))
    without = as_levels(ours("a cat", method=method, steps=4, seed=1))
    assert np.isfinite(with_control).all() and np.abs(with_control - without).max() > 5


def test_the_folder_records_each_controlnet_and_the_unet_takes_residuals(world):
    first, second = world["controlnets"]
    manifest = read_manifest(world["folders"]["two"])
    assert [(Path(e.path).name, e.scale) for e in manifest.controlnets] == [(first.name, 1.0), (second.name, 0.5)]
    assert set(CONTROLNETS[:2]) <= set(manifest.components) and CONTROLNETS[2] not in manifest.components
    unet_inputs = manifest.components[UNET].spec.input_names
    assert unet_inputs[-1] == "mid_block_res" and "down_block_res_0" in unet_inputs
    plain = read_manifest(world["folders"]["plain"])
    assert plain.components[UNET].spec.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert not plain.controlnets
    # The key names each ControlNet by content and scale: another scale rebuilds.
    assert "--controlnet" in manifest.build_command(world["folders"]["two"])
    one = read_manifest(world["folders"]["one"])
    assert one.key != manifest.key and one.controlnets[0].sha256 == manifest.controlnets[0].sha256


def test_residual_layout_matches_the_controlnets_outputs(world):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(world["controlnets"][0])
    layout = residual_layout(json.loads((world["controlnets"][0] / "config.json").read_text()), Path("config.json"))
    down, mid = controlnet(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), encoder_hidden_states=torch.randn(1, 77, 32),
                           controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
    got = [(r.shape[1], 8 // r.shape[2]) for r in (*down, mid)]
    assert got == list(layout)


def test_png_records_the_control_image_and_the_controlnets(world, tmp_path):
    ours = world["pipes"]["one"]
    control = picture(ours.default_size, 8)
    image = ours("a cat", control_image=control, steps=2, seed=1)[0]
    record = json.loads(image.info[RECORD])
    from answer_trt.img2img import image_sha256

    assert record["control_image_sha256"] == image_sha256(np.asarray(control))
    assert world["controlnets"][0].name in record["controlnets"] and ":0.8" in record["controlnets"]


def test_bad_control_input_is_refused_in_one_line(world, tmp_path):
    ours, plain = world["pipes"]["one"], world["pipes"]["plain"]
    size = ours.default_size
    with pytest.raises(UserInputError, match="built without a ControlNet"):
        plain("a cat", control_image=picture(size), steps=2)
    with pytest.raises(UserInputError, match="aspect ratio"):
        ours("a cat", control_image=picture((size[0], size[1] * 2)), steps=2)
    with pytest.raises(UserInputError, match="not a readable image|cannot|image"):
        ours("a cat", control_image=42, steps=2)
    with pytest.raises(UserInputError, match="3 images for 1 ControlNet"):
        ours("a cat", control_image=[picture(size)] * 3, steps=2)
    with pytest.raises(UserInputError, match="control_guidance_start"):
        ours("a cat", control_image=picture(size), steps=2, control_guidance_start=0.6, control_guidance_end=0.5)
    with pytest.raises(UserInputError, match="SCALE must be a number in 0 .. 2"):
        ControlNetSpec.parse("some/dir:3")
    with pytest.raises(UserInputError, match="guess_mode is ControlNet's: pass a control image"):
        ours("a cat", steps=2, guess_mode=True)
    with pytest.raises(UserInputError, match="guess_mode must be true or false"):
        ours("a cat", control_image=picture(size), steps=2, guess_mode="yes")
    with pytest.raises(UserInputError, match="controlnet_conditioning_scale"):
        ours("a cat", control_image=picture(size), steps=2, controlnet_conditioning_scale=2.5)


def test_a_controlnet_for_another_family_is_refused_before_any_build(world, tmp_path):
    sdxl_like = tmp_path / "sdxl-controlnet"
    sdxl_like.mkdir()
    config = json.loads((world["controlnets"][0] / "config.json").read_text())
    config.update(cross_attention_dim=2048, addition_embed_type="text_time")
    (sdxl_like / "config.json").write_text(json.dumps(config))
    out = tmp_path / "never"
    with pytest.raises(UserInputError, match="a SDXL ControlNet .* for a SD-1.x/2.x model"):
        build(BuildConfig(model=MODEL, out=out, controlnets=(ControlNetSpec(sdxl_like),)), log=lambda _m: None)
    assert not out.exists()
    pooled = tmp_path / "shuffle-controlnet"
    pooled.mkdir()
    config = json.loads((world["controlnets"][0] / "config.json").read_text())
    (pooled / "config.json").write_text(json.dumps({**config, "global_pool_conditions": True}))
    with pytest.raises(UserInputError, match="global_pool_conditions"):
        build(BuildConfig(model=MODEL, out=out, controlnets=(ControlNetSpec(pooled),)), log=lambda _m: None)
    assert not out.exists()


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def test_cli_generate_with_control_image_and_replay(world, tmp_path, capsys):
    ours = world["pipes"]["one"]
    control = tmp_path / "control.png"
    picture(ours.default_size, 9).save(control)
    out = tmp_path / "a.png"
    assert run_cli("generate", "a cat", "--engines", world["folders"]["one"], "--control-image", control,
                   "--steps", 2, "--seed", 4, "--guess-mode", "-o", out) == 0
    direct = as_levels(ours("a cat", control_image=control, steps=2, seed=4, guess_mode=True))
    assert json.loads(Image.open(out).info[RECORD])["guess_mode"] is True
    assert np.array_equal(as_levels([Image.open(out)]), direct)
    again = tmp_path / "b.png"
    assert run_cli("generate", "--from-png", out, "--engines", world["folders"]["one"], "--control-image", control,
                   "-o", again) == 0
    assert np.array_equal(as_levels([Image.open(again)]), direct)
    capsys.readouterr()
    assert run_cli("generate", "--from-png", out, "--engines", world["folders"]["one"], "-o", again) == 2
    assert "pass them with --control-image" in capsys.readouterr().err
    other = tmp_path / "other.png"
    picture(ours.default_size, 10).save(other)
    assert run_cli("generate", "--from-png", out, "--engines", world["folders"]["one"], "--control-image", other,
                   "-o", again) == 2
    assert "not the ones the request was drawn with" in capsys.readouterr().err


def test_a_controlnet_folder_without_a_control_image_draws_as_the_plain_model(world):
    """Zero residuals: the UNet as built without ControlNets."""
    plain = as_levels(world["pipes"]["plain"]("a cat", steps=3, seed=2))
    for key in ("one", "two"):
        assert np.abs(as_levels(world["pipes"][key]("a cat", steps=3, seed=2)) - plain).max() <= 1


def test_sdxl_cfg_with_a_controlnet_reproduces_diffusers(tmp_path):
    """SDXL: the ControlNet takes the pooled text embeddings and time ids too
    (StableDiffusionXLControlNetPipeline)."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    controlnet = make_controlnet("tiny-sdxl", tmp_path / "cn-xl", 3)
    folder = tmp_path / "engines"
    build(BuildConfig(model="tiny-sdxl", out=folder, max_batch=1, controlnets=(ControlNetSpec(controlnet),)),
          log=lambda _m: None)
    ours = answer_trt.load(folder)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        resolve_model("tiny-sdxl").path, controlnet=ControlNetModel.from_pretrained(controlnet))
    pipe.set_progress_bar_config(disable=True)
    control = picture(ours.default_size, 12)
    expected = pipe("a cat", image=control, num_inference_steps=STEPS, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(7), output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0, seed=7))
    without = as_levels(ours("a cat", method="cfg", steps=STEPS, guidance_scale=6.0, seed=7))
    assert np.abs(got - expected).max() <= 2
    assert np.abs(without - expected).max() > 20
    guessed = pipe("a cat", image=control, num_inference_steps=STEPS, guidance_scale=6.0, guess_mode=True,
                   generator=torch.Generator().manual_seed(7), output_type="np").images
    guessed = (guessed * 255).round().astype(np.int16)
    ours_guessed = as_levels(ours("a cat", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0,
                                  seed=7, guess_mode=True))
    assert np.abs(ours_guessed - guessed).max() <= 2 and np.abs(guessed - expected).max() > 2
    # An SD-1.x ControlNet on this SDXL model is refused before any build.
    sd = make_controlnet(MODEL, tmp_path / "cn-sd", 4)
    with pytest.raises(UserInputError, match="a SD-1.x/2.x ControlNet .* for a SDXL model"):
        build(BuildConfig(model="tiny-sdxl", out=tmp_path / "never", controlnets=(ControlNetSpec(sd),)),
              log=lambda _m: None)


def test_img2img_with_a_controlnet_reproduces_diffusers(world):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    ours = world["pipes"]["one"]
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        resolve_model(MODEL).path, controlnet=ControlNetModel.from_pretrained(world["controlnets"][0]),
        safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    init, control = picture(ours.default_size, 13), picture(ours.default_size, 14)
    expected = pipe("a cat", image=init, control_image=control, strength=0.6, num_inference_steps=STEPS,
                    guidance_scale=6.0, controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = as_levels(ours("a cat", image=init, strength=0.6, control_image=control, method="cfg", steps=STEPS,
                         guidance_scale=6.0, seed=7))
    assert np.abs(got - expected).max() <= 2


def test_a_request_scale_overrides_the_built_one_as_diffusers_controlnet_conditioning_scale(world):
    ours = world["pipes"]["one"]  # built at 0.8
    pipe = reference(world, [0])
    control = picture(ours.default_size, 15)
    expected = pipe("a dog", image=control, num_inference_steps=STEPS, guidance_scale=6.0,
                    controlnet_conditioning_scale=0.3, generator=torch.Generator().manual_seed(5),
                    output_type="np").images
    expected = (expected * 255).round().astype(np.int16)
    got = ours("a dog", control_image=control, method="cfg", steps=STEPS, guidance_scale=6.0, seed=5,
               controlnet_conditioning_scale=0.3)
    assert np.abs(as_levels(got) - expected).max() <= 2
    assert json.loads(got[0].info[RECORD])["controlnet_conditioning_scale"] == 0.3


def test_a_long_a1111_prompt_runs_with_control(world):
    """The ControlNets take the UNet's text axis: chunks of a long prompt (prompt_syntax a1111)."""
    ours = world["pipes"]["one"]
    prompt = " ".join(["a (red:1.3) circle and a blue square"] * 12)
    control = picture(ours.default_size, 16)
    with_control = as_levels(ours(prompt, control_image=control, steps=2, seed=1, prompt_syntax="a1111"))
    without = as_levels(ours(prompt, steps=2, seed=1, prompt_syntax="a1111"))
    assert np.abs(with_control - without).max() > 5


def test_load_builds_controlnets_into_the_cache_and_an_engines_folder_is_checked(world, capsys):
    first, second = world["controlnets"]
    built = answer_trt.load(MODEL, controlnets=[f"{first}:0.8"])
    assert [Path(e.split(":")[0]).name for e in built.weights.controlnets] == [first.name]
    control = picture(built.default_size, 17)
    assert np.array_equal(as_levels(built("a cat", control_image=control, steps=2, seed=1)),
                          as_levels(world["pipes"]["one"]("a cat", control_image=control, steps=2, seed=1)))
    answer_trt.load(world["folders"]["one"], controlnets=[f"{first}:0.8"])  # what it was built with
    with pytest.raises(UserInputError, match="was built with the ControlNets .* --controlnet"):
        answer_trt.load(world["folders"]["one"], controlnets=[f"{second}:0.8"])
    assert run_cli("generate", "a cat", "--engines", world["folders"]["one"], "--controlnet", f"{first}:0.5",
                   "--steps", 1) == 2
    assert "not the ones asked for" in capsys.readouterr().err


def test_the_torch_backend_runs_controlnets_equal_to_the_engines(world):
    first = world["controlnets"][0]
    eager = answer_trt.load(MODEL, backend="torch", controlnets=[f"{first}:0.8"])
    control = picture(eager.default_size, 18)
    got = as_levels(eager("a cat", control_image=control, steps=3, seed=2, method="cfg"))
    engines = as_levels(world["pipes"]["one"]("a cat", control_image=control, steps=3, seed=2, method="cfg"))
    assert np.abs(got - engines).max() <= 1


def test_the_batcher_refuses_a_request_naming_control_images(world):
    """A request that names control images is refused without them, not drawn without."""
    from answer_trt.schema import make_request
    from answer_trt.serving.batcher import StepBatcher

    batcher = StepBatcher(world["pipes"]["one"])
    try:
        with pytest.raises(UserInputError, match="drawn with control image"):
            batcher.submit(make_request("a cat", {"steps": 2, "control_image_sha256": "ab" * 32}))
    finally:
        batcher.close()


def test_the_graphed_step_holds_the_control_in_static_buffers():
    """The CUDA-graph buffer plan (answer_trt.graphed): each stacked condition has static control
    image, scale, window and guess buffers (their addresses in the graph's key), loaded per call."""
    from answer_trt.conditioning import Conditioning, TextCondition
    from answer_trt.controlnet import ControlImages, attach_control
    from answer_trt.graphed import StepBuffers, buffer_signature

    hidden = torch.zeros(1, 77, 32)
    images = ControlImages(torch.rand(1, 2, 3, 64, 64), ("ab" * 32, "cd" * 32))
    cond = attach_control(Conditioning(TextCondition(hidden), TextCondition(hidden + 1)), images, [0.8, 0.5],
                          torch.tensor([[0.0, 1000.0], [10.0, 500.0]]), 2, torch.device("cpu"), guess_mode=True)
    x = torch.zeros(2, 4, 8, 8)
    buffers = StepBuffers.like(x, cond)
    buffers.load(x, cond)
    assert buffers.three.control.shape == (6, 2, 3, 64, 64) and buffers.two.control_window.shape == (4, 2, 2)
    assert buffers.three.control_scale[:, 0].tolist() == pytest.approx([0.8, 0.8, 0.8, 0.8, 0.0, 0.0])
    assert buffers.two.control_guess.tolist() == [1.0] * 4
    assert torch.equal(buffers.one.control, images.pixels.expand(2, -1, -1, -1, -1))
    assert buffers.three.control.data_ptr() in buffers.addresses()
    plain = Conditioning(TextCondition(hidden.expand(2, -1, -1)), TextCondition(hidden.expand(2, -1, -1)))
    assert buffer_signature(x, cond) != buffer_signature(x, plain)


@pytest.mark.parametrize("kw", [{"method": "answer", "dns_steps": 2}, {"method": "cfg", "guess_mode": True}],
                         ids=["answer", "cfg-guess"])
def test_graphed_generate_with_control_equals_eager(world, kw):
    """cuda_graph=True with a control image, the step replayed by the eager capturer on the CPU
    (no GPU here): equal to the eager loop, and a second control image reuses the captured step."""
    from answer_trt.graphed import EagerCapturer, GraphCache

    ours = world["pipes"]["one"]
    ours.graphs = GraphCache(EagerCapturer())
    first, second = picture(ours.default_size, 23), Image.new("RGB", ours.default_size[::-1], (255, 255, 255))
    graphed = as_levels(ours("a cat", control_image=first, steps=4, seed=1, scheduler="ddim", cuda_graph=True, **kw))
    captures = ours.graphs.captures
    eager = as_levels(ours("a cat", control_image=first, steps=4, seed=1, scheduler="ddim", **kw))
    assert np.abs(graphed - eager).max() <= 1
    # Another image and scale: the same captured step, reading them from its buffers.
    other = as_levels(ours("a cat", control_image=second, steps=4, seed=1, scheduler="ddim", cuda_graph=True,
                           controlnet_conditioning_scale=0.3, **kw))
    assert ours.graphs.captures == captures
    assert np.abs(other - as_levels(ours("a cat", control_image=second, steps=4, seed=1, scheduler="ddim",
                                         controlnet_conditioning_scale=0.3, **kw))).max() <= 1
    assert np.abs(other - graphed).max() > 2
