"""What the UNet is conditioned on besides the latents, one row per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from answer_trt.iospec import HIDDEN, MASK, MASKED_IMAGE_LATENTS, POOLED, TIME_IDS


@dataclass(frozen=True)
class TextCondition:
    """``hidden``: cross-attention text states ``[B, L, D]`` (c_p or c_0 in ANSWER.md).
    SDXL adds ``pooled`` ``[B, P]`` text embeddings and ``time_ids`` ``[B, 6]``. An inpainting
    UNet (``answer_trt.inpaint``) also reads the latent ``mask`` ``[B, 1, h, w]`` and the
    ``masked_image_latents`` ``[B, C, h, w]`` with every row."""

    hidden: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None
    mask: Tensor | None = None
    masked_image_latents: Tensor | None = None
    # ControlNets (``answer_trt.controlnet``): per row, the control images ``[B, K, 3, H, W]`` in
    # [0, 1], the K conditioning scales ``[B, K]`` and the timestep windows ``[B, K, 2]`` (low, high)
    # they apply in; read by the ControlNets, not fed to the UNet. ``control_guess`` ``[B]``: 1.0 on
    # the rows whose residuals take guess mode's per-block scales (``controlnet.guess_factors``), else 0.
    control: Tensor | None = None
    control_scale: Tensor | None = None
    control_window: Tensor | None = None
    control_guess: Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.hidden.shape[0])

    def expand(self, batch: int) -> TextCondition:
        """Repeat a one-row condition for ``batch`` images (views, no copy)."""

        def grow(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(batch, *t.shape[1:])

        return TextCondition(grow(self.hidden), grow(self.pooled), grow(self.time_ids),  # type: ignore[arg-type]
                             grow(self.mask), grow(self.masked_image_latents), grow(self.control),
                             grow(self.control_scale), grow(self.control_window), grow(self.control_guess))

    def to(self, device: torch.device) -> TextCondition:
        """The same condition on ``device`` (tensors already there are kept, not copied)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return TextCondition(self.hidden.to(device), move(self.pooled), move(self.time_ids), move(self.mask),
                             move(self.masked_image_latents), move(self.control), move(self.control_scale),
                             move(self.control_window), move(self.control_guess))

    def feeds(self) -> dict[str, Tensor]:
        """The UNet inputs this condition fills, by IO-spec name."""
        out = {HIDDEN: self.hidden}
        if self.pooled is not None:
            out[POOLED] = self.pooled
        if self.time_ids is not None:
            out[TIME_IDS] = self.time_ids
        if self.mask is not None and self.masked_image_latents is not None:
            out[MASK], out[MASKED_IMAGE_LATENTS] = self.mask, self.masked_image_latents
        return out


@dataclass(frozen=True)
class Conditioning:
    """Text conditions of a batch: ``positive`` is c_p; ``negative`` is c_0, or the
    embedding of a user negative prompt, which replaces c_0 everywhere."""

    positive: TextCondition
    negative: TextCondition


def cat_conditions(conds: Sequence[TextCondition]) -> TextCondition:
    """Stack conditions on the batch axis (the fused call's branches)."""

    def cat(parts: list[Tensor | None]) -> Tensor | None:
        if all(p is None for p in parts):
            return None
        if any(p is None for p in parts):
            raise ValueError("cannot stack conditions with and without SDXL's added inputs")
        return torch.cat(parts)  # type: ignore[arg-type]

    hidden = torch.cat([c.hidden for c in conds])
    return TextCondition(hidden, cat([c.pooled for c in conds]), cat([c.time_ids for c in conds]),
                         cat([c.mask for c in conds]), cat([c.masked_image_latents for c in conds]),
                         cat([c.control for c in conds]), cat([c.control_scale for c in conds]),
                         cat([c.control_window for c in conds]), cat([c.control_guess for c in conds]))
