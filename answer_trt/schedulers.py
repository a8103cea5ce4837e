"""Schedulers: the model's own diffusers config, or one picked by name.

The sampler always feeds the scheduler a noise prediction (v-prediction outputs are
converted first, see ``guidance.to_epsilon``), so every scheduler made here is
configured with ``prediction_type="epsilon"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import diffusers
import torch

from answer_trt.config import SCHEDULERS
from answer_trt.errors import UserInputError


def make_scheduler(config: Mapping[str, Any], name: str | None = None) -> Any:
    """Build a scheduler from the model's config; ``name`` overrides its class.

    ``name=None`` keeps the model's own scheduler class (``_class_name`` of the config).
    """
    if name is None:
        class_name = str(config.get("_class_name", "DDIMScheduler"))
    elif name in SCHEDULERS:
        class_name = SCHEDULERS[name]
    else:
        raise UserInputError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not hasattr(scheduler_class, "from_config"):
        raise UserInputError(
            f"the model's scheduler {class_name!r} is not a diffusers scheduler: pass --scheduler "
            f"{' or '.join(SCHEDULERS)}"
        )
    scheduler = scheduler_class.from_config(dict(config), prediction_type="epsilon")
    if not hasattr(scheduler, "alphas_cumprod"):
        raise UserInputError(
            f"scheduler {class_name!r} has no alphas_cumprod, which ANSWER needs: pass --scheduler "
            f"{' or '.join(SCHEDULERS)}"
        )
    return scheduler


def noise_levels(scheduler: Any, step_index: int, timestep: torch.Tensor) -> tuple[float, float]:
    """``(alpha_t, sigma_t)`` of the variance-preserving latent at ``step_index``.

    Sigma-parametrized schedulers (Euler, DPM-Solver) keep ``sigma_ve = sigma_t / alpha_t``
    per step; the others index ``alphas_cumprod`` by the timestep.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > step_index:
        sigma_ve = float(sigmas[step_index])
        alpha = 1.0 / math.sqrt(1.0 + sigma_ve * sigma_ve)
        return alpha, sigma_ve * alpha
    alphabar = float(scheduler.alphas_cumprod[int(timestep)])
    return math.sqrt(alphabar), math.sqrt(1.0 - alphabar)
