"""A1111's emphasis on the text encoder's output ("Original" emphasis, its default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def emphasize(hidden: Tensor, weights: Tensor, widths: Sequence[int] = ()) -> Tensor:
    """One chunk's hidden states ``[L, D]`` with each token's state multiplied by its weight
    ``[L]``, then rescaled so that the chunk's mean equals its unweighted mean (A1111's
    ``process_tokens``); computed in float32. ``widths``: the text encoders' parts of ``D``
    (SDXL: two, each rescaled on its own, as A1111 runs each encoder's emphasis; empty: one).
    Weights all 1 return ``hidden`` as it is."""
    if bool((weights == 1).all()):
        return hidden
    states = hidden.to(torch.float32)
    scale = weights.to(states.device, torch.float32)[:, None]
    parts = []
    for part in states.split(list(widths) or [states.shape[-1]], dim=-1):
        weighted = part * scale
        parts.append(weighted * (part.mean() / weighted.mean()))
    return torch.cat(parts, dim=-1)
