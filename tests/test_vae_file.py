"""``--vae FILE|DIR`` (issue 31, item 1): `tiny`'s VAE perturbed with seeded noise, saved as a
diffusers AutoencoderKL folder, as an A1111 VAE file in the original (LDM) key layout (the mapping
of ``tests/ldm_files.vae_to_ldm`` without a prefix, as A1111's models/VAE files are) and as a
diffusers-keyed single file. Images with --vae differ from the model's own, equal diffusers'
pipeline with ``vae=`` replaced (within 2 levels), and the folder and the files give the same image
(0 levels). The VAE's sha256 is in the build key, the cache folder, the manifest, `info`, the
PNG (A1111's "VAE hash"/"VAE") and the rebuild hint; a replay checks it. Refusals are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import answer_trt
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.manifest import read_manifest
from answer_trt.models.source import resolve_model
from answer_trt.models.vae_file import check_vae
from tests.cli_run import file_pixels as _pixels
from tests.cli_run import refused_in_one_line as _refused
from tests.cli_run import run_cli as _cli
from tests.ldm_files import vae_to_ldm, write_ldm_checkpoint

PROMPT = "a red circle"
STEPS = 3
RUN = ("--steps", str(STEPS), "--method", "cfg", "--guidance-scale", "6", "--seed", "3")


def _perturbed_vae(seed: int, **config: object):
    """`tiny`'s VAE with seeded noise (5% of each tensor's spread) on every weight."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(resolve_model("tiny").path / "vae", **config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():
            spread = p.std() if p.numel() > 1 else torch.tensor(1.0)
            p.add_(torch.randn(p.shape, generator=generator) * 0.05 * spread)
    return vae


def _ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A1111's models/VAE layout: LDM keys without the checkpoint's ``first_stage_model.`` prefix."""
    return {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(state, config).items()}


@pytest.fixture(scope="module")
def vaes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vae")
    vae = _perturbed_vae(7)
    vae.save_pretrained(root / "fixed-vae")
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(_ldm(state, dict(vae.config)), str(root / "fixed.safetensors"))
    save_file(state, str(root / "fixed-diffusers.safetensors"))
    return {"folder": root / "fixed-vae", "ldm": root / "fixed.safetensors",
            "diffusers": root / "fixed-diffusers.safetensors"}


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def engines(vaes, tmp_path_factory) -> dict[str, Path]:
    """`tiny` built with each form of the VAE, and without one."""
    root = tmp_path_factory.mktemp("vae-engines")
    out = {}
    for name, vae in [("own", None), *vaes.items()]:
        out[name] = root / name
        extra = ("--vae", str(vae)) if vae is not None else ()
        assert main(["build", "--model", "tiny", "--out", str(out[name]), "--max-batch", "1",
                     "--components", "txt2img", *extra]) == 0
    return out


def _reference(vae_folder: Path) -> np.ndarray:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    model = resolve_model("tiny").path
    pipe = StableDiffusionPipeline.from_pretrained(model, vae=AutoencoderKL.from_pretrained(vae_folder),
                                                   torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator().manual_seed(3),
                  output_type="np").images
    return (images[0] * 255).round().astype(np.int16)


def test_each_form_equals_diffusers_with_the_vae_replaced(vaes, engines, tmp_path):
    images = {}
    for name, folder in engines.items():
        images[name] = tmp_path / f"{name}.png"
        assert _cli("generate", PROMPT, "--engines", folder, *RUN, "-o", images[name]) == 0
    reference = _reference(vaes["folder"])
    folder = _pixels(images["folder"])
    assert np.abs(folder - reference).max() <= 2
    assert np.array_equal(folder, _pixels(images["ldm"]))  # the same VAE as a folder and as A1111's file: 0 levels
    assert np.array_equal(folder, _pixels(images["diffusers"]))
    assert np.abs(folder - _pixels(images["own"])).max() > 2  # the VAE changed the picture


def test_the_manifest_info_key_and_png_record_the_vae(vaes, engines, tmp_path, capsys):
    manifests = {name: read_manifest(folder) for name, folder in engines.items()}
    assert manifests["own"].vae is None
    ldm = manifests["ldm"].vae
    assert ldm is not None and ldm.layout == "ldm" and Path(ldm.path) == vaes["ldm"].resolve()
    assert manifests["folder"].vae.layout == "folder" and manifests["diffusers"].vae.layout == "diffusers"
    assert len({m.key for m in manifests.values()}) == 4  # the VAE is in the build key
    command = manifests["ldm"].build_config(engines["ldm"]).command()
    assert f"--vae {vaes['ldm'].resolve()}" in command, command
    assert _cli("info", engines["ldm"]) == 0
    assert f"vae:        fixed.safetensors (ldm, sha256 {ldm.sha256})" in capsys.readouterr().out
    png = tmp_path / "ldm.png"
    assert _cli("generate", PROMPT, "--engines", engines["ldm"], *RUN, "-o", png) == 0
    text = Image.open(png).info["parameters"]
    assert f"VAE hash: {ldm.sha256[:10]}, VAE: fixed.safetensors" in text, text


def test_a_replay_needs_the_same_vae(vaes, engines, tmp_path, capsys):
    png = tmp_path / "drawn.png"
    assert _cli("generate", PROMPT, "--engines", engines["ldm"], *RUN, "-o", png) == 0
    again = tmp_path / "again.png"
    assert _cli("generate", "--from-png", png, "--engines", engines["ldm"], "-o", again) == 0
    assert np.array_equal(_pixels(png), _pixels(again))
    capsys.readouterr()
    _refused(capsys, _cli("generate", "--from-png", png, "--engines", engines["own"], "-o", tmp_path / "x.png"),
             "fixed.safetensors", "--vae")
    # The same VAE as a folder is another file (its own sha256): an --engines folder built otherwise is refused.
    _refused(capsys, _cli("generate", PROMPT, "--engines", engines["ldm"], "--vae", vaes["folder"], *RUN,
                          "-o", tmp_path / "y.png"), "--vae", "build")


def test_cached_builds_are_one_per_vae_and_reused(vaes, cache, tmp_path):
    run = ("--steps", "2", "--seed", "1")
    assert _cli("generate", PROMPT, "--model", "tiny", "--vae", vaes["ldm"], *run, "-o", tmp_path / "a.png") == 0
    folders = sorted((cache / "engines").iterdir())
    assert len(folders) == 1 and read_manifest(folders[0]).vae is not None
    assert _cli("generate", PROMPT, "--model", "tiny", "--vae", vaes["ldm"], *run, "-o", tmp_path / "b.png") == 0
    assert sorted((cache / "engines").iterdir()) == folders  # reused
    assert _cli("generate", PROMPT, "--model", "tiny", *run, "-o", tmp_path / "c.png") == 0
    assert len(list((cache / "engines").iterdir())) == 2  # the model's own VAE: another folder
    # Replay builds (or finds) the VAE's engines again when given --vae.
    assert _cli("generate", "--from-png", tmp_path / "a.png", "--model", "tiny", "--vae", vaes["ldm"],
                "-o", tmp_path / "d.png") == 0
    assert np.array_equal(_pixels(tmp_path / "a.png"), _pixels(tmp_path / "d.png"))
    assert len(list((cache / "engines").iterdir())) == 2


def test_load_and_the_torch_backend_take_the_vae(vaes, engines):
    eager = answer_trt.load("tiny", backend="torch", vae=vaes["ldm"])
    built = answer_trt.load(engines["folder"])
    run = dict(method="cfg", steps=STEPS, guidance_scale=6.0, seed=3)
    a = np.asarray(eager(PROMPT, **run).images[0], dtype=np.int16)
    b = np.asarray(built(PROMPT, **run).images[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 2
    assert eager.weights.vae_hash == read_manifest(engines["ldm"]).vae.sha256
    with pytest.raises(UserInputError, match="not --vae"):
        answer_trt.load(engines["own"], vae=vaes["ldm"])


def _other_family(root: Path) -> dict[str, Path]:
    from diffusers import AutoencoderKL

    out = {}
    wide = AutoencoderKL(latent_channels=8, block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
    wide.save_pretrained(root / "latent8")
    out["latent8-folder"] = root / "latent8"
    state = {k: v.contiguous() for k, v in wide.state_dict().items()}
    save_file(_ldm(state, dict(wide.config)), str(root / "latent8.safetensors"))
    out["latent8-file"] = root / "latent8.safetensors"
    scaled = _perturbed_vae(1, scaling_factor=0.13025)
    scaled.save_pretrained(root / "sdxl-scaled")
    out["scaling"] = root / "sdxl-scaled"
    return out


def test_bad_vaes_are_refused_in_one_line(vaes, tmp_path, capsys):
    model = resolve_model("tiny").path
    data = vaes["ldm"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "vae.ckpt").write_bytes(b"\x80\x04pickle")
    from tests.lora_files import make_lora

    lora = make_lora(model, tmp_path / "lora", seed=1)
    whole = write_ldm_checkpoint(model, tmp_path / "whole.safetensors")
    others = _other_family(tmp_path)
    cases = [
        (tmp_path / "nope.safetensors", ("no such file",)),
        (tmp_path / "cut.safetensors", ("truncated",)),
        (tmp_path / "vae.ckpt", ("pickle",)),
        (lora, ("LoRA", "--lora")),
        (whole, ("whole checkpoint", "--model")),
        (model, ("whole model folder",)),
        (others["latent8-folder"], ("8-channel", "another model family")),
        (others["latent8-file"], ("8-channel", "another model family")),
        (others["scaling"], ("scaling_factor", "another model family")),
    ]
    for path, needles in cases:
        with pytest.raises(UserInputError) as caught:
            check_vae(path, model)
        message = str(caught.value)
        assert "\n" not in message and all(n in message for n in needles), (path, message)
    # Through the CLI: before anything is built.
    _refused(capsys, _cli("build", "--model", "tiny", "--out", tmp_path / "e", "--vae", lora), "LoRA")
    assert not (tmp_path / "e").exists()


def test_an_a1111_png_with_a_vae_hash_replays_only_with_that_vae(vaes, tmp_path, capsys):
    from PIL import PngImagePlugin

    from answer_trt.files import sha256_file

    digest = sha256_file(vaes["ldm"])[:10]
    png = tmp_path / "a1111.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", f"a red circle\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 11, Size: 32x32, "
                                f"VAE hash: {digest}, VAE: fixed.safetensors")
    Image.new("RGB", (32, 32)).save(png, pnginfo=meta)
    base = ("generate", "--from-png", png, "--model", "tiny", "--backend", "torch")
    _refused(capsys, _cli(*base, "-o", tmp_path / "x.png"), f"sha256 {digest}", "--vae")
    _refused(capsys, _cli(*base, "--vae", vaes["folder"], "-o", tmp_path / "y.png"), "fixed.safetensors")
    assert _cli(*base, "--vae", vaes["ldm"], "-o", tmp_path / "ok.png") == 0
    assert "VAE hash" not in capsys.readouterr().err  # honoured, not listed as ignored


def test_serve_builds_the_model_with_its_vae(vaes, cache):
    from answer_trt.cli import make_parser
    from answer_trt.serving.cli_serve import serve_config

    args = make_parser().parse_args(["serve", "--model", "tiny", "--vae", str(vaes["ldm"])])
    built = read_manifest(serve_config(args).engines)
    assert built.vae is not None and Path(built.vae.path) == vaes["ldm"].resolve()


def test_serve_lists_the_vae_it_was_built_with(vaes, engines):
    """GET /sdapi/v1/sd-vae names the --vae the served engines hold (A1111's model_name and filename:
    the file's name, not the server's path), and is empty for the model's own VAE."""
    pytest.importorskip("fastapi")  # the serve extra (not in the floors' environment)
    from answer_trt.serving.app import GenerateServer, ServeConfig
    from answer_trt.serving.http import make_api
    from tests.test_serve_a1111 import call

    for name, listed in (("ldm", [{"model_name": "fixed.safetensors", "filename": "fixed.safetensors"}]),
                         ("own", [])):
        server = GenerateServer(ServeConfig(engines=engines[name]))
        answer = call(make_api(server), "GET", "/sdapi/v1/sd-vae")
        assert answer.status_code == 200 and answer.json() == listed, name


def test_a1111_clients_may_set_sd_vae_to_the_listed_vae_and_nothing_else(vaes, engines):
    """override_settings / POST /sdapi/v1/options sd_vae: the listed --vae (or Automatic) where the
    engines hold one, Automatic or None where they hold the model's own; GET options reports it."""
    pytest.importorskip("fastapi")
    from answer_trt.serving.app import GenerateServer, ServeConfig
    from answer_trt.serving.http import make_api
    from tests.test_serve_a1111 import call

    body = {"prompt": "a red circle", "steps": 2, "seed": 1, "width": 32, "height": 32}
    for name, taken, refused in (("ldm", ("fixed.safetensors", "Automatic"), ("None", "other.safetensors")),
                                 ("own", ("Automatic", "None"), ("fixed.safetensors",))):
        app = make_api(GenerateServer(ServeConfig(engines=engines[name])))
        assert call(app, "GET", "/sdapi/v1/options").json()["sd_vae"] == taken[0], name
        for value in taken:
            answer = call(app, "POST", "/sdapi/v1/txt2img", {**body, "override_settings": {"sd_vae": value}})
            assert answer.status_code == 200 and len(answer.json()["images"]) == 1, (name, value)
            assert call(app, "POST", "/sdapi/v1/options", {"sd_vae": value}).status_code == 200
        for value in refused:
            answer = call(app, "POST", "/sdapi/v1/txt2img", {**body, "override_settings": {"sd_vae": value}})
            assert answer.status_code == 400, (name, value)
            assert f"sd_vae {value!r} is not served here" in answer.json()["error"].replace('"', "'")
