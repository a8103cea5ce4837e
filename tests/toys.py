"""Small stand-ins shared by the sampler tests: a nonlinear toy denoiser and schedulers."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from answer_trt.conditioning import TextCondition

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


class ToyDenoiser:
    """Nonlinear in latents, timestep and condition, so branch mix-ups show."""

    def __init__(self, channels: int = 4, dim: int = 8) -> None:
        gen = torch.Generator().manual_seed(0)
        self.mix = torch.randn(channels, channels, generator=gen) * 0.5
        self.proj = torch.randn(dim, channels, generator=gen)

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        assert latents.shape[0] == timesteps.shape[0] == cond.batch
        c = (cond.hidden.mean(1) @ self.proj)[:, :, None, None]
        h = torch.einsum("oc,nchw->nohw", self.mix, latents)
        return torch.tanh(h + c * (timesteps[:, None, None, None] / 1000.0)) + 0.1 * latents


def make_scheduler(kind: str):
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[kind]
    return cls.from_config(SCHEDULER_CONFIG)
