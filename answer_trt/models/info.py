"""Facts about a model folder that the runtime needs, read from its JSON configs only."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.errors import UserInputError
from answer_trt.files import read_bounded
from answer_trt.iospec import ModelDims

RESAVE = "re-save the model with save_pretrained, or fetch it again"


def read_json_object(file: Path) -> dict[str, Any]:
    """A model's JSON config as a dict, or a ``UserInputError`` naming the file and what
    is wrong with it (missing, unreadable, not JSON, not an object)."""
    try:
        text = read_bounded(file).decode("utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{file} is missing from the model folder: {RESAVE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{file} cannot be read ({type(exc).__name__}: {exc}): {RESAVE}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserInputError(f"{file} is not valid JSON ({exc}): fix it, or {RESAVE}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{file} must hold a JSON object, not {type(data).__name__}: {RESAVE}")
    return data


def config_json(path: Path, sub: str, name: str = "config.json") -> dict[str, Any]:
    return read_json_object(path / sub / name)


def config_int(config: dict[str, Any], key: str, file: Path, low: int = 1) -> int:
    """``config[key]`` as an integer of at least ``low``, or a user error naming ``file``."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserInputError(f"{file}: {key} must be an integer >= {low}, got {value!r}: {RESAVE}")
    return value


def _block_count(config: dict[str, Any], file: Path) -> int:
    """``len(block_out_channels)`` of a VAE or UNet config: its resolution stages."""
    blocks = config.get("block_out_channels")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8:
        raise UserInputError(f"{file}: block_out_channels must be a list of 1 to 8 widths, got {blocks!r}: {RESAVE}")
    return len(blocks)


def scheduler_config(path: Path) -> dict[str, Any]:
    """The model's scheduler config as diffusers' pipeline loading makes its scheduler:
    ``DiffusionPipeline.from_pretrained`` loads the class that ``model_index.json`` names
    for ``"scheduler"`` (``["diffusers", "EulerDiscreteScheduler"]``) with the options of
    ``scheduler/scheduler_config.json``, whose own ``_class_name`` it ignores. So where the
    two name different classes, ``_class_name`` here is model_index.json's; everything else
    is scheduler_config.json's. A folder without model_index.json (or without a diffusers
    class there) keeps the config's class."""
    config = config_json(path, "scheduler", "scheduler_config.json")
    index = path / "model_index.json"
    entry = read_json_object(index).get("scheduler") if index.is_file() else None
    if (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"
            and isinstance(entry[1], str) and entry[1]):
        config["_class_name"] = entry[1]
    return config


def is_sdxl(path: Path) -> bool:
    return (path / "text_encoder_2").is_dir()


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime must know about a model beyond its weights, from its configs."""

    dims: ModelDims
    prediction_type: str
    # SDXL's pipeline uses zeros, not the encoded empty prompt, as c_0 when no negative
    # prompt is given (model_index.json: force_zeros_for_empty_prompt).
    zero_empty_negative: bool
    # The VAE overflows in fp16 (SDXL's, unless a fixed one says otherwise): it stays
    # fp32 in fp16 builds.
    vae_force_upcast: bool


def check_scaling_factor(vae: dict[str, Any], file: Path) -> None:
    """The VAE's ``scaling_factor`` (latents are divided by it before decoding): a finite
    number above 0 where the config gives one (diffusers' default 0.18215 otherwise)."""
    value = vae.get("scaling_factor", 0.18215)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserInputError(f"{file}: scaling_factor {value!r} must be a finite number above 0 (SD 1.x: 0.18215, "
                             f"SDXL: 0.13025): fix it, or {RESAVE}")


def unet_channels(unet: dict[str, Any], file: Path) -> tuple[int, bool]:
    """``(latent channels, whether it is an inpainting UNet)`` from the UNet config: an ordinary UNet
    takes and gives the latents (``in_channels``); an inpainting UNet (diffusers'
    ``stable-diffusion-inpainting``) takes ``2 C + 1`` channels (latents, mask, masked image's
    latents) and gives C (``out_channels``). Other layouts are refused in one line."""
    channels = config_int(unet, "in_channels", file)
    out = config_int(unet, "out_channels", file) if "out_channels" in unet else channels
    if out == channels:
        return channels, False
    if channels == 2 * out + 1:
        return out, True
    raise UserInputError(f"{file}: in_channels {channels} with out_channels {out} is neither an ordinary UNet (equal) "
                         f"nor an inpainting UNet ({2 * out + 1} in): answer-trt runs those two kinds")


def read_model_info(path: Path) -> ModelInfo:
    """Read from the model's config files (no weights loaded)."""
    text, unet, vae = config_json(path, "text_encoder"), config_json(path, "unet"), config_json(path, "vae")
    text_file, unet_file = path / "text_encoder" / "config.json", path / "unet" / "config.json"
    positions = config_int(text, "max_position_embeddings", text_file)
    max_length = config_json(path, "tokenizer", "tokenizer_config.json").get("model_max_length")
    if isinstance(max_length, (int, float)) and not isinstance(max_length, bool) and max_length < 2:
        raise UserInputError(f"{path / 'tokenizer' / 'tokenizer_config.json'}: model_max_length {max_length!r} leaves "
                             f"no room for a token between the start and end tokens (CLIP: 77): fix it, or {RESAVE}")
    if not isinstance(max_length, int) or max_length > positions:  # absent, or transformers' 1e30 "no limit"
        max_length = positions
    hidden, pooled, time_ids = config_int(text, "hidden_size", text_file), 0, 0
    if is_sdxl(path):
        text_2 = config_json(path, "text_encoder_2")
        text_2_file = path / "text_encoder_2" / "config.json"
        hidden += config_int(text_2, "hidden_size", text_2_file)
        pooled = config_int(text_2, "projection_dim", text_2_file)
        time_ids = 6
    index = read_json_object(path / "model_index.json") if (path / "model_index.json").exists() else {}
    scheduler = config_json(path, "scheduler", "scheduler_config.json")
    check_scaling_factor(vae, path / "vae" / "config.json")
    in_channels, inpaint_unet = unet_channels(unet, unet_file)
    dims = ModelDims(
        text_max_length=max_length,
        text_hidden_size=hidden,
        latent_channels=in_channels,
        vae_scale_factor=2 ** (_block_count(vae, path / "vae" / "config.json") - 1),
        default_latent_size=config_int(unet, "sample_size", unet_file),
        pooled_size=pooled,
        time_ids_size=time_ids,
        unet_overall_up_factor=2 ** (_block_count(unet, unet_file) - 1),
        text_layers=config_int(text, "num_hidden_layers", text_file),
        inpaint_unet=inpaint_unet,
        first_text_hidden_size=config_int(text, "hidden_size", text_file) if pooled else 0,
    )
    return ModelInfo(
        dims=dims,
        prediction_type=str(scheduler.get("prediction_type", "epsilon")),
        zero_empty_negative=bool(pooled and index.get("force_zeros_for_empty_prompt", True)),
        # Only SDXL pipelines honour force_upcast (AutoencoderKL defaults it to true).
        vae_force_upcast=bool(pooled and vae.get("force_upcast", True)),
    )
