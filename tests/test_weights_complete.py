"""Weights that do not cover a component's architecture are refused in one line (issue 15):
a missing, renamed or foreign tensor would otherwise leave part of the model at random
values with one warning among many, and every picture would be wrong. Built-in models
load with nothing missing and nothing left over, under every supported library version
(.ci/run runs this file at the floors of constraints-min.txt too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.models.source import BUILT_IN_MODELS, check_loading_info, ensure_tiny_model, load_model, resolve_model


def _copy_sd(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _edit(file: Path, edit) -> None:
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _remove_one(folder: Path) -> tuple[str, str]:
    name = "conv_in.weight"
    _edit(folder / "unet" / "diffusion_pytorch_model.safetensors", lambda t: t.pop(name))
    return "unet", name


def _rename_one(folder: Path) -> tuple[str, str]:
    name = "decoder.conv_out.bias"
    _edit(folder / "vae" / "diffusion_pytorch_model.safetensors",
          lambda t: t.__setitem__("decoder.conv_out.bias_renamed", t.pop(name)))
    return "vae", name


def _other_family(folder: Path) -> tuple[str, str]:
    # SDXL's second text encoder (CLIPTextModelWithProjection, same widths as the SD
    # miniature's) in the SD-1.5 miniature's text_encoder: shapes fit, its projection does not.
    shutil.rmtree(folder / "text_encoder")
    shutil.copytree(ensure_tiny_model("tiny-sdxl") / "text_encoder_2", folder / "text_encoder")
    return "text_encoder", "text_projection.weight"


BROKEN = {"tensor-removed": _remove_one, "tensor-renamed": _rename_one, "other-family-text-encoder": _other_family}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("command", ["generate", "build"])
def test_incomplete_weights_are_refused_in_one_line(case, command, tiny_model_dir, tmp_path, capsys):
    folder = _copy_sd(tiny_model_dir, tmp_path)
    component, tensor = BROKEN[case](folder)
    if command == "generate":
        args = ["generate", "a red circle", "--model", str(folder), "--backend", "torch", "--steps", "2",
                "-o", str(tmp_path / "out.png")]
    else:
        args = ["build", "--model", str(folder), "--out", str(tmp_path / "engines")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(folder / component) in err and tensor in err and "1 tensor " in err, err
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "engines" / "manifest.json").exists()


def test_the_message_names_the_component_the_count_and_the_first_names(tmp_path):
    missing = [f"layer.{i}.weight" for i in range(7)]
    with pytest.raises(UserInputError) as caught:
        check_loading_info(tmp_path / "unet", {"missing_keys": missing, "unexpected_keys": [],
                                               "mismatched_keys": [], "error_msgs": []})
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "unet") in message
    assert "7 tensors missing" in message and "layer.0.weight, layer.1.weight, layer.2.weight, ..." in message
    assert "layer.3.weight" not in message
    # A buffer the model computes itself (old CLIP checkpoints saved position_ids) is no problem.
    check_loading_info(tmp_path, {"missing_keys": [], "unexpected_keys": ["text_model.embeddings.position_ids"]})


@pytest.mark.parametrize("name", BUILT_IN_MODELS)
def test_every_built_in_model_loads_with_every_tensor(name):
    loaded = load_model(resolve_model(name).path)  # refuses any missing or unexpected tensor
    assert loaded.unet is not None and loaded.vae is not None and loaded.text_encoder is not None
    assert (loaded.text_encoder_2 is not None) == (name == "tiny-sdxl")


def test_shipped_text_encoder_uses_the_layout_every_transformers_reads():
    # transformers 4.x reads only `text_model.`-prefixed CLIPTextModel tensors; 5.x reads both.
    from safetensors import safe_open

    file = resolve_model("tiny").path / "text_encoder" / "model.safetensors"
    with safe_open(str(file), "pt") as tensors:
        names = list(tensors.keys())
    assert names and all(n.startswith("text_model.") for n in names)
