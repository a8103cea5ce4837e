"""Write the peer benchmark's two models as standard diffusers StableDiffusionPipeline
folders that answer-trt, optimum and diffusers all load.

- ``tiny``: answer-trt's shipped trained model (``answer_trt.models.source.resolve_model``),
  re-saved in fp32 with a DDIM scheduler, ``safety_checker=None`` and
  ``feature_extractor=None``.
- ``sd15-random``: the full-size SD-1.5 UNet, VAE and CLIP text encoder configurations
  with seeded random weights (configs written here, nothing downloaded), sample size for
  256x256 images, fp32. Its CLIP tokenizer is generated locally (a small vocabulary; the
  text encoder keeps CLIP's 49,408-entry embedding).

Run from answer-trt's environment::

    python benchmarks/peers/make_models.py --model tiny --out .peer-models/tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from answer_trt.synthetic.train import prefix_text_encoder_tensors

MODELS = ("tiny", "sd15-random")
SD15_IMAGE_SIZE = 256
DDIM_CONFIG: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)
MARKER = "peer-model.json"
# Bumped whenever the files written change, so that run.py redoes engines and exports.
FORMAT = 2


def sd15_unet_config(image_size: int = SD15_IMAGE_SIZE) -> dict[str, Any]:
    """SD-1.5's UNet2DConditionModel configuration (859.5 M parameters)."""
    return dict(
        sample_size=image_size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5,
    )


def sd15_vae_config(image_size: int = SD15_IMAGE_SIZE) -> dict[str, Any]:
    """SD-1.5's AutoencoderKL configuration (83.7 M parameters)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, act_fn="silu", sample_size=image_size, scaling_factor=0.18215,
    )


def sd15_text_config(vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """SD-1.5's CLIP ViT-L/14 text encoder configuration (123 M parameters)."""
    return dict(
        vocab_size=max(vocab_size, 49408), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=bos, eos_token_id=eos, pad_token_id=1,
    )


def make_tiny(out: Path) -> None:
    """The shipped trained ``tiny`` model, re-saved in fp32 as a full pipeline folder."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from answer_trt.models.source import resolve_model

    source = resolve_model("tiny").path
    pipe = StableDiffusionPipeline.from_pretrained(
        source, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(out, safe_serialization=True)
    _replace_tokenizer(out, source / "tokenizer")


def _replace_tokenizer(out: Path, files: Path) -> None:
    """Put the original tokenizer files back: transformers 5 saves only tokenizer.json,
    and the optimum environment's transformers 4.57 ``CLIPTokenizer`` needs vocab.json
    and merges.txt."""
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(files, out / "tokenizer")


def make_sd15_random(out: Path, seed: int) -> None:
    """Full-size SD-1.5 configurations with seeded random weights, fp32."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from answer_trt.models.tiny import WORDS
    from answer_trt.models.tokenizer_files import write_clip_tokenizer

    tokenizer_files = out.with_name(out.name + ".tokenizer")
    shutil.rmtree(tokenizer_files, ignore_errors=True)
    tokenizer = write_clip_tokenizer(tokenizer_files, WORDS, model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**sd15_text_config(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**sd15_unet_config())
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**sd15_vae_config())
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(**DDIM_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    _replace_tokenizer(out, tokenizer_files)
    shutil.rmtree(tokenizer_files)


def make_model(name: str, out: Path, seed: int = 0, force: bool = False) -> Path:
    """Write model ``name`` to ``out`` (atomically: a temporary folder, then a rename).
    A folder this script wrote for the same name, seed and format is reused; one it wrote
    otherwise is replaced; any other non-empty folder is refused."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    stamp = {"model": name, "seed": seed, "format": FORMAT}
    marker = out / MARKER
    if marker.is_file() and not force and json.loads(marker.read_text()) == stamp:
        return out  # up to date; a folder of ours with another stamp is rewritten below
    if out.exists() and not marker.is_file() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty and was not written by make_models.py: choose another --out")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if name == "tiny":
        make_tiny(staging)
    else:
        make_sd15_random(staging, seed)
    # transformers 5 saves CLIPTextModel tensors without the ``text_model.`` prefix, which the
    # optimum environment's transformers 4.57 would not read (it would start from random values).
    prefix_text_encoder_tensors(staging / "text_encoder" / "model.safetensors")
    (staging / MARKER).write_text(json.dumps(stamp) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0, help="sd15-random's weight seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rewrite the folder even if it is up to date")
    args = parser.parse_args(argv)
    try:
        folder = make_model(args.model, args.out, args.seed, args.force)
    except ValueError as exc:
        print(f"make_models: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
