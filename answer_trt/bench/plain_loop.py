"""The baseline: ANSWER as a user would write it in plain PyTorch with diffusers' UNet,
eager, one UNet call per branch, diffusers' own ``scheduler.step()`` and a deep copy of
the scheduler for the negative chain. Same equations as ANSWER.md, none of our runtime."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from answer_trt.conditioning import TextCondition
from answer_trt.schedulers import noise_levels

UNetCall = Callable[[Tensor, Tensor, TextCondition], Tensor]


def plain_answer_loop(
    unet: UNetCall,
    scheduler: Any,
    noise: Tensor,
    c_p: TextCondition,
    c_0: TextCondition,
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
            alpha, sigma = noise_levels(scheduler, i, t)
            x_in = scheduler.scale_model_input(x, t)
            z_in = scheduler_z.scale_model_input(z, t)
            ep = unet(x_in, t, c_p)
            ep_z = unet(z_in, t, c_p)
            e0_z = unet(z_in, t, c_0)
            e_dns = e0_z + wn * (e0_z - ep_z)
            xneg0 = (z_in - sigma * e_dns) / alpha
            e_neg = (x_in - alpha * xneg0) / sigma
            e_ans = e_neg + g * (ep - e_neg)
            x = scheduler.step(e_ans, t, x).prev_sample
            z = scheduler_z.step(e_dns, t, z).prev_sample
    return x


def diffusers_unet_call(unet: Any) -> UNetCall:
    def call(latents: Tensor, t: Tensor, cond: TextCondition) -> Tensor:
        added = None if cond.pooled is None else {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
        return unet(latents, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added).sample

    return call


def null_unet(latents: Tensor, timesteps: Tensor, cond: TextCondition) -> Tensor:
    """Returns at once: what remains of a step's time is the loop's own overhead."""
    return latents
