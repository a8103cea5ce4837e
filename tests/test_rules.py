"""One owner per rule: backend names, precisions and size checks (answer_trt.rules), the
build request and its command line (answer_trt.build_config), and rebuild hints that
replay every flag a folder was built with, wherever they are raised."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from answer_trt import loaders
from answer_trt.backends.bindings import check_plan_compatible
from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.iospec import ModelDims, SizeRange
from answer_trt.manifest import Manifest, verify_files
from answer_trt.models.info import ModelInfo
from answer_trt.pipeline import Limits
from answer_trt.rules import check_choice, check_int, check_size, parse_size_range

TRT_FLAGS = "--backend tensorrt --precision fp16"
RANGES = "--height 512:1024 --width 512:768"


def tensorrt_manifest(files: dict[str, str] | None = None) -> Manifest:
    """A TensorRT fp16 manifest built for ranges of sizes (fields a hint does not read are minimal)."""
    dims = ModelDims(77, 2048, 4, 8, 128, 1280, 6)
    return Manifest(key="0" * 64, backend="tensorrt", precision="fp16", model_name="stabilityai/sdxl-base",
                    model_hash="1" * 64, max_batch=2, height=SizeRange(512, 1024, 1024),
                    width=SizeRange(512, 768, 768), info=ModelInfo(dims, "epsilon", True, True), components={},
                    files=files or {}, versions={"tensorrt": "10.13.0"}, gpu_capability="9.0")


def test_the_rebuild_command_replays_every_flag(tmp_path):
    command = tensorrt_manifest().build_command(tmp_path / "my engines")
    assert command.startswith("answer-trt build --model stabilityai/sdxl-base --out ")
    assert f"'{tmp_path / 'my engines'}'" in command  # quoted for the shell
    assert f"{TRT_FLAGS} --max-batch 2 {RANGES} --force" in command


def test_every_rebuild_hint_is_the_manifest_command(tmp_path, monkeypatch):
    manifest = tensorrt_manifest({"unet.plan": "2" * 64})
    with pytest.raises(UserInputError, match=f"{TRT_FLAGS} --max-batch 2 {RANGES} --force"):
        verify_files(tmp_path, manifest)  # unet.plan is missing

    limits = Limits(manifest.max_batch, manifest.height, manifest.width, manifest.build_config(tmp_path))
    batch_hint = limits.rebuild_command(max_batch=5)
    assert f"{TRT_FLAGS} --max-batch 5 {RANGES}" in batch_hint
    height_hint = limits.rebuild_command(height=1152)
    assert f"{TRT_FLAGS} --max-batch 2 --height 1152 --width 512:768" in height_hint

    def load_engines(folder, components, version, capability, rebuild_command):  # this machine: another GPU
        check_plan_compatible(version, capability, "10.13.0", "8.9", rebuild_command)

    monkeypatch.setitem(sys.modules, "answer_trt.backends.tensorrt", types.SimpleNamespace(load_engines=load_engines))
    monkeypatch.setattr("answer_trt.versions.tensorrt_available", lambda: True)  # a machine with TensorRT
    with pytest.raises(UserInputError, match=f"capability 9.0.*{TRT_FLAGS} --max-batch 2 {RANGES}"):
        loaders._tensorrt_engines(tmp_path, manifest)


def test_a_request_beyond_the_built_batch_names_the_full_command(ort_pipe):
    with pytest.raises(UserInputError, match=r"--backend onnxruntime --precision fp32 --max-batch 3 "
                                             r"--height \d+ --width \d+ --force"):
        ort_pipe("a bird", steps=1, batch=3)


def test_build_config_refuses_what_no_build_makes():
    with pytest.raises(UserInputError, match="unknown backend 'torch'"):
        BuildConfig(backend="torch")
    with pytest.raises(UserInputError, match="unknown precision 'int8'"):
        BuildConfig(precision="int8")
    with pytest.raises(UserInputError, match="--max-batch must be an integer >= 1"):
        BuildConfig(max_batch=True)
    with pytest.raises(UserInputError, match="low end is above"):
        BuildConfig(height=SizeRange(512, 512, 256))
    assert BuildConfig(model="tiny", out=Path("e"), height=64).command() == (
        "answer-trt build --model tiny --out e --backend onnxruntime --precision fp32 --max-batch 4 --height 64")


def test_the_checks():
    assert check_choice("backend", "torch", ("onnxruntime", "torch")) == "torch"
    with pytest.raises(UserInputError, match="choose one of a, b"):
        check_choice("thing", "c", ("a", "b"))
    assert check_int("--steps", 3) == 3
    for bad in (0, True, 2.0, "2"):
        with pytest.raises(UserInputError, match="--steps must be an integer >= 1"):
            check_int("--steps", bad)
    assert check_size("--height", 64) == 64 and check_size("--height", 36, multiple=4) == 36
    with pytest.raises(UserInputError, match="--height 60 is not a positive multiple of 8: pick 56 or 64"):
        check_size("--height", 60)
    with pytest.raises(UserInputError, match="positive multiple"):
        check_size("--height", -8)
    assert parse_size_range("512") == SizeRange(512, 512, 512)
    assert parse_size_range("256:512") == SizeRange(256, 256, 512)
    with pytest.raises(UserInputError, match="not an integer"):
        parse_size_range("256:big")


# --- limits: image sides, seeds, the memory estimate ---------------------------------------


def test_image_side_is_capped():
    from answer_trt.rules import MAX_IMAGE_SIDE

    assert check_size("--height", MAX_IMAGE_SIDE) == MAX_IMAGE_SIDE
    with pytest.raises(UserInputError, match="--height 4104 is above the limit of 4096 px"):
        check_size("--height", MAX_IMAGE_SIDE + 8)


@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1])
def test_seeds_torch_takes_are_accepted(seed):
    import torch

    from answer_trt.rules import check_seed

    assert check_seed(seed) == seed
    torch.Generator("cpu").manual_seed(seed)  # and torch agrees


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True, "3"])
def test_seeds_outside_the_range_are_refused(seed):
    from answer_trt.rules import check_seed

    with pytest.raises(UserInputError, match=r"0 to 2\*\*64 - 1"):
        check_seed(seed)


def sd_dims():
    from answer_trt.iospec import ModelDims

    return ModelDims(text_max_length=77, text_hidden_size=768, latent_channels=4, vae_scale_factor=8,
                     default_latent_size=64)


def test_memory_estimate_is_linear_and_halves_with_half_precision():
    from answer_trt.rules import bytes_per_image

    dims = sd_dims()
    one = bytes_per_image(dims, 512, 512, "fp32")
    assert 0.5e9 < one < 3e9  # SD 1.x at 512 px in fp32: a GB or two
    assert bytes_per_image(dims, 1024, 1024, "fp32") == 4 * one
    assert bytes_per_image(dims, 512, 512, "fp16") < 0.6 * one


def test_memory_limit_comes_from_the_environment(monkeypatch):
    from answer_trt.rules import check_memory, memory_limit

    monkeypatch.setenv("ANSWER_TRT_MAX_MEMORY_GB", "2.5")
    assert memory_limit() == (2_500_000_000, "ANSWER_TRT_MAX_MEMORY_GB=2.5")
    assert check_memory(sd_dims(), 1, 512, 512, "fp32") > 0
    with pytest.raises(UserInputError, match="--batch 8 at 512x512 px .*ANSWER_TRT_MAX_MEMORY_GB=2.5.*or fewer"):
        check_memory(sd_dims(), 8, 512, 512, "fp32")
    for bad in ("0", "-1", "nan", "inf", "many"):
        monkeypatch.setenv("ANSWER_TRT_MAX_MEMORY_GB", bad)
        with pytest.raises(UserInputError, match="positive number of GB"):
            memory_limit()
    monkeypatch.delenv("ANSWER_TRT_MAX_MEMORY_GB")
    assert memory_limit()[0] > 0


def test_config_files_are_read_bounded_and_only_from_regular_files(tmp_path):
    """A config that links to an endless device or a FIFO is refused in one line instead of
    being read until memory runs out (or blocking); an oversized one likewise."""
    import os

    from answer_trt.files import read_bounded
    from answer_trt.models.info import read_json_object

    link = tmp_path / "model_index.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserInputError, match="is not a regular file"):
        read_json_object(link)
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(UserInputError, match="is not a regular file"):
        read_json_object(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(UserInputError, match="larger than"):
        read_bounded(big, limit=1024)
    assert read_bounded(big, limit=4096) == b" " * 2048


@pytest.mark.parametrize("value", [0, -0.1, "0.18", None])
def test_a_vae_scaling_factor_that_cannot_scale_is_refused_from_the_config(value, tmp_path):
    """Checked with the model's configs, before anything is loaded or built (0 divided latents by
    zero: a black image after a full build)."""
    import json
    import shutil

    from answer_trt.models.info import read_model_info
    from answer_trt.models.source import ensure_tiny_model

    model = tmp_path / "model"
    shutil.copytree(ensure_tiny_model("tiny-random"), model)
    config = json.loads((model / "vae" / "config.json").read_text())
    config["scaling_factor"] = value
    (model / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="scaling_factor .* must be a finite number above 0"):
        read_model_info(model)
