"""The engine interface every backend implements, and the denoiser adapter over it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from export.iospec import ComponentSpec


class Engine(Protocol):
    """One component (text encoder, UNet or VAE decoder) behind its IO spec."""

    spec: ComponentSpec

    def run(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


class EngineDenoiser:
    """Adapts a UNet engine to the sampler's ``denoiser(latents, t, cond)`` contract.

    Feed names come from the spec's inputs, in order: sample, timestep, text condition.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sample_name, self.timestep_name, self.cond_name = engine.spec.input_names
        self.output_name = engine.spec.output_names[0]

    def __call__(self, latents: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
        feeds = {self.sample_name: latents, self.timestep_name: timesteps, self.cond_name: cond}
        return self.engine.run(feeds)[self.output_name]
