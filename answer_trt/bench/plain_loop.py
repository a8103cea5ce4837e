"""The baseline: ANSWER as a user would write it in plain PyTorch with diffusers' UNet,
eager, one UNet call per branch, diffusers' own ``scheduler.step()`` and a deep copy of
the scheduler for the negative chain. Same equations as ANSWER.md, none of our runtime."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

UNetCall = Callable[[Tensor, Tensor, Tensor], Tensor]


def plain_answer_loop(
    unet: UNetCall,
    scheduler: Any,
    noise: Tensor,
    c_p: Tensor,
    c_0: Tensor,
    steps: int,
    w: float = 7.5,
    wn: float = 7.5,
    k: int = 4,
) -> Tensor:
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    g = (w + wn) / (1 + wn)
    z, scheduler_z = x, scheduler
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            if i % k == 0:
                z, scheduler_z = x.clone(), copy.deepcopy(scheduler)
            alphabar = scheduler.alphas_cumprod[t]
            alpha, sigma = alphabar.sqrt(), (1 - alphabar).sqrt()
            ep = unet(x, t, c_p)
            ep_z = unet(z, t, c_p)
            e0_z = unet(z, t, c_0)
            e_dns = e0_z + wn * (e0_z - ep_z)
            xneg0 = (z - sigma * e_dns) / alpha
            e_neg = (x - alpha * xneg0) / sigma
            e_ans = e_neg + g * (ep - e_neg)
            x = scheduler.step(e_ans, t, x).prev_sample
            z = scheduler_z.step(e_dns, t, z).prev_sample
    return x


def diffusers_unet_call(unet: Any) -> UNetCall:
    def call(latents: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return unet(latents, t, encoder_hidden_states=cond).sample

    return call


def null_unet(latents: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
    """Returns at once: what remains of a step's time is the loop's own overhead."""
    return latents
