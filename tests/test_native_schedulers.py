"""The native DDIM and Euler schedules equal diffusers' bit for bit, for every config
option they support (spacing, offset, final alpha, final sigma, beta schedules,
prediction types), and every other config falls back to diffusers."""

from __future__ import annotations

import dataclasses
import itertools

import diffusers
import pytest
import torch

from answer_trt.native_schedulers import NativeSchedule
from answer_trt.schedulers import LinearStepRule, make_diffusers_scheduler, make_scheduler, make_step_rule

BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
STEPS = (1, 2, 7, 30, 50, 999)


def configs(class_name: str):
    options = itertools.product(("leading", "trailing", "linspace"), (0, 1), ("linear", "scaled_linear"),
                                ("epsilon", "v_prediction", "sample"))
    for spacing, offset, betas, prediction in options:
        config = {**BASE, "_class_name": class_name, "timestep_spacing": spacing, "steps_offset": offset,
                  "beta_schedule": betas, "prediction_type": prediction}
        if class_name == "DDIMScheduler":
            for to_one in (True, False):
                yield {**config, "clip_sample": False, "set_alpha_to_one": to_one}
        else:
            for final in ("zero", "sigma_min"):
                yield {**config, "final_sigmas_type": final}


def assert_same(native, reference) -> None:
    assert native.timesteps.dtype == reference.timesteps.dtype
    assert torch.equal(native.timesteps, reference.timesteps)
    assert torch.equal(native.alphas_cumprod, reference.alphas_cumprod)
    assert float(native.init_noise_sigma) == float(reference.init_noise_sigma)
    if hasattr(reference, "final_alpha_cumprod"):
        assert torch.equal(native.final_alpha_cumprod, reference.final_alpha_cumprod)
    if isinstance(reference, diffusers.EulerDiscreteScheduler):
        assert torch.equal(native.sigmas, reference.sigmas)


@pytest.mark.parametrize("class_name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_native_schedules_equal_diffusers(class_name):
    for config in configs(class_name):
        native, reference = make_scheduler(config), make_diffusers_scheduler(config)
        assert isinstance(native, NativeSchedule) and type(native).__name__ == type(reference).__name__
        for steps in STEPS:
            native.set_timesteps(steps)
            reference.set_timesteps(steps)
            assert_same(native, reference)
            if int(reference.timesteps.max()) < 1000:  # else make_step_rule refuses both alike
                fast, slow = make_step_rule(native, steps), make_step_rule(reference, steps)
                assert isinstance(fast, LinearStepRule) and isinstance(slow, LinearStepRule)
                assert torch.equal(fast.timesteps, slow.timesteps)
                assert dataclasses.replace(fast, timesteps=slow.timesteps) == slow, (config, steps)


def test_scheduler_by_name_on_another_class_config_and_defaults():
    """``--scheduler ddim|euler`` over a config of another class, and configs that leave
    keys out (diffusers' defaults fill them in)."""
    pndm = {**BASE, "_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "steps_offset": 1,
            "skip_prk_steps": True}
    for config, name in (({**pndm, "clip_sample": False}, "ddim"), (pndm, "euler"),
                         ({"_class_name": "EulerDiscreteScheduler"}, None),
                         ({"clip_sample": False}, None), ({"clip_sample": False, "beta_start": 0.001}, "ddim")):
        native, reference = make_scheduler(config, name), make_diffusers_scheduler(config, name)
        assert isinstance(native, NativeSchedule), (config, name)
        for steps in (10, 30):
            native.set_timesteps(steps)
            reference.set_timesteps(steps)
            assert_same(native, reference)
    assert not isinstance(make_scheduler(pndm), NativeSchedule)  # PNDM runs on diffusers
    assert not isinstance(make_scheduler(pndm, "ddim"), NativeSchedule)  # DDIM's default clip_sample=True


@pytest.mark.parametrize("change", [
    {"clip_sample": True}, {"thresholding": True}, {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": [0.001] * 1000}, {"rescale_betas_zero_snr": True}, {"timestep_spacing": "odd"},
    {"num_train_timesteps": 1000.0}, {"steps_offset": True}, {"beta_start": "0.001"},
])
def test_unsupported_ddim_configs_fall_back_to_diffusers(change):
    config = {**BASE, "_class_name": "DDIMScheduler", "clip_sample": False, **change}
    try:
        scheduler = make_scheduler(config)
    except Exception:  # noqa: BLE001 - diffusers refuses it itself; what matters is that we did not
        return
    assert not isinstance(scheduler, NativeSchedule)


@pytest.mark.parametrize("change", [
    {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"interpolation_type": "log_linear"},
    {"final_sigmas_type": "other"}, {"rescale_betas_zero_snr": True},
])
def test_unsupported_euler_configs_fall_back_to_diffusers(change):
    config = {**BASE, "_class_name": "EulerDiscreteScheduler", **change}
    try:
        scheduler = make_scheduler(config)
    except Exception:  # noqa: BLE001 - see above
        return
    assert not isinstance(scheduler, NativeSchedule)


def test_exact_mode_runs_diffusers_step_on_a_native_schedule():
    config = {**BASE, "_class_name": "DDIMScheduler", "clip_sample": False, "steps_offset": 1}
    rule = make_step_rule(make_scheduler(config), 10, exact_diffusers=True)
    assert type(rule).__name__ == "DiffusersStepRule"
    assert isinstance(rule.scheduler, diffusers.DDIMScheduler)  # type: ignore[attr-defined]
