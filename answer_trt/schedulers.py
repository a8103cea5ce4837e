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
import hashlib
import importlib.util
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from answer_trt.config import SCHEDULERS
from answer_trt.errors import UserInputError
from answer_trt.native_schedulers import NATIVE_CLASSES, NativeSchedule, native_scheduler
from answer_trt.samplers import SCHEDULER_NAMES, a1111_sampler


def scheduler_class_name(config: Mapping[str, Any], name: str | None = None) -> str:
    """The diffusers class a scheduler is made of: ``name``'s (``--scheduler``: ours or
    A1111's, ``answer_trt.samplers``), or with ``name=None`` the model's own (``_class_name``
    of the config)."""
    return resolve_scheduler(config, name)[0]


def resolve_scheduler(config: Mapping[str, Any], name: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(class name, config)`` of the scheduler ``name`` picks: the model's ``config`` with an
    A1111 sampler's options (``samplers.A1111_SAMPLERS``) laid over it; ``UserInputError``
    (one line listing the names) for a name that is neither ours nor A1111's."""
    if name is None:
        return str(config.get("_class_name", "DDIMScheduler")), dict(config)
    if name in SCHEDULERS:
        return SCHEDULERS[name], dict(config)
    sampler = a1111_sampler(name)
    if sampler is None:
        raise UserInputError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULER_NAMES)}")
    if sampler.requires is not None and importlib.util.find_spec(sampler.requires) is None:
        raise UserInputError(f"--scheduler {name!r} ({sampler.class_name}) needs the {sampler.requires} package: "
                             f"pip install {sampler.requires}, or pick another scheduler")
    return sampler.class_name, {**config, **sampler.options}


def make_scheduler(config: Mapping[str, Any], name: str | None = None) -> Any:
    """The schedule the sampler runs, from the model's config; ``name`` overrides its class
    (and an A1111 name sets its options, ``resolve_scheduler``).

    DDIM and Euler come as native schedules (``native_schedulers``: the same numbers,
    without importing diffusers) where the config allows; everything else is
    ``make_diffusers_scheduler``'s.
    """
    class_name, resolved = resolve_scheduler(config, name)
    check_scheduler_config(resolved, class_name)
    native = native_scheduler(resolved, class_name)
    return native if native is not None else make_diffusers_scheduler(config, name)


NATIVE_CLASS_NAMES = tuple(NATIVE_CLASSES)

# The training grid of a scheduler config: SD models use 1000; anything far beyond is not a
# model's config, and the schedule's tables grow with it (checked before they are made).
MAX_TRAIN_TIMESTEPS = 100_000


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers' beta schedules (DDIM, Euler, DPM-Solver: linear, scaled_linear, squaredcos_cap_v2; a few: exp).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")
BOOLEAN_KEYS = ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr", "use_karras_sigmas",
                "use_exponential_sigmas", "use_beta_sigmas", "lower_order_final", "euler_at_final")
_FIX = "the model's scheduler config is broken; correct its scheduler/scheduler_config.json"


def _config_error(key: str, wanted: str, value: Any) -> UserInputError:
    return UserInputError(f"the scheduler config's {key} must be {wanted}, got {value!r}: {_FIX}")


def _not_a_scheduler(class_name: Any, version: str = "") -> UserInputError:
    return UserInputError(
        f"the scheduler config's _class_name {class_name!r} is not a diffusers{version} scheduler: correct the "
        f"_class_name of the model's scheduler/scheduler_config.json, or pass --scheduler {' or '.join(SCHEDULERS)}")


def check_scheduler_config(config: Mapping[str, Any], class_name: str | None = None) -> None:
    """Refuse, before anything is built or allocated, a scheduler config diffusers could not
    run or that would poison every step (``UserInputError``, one line naming the key and the
    fix): the class (``class_name``, default the config's own) is not a diffusers scheduler,
    the training grid is not an integer in 1 .. ``MAX_TRAIN_TIMESTEPS``, betas outside
    [0, 1), an unknown beta schedule, timestep spacing or prediction type, a flag that is not
    a boolean, and epsilon prediction on a zero-terminal-SNR schedule (``rescale_betas_zero_snr``),
    whose first step is pure noise, where a noise prediction says nothing about the image
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.2)."""
    name = config.get("_class_name", "DDIMScheduler") if class_name is None else class_name
    if not isinstance(name, str) or not name.endswith("Scheduler") or not name.isidentifier():
        raise _not_a_scheduler(name)
    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise _config_error("num_train_timesteps", f"an integer in 1 .. {MAX_TRAIN_TIMESTEPS}", steps)
    for key in ("beta_start", "beta_end"):  # a NaN or a beta of 1 or more poisons every step's noise level
        beta = config.get(key, 0.01)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise _config_error(key, "a number in [0, 1)", beta)
    trained = config.get("trained_betas")
    if trained is not None and (
            not isinstance(trained, (list, tuple)) or len(trained) != steps
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in trained)):
        raise _config_error("trained_betas", f"null or a list of {steps} numbers in [0, 1)", _short(trained))
    for key, choices in (("beta_schedule", BETA_SCHEDULES), ("timestep_spacing", TIMESTEP_SPACINGS),
                         ("prediction_type", PREDICTION_TYPES)):
        if key in config and config[key] not in choices:
            raise _config_error(key, "one of " + ", ".join(choices), config[key])
    offset = config.get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < steps:
        raise _config_error("steps_offset", f"an integer in 0 .. {steps - 1}", offset)
    for key in BOOLEAN_KEYS:
        if key in config and not isinstance(config[key], bool):
            raise _config_error(key, "true or false", config[key])
    if config.get("rescale_betas_zero_snr") and config.get("prediction_type", "epsilon") == "epsilon":
        raise UserInputError(
            "the scheduler config sets rescale_betas_zero_snr (zero terminal SNR) with prediction_type epsilon, "
            "which cannot work (a noise prediction of pure noise says nothing about the image): use a "
            "v_prediction model with it, or set rescale_betas_zero_snr to false")
    if name not in NATIVE_CLASS_NAMES:  # only diffusers can say whether it has the class
        diffusers_scheduler_class(name)


def _short(value: Any) -> Any:
    """``value`` for an error message: a long list as its length."""
    return f"a list of {len(value)}" if isinstance(value, (list, tuple)) and len(value) > 8 else value


def diffusers_scheduler_class(class_name: str) -> Any:
    """diffusers' scheduler class of that name (imports diffusers); ``UserInputError`` where
    diffusers has none (a misspelt ``_class_name``, or a class of a newer diffusers)."""
    import diffusers

    scheduler_class = getattr(diffusers, class_name, None)
    # Only schedulers: from_config of any other diffusers class (a UNet) would build a model.
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise _not_a_scheduler(class_name, f" {diffusers.__version__}")
    return scheduler_class


def make_diffusers_scheduler(config: Mapping[str, Any], name: str | None = None) -> Any:
    """A diffusers scheduler object from the model's config (``name`` as in ``make_scheduler``),
    configured for epsilon prediction; imports diffusers."""
    class_name, resolved = resolve_scheduler(config, name)
    check_scheduler_config(resolved, class_name)
    scheduler_class = diffusers_scheduler_class(class_name)
    try:
        scheduler = scheduler_class.from_config(resolved, prediction_type="epsilon")
    except (NotImplementedError, ValueError) as exc:  # an option this class does not take (e.g. its beta schedule)
        raise UserInputError(f"{class_name} cannot run the model's scheduler config ({exc}): {_FIX}, or pass "
                             f"--scheduler {' or '.join(SCHEDULERS)}") from None
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

    @property
    def draws_noise(self) -> bool:
        """Whether ``step`` may draw noise (give it a ``StepNoise`` with ``seeded``)."""
        ...

    def levels(self, i: int) -> tuple[float, float]: ...

    def scale_input(self, x: Tensor, i: int) -> Tensor: ...

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor: ...

    def fork(self) -> StepRule: ...

    def seeded(self, noise: StepNoise | None) -> StepRule:
        """This rule with its step noise (stochastic samplers) drawn from ``noise``; a
        deterministic rule returns itself."""
        ...


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
    draws_noise: ClassVar[bool] = False

    def levels(self, i: int) -> tuple[float, float]:
        return self.alphas[i], self.sigmas[i]

    def scale_input(self, x: Tensor, i: int) -> Tensor:
        scale = self.input_scales[i]
        return x if scale == 1.0 else x * scale

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        return torch.add(x * self.x_coefs[i], eps, alpha=self.eps_coefs[i])

    def fork(self) -> StepRule:
        return self  # stateless

    def seeded(self, noise: StepNoise | None) -> StepRule:
        return self  # draws no noise


def noise_generators(seed: int, seeds: Sequence[int] | None = None) -> list[torch.Generator]:
    """The CPU generators of a request's noise, as diffusers' pipelines are given them: one
    for the batch, seeded with ``seed`` (``seeds`` None), or one per image (diffusers' list
    of generators)."""
    return [torch.Generator("cpu").manual_seed(s) for s in ((seed,) if seeds is None else seeds)]


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> Tensor:
    """float32 standard normal noise of ``shape`` on the CPU, drawn as diffusers'
    ``utils/torch_utils.py:randn_tensor`` draws it: one generator draws the whole shape; a
    list of generators draws ``(1, *shape[1:])`` from each image's own and concatenates."""
    if len(generators) == 1:
        return torch.randn(tuple(shape), generator=generators[0], dtype=torch.float32)
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators])


def chain_seed(seed: int) -> int:
    """The seed of ANSWER's negative chain's step noise for a main-chain seed
    (docs/ANSWER.md, "Stochastic samplers"): the first 8 bytes, little-endian, of
    ``sha256(b"answer-trt negative chain " + decimal seed)``; a stream apart from every
    main chain's, so the negative chain never consumes the image's own noise."""
    digest = hashlib.sha256(b"answer-trt negative chain " + str(int(seed)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class StepNoise:
    """The noise a stochastic sampler (ancestral, SDE) draws at its steps, for one run.

    The main chain draws from the generators that drew the initial noise, continued after
    it (``for_request``), exactly as diffusers' pipelines pass their ``generator`` on to
    ``scheduler.step``; so a seed gives the same pixels, and diffusers' image. ANSWER's
    negative chain (every ``fork`` of the rule) draws from its own generators, seeded with
    ``chain_seed`` of each seed, made once per run and shared by all of the run's forks.
    """

    def __init__(self, generators: Sequence[torch.Generator], seeds: Sequence[int]) -> None:
        self.generators = list(generators)
        self.seeds = tuple(seeds)
        self._chain: StepNoise | None = None

    @classmethod
    def for_request(cls, seed: int, seeds: Sequence[int] | None, shape: Sequence[int]) -> StepNoise:
        """The main chain's streams of a request whose initial noise of ``shape`` was drawn
        from ``noise_generators(seed, seeds)``: those generators, advanced past that noise."""
        generators = noise_generators(seed, seeds)
        draw_noise(generators, shape)
        return cls(generators, (seed,) if seeds is None else seeds)

    @property
    def generator(self) -> torch.Generator | list[torch.Generator]:
        """What diffusers' ``step(..., generator=)`` takes: one generator, or one per image."""
        return self.generators[0] if len(self.generators) == 1 else self.generators

    def chain(self) -> StepNoise:
        """The negative chain's streams (made on first use; the chain's own chain is itself)."""
        if self._chain is None:
            seeds = tuple(chain_seed(s) for s in self.seeds)
            self._chain = StepNoise(noise_generators(0, seeds), seeds)
            self._chain._chain = self._chain
        return self._chain


def takes_generator(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` draws noise from a ``generator`` keyword (diffusers'
    ancestral and SDE schedulers; DDIM for eta > 0)."""
    step = getattr(scheduler, "step", None)
    return step is not None and "generator" in inspect.signature(step).parameters


STOCHASTIC_CLASSES = ("EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler")


def is_stochastic(scheduler: Any) -> bool:
    """Whether ``scheduler`` draws fresh noise at its steps: an ancestral or SDE class, or
    DPM-Solver with an ``sde-`` algorithm type."""
    config = getattr(scheduler, "config", {})
    return (type(scheduler).__name__ in STOCHASTIC_CLASSES
            or str(config.get("algorithm_type", "")).startswith("sde-"))


def seed_brownian_tree(scheduler: Any, seeds: Sequence[int]) -> None:
    """Seed the Brownian tree of a scheduler that draws its step noise from one
    (diffusers' ``DPMSolverSDEScheduler``: its ``step()`` takes no generator; it builds a
    ``BrownianTreeNoiseSampler`` at its first step from ``noise_sampler_seed``, a fresh
    random seed where that is None, so an image would never repeat).

    ``seeds``: one seed for the whole batch, or one per latent row (a tree each), as
    A1111 seeds "DPM++ SDE" with each image's seed. The tree is dropped so the next step
    builds it from these seeds (a fork's copy must not reuse the main chain's)."""
    scheduler.noise_sampler_seed = int(seeds[0]) if len(seeds) == 1 else [int(s) for s in seeds]
    scheduler.noise_sampler = None


class DiffusersStepRule:
    """Any diffusers scheduler through its own ``step()``; ``fork`` deep-copies its state.
    With ``noise`` (``seeded``), a scheduler that draws noise at its steps draws it from
    ``noise``'s generators (a fork: from the negative chain's)."""

    def __init__(self, scheduler: Any, noise: StepNoise | None = None) -> None:
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        self.init_noise_sigma = float(scheduler.init_noise_sigma)
        self.noise = noise
        self._takes_generator = takes_generator(scheduler)
        self._brownian = hasattr(scheduler, "noise_sampler_seed")
        self.draws_noise = self._takes_generator or self._brownian
        if noise is not None and self._brownian:
            seed_brownian_tree(scheduler, noise.seeds)

    def levels(self, i: int) -> tuple[float, float]:
        return noise_levels(self.scheduler, i, self.timesteps[i])

    def scale_input(self, x: Tensor, i: int) -> Tensor:
        return self.scheduler.scale_model_input(x, self.timesteps[i])

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        if self.noise is not None and self._takes_generator:
            return self.scheduler.step(eps, self.timesteps[i], x, generator=self.noise.generator).prev_sample
        return self.scheduler.step(eps, self.timesteps[i], x).prev_sample

    def fork(self) -> StepRule:
        return DiffusersStepRule(copy.deepcopy(self.scheduler), None if self.noise is None else self.noise.chain())

    def seeded(self, noise: StepNoise | None) -> StepRule:
        """This rule drawing its step noise from ``noise``."""
        return DiffusersStepRule(self.scheduler, noise)


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


# The terminal alphabar of a zero-terminal-SNR schedule, as diffusers' EulerDiscreteScheduler and
# DPMSolverMultistepScheduler set it (``alphas_cumprod[-1] = 2**-24`` under ``rescale_betas_zero_snr``).
ZERO_SNR_ALPHABAR = 2.0**-24


def terminal_alphabar(alphabar: float) -> float:
    """``alphabar`` where it is positive; ``ZERO_SNR_ALPHABAR`` where it is 0 (the last training
    timestep of a zero-terminal-SNR schedule, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", Lin et al. 2024, Sec. 3.1; diffusers' ``rescale_zero_terminal_snr``).

    At alphabar = 0 the latent is pure noise, so a noise prediction holds nothing (``eps = x``)
    and ``x0 = (x - sigma eps) / alpha`` divides by zero; diffusers' DDIM step reads x0 from
    the v-prediction there (``x0 = -v``). Our sampler converts v to eps first
    (``eps = alpha v + sigma x``), so it keeps alpha at 2**-12 instead of 0, as diffusers'
    Euler and DPM-Solver do: x0 then comes back as ``alpha x - sigma v`` (``-v`` within
    2**-12), and the image is diffusers' DDIM image within float32 rounding."""
    return alphabar if alphabar > 0.0 else ZERO_SNR_ALPHABAR


def _ddim_rule(scheduler: Any) -> LinearStepRule:
    """DDIM, eta = 0 (diffusers ``scheduling_ddim.py``: ``DDIMScheduler.step``):
    ``x_prev = sqrt(ab_prev) * x0 + sqrt(1 - ab_prev) * eps`` with
    ``x0 = (x - sqrt(1 - ab_t) * eps) / sqrt(ab_t)``; ``prev`` as diffusers computes it; a
    terminal ``ab_t`` of 0 (zero-terminal-SNR) as ``terminal_alphabar``."""
    alphas_cumprod = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas, sigmas, x_coefs, eps_coefs = [], [], [], []
    for t in scheduler.timesteps.tolist():
        ab_t = terminal_alphabar(float(alphas_cumprod[t]))
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
