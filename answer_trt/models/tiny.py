"""Built-in miniature models with random weights: seeded, built in code, no download.

They exist for fast tests of every code path; their images are noise. (The default
``tiny`` model is a different one: trained, shipped in the package, see ``source.py``.)
``tiny-random`` is SD-1.5-shaped (CLIP text encoder, UNet2DConditionModel, AutoencoderKL with
8x downsampling, DDIM config, CLIP tokenizer); ``tiny-sd21`` is the same with SD 2.x's
v-prediction and linear-projection attention; ``tiny-sdxl`` is SDXL-shaped (two text
encoders, pooled embeddings and time ids, Euler config, a VAE that asks to be upcast).
Each is saved with ``save_pretrained`` as a diffusers pipeline folder, so everything
after this module goes through the real loading path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from answer_trt.models import quiet_libraries
from answer_trt.models.tokenizer_files import write_clip_tokenizer

RANDOM_NAME = "tiny-random"
TINY_VERSION = 3
WORDS = (
    "a an and the of in on with photo painting picture cat dog bird car house tree "
    "red green blue yellow black white circle square triangle left right"
).split()
DDIM_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                   set_alpha_to_one=False, steps_offset=1)


def _text_encoder(tokenizer: Any, seed: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(seed: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=64, **extra,
    )


def _unet(seed: int, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    config.update(extra)
    return UNet2DConditionModel(**config)


def _sd(folder: Path, seed: int, v_prediction: bool) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)
    extra = dict(use_linear_projection=True, attention_head_dim=(4, 8)) if v_prediction else {}
    pipeline = StableDiffusionPipeline(
        vae=_vae(seed + 2), text_encoder=_text_encoder(tokenizer, seed), tokenizer=tokenizer,
        unet=_unet(seed + 1, **extra),
        scheduler=DDIMScheduler(**DDIM_CONFIG, prediction_type="v_prediction" if v_prediction else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]


def _sdxl(folder: Path, seed: int) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)
    tokenizer_2 = write_clip_tokenizer(folder / "tokenizer_2", WORDS, pad_token="!")
    unet = _unet(
        seed + 1, cross_attention_dim=64, use_linear_projection=True, attention_head_dim=(4, 8),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=_vae(seed + 2, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_text_encoder(tokenizer, seed), text_encoder_2=_text_encoder(tokenizer_2, seed + 3, True),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]


BUILDERS: dict[str, Callable[[Path, int], None]] = {
    RANDOM_NAME: lambda folder, seed: _sd(folder, seed, v_prediction=False),
    "tiny-sd21": lambda folder, seed: _sd(folder, seed, v_prediction=True),
    "tiny-sdxl": _sdxl,
}


def build_tiny_model(folder: Path, name: str = RANDOM_NAME, seed: int = 0) -> Path:
    """Create the built-in model ``name`` in diffusers format under ``folder``."""
    quiet_libraries()
    BUILDERS[name](folder, seed)
    return folder
