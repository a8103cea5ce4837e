"""Sizes the model can run: every image side is a multiple of the model's own size multiple
(VAE factor x the UNet's 2**down-sampling stages; ``ModelDims.size_multiple``), checked at
build (sizes and range ends) and at request time (CLI, Python API on either backend, the
serving batcher) in one line that names both neighbouring sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from answer_trt.build_config import BuildConfig
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.iospec import ModelDims, SizeRange
from answer_trt.manifest import MANIFEST_NAME, read_manifest
from answer_trt.models.info import read_model_info
from answer_trt.models.source import resolve_model
from answer_trt.rules import check_size, check_size_range

OFF = "--height 72 is not a positive multiple of 16"
PICK = "pick 64 or 80"


def test_the_size_multiple_is_the_vae_factor_times_the_unets():
    # tiny-random: VAE 8x (4 blocks), UNet block_out_channels (32, 64): one down-sampling stage.
    dims = read_model_info(resolve_model("tiny-random").path).dims
    assert (dims.vae_scale_factor, dims.unet_overall_up_factor, dims.size_multiple) == (8, 2, 16)
    unet = json.loads((resolve_model("tiny-random").path / "unet" / "config.json").read_text())
    from diffusers import UNet2DConditionModel

    # diffusers' forward: default_overall_up_factor = 2**self.num_upsamplers
    assert 2 ** UNet2DConditionModel.from_config(unet).num_upsamplers == dims.unet_overall_up_factor
    # the shipped tiny: VAE 4x, UNet 2x; SD 1.x / 2.x / XL: 8 x 2**3 = 64
    assert read_model_info(resolve_model("tiny").path).dims.size_multiple == 8
    sd = ModelDims(77, 768, 4, vae_scale_factor=8, default_latent_size=64, unet_overall_up_factor=8)
    assert sd.size_multiple == 64


def test_check_size_names_both_neighbours():
    with pytest.raises(UserInputError, match=f"^{OFF}.*: {PICK}$"):
        check_size("--height", 72, 16)
    with pytest.raises(UserInputError, match=r"--width 520 is not a positive multiple of 64.*: pick 512 or 576$"):
        check_size("--width", 520, 64)
    with pytest.raises(UserInputError, match=r": pick 64$"):  # no multiple below
        check_size("--width", 40, 64)
    with pytest.raises(UserInputError, match=r": pick 4080$"):  # none above the limit of 4096
        check_size("--width", 4090, 48)
    with pytest.raises(UserInputError, match=r"--height 48:72 .*multiple of 16.*pick 64 or 80"):
        check_size_range("--height 48:72", SizeRange(48, 48, 72), 16)
    assert check_size("--height", 80, 16) == 80


def test_a_manifest_without_the_up_factor_still_reads(engines_dir, tmp_path):
    """Folders built before the factor was recorded read with factor 1 (the VAE's rule)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(engines_dir, old)
    data = json.loads((old / MANIFEST_NAME).read_text())
    assert data["info"]["dims"]["unet_overall_up_factor"] == 2
    del data["info"]["dims"]["unet_overall_up_factor"]
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    assert read_manifest(old).info.dims.size_multiple == 8
    data["info"]["dims"]["unet_overall_up_factor"] = 0
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="unet_overall_up_factor"):
        read_manifest(old)


@pytest.mark.parametrize("height", ["72", "48:72", "72:96"])
def test_build_refuses_sizes_off_the_multiple_before_exporting(height, tmp_path, capsys):
    out = tmp_path / "E"
    assert main(["build", "--model", "tiny-random", "--out", str(out), "--height", height]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "is not a positive multiple of 16" in err and PICK in err
    assert not out.exists()


@pytest.fixture(scope="module")
def ranged_engines(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranged") / "E"
    build(BuildConfig(model="tiny-random", out=out, max_batch=1, height=SizeRange(64, 64, 80),
                      width=SizeRange(64, 64, 80)), log=lambda _m: None)
    return out


def test_generate_refuses_a_size_the_unet_cannot_run(ranged_engines, tmp_path, capsys):
    """72 lies inside the built range 64:80 but not on the multiple: one line, exit 2, no file."""
    out = tmp_path / "x.png"
    code = main(["generate", "a cat", "--engines", str(ranged_engines), "--height", "72", "--width", "64",
                 "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"answer-trt: error: {OFF} (this model's size multiple: VAE factor x UNet " \
                                f"down-sampling): {PICK}"
    assert not out.exists()
    # the neighbours it names run
    assert main(["generate", "a cat", "--engines", str(ranged_engines), "--height", "80", "--width", "64",
                 "--steps", "2", "-o", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 80)


def test_the_api_and_the_serving_batcher_refuse_it_on_every_backend(ort_pipe, torch_pipe):
    from answer_trt.serving.batcher import GenerateRequest, StepBatcher

    for pipe in (ort_pipe, torch_pipe):
        with pytest.raises(UserInputError, match=f"^{OFF}.*{PICK}$"):
            pipe.generate("a cat", height=72, width=64, steps=2)
        with pytest.raises(UserInputError, match=r"^--width 40 is not a positive multiple of 16.*: pick 32 or 48$"):
            pipe.request_config("a cat", height=64, width=40)
    with StepBatcher(ort_pipe) as batcher, pytest.raises(UserInputError, match=f"^{OFF}.*{PICK}$"):
        batcher.submit(GenerateRequest("a cat", height=72, width=64, steps=2))  # serve answers 400 with it


def test_generate_model_refuses_before_building(tmp_path, capsys, private_cache):
    """`generate --model` checks the size against the model's configs before any build."""
    engines = private_cache / "engines"
    before = sorted(engines.iterdir()) if engines.exists() else []
    assert main(["generate", "a cat", "--model", "tiny-random", "--height", "72", "-o", str(tmp_path / "y.png")]) == 2
    assert PICK in capsys.readouterr().err
    assert (sorted(engines.iterdir()) if engines.exists() else []) == before
