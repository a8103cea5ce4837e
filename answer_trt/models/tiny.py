"""`tiny`: a seeded, random-weight miniature SD-1.5-shaped model built in code.

Same component types and folder layout as a real SD 1.5 checkpoint (CLIP text
encoder, UNet2DConditionModel, AutoencoderKL with 8x downsampling, DDIM scheduler
config, CLIP tokenizer), saved with ``save_pretrained`` so that everything after
this module goes through the real loading path. Its weights are random: it draws noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from answer_trt.models import quiet_libraries
from answer_trt.models.tokenizer_files import write_clip_tokenizer

TINY_NAME = "tiny"
TINY_VERSION = 1
WORDS = (
    "a an and the of in on with photo painting picture cat dog bird car house tree "
    "red green blue yellow black white circle square triangle left right"
).split()


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Create the tiny model in diffusers format under ``folder``; returns ``folder``."""
    quiet_libraries()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    return folder
