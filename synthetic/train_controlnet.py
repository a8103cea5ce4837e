"""Train a silhouette ControlNet for the built-in ``tiny`` model, on the synthetic shapes.

    python -m answer_trt.synthetic.train_controlnet --out benchmarks/models/tiny-silhouette-controlnet

The control image is the silhouette of the objects (``dataset.silhouette``: their masks white
on black, at their positions and sizes, which the caption does not give), the target the image
``dataset.render`` draws of the same objects. The ControlNet starts as
``ControlNetModel.from_unet`` of tiny's UNet (its zero convolutions at zero, so it starts as a
no-op), with a conditioning embedding of two stride-2 stages (32x32 control images onto tiny's
8x8 latents). tiny's UNet, text encoder and VAE stay frozen; the loss is tiny's: epsilon
prediction, MSE, uniform timesteps of its 1000-step scaled-linear schedule, 10% empty captions
(so CFG's unconditional branch learns the control too). Warm-up + cosine learning rate and an
exponential moving average of the weights (the average is what gets saved, fp16). Seeded and
bounded by step count. Prints the command, the loss every 50 steps, the time, and the sha256
of every file it writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from answer_trt.models import quiet_libraries
from answer_trt.synthetic.dataset import make_example, silhouette
from answer_trt.synthetic.train import (
    CAPTION_DROPOUT,
    IMAGE_SIZE,
    MAX_TOKENS,
    NOISE_CONFIG,
    TRAIN_TIMESTEPS,
    WeightAverage,
    learning_rate_factor,
    report_saved,
    start_log,
)

# Two stride-2 stages: 32x32 control images onto tiny's 8x8 latents (the VAE downsamples 4x).
CONDITIONING_CHANNELS = (16, 32, 64)


def control_dataset(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``count`` examples of the shapes dataset ``seed``: images ``[N, 3, 32, 32]`` in [-1, 1],
    their silhouettes ``[N, 3, 32, 32]`` in [0, 1] (as diffusers feeds control images), captions."""
    examples = [make_example(seed, i, IMAGE_SIZE) for i in range(count)]
    images = torch.from_numpy(np.stack([e.image for e in examples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    controls = torch.from_numpy(np.stack([silhouette(e.objects, IMAGE_SIZE) for e in examples]))
    return images, controls.permute(0, 3, 1, 2).float() / 255.0, [e.caption for e in examples]


def save(controlnet: Any, out: Path, step: int) -> None:
    """``controlnet`` in fp16 to ``out`` (replaced; written beside it first), with ``STEP.txt``."""
    import copy

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    copy.deepcopy(controlnet).to(dtype=torch.float16).save_pretrained(staging, safe_serialization=True)
    (staging / "STEP.txt").write_text(f"{step}\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--model", type=Path, default=None,
                        help="the diffusers folder of the model to control (default: the shipped tiny)")
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                        help="also write the average so far to OUT every this many steps (a run cut short "
                             "keeps its last one; config.json's neighbour STEP.txt names the step)")
    parser.add_argument("--stop-after", type=int, default=0, metavar="STEP",
                        help="end after this step and save the average there, the learning-rate schedule still "
                             "that of --steps (what a --save-every save of a longer run holds)")
    args = parser.parse_args(argv)
    last = min(args.steps, args.stop_after) if args.stop_after > 0 else args.steps
    quiet_libraries()
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from answer_trt.models.source import resolve_model

    log = start_log("answer_trt.synthetic.train_controlnet", argv)
    model = args.model or resolve_model("tiny").path
    vae: Any = AutoencoderKL.from_pretrained(model / "vae", torch_dtype=torch.float32).eval()
    unet: Any = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=torch.float32).eval()
    text_encoder: Any = CLIPTextModel.from_pretrained(model / "text_encoder", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    for frozen in (vae, unet, text_encoder):
        frozen.requires_grad_(False)

    images, controls, captions = control_dataset(args.seed, args.examples)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        latents = latents * vae.config.scaling_factor
        ids = torch.from_numpy(tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                         return_tensors="np").input_ids).long()
        empty = torch.from_numpy(tokenizer([""], padding="max_length", max_length=MAX_TOKENS,
                                           return_tensors="np").input_ids).long()
        # The text encoder is frozen: encode every caption once.
        hidden = torch.cat([text_encoder(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])
        empty_hidden = text_encoder(empty)[0]
    log(f"latents {tuple(latents.shape)}, controls {tuple(controls.shape)}, text {tuple(hidden.shape)}")

    torch.manual_seed(args.seed)
    controlnet: Any = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    controlnet.train()
    log(f"controlnet {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M params")
    ddpm: Any = DDPMScheduler(**NOISE_CONFIG)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, args.steps, 100))
    average = WeightAverage((controlnet,), decay=0.995)
    gen = torch.Generator().manual_seed(args.seed + 1)
    running = 0.0
    for step in range(1, last + 1):
        index = torch.randint(len(latents), (args.batch,), generator=gen)
        x0, context, control = latents[index], hidden[index].clone(), controls[index]
        context[torch.rand(args.batch, generator=gen) < CAPTION_DROPOUT] = empty_hidden[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, TRAIN_TIMESTEPS, (args.batch,), generator=gen)
        noisy = ddpm.add_noise(x0, noise, t)
        down, mid = controlnet(noisy, t, context, controlnet_cond=control, return_dict=False)
        pred = unet(noisy, t, context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        average.update((controlnet,), step)
        running += loss.item()
        if step % 50 == 0:
            log(f"step {step}/{args.steps}: loss {running / 50:.4f} (mean of the last 50)")
            running = 0.0
        if args.save_every and step % args.save_every == 0 and step < last:
            save(average.modules[0], args.out, step)
            log(f"saved step {step} to {args.out}")
    save(average.modules[0], args.out, last)
    report_saved(args.out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
