"""DDIM's and Euler's noise schedules computed as diffusers computes them, without
importing diffusers (whose import pulls in most of torch's compiler stack: about a
second of a CLI run's start).

Only the schedule is computed here (training alphas, the inference timesteps, Euler's
sigmas and initial noise scale); the update rules built on it are
``schedulers.LinearStepRule``'s. Each formula repeats diffusers' own (0.30 to 0.42:
``DDIMScheduler`` and ``EulerDiscreteScheduler``: ``__init__``, ``set_timesteps``,
``init_noise_sigma``) in the same dtypes and order of operations, so the numbers are
equal bit for bit (``tests/test_native_schedulers.py`` checks every supported option
against diffusers). A config that asks for anything else (another beta schedule,
trained betas, zero-SNR rescaling, Karras/exponential/beta sigmas, DDIM clipping or
thresholding, a value of an unexpected type) gets ``None`` from ``native_scheduler``
and runs on diffusers itself.

The classes carry diffusers' class names because that name is what a generated PNG
records as its scheduler: the schedule is that class's, computed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FINAL_SIGMAS = ("zero", "sigma_min")

# diffusers' defaults for the keys a config may leave out (its __init__ signatures).
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "steps_offset": 0, "rescale_betas_zero_snr": False,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {**_COMMON_DEFAULTS, "clip_sample": True, "set_alpha_to_one": True, "thresholding": False,
                      "timestep_spacing": "leading"},
    "EulerDiscreteScheduler": {**_COMMON_DEFAULTS, "timestep_spacing": "linspace", "interpolation_type": "linear",
                               "use_karras_sigmas": False, "use_exponential_sigmas": False,
                               "use_beta_sigmas": False, "final_sigmas_type": "zero"},
}


@dataclass(frozen=True)
class ScheduleConfig:
    """The config keys a native schedule reads, validated (``from_config``)."""

    class_name: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool = False  # DDIM
    final_sigmas_type: str = "zero"  # Euler
    # What make_step_rule asks of a DDIM config (a native one never clips or thresholds).
    clip_sample: bool = False
    thresholding: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], class_name: str) -> ScheduleConfig | None:
        """The schedule of ``class_name`` under ``config`` (diffusers' defaults for missing
        keys), or None where only diffusers can compute it."""
        if class_name not in DEFAULTS:
            return None
        values = {**DEFAULTS[class_name], **{k: v for k, v in config.items() if k in DEFAULTS[class_name]}}
        if not (_is_int(values["num_train_timesteps"], low=1) and _is_int(values["steps_offset"], low=0)
                and _is_number(values["beta_start"]) and _is_number(values["beta_end"])
                and values["beta_schedule"] in BETA_SCHEDULES and values["timestep_spacing"] in TIMESTEP_SPACINGS
                and values["trained_betas"] is None and values["rescale_betas_zero_snr"] is False):
            return None
        extra: dict[str, Any] = {}
        if class_name == "DDIMScheduler":
            if values["clip_sample"] is not False or values["thresholding"] is not False:
                return None
            if not isinstance(values["set_alpha_to_one"], bool):
                return None
            extra["set_alpha_to_one"] = values["set_alpha_to_one"]
        else:
            if (values["interpolation_type"] != "linear" or values["final_sigmas_type"] not in FINAL_SIGMAS
                    or any(values[k] not in (False, None)
                           for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))):
                return None
            extra["final_sigmas_type"] = values["final_sigmas_type"]
        return cls(class_name, values["num_train_timesteps"], float(values["beta_start"]), float(values["beta_end"]),
                   values["beta_schedule"], values["timestep_spacing"], values["steps_offset"], **extra)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def train_alphas_cumprod(config: ScheduleConfig) -> Tensor:
    """``alphas_cumprod`` over the training timesteps (float32, as diffusers)."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    else:  # scaled_linear
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def inference_timesteps(config: ScheduleConfig, steps: int, dtype: type[np.generic]) -> np.ndarray:
    """The ``steps`` timesteps (descending) by ``timestep_spacing``; ``dtype`` is diffusers'
    per class (int64 for DDIM, float32 for Euler), applied where diffusers applies it."""
    train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        if dtype is np.float32:
            return np.linspace(0, train - 1, steps, dtype=np.float32)[::-1].copy()
        return np.linspace(0, train - 1, steps).round()[::-1].copy().astype(dtype)
    if config.timestep_spacing == "leading":
        ratio = train // steps
        timesteps = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(dtype)
        timesteps += config.steps_offset
        return timesteps
    timesteps = np.round(np.arange(train, 0, -train / steps)).astype(dtype)  # trailing
    timesteps -= 1
    return timesteps


class NativeSchedule:
    """What ``schedulers.make_step_rule`` and ``schedulers.noise_levels`` read from a
    scheduler: ``config``, ``alphas_cumprod``, and after ``set_timesteps``: ``timesteps``,
    ``num_inference_steps``, ``init_noise_sigma``."""

    def __init__(self, config: ScheduleConfig, source: Mapping[str, Any]) -> None:
        self.config = config
        self.source_config = dict(source)  # what diffusers would be built from (exact mode)
        self.alphas_cumprod = train_alphas_cumprod(config)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.init_noise_sigma = 1.0

    def to_diffusers(self) -> Any:
        """The diffusers scheduler this schedule reproduces (imports diffusers)."""
        import diffusers

        scheduler_class = getattr(diffusers, self.config.class_name)
        return scheduler_class.from_config(self.source_config, prediction_type="epsilon")

    def _check_steps(self, steps: int) -> None:
        if steps > self.config.num_train_timesteps:
            raise ValueError(f"`num_inference_steps`: {steps} cannot be larger than `self.config.train_timesteps`: "
                             f"{self.config.num_train_timesteps}")


class DDIMScheduler(NativeSchedule):
    """diffusers' ``DDIMScheduler`` schedule (no clipping, no thresholding)."""

    def __init__(self, config: ScheduleConfig, source: Mapping[str, Any]) -> None:
        super().__init__(config, source)
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, steps: int) -> None:
        self._check_steps(steps)
        self.num_inference_steps = steps
        self.timesteps = torch.from_numpy(inference_timesteps(self.config, steps, np.int64))


class EulerDiscreteScheduler(NativeSchedule):
    """diffusers' ``EulerDiscreteScheduler`` schedule (linear interpolation of the training
    sigmas, no Karras/exponential/beta sigmas)."""

    def __init__(self, config: ScheduleConfig, source: Mapping[str, Any]) -> None:
        super().__init__(config, source)
        self.sigmas = torch.empty(0)

    def set_timesteps(self, steps: int) -> None:
        self.num_inference_steps = steps
        timesteps = inference_timesteps(self.config, steps, np.float32)
        ac = self.alphas_cumprod
        train_sigmas = np.array(((1 - ac) / ac) ** 0.5)
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        last = float(((1 - ac[0]) / ac[0]) ** 0.5) if self.config.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32))
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            self.init_noise_sigma = float(max_sigma)
        else:
            self.init_noise_sigma = float((max_sigma**2 + 1) ** 0.5)


NATIVE_CLASSES: dict[str, type[NativeSchedule]] = {"DDIMScheduler": DDIMScheduler,
                                                    "EulerDiscreteScheduler": EulerDiscreteScheduler}


def native_scheduler(config: Mapping[str, Any], class_name: str) -> NativeSchedule | None:
    """A native schedule of ``class_name`` under ``config``, or None (use diffusers)."""
    schedule = ScheduleConfig.from_config(config, class_name)
    return None if schedule is None else NATIVE_CLASSES[class_name](schedule, config)

