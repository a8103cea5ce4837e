"""The engine interface every backend implements, and the denoiser adapter over it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from answer_trt.conditioning import TextCondition
from answer_trt.iospec import ComponentSpec


class Engine(Protocol):
    """One component (text encoder, UNet or VAE decoder) behind its IO spec."""

    spec: ComponentSpec

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


class EngineDenoiser:
    """Adapts a UNet engine to the sampler's ``denoiser(latents, t, cond)`` contract.

    The spec's first two inputs are the latents and the timestep; the rest are named
    by the condition's fields (``TextCondition.feeds``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sample_name, self.timestep_name = engine.spec.input_names[:2]
        self.output_name = engine.spec.output_names[0]

    def __call__(self, latents: Tensor, timesteps: Tensor, cond: TextCondition) -> Tensor:
        feeds = {self.sample_name: latents, self.timestep_name: timesteps, **cond.feeds()}
        return self.engine.run(feeds)[self.output_name]
