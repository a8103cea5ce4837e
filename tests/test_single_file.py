"""Single-file checkpoints (``--model FILE.safetensors [--config DIR_OR_HUB_ID]``): a tiny model
written in the A1111/CompVis layout (``tests/ldm_files.py``, checked by round trip through
diffusers' own loader) builds, draws the diffusers folder's image, is reused while unchanged and
rebuilt when changed, and every bad file or missing config is refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.cli import main
from answer_trt.errors import UserInputError
from answer_trt.export.build import build
from answer_trt.manifest import read_manifest
from answer_trt.models.single_file import (
    STAGING_PREFIX,
    checkpoint_family,
    converted_folder,
    remove_stale_staging,
    resolve_single_file,
)
from answer_trt.models.source import resolve_model
from tests.ldm_files import folder_weights, write_ldm_checkpoint

PROMPT = "a red circle"


def _pixels(generation) -> np.ndarray:
    return np.stack([np.asarray(image) for image in generation.images]).astype(np.int16)


def _one_line(exc: pytest.ExceptionInfo[UserInputError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture(scope="module")
def sd1_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ldm_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors",
                                extras=True)


def _diffusers_weights(file: Path, config: Path) -> dict[str, dict[str, torch.Tensor]]:
    """What diffusers' own single-file loader makes of ``file`` (no answer-trt code)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sdxl = (config / "text_encoder_2").is_dir()
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    extra = {} if sdxl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = cls.from_single_file(str(file), config=str(config), local_files_only=True, torch_dtype=torch.float32,
                                **extra)
    subs = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if sdxl else [])
    return {sub: getattr(pipe, sub).state_dict() for sub in subs}


def _assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], sub: str) -> None:
    names = {k for k in expected if not k.endswith("position_ids")}
    assert names == {k for k in got if not k.endswith("position_ids")}, sub
    different = [k for k in names if not torch.equal(expected[k], got[k])]
    assert not different, f"{sub}: {different[:3]}"


def test_the_test_file_is_in_the_ldm_layout_and_diffusers_reads_it_back_exactly(sd1_file, tiny_model_dir):
    header = load_file(str(sd1_file))
    # The names and shapes of an A1111 SD 1.x file (LDM's UNet, VAE with 1x1-conv attention, CLIP-L).
    assert header["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in header  # the first downsampler (1 layer per block)
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in header  # an upsampler after a plain block
    assert header["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert "first_stage_model.encoder.down.0.block.0.conv1.weight" in header
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in header
    assert not any(k.startswith(("down_blocks.", "unet.")) for k in header)
    assert "alphas_cumprod" in header and "model_ema.decay" in header  # what real files carry too
    # Round trip: diffusers' loader gives back every tensor of the folder, bit for bit.
    loaded = _diffusers_weights(sd1_file, tiny_model_dir)
    for sub, got in loaded.items():
        _assert_same_weights(folder_weights(tiny_model_dir, sub), got, sub)


def test_a_single_file_builds_and_draws_the_folders_image(sd1_file, tiny_model_dir, engines_dir, tmp_path,
                                                           capsys):
    from answer_trt.backends.ort import SessionSettings
    from answer_trt.loaders import from_engines

    out = tmp_path / "engines"
    assert main(["build", "--model", str(sd1_file), "--config", str(tiny_model_dir), "--out", str(out),
                 "--max-batch", "2"]) == 0
    log = capsys.readouterr().err
    assert "SD 1.x single-file checkpoint" in log
    manifest = read_manifest(out)
    assert manifest.single_file is not None and manifest.single_file.family == "SD 1.x"
    assert manifest.single_file.config == str(tiny_model_dir.resolve())
    assert f"--config {tiny_model_dir.resolve()}" in manifest.build_command(out)
    assert main(["info", str(out)]) == 0
    assert f"checkpoint: SD 1.x single file (sha256 {manifest.single_file.sha256})" in capsys.readouterr().out

    one_thread = SessionSettings(intra_op_threads=1)  # the same ONNX Runtime settings on both sides
    ours = _pixels(from_engines(out, session=one_thread).generate(PROMPT, seed=4, steps=4))
    folder = _pixels(from_engines(engines_dir, session=one_thread).generate(PROMPT, seed=4, steps=4))
    assert folder.std() > 1  # an image, not a constant
    assert np.abs(ours - folder).max() == 0  # 0 levels


def test_an_unchanged_file_is_reused_and_a_changed_one_rebuilt(sd1_file, tiny_model_dir, tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(sd1_file.read_bytes())
    config = BuildConfig(model=str(file), out=tmp_path / "engines", max_batch=1, model_config=str(tiny_model_dir))
    first = build(config, log=lambda _m: None)
    assert not first.skipped
    assert build(config, log=lambda _m: None).skipped  # same bytes: reused
    tensors = load_file(str(file))
    key = "model.diffusion_model.out.2.bias"
    tensors[key] = tensors[key] + 0.5
    save_file(tensors, str(file))  # the same path, other content
    second = build(config, log=lambda _m: None)
    assert not second.skipped
    assert second.manifest.model_hash != first.manifest.model_hash
    assert first.manifest.single_file and second.manifest.single_file
    assert second.manifest.single_file.sha256 != first.manifest.single_file.sha256
    assert second.manifest.key != first.manifest.key
    # Each content has its own converted folder, keyed by the file's sha256.
    converted = converted_folder(resolve_single_file(file, str(tiny_model_dir)))
    assert second.manifest.single_file.sha256[:16] in converted.name
    assert torch.equal(folder_weights(converted, "unet")["conv_out.bias"], tensors[key])
    # A converted folder damaged in the cache is converted again, not refused.
    (converted / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert resolve_model(str(file), config=str(tiny_model_dir)).path == converted
    assert torch.equal(folder_weights(converted, "unet")["conv_out.bias"], tensors[key])


def test_the_eager_backend_and_loras_work_on_a_single_file(sd1_file, tiny_model_dir, tmp_path):
    from tests.lora_files import make_lora

    lora = make_lora(tiny_model_dir, tmp_path / "lora", seed=5)
    kwargs = dict(seed=2, steps=3)
    with_file = answer_trt.load(str(sd1_file), backend="torch", config=tiny_model_dir, loras=[f"{lora}:0.8"])
    with_folder = answer_trt.load("tiny-random", backend="torch", loras=[f"{lora}:0.8"])
    plain = answer_trt.load(str(sd1_file), backend="torch", config=str(tiny_model_dir))
    got = _pixels(with_file.generate(PROMPT, **kwargs))
    assert np.abs(got - _pixels(with_folder.generate(PROMPT, **kwargs))).max() == 0
    assert np.abs(got - _pixels(plain.generate(PROMPT, **kwargs))).max() > 0  # the LoRA did something


def test_a_hub_config_offline_and_not_cached_names_config(sd1_file, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(sd1_file), config=repo)
    text = _one_line(exc)
    assert repo in text and "leave --config out" in text and "offline" in text
    # Without --config the shipped SD 1.x configs are used, offline; they do not fit the tiny
    # test file's weights, which is one line naming --config.
    assert main(["build", "--model", str(sd1_file), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--config" in err and "answer-trt:sd1" in err


def test_offline_a_hub_config_comes_from_the_hugging_face_cache(sd1_file, tiny_model_dir, tmp_path, monkeypatch):
    """--config with a hub id, no network: the repo is read from the HF cache (laid out as
    huggingface_hub keeps it: refs/main -> snapshots/<commit>/)."""
    import shutil

    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    repo = cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("*.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    source = resolve_model(str(sd1_file), config="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert source.checkpoint is not None
    assert source.checkpoint.config == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert source.checkpoint.config_path == repo / "snapshots" / commit
    for sub in ("unet", "vae", "text_encoder"):
        _assert_same_weights(folder_weights(tiny_model_dir, sub), folder_weights(source.path, sub), sub)


def test_a_truncated_file_is_refused_in_one_line(sd1_file, tiny_model_dir, tmp_path):
    file = tmp_path / "cut.safetensors"
    file.write_bytes(sd1_file.read_bytes()[: sd1_file.stat().st_size // 2])
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(file), config=str(tiny_model_dir))
    assert "truncated" in _one_line(exc) and str(file) in str(exc.value)
    file.write_bytes(b"\x00" * 64)  # not safetensors at all
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(file), config=str(tiny_model_dir))
    assert "not a safetensors file" in _one_line(exc)


def test_files_that_are_not_stable_diffusion_checkpoints_are_refused(sd1_file, tmp_path):
    cases = {
        "other.safetensors": ({"encoder.weight": torch.zeros(2)}, "is not a Stable Diffusion checkpoint"),
        "lora.safetensors": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)},
                             "--lora"),
        "unet.safetensors": ({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2)}, "whole diffusers folder"),
        "unet-only.safetensors": ({k: v for k, v in load_file(str(sd1_file)).items()
                                   if k.startswith("model.diffusion_model.")}, "without the VAE"),
    }
    for name, (tensors, expected) in cases.items():
        file = tmp_path / name
        save_file(tensors, str(file))
        with pytest.raises(UserInputError) as exc:
            checkpoint_family(file)
        assert expected in _one_line(exc), name


def test_an_inpainting_checkpoint_is_named_and_refused(sd1_file, tmp_path):
    tensors = load_file(str(sd1_file))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0], 9, *tensors[key].shape[2:])
    file = tmp_path / "inpaint.safetensors"
    save_file(tensors, str(file))
    with pytest.raises(UserInputError) as exc:
        checkpoint_family(file)
    assert "inpainting checkpoint" in _one_line(exc)


def test_pickles_variant_and_misplaced_config_are_refused(sd1_file, tiny_model_dir, tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not really")
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(pickle))
    assert "pickle checkpoint" in _one_line(exc) and "safetensors" in str(exc.value)
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(tmp_path / "missing.safetensors"))
    assert "no such file" in _one_line(exc)
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(sd1_file), variant="fp16", config=str(tiny_model_dir))
    assert "drop --variant" in _one_line(exc)
    with pytest.raises(UserInputError) as exc:
        resolve_model("tiny-random", config=str(tiny_model_dir))
    assert "drop --config" in _one_line(exc)
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(sd1_file), config=str(tmp_path / "no-such-folder"))
    assert "--config" in _one_line(exc)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(sd1_file), config=str(empty))
    assert "model_index.json" in _one_line(exc)


def test_a_config_that_does_not_fit_the_weights_is_one_line(sd1_file, tiny_model_dir, tmp_path):
    import shutil

    config = tmp_path / "wider"
    shutil.copytree(tiny_model_dir, config, ignore=shutil.ignore_patterns("*.safetensors"))
    unet = json.loads((config / "unet" / "config.json").read_text())
    unet["block_out_channels"] = [64, 128]
    (config / "unet" / "config.json").write_text(json.dumps(unet))
    with pytest.raises(UserInputError) as exc:
        resolve_model(str(sd1_file), config=str(config))
    assert "could not be converted" in _one_line(exc) and "--config" in str(exc.value)
    leftovers = [p for p in converted_folder(resolve_single_file(sd1_file, str(config))).parent.iterdir()
                 if p.name.startswith(".")]
    assert not leftovers  # the failed conversion's staging folder went with it


def test_the_python_api_loads_a_single_file(sd1_file, tiny_model_dir):
    pipe = answer_trt.load(sd1_file, config=str(tiny_model_dir))
    assert pipe.model_name == str(sd1_file)
    assert pipe.generate(PROMPT, seed=1, steps=2).images[0].size == (64, 64)
    assert os.path.isdir(converted_folder(resolve_single_file(sd1_file, str(tiny_model_dir))))


def _tiny_sdxl(folder: Path) -> Path:
    """An SDXL-shaped miniature whose two text encoders differ in width (32 and 64), as CLIP-L
    and OpenCLIP-bigG do: diffusers' loader tells them apart by that width."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from answer_trt.models.tiny import WORDS, _unet, _vae
    from answer_trt.models.tokenizer_files import write_clip_tokenizer

    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)
    tokenizer_2 = write_clip_tokenizer(folder / "tokenizer_2", WORDS, pad_token="!")

    def text(width: int, cls, seed: int):
        torch.manual_seed(seed)
        return cls(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                  projection_dim=width, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=1))

    unet = _unet(11, cross_attention_dim=96, use_linear_projection=True, attention_head_dim=(4, 8),
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 64)
    StableDiffusionXLPipeline(
        vae=_vae(12, scaling_factor=0.13025, force_upcast=True), text_encoder=text(32, CLIPTextModel, 13),
        text_encoder_2=text(64, CLIPTextModelWithProjection, 14), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                    steps_offset=1, timestep_spacing="leading"),
    ).save_pretrained(folder, safe_serialization=True)
    return folder


def test_an_sdxl_single_file_round_trips_and_draws_the_folders_image(tmp_path):
    folder = _tiny_sdxl(tmp_path / "sdxl")
    file = write_ldm_checkpoint(folder, tmp_path / "tiny-sdxl.safetensors")
    keys = load_file(str(file))
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    for sub, got in _diffusers_weights(file, folder).items():
        _assert_same_weights(folder_weights(folder, sub), got, sub)
    assert checkpoint_family(file).label == "SDXL"
    kwargs = dict(seed=3, steps=2)
    ours = _pixels(answer_trt.load(str(file), backend="torch", config=str(folder)).generate(PROMPT, **kwargs))
    theirs = _pixels(answer_trt.load(str(folder), backend="torch").generate(PROMPT, **kwargs))
    assert theirs.std() > 1 and np.abs(ours - theirs).max() == 0
    with pytest.raises(UserInputError) as exc:  # SDXL weights with SD 1.x configs
        resolve_model(str(file), config=str(resolve_model("tiny-random").path))
    assert "SDXL checkpoint" in _one_line(exc)


def test_v_pred_and_ztsnr_marker_keys_set_the_scheduler_as_a1111_and_comfyui_read_them(tmp_path, monkeypatch):
    """A v-prediction SDXL fine-tune's empty ``v_pred`` (and ``ztsnr``) tensors: converted with
    v_prediction (and a zero-terminal-SNR, trailing schedule), and drawn as the diffusers folder
    with that scheduler draws; a file without them converts as before."""
    import shutil

    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    folder = _tiny_sdxl(tmp_path / "sdxl")
    plain = write_ldm_checkpoint(folder, tmp_path / "plain.safetensors")
    marked = tmp_path / "vpred.safetensors"
    save_file({**load_file(str(plain)), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(marked))
    assert checkpoint_family(marked).label == "SDXL"
    scheduler = json.loads((resolve_model(str(marked), config=str(folder)).path / "scheduler" /
                            "scheduler_config.json").read_text())
    assert (scheduler["prediction_type"], scheduler["rescale_betas_zero_snr"], scheduler["timestep_spacing"]) == (
        "v_prediction", True, "trailing")
    unmarked = json.loads((resolve_model(str(plain), config=str(folder)).path / "scheduler" /
                           "scheduler_config.json").read_text())
    assert unmarked["prediction_type"] == "epsilon" and not unmarked.get("rescale_betas_zero_snr")
    assert resolve_model(str(marked), config=str(folder)).content_hash() != \
        resolve_model(str(plain), config=str(folder)).content_hash()  # engines of the two are not shared
    expected = tmp_path / "sdxl-vpred"
    shutil.copytree(folder, expected)
    config = json.loads((expected / "scheduler" / "scheduler_config.json").read_text())
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    (expected / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    kwargs = dict(seed=3, steps=3)
    ours = _pixels(answer_trt.load(str(marked), backend="torch", config=str(folder)).generate(PROMPT, **kwargs))
    theirs = _pixels(answer_trt.load(str(expected), backend="torch").generate(PROMPT, **kwargs))
    as_epsilon = _pixels(answer_trt.load(str(plain), backend="torch", config=str(folder)).generate(PROMPT, **kwargs))
    assert theirs.std() > 1 and np.abs(ours - theirs).max() == 0 and np.abs(ours - as_epsilon).max() > 0


def test_an_sd2_single_file_takes_its_prediction_type_from_the_config(tmp_path):
    folder = resolve_model("tiny-sd21").path
    file = write_ldm_checkpoint(folder, tmp_path / "tiny-sd2.safetensors", open_clip=True)
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in load_file(str(file))
    for sub, got in _diffusers_weights(file, folder).items():
        _assert_same_weights(folder_weights(folder, sub), got, sub)
    assert checkpoint_family(file).label == "SD 2.x"
    out = tmp_path / "engines"
    result = build(BuildConfig(model=str(file), out=out, max_batch=1, model_config=str(folder)), log=lambda _m: None)
    assert result.manifest.info.prediction_type == "v_prediction"  # tiny-sd21's scheduler config says so
    assert result.manifest.single_file is not None and result.manifest.single_file.family == "SD 2.x"


def test_generate_takes_a_single_file_and_config_and_refuses_config_with_engines(sd1_file, tiny_model_dir, engines_dir,
                                                                                tmp_path, capsys):
    png = tmp_path / "out.png"
    assert main(["generate", PROMPT, "--model", str(sd1_file), "--config", str(tiny_model_dir), "--steps", "1",
                 "-o", str(png)]) == 0
    assert png.is_file()
    from PIL import Image

    # A1111's "Model hash" is the file's sha256 cut to 10 digits: ours begins with it.
    infotext = Image.open(png).info["parameters"]
    assert f"Model hash: {resolve_single_file(sd1_file, str(tiny_model_dir)).sha256[:10]}" in infotext
    capsys.readouterr()
    assert main(["generate", PROMPT, "--engines", str(engines_dir), "--config", str(tiny_model_dir),
                 "-o", str(png)]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_a_half_precision_file_keeps_its_precision(tiny_model_dir, tmp_path):
    file = write_ldm_checkpoint(tiny_model_dir, tmp_path / "half.safetensors", dtype=torch.float16)
    source = resolve_model(str(file), config=str(tiny_model_dir))
    unet = folder_weights(source.path, "unet")
    assert {t.dtype for t in unet.values()} == {torch.float16}  # the same size on disk as the file
    original = folder_weights(tiny_model_dir, "unet")
    assert all(torch.equal(unet[k], original[k].half()) for k in original)


def test_serve_builds_a_single_file_with_its_config(sd1_file, tiny_model_dir):
    from answer_trt.cli import make_parser
    from answer_trt.serving.cli_serve import serve_config

    parser = make_parser()
    serve = serve_config(parser.parse_args(["serve", "--model", str(sd1_file), "--config", str(tiny_model_dir)]))
    manifest = read_manifest(serve.engines)
    assert manifest.single_file is not None and manifest.single_file.config == str(tiny_model_dir.resolve())
    with pytest.raises(UserInputError, match="drop --config"):
        serve_config(parser.parse_args(["serve", "--engines", str(serve.engines), "--config", str(tiny_model_dir)]))


def _needs_free_disk(path: Path, gib: int) -> None:
    """Skips (saying why) where the disk under ``path`` has less than ``gib`` GiB free: a full-size
    model is written as a folder, as the single file and as the converted folder."""
    import shutil

    free = shutil.disk_usage(path).free / 2**30
    if free < gib:
        pytest.skip(f"a full-size model needs about {gib} GiB of free disk here, {free:.1f} GiB left")


@pytest.mark.slow
def test_a_full_size_sd15_single_file_converts_exactly_offline_and_stays_fp16(tmp_path, monkeypatch):
    """SD 1.5's real shapes (2 layers per block, 4 levels, CLIP-L, random fp16 weights, 2 GB),
    no --config, no network, an empty Hugging Face cache: diffusers' own marker tensors name the
    family, the shipped SD 1.x configs convert it, and the converted folder holds every tensor
    of the original, bit for bit, in fp16, with CLIP's tokenizer. About a minute and 5 GB of memory."""
    _needs_free_disk(tmp_path, 8)
    import time

    import huggingface_hub.constants as hub
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from answer_trt.models.family_configs import family_folder
    from answer_trt.models.single_file import _diffusers_model_type
    from answer_trt.models.tiny import WORDS
    from answer_trt.models.tokenizer_files import write_clip_tokenizer

    folder = tmp_path / "sd15"
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)  # a toy one: the shipped one must replace it
    shipped = family_folder("sd1")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(shipped / "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(shipped / "text_encoder"))
    StableDiffusionPipeline(
        vae=vae.half(), text_encoder=text.half(), tokenizer=tokenizer, unet=unet.half(),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder, safe_serialization=True)
    del unet, vae, text
    file = write_ldm_checkpoint(folder, tmp_path / "sd15.safetensors", extras=True)
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in load_file(str(file))
    shapes = {k: tuple(v.shape) for k, v in load_file(str(file)).items()}
    assert _diffusers_model_type(shapes) == "v1"  # diffusers' own decision, no fallback of ours
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    started = time.perf_counter()
    source = resolve_model(str(file))
    assert source.checkpoint is not None and source.checkpoint.config == "answer-trt:sd1"
    assert len(CLIPTokenizer.from_pretrained(source.path / "tokenizer")) == 49_408
    print(f"full-size SD 1.5 single file: hashed and converted in {time.perf_counter() - started:.1f} s")
    for sub in ("unet", "vae", "text_encoder"):
        expected, got = folder_weights(folder, sub), folder_weights(source.path, sub)
        _assert_same_weights(expected, got, sub)
        assert {t.dtype for t in got.values()} == {torch.float16}


def test_a_killed_conversions_staging_folder_is_removed_later_and_nothing_else(tmp_path):
    old, fresh, other = tmp_path / f"{STAGING_PREFIX}old", tmp_path / f"{STAGING_PREFIX}fresh", tmp_path / "x-old"
    for folder in (old, fresh, other):
        (folder / "unet").mkdir(parents=True)
    for folder in (old, other):
        os.utime(folder, (0, 0))  # untouched since 1970
    assert remove_stale_staging(tmp_path) == [old]
    assert not old.exists() and fresh.exists() and other.exists()


@pytest.mark.slow
def test_a_full_size_sd2_single_file_is_told_v_prediction_and_converts_offline(tmp_path, monkeypatch):
    """SD 2.x's real shapes (OpenCLIP-H text encoder, 1.3 G parameters, fp16) with no --config, no
    network and an empty Hugging Face cache: A1111's probe runs on the file's UNet (whose output
    layer is set to give -2 everywhere: v-prediction by the probe's rule), the shipped 768-v
    configs convert it, bit for bit, and the answer is kept for the file. About 2.5 minutes and
    7 GB of memory."""
    _needs_free_disk(tmp_path, 12)
    import huggingface_hub.constants as hub
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from answer_trt.cache import cache_root
    from answer_trt.models.family_configs import family_folder
    from answer_trt.models.single_file import PREDICTION_FOLDER

    shipped = family_folder("sd2")
    folder = tmp_path / "sd2"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped / "unet")).half()
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(-2.0)
    StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(shipped / "vae")).half(),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(shipped / "text_encoder")).half(),
        tokenizer=CLIPTokenizer.from_pretrained(shipped / "tokenizer"), unet=unet,
        scheduler=DDIMScheduler.from_pretrained(shipped / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder, safe_serialization=True)
    del unet
    file = write_ldm_checkpoint(folder, tmp_path / "sd2.safetensors", open_clip=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    source = resolve_model(str(file))
    assert source.checkpoint is not None and source.checkpoint.config == "answer-trt:sd2"
    kept = cache_root() / "models" / "single-file" / PREDICTION_FOLDER
    assert json.loads((kept / f"{source.checkpoint.sha256}.json").read_text()) == {"prediction_type": "v_prediction"}
    scheduler = json.loads((source.path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    for sub in ("unet", "vae", "text_encoder"):
        _assert_same_weights(folder_weights(folder, sub), folder_weights(source.path, sub), sub)
