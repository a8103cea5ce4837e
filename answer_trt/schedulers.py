"""Schedulers: the model's own diffusers config, or one picked by name, behind a
small step-rule interface the sampler drives.

The sampler always feeds a noise prediction (v-prediction outputs are converted
first, see ``guidance.to_epsilon``), so every scheduler made here is configured with
``prediction_type="epsilon"``. DDIM (eta = 0, no clipping) and Euler (no churn)
update ``x`` linearly in ``(x, eps)`` at each step; for them ``LinearStepRule``
precomputes the coefficients once, so a step is two multiply-adds: stateless (the
negative chain's "copy of the scheduler state" is free), and a pure tensor function
that a CUDA graph can capture. Any other diffusers scheduler runs through its own
``step()`` (``DiffusersStepRule``).

Their schedules (timesteps, alphas, sigmas) come from ``native_schedulers`` where the
config allows, so a generation with DDIM or Euler never imports diffusers; diffusers is
imported only for the other schedulers and configs (``make_diffusers_scheduler``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from answer_trt.config import SCHEDULERS
from answer_trt.errors import UserInputError
from answer_trt.native_schedulers import NativeSchedule, native_scheduler


def scheduler_class_name(config: Mapping[str, Any], name: str | None = None) -> str:
    """The diffusers class a scheduler is made of: ``name``'s (``--scheduler``), or with
    ``name=None`` the model's own (``_class_name`` of the config)."""
    if name is None:
        return str(config.get("_class_name", "DDIMScheduler"))
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    raise UserInputError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")


def make_scheduler(config: Mapping[str, Any], name: str | None = None) -> Any:
    """The schedule the sampler runs, from the model's config; ``name`` overrides its class.

    DDIM and Euler come as native schedules (``native_schedulers``: the same numbers,
    without importing diffusers) where the config allows; everything else is
    ``make_diffusers_scheduler``'s.
    """
    check_scheduler_config(config)
    native = native_scheduler(config, scheduler_class_name(config, name))
    return native if native is not None else make_diffusers_scheduler(config, name)


# The training grid of a scheduler config: SD models use 1000; anything far beyond is not a
# model's config, and the schedule's tables grow with it (checked before they are made).
MAX_TRAIN_TIMESTEPS = 100_000


def check_scheduler_config(config: Mapping[str, Any]) -> None:
    """Refuse, before anything is allocated, a config whose training grid is not a positive
    integer up to ``MAX_TRAIN_TIMESTEPS`` (``UserInputError``)."""
    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise UserInputError(f"the scheduler config's num_train_timesteps must be an integer in 1 .. "
                             f"{MAX_TRAIN_TIMESTEPS}, got {steps!r}: the model's scheduler config is broken")
    for key in ("beta_start", "beta_end"):  # a NaN or a beta of 1 or more poisons every step's noise level
        beta = config.get(key, 0.01)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise UserInputError(f"the scheduler config's {key} must be a number in [0, 1), got {beta!r}: the "
                                 f"model's scheduler config is broken")


def make_diffusers_scheduler(config: Mapping[str, Any], name: str | None = None) -> Any:
    """A diffusers scheduler object from the model's config (``name`` as in ``make_scheduler``),
    configured for epsilon prediction; imports diffusers."""
    import diffusers

    check_scheduler_config(config)
    class_name = scheduler_class_name(config, name)
    scheduler_class = getattr(diffusers, class_name, None)
    # Only schedulers: from_config of any other diffusers class (a UNet) would build a model.
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
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


def noise_levels(scheduler: Any, step_index: int, timestep: Tensor) -> tuple[float, float]:
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


class StepRule(Protocol):
    """One chain's view of a scheduler after ``set_timesteps``."""

    @property
    def timesteps(self) -> Tensor: ...

    @property
    def init_noise_sigma(self) -> float: ...

    def levels(self, i: int) -> tuple[float, float]: ...

    def scale_input(self, x: Tensor, i: int) -> Tensor: ...

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor: ...

    def fork(self) -> StepRule: ...


@dataclass(frozen=True)
class LinearStepRule:
    """``x_next = x_coef[i] * x + eps_coef[i] * eps`` and ``x_in = input_scale[i] * x``."""

    timesteps: Tensor
    init_noise_sigma: float
    alphas: tuple[float, ...]
    sigmas: tuple[float, ...]
    input_scales: tuple[float, ...]
    x_coefs: tuple[float, ...]
    eps_coefs: tuple[float, ...]

    def levels(self, i: int) -> tuple[float, float]:
        return self.alphas[i], self.sigmas[i]

    def scale_input(self, x: Tensor, i: int) -> Tensor:
        scale = self.input_scales[i]
        return x if scale == 1.0 else x * scale

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        return torch.add(x * self.x_coefs[i], eps, alpha=self.eps_coefs[i])

    def fork(self) -> StepRule:
        return self  # stateless


class DiffusersStepRule:
    """Any diffusers scheduler through its own ``step()``; ``fork`` deep-copies its state."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        self.init_noise_sigma = float(scheduler.init_noise_sigma)

    def levels(self, i: int) -> tuple[float, float]:
        return noise_levels(self.scheduler, i, self.timesteps[i])

    def scale_input(self, x: Tensor, i: int) -> Tensor:
        return self.scheduler.scale_model_input(x, self.timesteps[i])

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        return self.scheduler.step(eps, self.timesteps[i], x).prev_sample

    def fork(self) -> StepRule:
        return DiffusersStepRule(copy.deepcopy(self.scheduler))


def make_step_rule(scheduler: Any, steps: int, exact_diffusers: bool = False) -> StepRule:
    """Set ``steps`` timesteps and return the fastest rule that matches ``scheduler.step()``.
    ``exact_diffusers``: diffusers' own ``step()`` (a native schedule becomes its diffusers
    scheduler)."""
    if exact_diffusers and isinstance(scheduler, NativeSchedule):
        scheduler = scheduler.to_diffusers()
    name, trained = type(scheduler).__name__, len(scheduler.alphas_cumprod)
    try:
        scheduler.set_timesteps(steps)
    except ValueError as exc:
        raise UserInputError(f"--steps {steps} does not work with {name}: {exc}") from None
    if int(scheduler.timesteps.max()) >= trained:
        raise UserInputError(
            f"--steps {steps} is too many for {name} with this config: its timesteps run past the "
            f"{trained} it was trained on; use fewer steps"
        )
    if not exact_diffusers:
        kind, config = type(scheduler).__name__, scheduler.config
        if kind == "DDIMScheduler" and not config.clip_sample and not config.thresholding:
            return _ddim_rule(scheduler)
        if kind == "EulerDiscreteScheduler":
            return _euler_rule(scheduler)
    return DiffusersStepRule(scheduler)


def _ddim_rule(scheduler: Any) -> LinearStepRule:
    """DDIM, eta = 0: ``x_prev = sqrt(ab_prev) * x0 + sqrt(1 - ab_prev) * eps`` with
    ``x0 = (x - sqrt(1 - ab_t) * eps) / sqrt(ab_t)``; ``prev`` as diffusers computes it."""
    alphas_cumprod = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas, sigmas, x_coefs, eps_coefs = [], [], [], []
    for t in scheduler.timesteps.tolist():
        ab_t = float(alphas_cumprod[t])
        prev = t - stride
        ab_prev = float(alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        a_t, s_t, a_prev, s_prev = math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
        alphas.append(a_t)
        sigmas.append(s_t)
        x_coefs.append(a_prev / a_t)
        eps_coefs.append(s_prev - a_prev * s_t / a_t)
    n = len(alphas)
    return LinearStepRule(scheduler.timesteps, float(scheduler.init_noise_sigma), tuple(alphas), tuple(sigmas),
                          (1.0,) * n, tuple(x_coefs), tuple(eps_coefs))


def _euler_rule(scheduler: Any) -> LinearStepRule:
    """Euler on ``x = x0 + sigma * eps`` (variance exploding): ``x_next = x + (sigma_next -
    sigma) * eps``; the UNet sees ``x / sqrt(sigma^2 + 1)``, the variance-preserving latent."""
    sigmas_ve = scheduler.sigmas.tolist()
    alphas, sigmas, scales, eps_coefs = [], [], [], []
    for i in range(len(scheduler.timesteps)):
        s = sigmas_ve[i]
        scale = 1.0 / math.sqrt(s * s + 1.0)
        alphas.append(scale)
        sigmas.append(s * scale)
        scales.append(scale)
        eps_coefs.append(sigmas_ve[i + 1] - s)
    n = len(alphas)
    return LinearStepRule(scheduler.timesteps, float(scheduler.init_noise_sigma), tuple(alphas), tuple(sigmas),
                          tuple(scales), (1.0,) * n, tuple(eps_coefs))
