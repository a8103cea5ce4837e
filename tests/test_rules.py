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
    with pytest.raises(UserInputError, match="--height 60 is not a positive multiple of 8: pick e.g. 56"):
        check_size("--height", 60)
    with pytest.raises(UserInputError, match="positive multiple"):
        check_size("--height", -8)
    assert parse_size_range("512") == SizeRange(512, 512, 512)
    assert parse_size_range("256:512") == SizeRange(256, 256, 512)
    with pytest.raises(UserInputError, match="not an integer"):
        parse_size_range("256:big")
