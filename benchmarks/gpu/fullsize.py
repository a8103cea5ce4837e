"""Full-size SD-1.5 and SDXL model folders with random weights, made on the GPU.

The components are initialised on the CUDA device (an SDXL UNet has 2.6 G parameters:
minutes on a host CPU, a second on the GPU), cast to fp16 and saved with diffusers'
``save_pretrained`` as a pipeline folder, so the benchmark then loads them through
answer-trt's real loading path. Configurations are the published ones (SD-1.5:
CLIP ViT-L text encoder, the default ``UNet2DConditionModel``, the 4-level VAE; SDXL
base: CLIP ViT-L + OpenCLIP bigG, the 3-level UNet with 1/2/10 transformer layers,
text-time conditioning, a ``force_upcast`` VAE). Tokenizers are small generated CLIP
tokenizers (the weights are random, so the vocabulary means nothing anyway).

Random fp16 weights can overflow: ``tame`` halves every weight matrix until one fp16
call of the UNet and of the VAE decoder gives finite values, and records how often.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from answer_trt.models.tiny import DDIM_CONFIG, WORDS
from answer_trt.models.tokenizer_files import write_clip_tokenizer

SD15_UNET: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP_L: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu", projection_dim=768)
CLIP_BIG_G: dict[str, Any] = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                  num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4,
)


def _text_encoder(tokenizer: Any, config: dict[str, Any], projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=1, **config)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(clip)


@torch.no_grad()
def tame(unet: Any, vae: Any, latent: int, text_dim: int, pooled: int, tries: int = 4, device: str = "cuda") -> int:
    """Halve the UNet's / VAE's weight matrices until one fp16 call of each is finite;
    returns how many halvings were needed (0 where none)."""
    dtype = next(unet.parameters()).dtype
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=gen, device=device, dtype=dtype)
    hidden = torch.randn(1, 77, text_dim, generator=gen, device=device, dtype=dtype)
    added = None
    if pooled:
        added = {"text_embeds": torch.randn(1, pooled, generator=gen, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=device)}
    t = torch.tensor([500.0], device=device)
    for halvings in range(tries + 1):
        out = unet(x, t, hidden, added_cond_kwargs=added).sample
        images = vae.decode(x.to(vae.dtype)).sample
        if torch.isfinite(out).all() and torch.isfinite(images).all():
            return halvings
        for module in (unet, vae):
            for name, p in module.named_parameters():
                if p.dim() >= 2 and "norm" not in name:
                    p.mul_(0.5)
    raise RuntimeError(f"random weights still overflow in fp16 after {tries} halvings")


def make_folder(kind: str, folder: Path, seed: int = 0, device: str = "cuda") -> dict[str, Any]:
    """Save a random-weight ``kind`` (``sd15`` | ``sdxl``) pipeline folder; returns facts
    about it (parameter counts in millions, halvings)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    tokenizer = write_clip_tokenizer(folder / "tokenizer", WORDS)
    half = torch.float16 if device == "cuda" else torch.float32  # the CPU (a test) has no fast fp16
    with torch.device(device):
        text_encoder = _text_encoder(tokenizer, CLIP_L)
        if kind == "sdxl":
            tokenizer_2 = write_clip_tokenizer(folder / "tokenizer_2", WORDS, pad_token="!")
            text_encoder_2 = _text_encoder(tokenizer_2, CLIP_BIG_G, projection=True)
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        else:
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**VAE, sample_size=512)
    unet, vae = unet.to(half).eval(), vae.to(half).eval()
    latent, text_dim, pooled = (unet.config.sample_size, unet.config.cross_attention_dim,
                                text_encoder_2.config.projection_dim if kind == "sdxl" else 0)
    halvings = tame(unet, vae, latent, text_dim, pooled, device=device)
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    if kind == "sdxl":
        pipeline: Any = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder.to(half), text_encoder_2=text_encoder_2.to(half), tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )
    else:
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder.to(half), tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipeline.save_pretrained(folder, safe_serialization=True)
    facts = {
        "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "text_params_m": sum(p.numel() for p in text_encoder.parameters()) / 1e6
        + (sum(p.numel() for p in text_encoder_2.parameters()) / 1e6 if kind == "sdxl" else 0.0),
        "vae_params_m": sum(p.numel() for p in vae.parameters()) / 1e6,
        "fp16_halvings": halvings,
    }
    del pipeline, unet, vae, text_encoder
    if device == "cuda":
        torch.cuda.empty_cache()
    return facts
