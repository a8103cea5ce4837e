"""Facts about a model folder that the runtime needs, read from its JSON configs only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from answer_trt.iospec import ModelDims


def config_json(path: Path, sub: str, name: str = "config.json") -> dict[str, Any]:
    return dict(json.loads((path / sub / name).read_text()))


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


def read_model_info(path: Path) -> ModelInfo:
    """Read from the model's config files (no weights loaded)."""
    text, unet, vae = config_json(path, "text_encoder"), config_json(path, "unet"), config_json(path, "vae")
    max_length = config_json(path, "tokenizer", "tokenizer_config.json").get("model_max_length")
    if not isinstance(max_length, int) or max_length > text["max_position_embeddings"]:
        max_length = int(text["max_position_embeddings"])
    hidden, pooled, time_ids = int(text["hidden_size"]), 0, 0
    if is_sdxl(path):
        text_2 = config_json(path, "text_encoder_2")
        hidden += int(text_2["hidden_size"])
        pooled = int(text_2["projection_dim"])
        time_ids = 6
    index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
    scheduler = config_json(path, "scheduler", "scheduler_config.json")
    dims = ModelDims(
        text_max_length=max_length,
        text_hidden_size=hidden,
        latent_channels=int(unet["in_channels"]),
        vae_scale_factor=2 ** (len(vae["block_out_channels"]) - 1),
        default_latent_size=int(unet["sample_size"]),
        pooled_size=pooled,
        time_ids_size=time_ids,
    )
    return ModelInfo(
        dims=dims,
        prediction_type=str(scheduler.get("prediction_type", "epsilon")),
        zero_empty_negative=bool(pooled and index.get("force_zeros_for_empty_prompt", True)),
        # Only SDXL pipelines honour force_upcast (AutoencoderKL defaults it to true).
        vae_force_upcast=bool(pooled and vae.get("force_upcast", True)),
    )
