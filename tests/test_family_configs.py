"""The family configs and CLIP tokenizers shipped inside the package (``models/family_configs.py``):
real CLIP token ids, the published parameter counts, diffusers' single-file converter finding every
tensor it expects, and single files resolved with no network and no Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from answer_trt.errors import UserInputError
from answer_trt.models.family_configs import FAMILIES_DIR, SHIPPED, clip_merges, family_folder
from answer_trt.models.single_file import (
    PREDICTION_FOLDER,
    from_single_file_options,
    resolve_single_file,
    v_prediction_probe,
)
from tests.ldm_files import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm, write_ldm_checkpoint

# CLIP's 49,408 tokens in id order, joined by newlines, hashed: computed from open_clip 3.3.0's
# SimpleTokenizer.encoder (its special tokens renamed to CLIP's <|startoftext|>/<|endoftext|>).
OPEN_CLIP_VOCAB_SHA256 = "7cccc44d334555d1ff3c0ac5f0246b428fab2918383e77ee745cf30d41010b78"
# Token ids open_clip 3.3.0's SimpleTokenizer().encode gives (no start/end tokens).
OPEN_CLIP_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "A Photo OF  a CAT!!": [320, 1125, 539, 320, 2368, 748],
    "masterpiece, best quality, (1girl:1.2), [cat|dog]":
        [12066, 267, 949, 3027, 267, 263, 272, 1611, 281, 272, 269, 273, 2361, 314, 2368, 347, 1929, 316],
    "naïve café über 東京 🐱": [1097, 35689, 563, 15304, 6522, 1516, 48338, 21078, 361, 22979],
    "it's 12,345.67 $ off": [585, 568, 272, 273, 267, 274, 275, 276, 269, 277, 278, 259, 1007],
    "antidisestablishmentarianism": [3120, 4262, 7726, 12658, 1585, 44351],
    "hello\nworld\ttab": [3306, 1002, 14724],
    "photorealistic portrait of an astronaut riding a horse on mars, 8k, highly detailed":
        [1153, 16157, 5352, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 267, 279, 330, 267, 5302, 12609],
}
# Published parameter counts: diffusers' num_parameters docstring (SD 1.5 UNet), the model cards and
# public code that counts them (see the report of issue 31).
PARAMETERS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sd2-base": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def test_the_derived_vocabulary_is_clips_and_tokenizes_as_open_clip_does():
    folder = family_folder("sdxl")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert len(clip_merges()) == 48_894 and len(vocab) == 49_408
    by_id = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in by_id] == list(range(49_408))
    assert hashlib.sha256("\n".join(by_id).encode()).hexdigest() == OPEN_CLIP_VOCAB_SHA256
    clip, open_clip = _tokenizer(folder / "tokenizer"), _tokenizer(folder / "tokenizer_2")
    assert (clip.bos_token_id, clip.eos_token_id, clip.pad_token_id) == (49406, 49407, 49407)
    assert open_clip.pad_token_id == 0 and open_clip.convert_ids_to_tokens(0) == "!"
    import transformers

    for text, ids in OPEN_CLIP_IDS.items():
        if not text.isascii() and int(transformers.__version__.split(".")[0]) < 5:
            continue  # transformers 4.x normalises such text differently (its own rule, whatever the files)
        assert clip(text).input_ids == [49406, *ids, 49407], text
        if "!" not in text:  # "!" is the OpenCLIP tokenizers' pad token, so transformers keeps it whole
            assert open_clip(text).input_ids == [49406, *ids, 49407], text
    # As in SD 2.x's and SDXL's published tokenizer (pad_token "!"): a "!" is the pad token, id 0.
    assert open_clip("CAT!!").input_ids == [49406, 2368, 0, 0, 49407]
    padded = open_clip("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0]
    # Every family folder has the same BPE files (one expansion each) and its own pad token.
    for name, pad in (("sd1", 49407), ("sd2", 0), ("sd2-base", 0)):
        tokenizer = _tokenizer(family_folder(name) / "tokenizer")
        assert tokenizer.pad_token_id == pad and tokenizer("a photo of a cat").input_ids[1:-1] == OPEN_CLIP_IDS[
            "a photo of a cat"]


def _meta_models(folder: Path) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    models: dict[str, torch.nn.Module] = {}
    with init_empty_weights():
        models["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        models["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        models["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        if (folder / "text_encoder_2").is_dir():
            models["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    return models


def _text_names(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Names without transformers' ``text_model.`` wrapper (transformers 5.6 flattened
    CLIPTextModel; diffusers adds or drops it to fit), with shapes."""
    return {k.removeprefix("text_model."): tuple(v.shape) for k, v in state.items()}


def _ldm_state(name: str, models: dict[str, torch.nn.Module], folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint a model site shares for the family, on the meta device: our diffusers -> LDM
    names (tests/ldm_files.py, checked by round trip in test_single_file.py) over the family's
    meta models, with the tensors real files carry that diffusers drops."""
    def config(sub: str) -> dict:
        return json.loads((folder / sub / "config.json").read_text())

    def state(sub: str) -> dict[str, torch.Tensor]:
        return dict(models[sub].state_dict())

    ldm = {**unet_to_ldm(state("unet"), config("unet")), **vae_to_ldm(state("vae"), config("vae"))}
    if name == "sdxl":
        ldm.update(clip_to_ldm(state("text_encoder"), "conditioner.embedders.0.transformer."))
        ldm.update(open_clip_to_ldm(state("text_encoder_2"), "conditioner.embedders.1.model."))
    elif name.startswith("sd2"):
        text = state("text_encoder")
        text["text_projection.weight"] = torch.empty(1024, 1024, device="meta")
        for n in (22,):  # SD 2 files hold OpenCLIP-H's 24th layer, which the UNet does not use
            text.update({k.replace(f"layers.{n}.", "layers.23."): v for k, v in text.items() if f"layers.{n}." in k})
        ldm.update(open_clip_to_ldm(text, "cond_stage_model.model."))
        ldm["cond_stage_model.model.logit_scale"] = torch.empty((), device="meta")
    else:
        ldm.update(clip_to_ldm(state("text_encoder"), "cond_stage_model.transformer."))
    return ldm


@pytest.mark.parametrize("name", SHIPPED)
def test_each_family_has_the_published_sizes_and_diffusers_converts_every_tensor(name):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    from answer_trt.models.single_file import _diffusers_model_type

    folder = family_folder(name)
    models = _meta_models(folder)
    counts = {sub: sum(p.numel() for p in model.parameters()) for sub, model in models.items()}
    assert counts == PARAMETERS[name]
    ldm = _ldm_state(name, models, folder)
    expected_type = {"sd1": "v1", "sd2": "v2", "sd2-base": "v2", "sdxl": "xl_base"}[name]
    assert _diffusers_model_type({k: tuple(v.shape) for k, v in ldm.items()}) == expected_type
    converted = {
        "unet": convert_ldm_unet_checkpoint(ldm, dict(models["unet"].config)),
        "vae": convert_ldm_vae_checkpoint(ldm, dict(models["vae"].config)),
    }
    if name == "sdxl":
        converted["text_encoder"] = convert_ldm_clip_checkpoint(ldm, "conditioner.embedders.0.transformer.")
        converted["text_encoder_2"] = convert_open_clip_checkpoint(models["text_encoder_2"], ldm,
                                                                   prefix="conditioner.embedders.1.model.")
    elif name.startswith("sd2"):
        converted["text_encoder"] = convert_open_clip_checkpoint(models["text_encoder"], ldm)
    else:
        converted["text_encoder"] = convert_ldm_clip_checkpoint(ldm)
    for sub, state in converted.items():
        expected = _text_names(models[sub].state_dict())
        got = _text_names(state)
        if sub.startswith("text_encoder"):
            got.pop("embeddings.position_ids", None)
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        assert not missing and not extra, (sub, missing[:5], extra[:5])
        wrong = [k for k in expected if expected[k] != got[k]]
        assert not wrong, (sub, wrong[:5])


def test_the_shipped_data_is_small():
    """The merges (208 KB) and small JSON files; the vocabularies (1.6 MB a tokenizer) are derived
    at first use. tests/test_packaging.py checks the wheel holds every file."""
    files = [p for p in FAMILIES_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 30 and sum(p.stat().st_size for p in files) < 400_000


def _offline(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def test_without_config_a_single_file_uses_the_shipped_configs_offline(tiny_model_dir, tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    file = write_ldm_checkpoint(tiny_model_dir, tmp_path / "sd1.safetensors")
    checkpoint = resolve_single_file(file, None)
    assert checkpoint.config == "answer-trt:sd1" and checkpoint.config_path == family_folder("sd1")
    options = from_single_file_options(checkpoint)
    assert options["config"] == str(family_folder("sd1")) and options["local_files_only"] is True
    assert (Path(options["config"]) / "tokenizer" / "vocab.json").is_file()
    # The key names the shipped configs' content: a rebuild naming them gets the same model hash.
    assert resolve_single_file(file, "answer-trt:sd1").model_hash == checkpoint.model_hash
    assert resolve_single_file(file, str(tiny_model_dir)).model_hash != checkpoint.model_hash
    assert not (tmp_path / "empty-hf-cache").exists()  # nothing looked up in (or written to) the hub cache


def test_shipped_names_are_checked_against_the_family(tiny_model_dir, tmp_path):
    file = write_ldm_checkpoint(tiny_model_dir, tmp_path / "sd1.safetensors")
    with pytest.raises(UserInputError) as exc:
        resolve_single_file(file, "answer-trt:sdxl")
    assert "answer-trt:sd1" in str(exc.value) and len(str(exc.value).splitlines()) == 1
    with pytest.raises(UserInputError, match="ships no configs of that name"):
        resolve_single_file(file, "answer-trt:sd3")


def test_the_sd2_prediction_type_is_the_unets_and_kept_per_file(tmp_path, private_cache):
    from answer_trt.models.source import resolve_model

    file = write_ldm_checkpoint(resolve_model("tiny-sd21").path, tmp_path / "sd2.safetensors", open_clip=True)
    # tiny-sd21 does not fit the real SD 2.x UNet, so the probe cannot run: one line naming --config.
    with pytest.raises(UserInputError) as exc:
        resolve_single_file(file, None)
    assert "--config answer-trt:sd2" in str(exc.value) and "answer-trt:sd2-base" in str(exc.value)
    # A kept answer is used without the probe: epsilon -> the -base configs, v -> the 768 ones.
    checkpoint = resolve_single_file(file, "answer-trt:sd2")
    record = private_cache / "models" / "single-file" / PREDICTION_FOLDER / f"{checkpoint.sha256}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    for kept, config, prediction in (("epsilon", "answer-trt:sd2-base", "epsilon"),
                                     ("v_prediction", "answer-trt:sd2", "v_prediction")):
        record.write_text(json.dumps({"prediction_type": kept}))
        resolved = resolve_single_file(file, None)
        assert resolved.config == config
        scheduler = json.loads((resolved.config_path / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type"] == prediction


def test_the_v_prediction_probe_is_a1111s_mean_output():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=1024,
                                attention_head_dim=8, norm_num_groups=8)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        for bias, below in ((-1.0, True), (0.0, False)):
            unet.conv_out.bias.fill_(bias)
            probe = v_prediction_probe(unet)  # out is the bias everywhere; x is 0.5
            assert probe == pytest.approx(bias - 0.5) and (probe < -1) is below


def test_a_killed_expansion_is_cleaned_up_and_a_finished_one_reused(private_cache):
    import os

    from answer_trt.models.family_configs import EXPANDED_FOLDER, STAGING_PREFIX

    first = family_folder("sd1")
    parent = private_cache / "models" / EXPANDED_FOLDER
    old, fresh = parent / f"{STAGING_PREFIX}old", parent / f"{STAGING_PREFIX}fresh"
    for folder in (old, fresh):
        (folder / "unet").mkdir(parents=True)
    os.utime(old, (0, 0))
    (first / "model_index.json").unlink()  # an unfinished folder is expanded again
    assert family_folder("sd1") == first and (first / "tokenizer" / "merges.txt").is_file()
    assert not old.exists() and fresh.exists()
    stamp = (first / "tokenizer" / "vocab.json").stat().st_mtime_ns
    assert family_folder("sd1") == first and (first / "tokenizer" / "vocab.json").stat().st_mtime_ns == stamp
