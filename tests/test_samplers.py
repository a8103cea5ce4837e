"""Samplers by name (issue 31, item 4): stochastic samplers are seeded per image, as in
diffusers; zero-terminal-SNR DDIM schedules; A1111's sampler names; scheduler configs
checked before any build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.cli import main
from answer_trt.config import GuidanceConfig
from answer_trt.export.build import build
from answer_trt.manifest import SCHEDULER_CONFIG
from answer_trt.models.source import resolve_model
from answer_trt.schedulers import StepNoise, chain_seed, draw_noise, noise_generators

STEPS = 6


def levels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def diffusers_levels(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.int16)


def folder_with_scheduler(tmp_path: Path, model: str, **config) -> Path:
    """``model``'s folder (saved by diffusers) with its scheduler config changed by ``config``
    (``_class_name`` also goes into model_index.json, which diffusers' loading reads)."""
    folder = tmp_path / f"{model}-model"
    shutil.copytree(resolve_model(model).path, folder)
    path = folder / SCHEDULER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if "_class_name" in config:
        index = json.loads((folder / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", config["_class_name"]]
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def engines_for(folder: Path, out: Path, max_batch: int = 2) -> answer_trt.Pipeline:
    build(BuildConfig(model=str(folder), out=out, max_batch=max_batch), log=lambda _m: None)
    return answer_trt.load(out)


def reference_pipeline(folder: Path):
    from diffusers import DiffusionPipeline

    reference = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    return reference


# --- 1. stochastic samplers are seeded ---------------------------------------------------------


@pytest.fixture(scope="module")
def ancestral(tmp_path_factory):
    """tiny-random whose own scheduler is EulerAncestralDiscreteScheduler: engines and diffusers."""
    root = tmp_path_factory.mktemp("ancestral")
    folder = folder_with_scheduler(root, "tiny-random", _class_name="EulerAncestralDiscreteScheduler")
    return folder, root / "engines", engines_for(folder, root / "engines"), reference_pipeline(folder)


def test_an_ancestral_model_scheduler_follows_the_seed_and_draws_diffusers_image(ancestral):
    _folder, _engines, pipe, reference = ancestral
    assert type(reference.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    kwargs = dict(method="cfg", steps=STEPS, guidance_scale=6.0)
    first = levels(pipe.generate("a cat", seed=3, **kwargs).images)
    again = levels(pipe.generate("a cat", seed=3, **kwargs).images)
    other = levels(pipe.generate("a cat", seed=4, **kwargs).images)
    assert np.abs(first - again).max() == 0
    assert np.abs(first - other).max() > 10
    expected = diffusers_levels(reference("a cat", num_inference_steps=STEPS, guidance_scale=6.0, output_type="np",
                                          generator=torch.Generator("cpu").manual_seed(3)).images)
    assert expected.std() > 5
    assert np.abs(first - expected).max() <= 2


def test_per_image_seeds_draw_each_image_own_step_noise(ancestral):
    """With one seed per image, image i's step noise is its own seed's (diffusers' list of
    generators): the second image of seeds (3, 5) is seed 5's image alone."""
    _folder, _engines, pipe, reference = ancestral
    kwargs = dict(method="cfg", steps=STEPS, guidance_scale=6.0)
    both = levels(pipe.generate("a cat", seeds=[3, 5], **kwargs).images)
    alone = levels(pipe.generate("a cat", seed=5, **kwargs).images)
    assert np.abs(both[1] - alone[0]).max() == 0
    expected = diffusers_levels(reference(
        "a cat", num_inference_steps=STEPS, guidance_scale=6.0, output_type="np", num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 5)]).images)
    assert np.abs(both - expected).max() <= 2


def test_an_ancestral_image_replays_from_its_png(ancestral, tmp_path):
    _folder, engines, _pipe, _reference = ancestral
    png, again = tmp_path / "drawn.png", tmp_path / "again.png"
    assert main(["generate", "a cat", "--engines", str(engines), "--steps", "4", "--seed", "11",
                 "-o", str(png)]) == 0
    assert main(["generate", "--from-png", str(png), "--engines", str(engines), "-o", str(again)]) == 0
    with Image.open(png) as first, Image.open(again) as second:
        assert json.loads(first.info["answer-trt"])["scheduler_class"] == "EulerAncestralDiscreteScheduler"
        assert np.abs(levels([first]) - levels([second])).max() == 0


def test_answer_with_an_ancestral_sampler_is_seeded(ancestral):
    _folder, _engines, pipe, _reference = ancestral
    for mode in ("parallel", "inner"):
        kwargs = dict(method="answer", mode=mode, dns_steps=3, chain_min_sigma=0.0, steps=STEPS, guidance_scale=6.0)
        first = levels(pipe.generate("a cat", seed=2, **kwargs).images)
        again = levels(pipe.generate("a cat", seed=2, **kwargs).images)
        assert np.abs(first - again).max() == 0, mode


def test_the_negative_chain_draws_its_own_stream():
    """ANSWER's negative chain draws from generators seeded with ``chain_seed``, made once
    per run; drawing from them leaves the main chain's generators where they were."""
    noise = StepNoise.for_request(7, None, (1, 4, 8, 8))
    fresh = noise_generators(7)
    draw_noise(fresh, (1, 4, 8, 8))  # the initial noise
    chain = noise.chain()
    assert chain.seeds == (chain_seed(7),) and chain_seed(7) not in (7, 8)
    assert chain.chain() is chain and noise.chain() is chain
    torch.randn(100, generator=chain.generators[0])
    assert torch.equal(torch.randn(5, generator=noise.generators[0]), torch.randn(5, generator=fresh[0]))


def test_answer_consumes_as_much_main_noise_as_cfg():
    """With an ancestral scheduler, a parallel-mode ANSWER run whose chain steps between
    anchors leaves the main generator where a CFG run leaves it: z never draws from it."""
    from diffusers import EulerAncestralDiscreteScheduler

    from answer_trt.conditioning import TextCondition
    from answer_trt.sampler import Conditioning, sample

    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, 6, 6, generator=gen)
    cond = Conditioning(TextCondition(torch.randn(1, 5, 8, generator=gen)),
                        TextCondition(torch.randn(1, 5, 8, generator=gen)))

    def denoiser(x, t, c):
        return 0.1 * x + c.hidden.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    config = dict(json.loads((resolve_model("tiny-random").path / SCHEDULER_CONFIG).read_text()))
    states = {}
    for method in ("cfg", "answer"):
        scheduler = EulerAncestralDiscreteScheduler.from_config(config)
        step_noise = StepNoise.for_request(9, None, noise.shape)
        guidance = GuidanceConfig(method=method, guidance_scale=5.0, dns_steps=3, chain_min_sigma=0.0)
        sample(denoiser, noise, cond, scheduler, STEPS, guidance, step_noise=step_noise)
        states[method] = step_noise.generators[0].get_state()
        if method == "answer":
            assert step_noise._chain is not None  # the chain drew from its own stream
    assert torch.equal(states["cfg"], states["answer"])


def test_cuda_graph_refuses_a_stochastic_sampler_in_one_line(ancestral):
    from answer_trt.graphed import refusal
    from answer_trt.schema import make_request

    _folder, _engines, pipe, _reference = ancestral
    plan = pipe.plan(make_request("a cat", {"method": "cfg", "steps": 4}))
    reason = refusal(plan.config.guidance, plan.rule, plan.scheduler)
    assert reason is not None and "\n" not in reason
    assert "stochastic" in reason and "--scheduler ddim or euler" in reason


# --- 2. zero-terminal-SNR schedules; scheduler configs checked before the build -----------------

ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@pytest.fixture(scope="module")
def zero_snr(tmp_path_factory):
    """tiny-sd21 (v-prediction) with a zero-terminal-SNR DDIM schedule, trailing spacing."""
    root = tmp_path_factory.mktemp("zero-snr")
    folder = folder_with_scheduler(root, "tiny-sd21", **ZERO_SNR)
    return engines_for(folder, root / "engines"), reference_pipeline(folder)


def test_a_zero_snr_v_prediction_ddim_draws_diffusers_image(zero_snr):
    """It ended in a ZeroDivisionError (alphabar_t = 0 at the first, trailing timestep)."""
    pipe, reference = zero_snr
    assert reference.scheduler.alphas_cumprod[-1] == 0  # the schedule is zero-terminal-SNR
    got = levels(pipe.generate("a cat", method="cfg", steps=STEPS, guidance_scale=6.0, seed=7).images)
    expected = diffusers_levels(reference("a cat", num_inference_steps=STEPS, guidance_scale=6.0, output_type="np",
                                          generator=torch.Generator().manual_seed(7)).images)
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2
    answer = levels(pipe.generate("a cat", steps=STEPS, guidance_scale=6.0, seed=7).images)  # the default method
    assert np.isfinite(answer).all() and np.abs(answer - got).max() > 0


def run_cli(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's own refusals
        return int(exit_.code or 0)


def refused_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("answer-trt: error: "), err
    return err


def test_epsilon_prediction_on_a_zero_snr_schedule_is_refused_before_the_build(tmp_path, capsys):
    folder = folder_with_scheduler(tmp_path, "tiny-random", **ZERO_SNR)
    out = tmp_path / "engines"
    err = refused_line(capsys, run_cli("build", "--model", folder, "--out", out))
    assert "rescale_betas_zero_snr" in err and "epsilon" in err and "v_prediction" in err
    assert not out.exists()


@pytest.mark.parametrize("key, value, wanted", [
    ("num_train_timesteps", 0, "an integer in 1 .."),
    ("num_train_timesteps", 1e9, "an integer in 1 .."),
    ("_class_name", "EulerAncestorScheduler", "is not a diffusers"),
    ("_class_name", "UNet2DConditionModel", "is not a diffusers"),
    ("beta_start", -0.001, "a number in [0, 1)"),
    ("timestep_spacing", "evenly", "one of leading, trailing, linspace"),
    ("prediction_type", "x0", "one of epsilon, v_prediction, sample"),
    ("beta_schedule", "cosine", "one of linear"),
    ("steps_offset", -1, "an integer in 0 .."),
    ("clip_sample", "no", "true or false"),
    ("trained_betas", [0.5, 0.5], "a list of 1000 numbers"),
])
def test_a_broken_scheduler_config_is_refused_before_the_build(tmp_path, capsys, key, value, wanted):
    folder = folder_with_scheduler(tmp_path, "tiny-random", **{key: value})
    out = tmp_path / "engines"
    err = refused_line(capsys, run_cli("build", "--model", folder, "--out", out))
    assert key in err and wanted in err and "scheduler_config.json" in err
    assert not out.exists()


def test_engines_refuse_an_epsilon_zero_snr_override_in_one_line(engines_dir):
    """The same check where the config reaches generation (a checksummed copy, or the API)."""
    from answer_trt.errors import UserInputError

    pipe = answer_trt.load(engines_dir)
    pipe.scheduler_config = {**pipe.scheduler_config, **ZERO_SNR}
    with pytest.raises(UserInputError, match="rescale_betas_zero_snr .* epsilon"):
        pipe.generate("a cat", steps=2)


# --- 3. A1111's sampler names ------------------------------------------------------------------

A1111_NAMES = ("DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
               "Heun", "LMS", "UniPC", "DPM++ SDE Karras", "DPM++ SDE")


def test_the_listing_is_exactly_a1111_names():
    from answer_trt.samplers import SCHEDULER_NAMES, a1111_sampler_names

    assert a1111_sampler_names() == A1111_NAMES
    assert SCHEDULER_NAMES == ("ddim", "euler", "dpm++", *A1111_NAMES)


@pytest.mark.parametrize("name, class_name, options", [
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                            "use_karras_sigmas": True}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("UniPC", "UniPCMultistepScheduler", {}),
])
def test_a1111_names_map_to_diffusers_classes_and_options(name, class_name, options):
    from answer_trt.schedulers import make_diffusers_scheduler, make_scheduler

    config = json.loads((resolve_model("tiny").path / SCHEDULER_CONFIG).read_text())
    scheduler = make_diffusers_scheduler(config, name)
    assert type(scheduler).__name__ == class_name
    for key, value in options.items():
        assert scheduler.config[key] == value, key
    assert type(make_scheduler(config, name)).__name__ == class_name


def test_a1111_ddim_and_euler_run_natively():
    from answer_trt.native_schedulers import NativeSchedule
    from answer_trt.schedulers import make_scheduler

    config = json.loads((resolve_model("tiny").path / SCHEDULER_CONFIG).read_text())
    for name, class_name in (("DDIM", "DDIMScheduler"), ("Euler", "EulerDiscreteScheduler")):
        scheduler = make_scheduler(config, name)
        assert isinstance(scheduler, NativeSchedule) and type(scheduler).__name__ == class_name


def test_an_unknown_sampler_name_is_refused_in_one_line_listing_the_names(engines_dir):
    from answer_trt.errors import UserInputError

    pipe = answer_trt.load(engines_dir)
    with pytest.raises(UserInputError) as refused:
        pipe.generate("a cat", steps=2, scheduler="Euler b")
    message = str(refused.value)
    assert "\n" not in message and "'Euler b'" in message
    assert all(name in message for name in ("ddim", "Euler a", "DPM++ 2M SDE Karras", "UniPC"))


@pytest.mark.parametrize("name, module, class_name", [("DPM++ SDE Karras", "torchsde", "DPMSolverSDEScheduler"),
                                                       ("LMS", "scipy", "LMSDiscreteScheduler")])
def test_a_sampler_whose_package_is_missing_is_refused_in_one_line(engines_dir, name, module, class_name):
    import importlib.util

    from answer_trt.errors import UserInputError
    from answer_trt.schedulers import make_diffusers_scheduler

    if importlib.util.find_spec(module) is not None:
        config = json.loads((resolve_model("tiny").path / SCHEDULER_CONFIG).read_text())
        assert type(make_diffusers_scheduler(config, name)).__name__ == class_name
        return
    pipe = answer_trt.load(engines_dir)
    with pytest.raises(UserInputError, match=f"needs the {module} package: pip install {module}"):
        pipe.generate("a cat", steps=2, scheduler=name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    folder = resolve_model("tiny").path
    return engines_for(folder, root / "engines", max_batch=1), reference_pipeline(folder)


def test_euler_a_by_name_is_seeded_and_recorded(tiny):
    from answer_trt.schema import from_parameters

    pipe, _reference = tiny
    kwargs = dict(method="cfg", steps=STEPS, guidance_scale=6.0, scheduler="Euler a")
    first = pipe.generate("a red circle", seed=5, **kwargs)
    again = pipe.generate("a red circle", seed=5, **kwargs)
    assert np.abs(levels(first.images) - levels(again.images)).max() == 0
    euler = levels(pipe.generate("a red circle", seed=5, **{**kwargs, "scheduler": "Euler"}).images)
    assert np.abs(levels(first.images) - euler).max() > 2  # the name picked the ancestral sampler
    record = json.loads(first.images[0].info["answer-trt"])
    assert record["scheduler"] == "Euler a" and record["scheduler_class"] == "EulerAncestralDiscreteScheduler"
    replayed = pipe.run(from_parameters(record))
    assert np.abs(levels(replayed.images) - levels(first.images)).max() == 0


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "DPM++ 2M SDE Karras", "Euler a"])
def test_a1111_sampler_cfg_image_equals_diffusers(tiny, name, monkeypatch):
    from answer_trt.schedulers import make_diffusers_scheduler

    pipe, reference = tiny
    monkeypatch.setattr(reference, "scheduler", reference.scheduler)  # restored after the test
    reference.scheduler = make_diffusers_scheduler(reference.scheduler.config, name)
    reference.scheduler.register_to_config(prediction_type=pipe.prediction_type)
    expected = diffusers_levels(reference("a red circle", num_inference_steps=STEPS, guidance_scale=6.0,
                                          output_type="np", generator=torch.Generator("cpu").manual_seed(5)).images)
    got = levels(pipe.generate("a red circle", method="cfg", steps=STEPS, guidance_scale=6.0, seed=5,
                               scheduler=name).images)
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2


# --- DPM++ SDE: the Brownian tree is seeded with the image's seed -------------------------------


def test_dpmpp_sde_follows_the_seed_per_image_and_draws_diffusers_image(tiny, monkeypatch):
    """diffusers' DPMSolverSDEScheduler seeds its Brownian tree from ``noise_sampler_seed``
    (a fresh random seed where None: no image would repeat); ours is the image's seed, as
    A1111 seeds it. So the image is diffusers' with ``noise_sampler_seed`` = the seed."""
    pytest.importorskip("torchsde")
    from answer_trt.schedulers import make_diffusers_scheduler

    pipe, reference = tiny
    kwargs = dict(method="cfg", steps=STEPS, guidance_scale=6.0, scheduler="DPM++ SDE Karras")
    first = levels(pipe.generate("a red circle", seed=5, **kwargs).images)
    again = levels(pipe.generate("a red circle", seed=5, **kwargs).images)
    other = levels(pipe.generate("a red circle", seed=6, **kwargs).images)
    assert np.abs(first - again).max() == 0
    assert np.abs(first - other).max() > 10

    monkeypatch.setattr(reference, "scheduler", reference.scheduler)  # restored after the test
    reference.scheduler = make_diffusers_scheduler(reference.scheduler.config, "DPM++ SDE Karras")
    reference.scheduler.register_to_config(prediction_type=pipe.prediction_type, noise_sampler_seed=5)
    reference.scheduler.noise_sampler_seed = 5
    expected = diffusers_levels(reference("a red circle", num_inference_steps=STEPS, guidance_scale=6.0,
                                          output_type="np", generator=torch.Generator("cpu").manual_seed(5)).images)
    assert expected.std() > 5
    assert np.abs(first - expected).max() <= 2


def test_dpmpp_sde_per_image_seeds_grow_a_tree_each(ancestral):
    """With one seed per image each image's tree is its own seed's, as A1111's batches: the
    images of seeds (6, 5) are seed 6's and seed 5's images alone."""
    pytest.importorskip("torchsde")
    _folder, _engines, pipe, _reference = ancestral
    kwargs = dict(method="cfg", steps=STEPS, guidance_scale=6.0, scheduler="DPM++ SDE Karras")
    both = levels(pipe.generate("a cat", seeds=[6, 5], **kwargs).images)
    for i, seed in enumerate((6, 5)):
        alone = levels(pipe.generate("a cat", seed=seed, **kwargs).images)
        assert np.abs(both[i] - alone[0]).max() == 0, seed
    assert np.abs(both[0] - both[1]).max() > 10


def test_dpmpp_sde_answer_is_seeded_and_its_chain_has_its_own_tree(tiny):
    pytest.importorskip("torchsde")
    pipe, _reference = tiny
    kwargs = dict(method="answer", dns_steps=3, chain_min_sigma=0.0, steps=STEPS, guidance_scale=6.0,
                  scheduler="DPM++ SDE Karras")
    first = levels(pipe.generate("a red circle", seed=2, **kwargs).images)
    again = levels(pipe.generate("a red circle", seed=2, **kwargs).images)
    assert np.abs(first - again).max() == 0


def test_a_forked_sde_rule_reseeds_its_tree_with_the_chain_seed():
    pytest.importorskip("torchsde")
    from answer_trt.schedulers import DiffusersStepRule, make_diffusers_scheduler

    config = json.loads((resolve_model("tiny").path / SCHEDULER_CONFIG).read_text())
    scheduler = make_diffusers_scheduler(config, "DPM++ SDE Karras")
    scheduler.set_timesteps(STEPS)
    rule = DiffusersStepRule(scheduler).seeded(StepNoise.for_request(7, None, (1, 4, 8, 8)))
    assert scheduler.noise_sampler_seed == 7
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    rule.step(torch.zeros_like(x), 0, x)
    assert scheduler.noise_sampler is not None
    fork = rule.fork()
    forked = fork.scheduler  # type: ignore[attr-defined]
    assert forked.noise_sampler is None and forked.noise_sampler_seed == chain_seed(7)
