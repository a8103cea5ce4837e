"""A1111's emphasis on the text encoder's output ("Original" emphasis, its default)."""

from __future__ import annotations

import torch
from torch import Tensor


def emphasize(hidden: Tensor, weights: Tensor) -> Tensor:
    """One chunk's hidden states ``[L, D]`` with each token's state multiplied by its weight
    ``[L]``, then rescaled so that the chunk's mean equals its unweighted mean (A1111's
    ``process_tokens``); computed in float32. Weights all 1 return ``hidden`` as it is."""
    if bool((weights == 1).all()):
        return hidden
    states = hidden.to(torch.float32)
    original = states.mean()
    weighted = states * weights.to(states.device, torch.float32)[:, None]
    return weighted * (original / weighted.mean())
