"""Train a small SD-shaped model on the synthetic shapes (issue 6; work in progress).

    python -m synthetic.train --out trained/shapes --vae-minutes 8 --unet-minutes 35

Stage 1 trains a small AutoencoderKL (4 latent channels, 4x downsampling) on 32x32
images; stage 2 trains a UNet2DConditionModel and a CLIPTextModel jointly on its latents
with the epsilon objective (10% empty captions, for classifier-free guidance). Seeded;
the result is a diffusers StableDiffusionPipeline folder. Prints the command and the
sha256 of every file it writes. Time budgets, not step counts, bound each stage.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from answer_trt.models import quiet_libraries
from answer_trt.models.tokenizer_files import write_clip_tokenizer
from synthetic.dataset import VOCABULARY, make_example

IMAGE_SIZE = 32
MAX_TOKENS = 16
CAPTION_DROPOUT = 0.1


def dataset(seed: int, count: int) -> tuple[torch.Tensor, list[str]]:
    examples = [make_example(seed, i, IMAGE_SIZE) for i in range(count)]
    images = torch.from_numpy(np.stack([e.image for e in examples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [e.caption for e in examples]


def train_vae(images: torch.Tensor, minutes: float, log: Callable[[str], None]) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae: Any = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), sample_size=IMAGE_SIZE,
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    deadline, step = time.monotonic() + minutes * 60, 0
    gen = torch.Generator().manual_seed(2)
    while time.monotonic() < deadline:
        batch = images[torch.randint(len(images), (64,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step}: loss {loss.item():.4f}")
    log(f"vae: {step} steps")
    return vae.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--vae-minutes", type=float, default=8)
    parser.add_argument("--unet-minutes", type=float, default=35)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet_libraries()
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)

    print("command: python -m synthetic.train " + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    torch.manual_seed(args.seed)
    images, captions = dataset(args.seed, args.examples)
    vae = train_vae(images, args.vae_minutes, log)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)}, scaling factor {scaling:.4f}")

    tokenizer = write_clip_tokenizer(args.out / "tokenizer", VOCABULARY, model_max_length=MAX_TOKENS)
    ids = torch.from_numpy(tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                     return_tensors="np").input_ids).long()
    empty = torch.from_numpy(tokenizer([""], padding="max_length", max_length=MAX_TOKENS,
                                       return_tensors="np").input_ids).long()
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1))
    unet: Any = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
        norm_num_groups=16)
    log(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e3:.0f} k")
    noise_config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    ddpm: Any = DDPMScheduler(**noise_config)
    optimizer = torch.optim.AdamW([{"params": unet.parameters(), "lr": 3e-4},
                                   {"params": text_encoder.parameters(), "lr": 1e-4}])
    gen = torch.Generator().manual_seed(4)
    deadline, step = time.monotonic() + args.unet_minutes * 60, 0
    while time.monotonic() < deadline:
        index = torch.randint(len(latents), (64,), generator=gen)
        x0, tokens = latents[index], ids[index].clone()
        drop = torch.rand(64, generator=gen) < CAPTION_DROPOUT
        tokens[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (64,), generator=gen)
        cond = text_encoder(tokens)[0]
        pred = unet(ddpm.add_noise(x0, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log(f"unet step {step}: loss {loss.item():.4f}")
    log(f"unet: {step} steps")

    pipeline = StableDiffusionPipeline(
        vae=vae.half().float(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DDIMScheduler(**noise_config, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(args.out, safe_serialization=True)  # type: ignore[attr-defined]
    for path in sorted(p for p in args.out.rglob("*") if p.is_file()):
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
