"""Train the built-in ``tiny`` model: a small SD-shaped model on the synthetic shapes.

    python -m answer_trt.synthetic.train --out answer_trt/models/weights/tiny

Stage 1 trains a small AutoencoderKL (4 latent channels, 4x downsampling: 32x32 images,
8x8 latents) on the images; stage 2 trains a UNet2DConditionModel and a CLIPTextModel
jointly on its latents with the epsilon objective (10% empty captions, for
classifier-free guidance), with warm-up + cosine learning rates and an exponential
moving average of the weights (the average is what gets saved). Step counts, not time,
bound each stage, so a run is a function of its arguments (seeded; same torch, same
result up to floating-point summation order). The result is a diffusers
StableDiffusionPipeline folder with fp16 safetensors weights. Prints the command, each
stage's time, and the sha256 of every file it writes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from answer_trt.models import quiet_libraries
from answer_trt.models.tokenizer_files import write_clip_tokenizer
from answer_trt.synthetic.dataset import VOCABULARY, make_example

IMAGE_SIZE = 32
MAX_TOKENS = 16
CAPTION_DROPOUT = 0.1
BATCH = 64
TRAIN_TIMESTEPS = 1000
NOISE_CONFIG: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=TRAIN_TIMESTEPS
)
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32), sample_size=IMAGE_SIZE,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
    norm_num_groups=16,
)
TEXT_CONFIG: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def dataset(seed: int, count: int, biased: bool = False) -> tuple[torch.Tensor, list[str]]:
    examples = [make_example(seed, i, IMAGE_SIZE, biased=biased) for i in range(count)]
    images = torch.from_numpy(np.stack([e.image for e in examples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [e.caption for e in examples]


def learning_rate_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


class WeightAverage:
    """Exponential moving average of some modules' parameters (kept on copies)."""

    def __init__(self, modules: Iterable[torch.nn.Module], decay: float) -> None:
        self.modules = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.decay = decay

    @torch.no_grad()
    def update(self, modules: Iterable[torch.nn.Module], step: int) -> None:
        weight = 1 - min(self.decay, (1 + step) / (10 + step))  # short warm-up: early averages follow closely
        for average, live in zip(self.modules, modules):
            torch._foreach_lerp_(list(average.parameters()), list(live.parameters()), weight)


def train_vae(images: torch.Tensor, steps: int, log: Callable[[str], None]) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, steps, 100))
    gen = torch.Generator().manual_seed(2)
    for step in range(1, steps + 1):
        batch = images[torch.randint(len(images), (BATCH,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            log(f"vae step {step}/{steps}: loss {loss.item():.4f}")
    return vae.eval()


def train_denoiser(latents: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor, vocab_size: int,
                   special: tuple[int, int], steps: int, log: Callable[[str], None]) -> tuple[Any, Any]:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    text_encoder: Any = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS, bos_token_id=special[0], eos_token_id=special[1],
        pad_token_id=1, **TEXT_CONFIG))
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    log(f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e3:.0f} k")
    ddpm: Any = DDPMScheduler(**NOISE_CONFIG)
    optimizer = torch.optim.AdamW([{"params": unet.parameters(), "lr": 4e-4},
                                   {"params": text_encoder.parameters(), "lr": 1e-4}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, steps, 200))
    average = WeightAverage((unet, text_encoder), decay=0.999)
    gen = torch.Generator().manual_seed(4)
    for step in range(1, steps + 1):
        index = torch.randint(len(latents), (BATCH,), generator=gen)
        x0, tokens = latents[index], ids[index].clone()
        tokens[torch.rand(BATCH, generator=gen) < CAPTION_DROPOUT] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, TRAIN_TIMESTEPS, (BATCH,), generator=gen)
        pred = unet(ddpm.add_noise(x0, noise, t), t, text_encoder(tokens)[0]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        average.update((unet, text_encoder), step)
        if step % 100 == 0:
            log(f"unet step {step}/{steps}: loss {loss.item():.4f}")
    unet_average, text_average = average.modules
    return unet_average, text_average


def prefix_text_encoder_tensors(path: Path) -> None:
    """Store CLIPTextModel tensors as ``text_model.*``: transformers 5 saves them without the
    prefix, which transformers 4.x does not read (it would start from random values); both
    read the prefixed layout. Same values, same dtype."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    renamed = {name if name.startswith("text_model.") else f"text_model.{name}": t for name, t in tensors.items()}
    if renamed.keys() != tensors.keys():
        save_file(renamed, str(path), metadata={"format": "pt"})


def start_log(module: str, argv: list[str] | None) -> Callable[[str], None]:
    """Prints the command that started a training run (``python -m MODULE ARGS``) and returns
    the run's logger: each line stamped with the seconds since, flushed (logs are read live)."""
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {msg}", flush=True)

    print(f"command: python -m {module} {' '.join(sys.argv[1:] if argv is None else argv)}", flush=True)
    return log


def report_saved(folder: Path, log: Callable[[str], None]) -> None:
    """Prints each file of a saved model folder with its sha256 (the log then names the exact
    weights a run made) and logs their total size."""
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        total += path.stat().st_size
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")
    log(f"done: {total / 1e6:.2f} MB in {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-from", type=Path, default=None, metavar="MODEL",
                        help="reuse this diffusers folder's trained vae/ (fp32 for encoding) instead of training "
                             "one: the autoencoder only reconstructs images, so a biased caption set does not "
                             "need its own; stage 1 is skipped")
    parser.add_argument("--biased", action="store_true",
                        help="train on the biased set (answer_trt.synthetic.dataset.BIASED_COLOUR): "
                             "the `tiny-biased` fixture")
    args = parser.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    log = start_log("answer_trt.synthetic.train", argv)
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    torch.manual_seed(args.seed)
    images, captions = dataset(args.seed, args.examples, args.biased)
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        vae: Any = AutoencoderKL.from_pretrained(args.vae_from / "vae", torch_dtype=torch.float32).eval()
        log(f"vae from {args.vae_from}")
    else:
        vae = train_vae(images, args.vae_steps, log)
        log("vae done")
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)}, scaling factor {scaling:.4f}")

    tokenizer = write_clip_tokenizer(staging / "tokenizer", VOCABULARY, model_max_length=MAX_TOKENS)
    ids = torch.from_numpy(tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                     return_tensors="np").input_ids).long()
    empty = torch.from_numpy(tokenizer([""], padding="max_length", max_length=MAX_TOKENS,
                                       return_tensors="np").input_ids).long()
    unet, text_encoder = train_denoiser(latents, ids, empty, len(tokenizer),
                                        (tokenizer.bos_token_id, tokenizer.eos_token_id), args.unet_steps, log)
    log("unet done")

    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**NOISE_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.to(dtype=torch.float16)  # type: ignore[attr-defined]
    pipeline.save_pretrained(staging, safe_serialization=True)  # type: ignore[attr-defined]
    prefix_text_encoder_tensors(staging / "text_encoder" / "model.safetensors")
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    report_saved(args.out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
