"""Samplers by A1111's names: the one table from a name AUTOMATIC1111's web UI shows ("Euler a",
"DPM++ 2M Karras", ...) to the diffusers scheduler class and options that run it.

``--scheduler`` (the request schema's ``scheduler`` field) takes these names beside ours
(``config.SCHEDULERS``: ddim, euler, dpm++); ``schedulers.make_scheduler`` builds the class
from the model's own config with the options laid over it. The mapping follows diffusers'
documentation of A1111's samplers ("Schedulers" page, "Mapping between A1111/k-diffusion and
diffusers") for the names diffusers has. A new name is one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from answer_trt.config import SCHEDULERS


@dataclass(frozen=True)
class Sampler:
    """A diffusers scheduler class and the config options laid over the model's config;
    ``requires``: a module diffusers needs for it that is not a dependency of ours."""

    class_name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    requires: str | None = None


def _sampler(class_name: str, requires: str | None = None, **options: Any) -> Sampler:
    return Sampler(class_name, MappingProxyType(options), requires)


_DPM_2M: dict[str, Any] = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPM_2M_SDE: dict[str, Any] = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# The one table: A1111's sampler name -> diffusers class + options.
A1111_SAMPLERS: Mapping[str, Sampler] = MappingProxyType({
    "DDIM": _sampler("DDIMScheduler"),
    "Euler": _sampler("EulerDiscreteScheduler"),
    "Euler a": _sampler("EulerAncestralDiscreteScheduler"),
    "DPM++ 2M": _sampler("DPMSolverMultistepScheduler", **_DPM_2M),
    "DPM++ 2M Karras": _sampler("DPMSolverMultistepScheduler", use_karras_sigmas=True, **_DPM_2M),
    "DPM++ 2M SDE": _sampler("DPMSolverMultistepScheduler", **_DPM_2M_SDE),
    "DPM++ 2M SDE Karras": _sampler("DPMSolverMultistepScheduler", use_karras_sigmas=True, **_DPM_2M_SDE),
    "Heun": _sampler("HeunDiscreteScheduler"),
    "LMS": _sampler("LMSDiscreteScheduler", requires="scipy"),
    "UniPC": _sampler("UniPCMultistepScheduler"),
    "DPM++ SDE Karras": _sampler("DPMSolverSDEScheduler", requires="torchsde", use_karras_sigmas=True),
    "DPM++ SDE": _sampler("DPMSolverSDEScheduler", requires="torchsde"),
})


def a1111_sampler_names() -> tuple[str, ...]:
    """A1111's sampler names that ``--scheduler`` accepts, in A1111's order (what A1111's
    ``GET /sdapi/v1/samplers`` and ``/sdapi/v1/schedulers`` list)."""
    return tuple(A1111_SAMPLERS)


def a1111_sampler(name: str) -> Sampler | None:
    """The table's entry for A1111's sampler ``name``, or None where it is not one."""
    return A1111_SAMPLERS.get(name)


# Our own scheduler names as A1111 names the sampler they run (its name for the same scheduler).
OURS_IN_A1111: Mapping[str, str] = MappingProxyType({"ddim": "DDIM", "euler": "Euler", "dpm++": "DPM++ 2M"})


def a1111_name(scheduler: str) -> str:
    """The name A1111 shows for ``scheduler`` (ours, or one of its own names already)."""
    return OURS_IN_A1111.get(scheduler, scheduler)


def a1111_name_of_class(class_name: str) -> str:
    """A1111's name of the sampler a diffusers scheduler class is with its own config (the
    table's entry of that class without options: "DDIMScheduler" -> "DDIM"), else the class name."""
    return next((name for name, s in A1111_SAMPLERS.items() if s.class_name == class_name and not s.options),
                class_name)


SCHEDULER_NAMES: tuple[str, ...] = (*SCHEDULERS, *A1111_SAMPLERS)
"""Every name ``--scheduler`` accepts: ours (``config.SCHEDULERS``), then A1111's."""
