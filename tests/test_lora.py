"""LoRA at build time (issue 22, item 3): ``--lora FILE[:SCALE]`` fuses adapters into the UNet
and text encoder(s) through diffusers' own LoRA loading before export; the engines' image
equals diffusers' eager pipeline with the same adapters active (within 2 levels of 255), for
the `tiny` model and the SDXL miniature, with adapters in diffusers' and kohya's formats. The
files' sha256 and scales are in the build key, the manifest, `answer-trt info` and each
image's metadata, which a replay checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.build_config import BuildConfig, LoraSpec, lora_specs
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.manifest import read_manifest
from answer_trt.models.lora import check_lora
from answer_trt.models.source import ensure_tiny_model, load_model, resolve_model
from answer_trt.schema import from_parameters
from tests.cli_run import refused_in_one_line as _refused
from tests.cli_run import run_cli as _cli
from tests.lora_files import foreign_lora, make_lora, to_kohya

pytest.importorskip("peft")

STEPS = 4
PROMPT = "a red circle"


def _levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _ours(pipe) -> np.ndarray:
    return _levels(pipe(PROMPT, method="cfg", steps=STEPS, guidance_scale=6.0, seed=3))


def _reference(model: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    """diffusers' pipeline with the adapters loaded and active at their scales (not fused:
    peft's LoRA layers run beside the weights), drawing the same request."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe_class = StableDiffusionXLPipeline if (model / "text_encoder_2").is_dir() else StableDiffusionPipeline
    pipe = pipe_class.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if loras:
        names = [f"adapter{i}" for i in range(len(loras))]
        for name, (file, _scale) in zip(names, loras):
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[scale for _file, scale in loras])
    images = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
                  output_type="np").images
    return (images * 255).round().astype(np.int16)


@pytest.fixture(scope="module")
def sd_loras(tmp_path_factory) -> tuple[Path, Path]:
    """For `tiny`: a diffusers-format adapter (UNet + text encoder) and another in kohya's format
    (alpha = rank / 2, so its own scaling is used)."""
    root = tmp_path_factory.mktemp("lora-sd")
    model = resolve_model("tiny").path
    diffusers_file = make_lora(model, root / "a", seed=1)
    kohya_file = to_kohya(make_lora(model, root / "b", seed=2), root / "style_kohya.safetensors", alpha_ratio=0.5)
    return diffusers_file, kohya_file


@pytest.fixture(scope="module")
def sd_engines(sd_loras, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-engines") / "tiny"
    first, second = sd_loras
    assert main(["build", "--model", "tiny", "--out", str(out), "--max-batch", "1",
                 "--lora", f"{first}:0.7", "--lora", f"{second}:1.2"]) == 0
    return out


def test_the_kohya_file_is_kohya_named(sd_loras):
    from safetensors import safe_open

    with safe_open(str(sd_loras[1]), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)


def test_tiny_with_two_loras_equals_diffusers_with_them(sd_loras, sd_engines):
    first, second = sd_loras
    model = resolve_model("tiny").path
    expected = _reference(model, [(first, 0.7), (second, 1.2)])
    plain = _reference(model, [])
    assert np.abs(expected - plain).max() > 20  # the adapters change the picture
    got = _ours(answer_trt.load(sd_engines))
    assert np.abs(got - expected).max() <= 2
    # The eager torch backend fuses the same way (the Python API's loras=).
    eager = answer_trt.load("tiny", backend="torch", loras=[f"{first}:0.7", (second, 1.2)])
    assert np.abs(_ours(eager) - expected).max() <= 2


def test_the_manifest_info_and_key_record_each_file_and_scale(sd_loras, sd_engines, tmp_path, capsys):
    first, second = sd_loras
    manifest = read_manifest(sd_engines)
    assert [(Path(e.path), e.scale) for e in manifest.loras] == [(first.resolve(), 0.7), (second.resolve(), 1.2)]
    assert [e.sha256 for e in manifest.loras] == [check_lora(LoraSpec(f)).sha256 for f in (first, second)]
    assert f"--lora {first.resolve()}:0.7 --lora {second.resolve()}:1.2" in manifest.build_command(sd_engines)
    capsys.readouterr()
    assert main(["info", str(sd_engines)]) == 0
    out = capsys.readouterr().out
    assert "2 fused into the weights" in out and "style_kohya.safetensors  scale 1.2" in out
    assert manifest.loras[1].sha256 in out
    # The same request is up to date; another scale, or no adapter, is another build.
    config = manifest.build_config(sd_engines)
    assert build(BuildConfig(**{**config.__dict__, "force": False}), log=lambda _m: None).skipped
    out2 = tmp_path / "engines"
    rescaled = build(BuildConfig(model="tiny", out=out2, max_batch=1, loras=(LoraSpec(first, 0.7),
                                                                             LoraSpec(second, 1.0))),
                     log=lambda _m: None)
    assert not rescaled.skipped and rescaled.manifest.key != manifest.key
    assert build(BuildConfig(model="tiny", out=out2, max_batch=1), log=lambda _m: None).manifest.key not in (
        manifest.key, rescaled.manifest.key)


def test_images_record_the_loras_and_a_replay_checks_them(sd_loras, sd_engines, engines_dir, tmp_path, capsys,
                                                          monkeypatch):
    png = tmp_path / "drawn.png"
    assert main(["generate", PROMPT, "--engines", str(sd_engines), "--steps", "2", "-o", str(png)]) == 0
    with Image.open(png) as image:
        record = json.loads(image.info["answer-trt"])
    first, second = (check_lora(LoraSpec(f)) for f in sd_loras)
    assert record["loras"] == f"{first.tag.rsplit(':', 1)[0]}:0.7, {second.tag.rsplit(':', 1)[0]}:1.2"
    assert record["loras"].startswith(f"pytorch_lora_weights.safetensors:{first.sha256[:12]}:0.7, ")
    assert from_parameters(record).prompt == PROMPT
    capsys.readouterr()
    # Redrawn with engines that have no LoRA: refused, naming what to pass.
    code = _cli("generate", "--from-png", png, "--engines", engines_dir, "-o", tmp_path / "again.png")
    _refused(capsys, code, "drawn with the LoRAs", "no LoRA", "--lora FILE:SCALE")
    assert not (tmp_path / "again.png").exists()
    # With --model, before anything is built.
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    code = _cli("generate", "--from-png", png, "--model", "tiny", "--lora", f"{sd_loras[0]}:0.7", "-o",
                tmp_path / "again.png")
    _refused(capsys, code, "drawn with the LoRAs", "this run has pytorch_lora_weights.safetensors:")
    assert not (tmp_path / "cache" / "engines").exists() and not (tmp_path / "again.png").exists()
    # With the engines it was drawn with, the replay draws the same pixels.
    assert main(["generate", "--from-png", str(png), "--engines", str(sd_engines), "-o", str(tmp_path / "r.png")]) == 0
    with Image.open(png) as a, Image.open(tmp_path / "r.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_load_refuses_engines_built_with_other_loras(sd_loras, sd_engines):
    first, second = sd_loras
    assert answer_trt.load(sd_engines, loras=[f"{first}:0.7", f"{second}:1.2"]).weights.loras
    with pytest.raises(UserInputError, match="not the LoRAs asked for") as refused:
        answer_trt.load(sd_engines, loras=[f"{first}:0.7"])
    assert f"--lora {first}:0.7" in str(refused.value) and "\n" not in str(refused.value)


def test_fused_modules_are_plain(sd_loras):
    loaded = load_model(resolve_model("tiny").path, loras=[check_lora(LoraSpec(sd_loras[1], 0.5))])
    for module in (loaded.unet, loaded.text_encoder):
        assert not [name for name, _m in module.named_modules() if "lora" in name.lower()]
        assert not hasattr(module, "peft_config")


def test_sdxl_with_loras_in_both_formats_equals_diffusers(tmp_path):
    model = ensure_tiny_model("tiny-sdxl")
    diffusers_file = make_lora(model, tmp_path / "a", seed=3)
    kohya_file = to_kohya(make_lora(model, tmp_path / "b", seed=4), tmp_path / "xl_kohya.safetensors",
                          alpha_ratio=2.0, sdxl=True)
    out = tmp_path / "engines"
    assert main(["build", "--model", "tiny-sdxl", "--out", str(out), "--max-batch", "1",
                 "--lora", str(diffusers_file), "--lora", f"{kohya_file}:0.6"]) == 0
    expected = _reference(model, [(diffusers_file, 1.0), (kohya_file, 0.6)])
    assert np.abs(expected - _reference(model, [])).max() > 20
    assert np.abs(_ours(answer_trt.load(out)) - expected).max() <= 2
    assert [e.scale for e in read_manifest(out).loras] == [1.0, 0.6]


# --- refusals: one line each, nothing built ------------------------------------------------


def test_an_adapter_for_another_architecture_is_refused_naming_the_file_and_key(tmp_path, capsys):
    foreign = foreign_lora(tmp_path / "other.safetensors")
    out = tmp_path / "engines"
    code = _cli("build", "--model", "tiny", "--out", out, "--lora", foreign)
    _refused(capsys, code, str(foreign.resolve()),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.lora_down.weight",
             "does not fit this model", "no module down_blocks.0.attentions.0.transformer_blocks.1")
    assert not out.exists()


def test_an_sd_adapter_is_refused_by_the_sdxl_model(sd_loras, tmp_path, capsys):
    code = _cli("generate", PROMPT, "--model", "tiny-sdxl", "--backend", "torch", "--lora", sd_loras[1],
                "-o", tmp_path / "x.png")
    _refused(capsys, code, str(sd_loras[1].resolve()), "key lora_te_text_model_encoder_layers_0_self_attn_",
             "does not fit this model", "inputs")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value,needles", [
    ("missing.safetensors", ("missing.safetensors", "no such file")),
    ("{lora}:abc", ("SCALE 'abc' is not a number", "FILE:SCALE")),
    ("{lora}:nan", ("SCALE must be a number in -10 .. 10",)),
    ("{lora}:11", ("SCALE must be a number in -10 .. 10",)),
    ("{folder}", ("is a folder",)),
    ("{pickle}", ("pickle",)),
    ("{garbage}", ("not a safetensors file",)),
])
def test_a_bad_lora_argument_is_one_line(value, needles, sd_loras, tmp_path, capsys):
    (tmp_path / "adapter.bin").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 16)
    arg = value.format(lora=sd_loras[0], folder=sd_loras[0].parent, pickle=tmp_path / "adapter.bin",
                       garbage=tmp_path / "garbage.safetensors")
    out = tmp_path / "engines"
    _refused(capsys, _cli("build", "--model", "tiny", "--out", out, "--lora", arg), *needles)
    assert not out.exists()


def test_lora_arguments_parse_as_documented(tmp_path):
    assert LoraSpec.parse("a.safetensors") == LoraSpec(Path("a.safetensors"), 1.0)
    assert LoraSpec.parse("dir/a.safetensors:0.8") == LoraSpec(Path("dir/a.safetensors"), 0.8)
    assert LoraSpec.parse("a.safetensors:-1") == LoraSpec(Path("a.safetensors"), -1.0)
    assert LoraSpec.parse(r"C:\loras\a.safetensors") == LoraSpec(Path(r"C:\loras\a.safetensors"), 1.0)
    odd = tmp_path / "v2:final.safetensors"
    odd.write_bytes(b"")
    assert LoraSpec.parse(str(odd)).path == odd  # an existing file whose name has a colon
    assert LoraSpec.parse("a.safetensors:0.5").argument() == "a.safetensors:0.5"
    assert lora_specs(["a.safetensors:2", ("b.safetensors", 0.25), Path("c.safetensors")]) == (
        LoraSpec(Path("a.safetensors"), 2.0), LoraSpec(Path("b.safetensors"), 0.25), LoraSpec(Path("c.safetensors")))
    with pytest.raises(UserInputError, match="loras takes a list"):
        lora_specs(3)


@pytest.mark.parametrize("entry,needle", [
    ({"path": "/a/b.safetensors", "sha256": "0" * 64, "scale": 99.0}, "loras[0].scale is 99.0, not a number in -10"),
    ({"path": "/a/b.safetensors", "sha256": "xyz", "scale": 1.0}, "loras[0].sha256 is not a sha256 hex digest"),
    ({"path": "/a/b.safetensors", "sha256": "0" * 64}, "loras[0] lacks scale"),
])
def test_a_manifest_with_a_bad_lora_record_is_refused(entry, needle, engines_dir, tmp_path):
    import shutil

    folder = tmp_path / "engines"
    shutil.copytree(engines_dir, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["loras"] = [entry]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="not a manifest this answer-trt can read") as refused:
        read_manifest(folder)
    assert needle in str(refused.value)
