"""Weights variants (issue 22, item 2): a folder saved with ``save_pretrained(variant="fp16")``
(what diffusers' ``variant="fp16"`` downloads) builds and runs without being asked, a folder
holding plain and fp16 weights builds the one ``--variant`` names, and either image equals
diffusers' ``from_pretrained(variant=...)``. The variant is in the build key and the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import answer_trt
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.manifest import read_manifest
from answer_trt.models.source import ensure_tiny_model, resolve_model
from answer_trt.models.tiny import build_tiny_model
from answer_trt.models.weight_files import component_variants

STEPS = 4
PROMPT = "a red circle"


def _diffusers(folder: Path, variant: str | None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, variant=variant)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(folder: Path, variant: str | None) -> np.ndarray:
    images = _diffusers(folder, variant)(
        PROMPT, num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
        output_type="np").images
    return (images * 255).round().astype(np.int16)


def _ours(pipe) -> np.ndarray:
    images = pipe(PROMPT, method="cfg", steps=STEPS, guidance_scale=6.0, seed=3)
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _resave(source: Path, folder: Path, variant: str | None) -> None:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(source).save_pretrained(folder, variant=variant)


@pytest.fixture(scope="module")
def fp16_only(tmp_path_factory) -> Path:
    """tiny-random saved as diffusers' variant="fp16" saves it: every weights file *.fp16.safetensors."""
    folder = tmp_path_factory.mktemp("variant") / "fp16-only"
    _resave(ensure_tiny_model(), folder, "fp16")
    return folder


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    """Plain weights of tiny-random and, as the fp16 variant, other weights (another seed)."""
    root = tmp_path_factory.mktemp("variant")
    folder = root / "both"
    shutil.copytree(ensure_tiny_model(), folder)
    _resave(build_tiny_model(root / "other", seed=5), folder, "fp16")
    return folder


def test_the_fixture_folders_hold_what_they_claim(fp16_only, both):
    assert not list(fp16_only.rglob("diffusion_pytorch_model.safetensors"))
    assert (fp16_only / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (both / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (both / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert component_variants(fp16_only) == dict.fromkeys(("text_encoder", "unet", "vae"), "fp16")
    assert component_variants(both) == dict.fromkeys(("text_encoder", "unet", "vae"))
    assert component_variants(both, "fp16") == dict.fromkeys(("text_encoder", "unet", "vae"), "fp16")


def test_a_folder_with_only_fp16_weights_builds_without_being_asked_and_equals_diffusers(fp16_only, tmp_path,
                                                                                         capsys):
    out = tmp_path / "engines"
    assert main(["build", "--model", str(fp16_only), "--out", str(out), "--max-batch", "1"]) == 0
    manifest = read_manifest(out)
    assert manifest.variant == "fp16"
    assert "--variant fp16" in manifest.build_command(out)
    assert main(["info", str(out)]) == 0
    assert "weights variant fp16" in capsys.readouterr().out
    expected = _reference(fp16_only, "fp16")
    got = _ours(answer_trt.load(out))
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2


def test_the_variant_asked_for_is_the_one_built_and_it_is_in_the_key(both, tmp_path):
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path / "engines"
    plain = build(BuildConfig(model=str(both), out=out, max_batch=1), log=lambda _m: None)
    assert plain.manifest.variant is None
    fp16 = build(BuildConfig(model=str(both), out=out, max_batch=1, variant="fp16"), log=lambda _m: None)
    assert not fp16.skipped and fp16.manifest.variant == "fp16"  # another variant is another build
    assert fp16.manifest.key != plain.manifest.key
    again = build(BuildConfig(model=str(both), out=out, max_batch=1, variant="fp16"), log=lambda _m: None)
    assert again.skipped

    expected_fp16, expected_plain = _reference(both, "fp16"), _reference(both, None)
    assert np.abs(expected_fp16 - expected_plain).max() > 20  # the two weights give different pictures
    got = _ours(answer_trt.load(out))
    assert np.abs(got - expected_fp16).max() <= 2
    # The Python API's eager path reads the same variant; the plain weights stay the default.
    assert np.abs(_ours(answer_trt.load(str(both), backend="torch", variant="fp16")) - expected_fp16).max() <= 2
    assert np.abs(_ours(answer_trt.load(str(both), backend="torch")) - expected_plain).max() <= 2


def test_generate_model_takes_the_variant_into_its_own_cache_folder(both, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    for variant in ("fp16", None):
        flags = ["--variant", variant] if variant else []
        png = tmp_path / f"{variant}.png"
        assert main(["generate", PROMPT, "--model", str(both), *flags, "--method", "cfg", "--steps", str(STEPS),
                     "--guidance-scale", "6", "--seed", "3", "-o", str(png)]) == 0, capsys.readouterr().err
    folders = sorted((tmp_path / "cache" / "engines").iterdir())
    assert len(folders) == 2
    assert sorted(str(read_manifest(f).variant) for f in folders) == ["None", "fp16"]
    from PIL import Image

    with Image.open(tmp_path / "fp16.png") as image:
        got = np.asarray(image, dtype=np.int16)[None]
    assert np.abs(got - _reference(both, "fp16")).max() <= 2


def _refused(capsys, args: list[str], *needles: str) -> str:
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_variant_the_folder_lacks_is_refused_in_one_line(both, tmp_path, capsys):
    out = tmp_path / "engines"
    _refused(capsys, ["build", "--model", str(both), "--out", str(out), "--variant", "ema"],
             "--variant ema", str(both), "fp16", "leave --variant out")
    _refused(capsys, ["build", "--model", "tiny-random", "--out", str(out), "--variant", "fp16"],
             "no fp16 weights", "plain weights only")
    _refused(capsys, ["build", "--model", str(both), "--out", str(out), "--variant", "../fp16"],
             "not a weights variant name")
    assert not out.exists()


def test_weights_stored_only_as_two_variants_are_refused_naming_both(fp16_only, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(fp16_only, folder)
    for file in folder.rglob("*.fp16.safetensors"):
        shutil.copy(file, file.with_name(file.name.replace(".fp16.", ".ema.")))
    _refused(capsys, ["build", "--model", str(folder), "--out", str(tmp_path / "out")],
             "ema, fp16", "--variant ema", "--variant fp16")
    assert resolve_model(str(folder), "ema").variant == "ema"


def test_engines_built_from_another_variant_are_refused_by_load(both, tmp_path):
    from answer_trt.build_config import BuildConfig
    from answer_trt.export.build import build

    out = tmp_path / "engines"
    build(BuildConfig(model=str(both), out=out, max_batch=1, variant="fp16"), log=lambda _m: None)
    assert answer_trt.load(out, variant="fp16").model_name == str(both)
    with pytest.raises(UserInputError, match="built from the fp16 weights variant") as refused:
        answer_trt.load(out, variant="ema")
    assert "--variant ema" in str(refused.value) and "\n" not in str(refused.value)


def test_a_manifest_with_a_variant_that_is_not_a_name_is_refused(both, tmp_path, engines_dir):
    folder = tmp_path / "engines"
    shutil.copytree(engines_dir, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["variant"] = "../../x"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="variant is not a weights variant name"):
        read_manifest(folder)
