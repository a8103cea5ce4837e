"""The scheduler diffusers would pick: where model_index.json and
scheduler/scheduler_config.json name different classes, diffusers' pipeline loading makes
model_index.json's class with scheduler_config.json's options, and so does answer-trt
(``models.info.scheduler_config``): for the torch components, for the build's copy in the
engines folder, and so for every generation. Checked against diffusers' own
``DiffusionPipeline.from_pretrained(folder).scheduler`` on tiny folders saved in code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import answer_trt
from answer_trt.build_config import BuildConfig
from answer_trt.export.build import build
from answer_trt.manifest import SCHEDULER_CONFIG
from answer_trt.models.info import scheduler_config
from answer_trt.models.source import load_model, resolve_model
from answer_trt.schedulers import make_diffusers_scheduler, make_scheduler, scheduler_class_name

PAIRS = [  # (model_index.json's class, scheduler_config.json's _class_name)
    ("EulerDiscreteScheduler", "DDIMScheduler"),
    ("DDIMScheduler", "EulerDiscreteScheduler"),
    ("DPMSolverMultistepScheduler", "DDIMScheduler"),
    ("DDIMScheduler", "DDIMScheduler"),
]


def disagreeing_folder(tmp_path: Path, index_class: str, config_class: str) -> Path:
    """tiny-random (saved by diffusers' save_pretrained) with the two files naming these classes."""
    folder = tmp_path / f"{index_class}-{config_class}"
    shutil.copytree(resolve_model("tiny-random").path, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", index_class]
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / SCHEDULER_CONFIG).read_text())
    config["_class_name"] = config_class
    (folder / SCHEDULER_CONFIG).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("index_class, config_class", PAIRS)
def test_the_class_is_the_one_diffusers_pipeline_loading_picks(tmp_path, index_class, config_class):
    from diffusers import DiffusionPipeline

    folder = disagreeing_folder(tmp_path, index_class, config_class)
    theirs = DiffusionPipeline.from_pretrained(folder).scheduler
    assert type(theirs).__name__ == index_class
    config = scheduler_config(folder)
    assert scheduler_class_name(config) == index_class
    assert config["num_train_timesteps"] == theirs.config.num_train_timesteps  # the options are the file's
    assert type(make_diffusers_scheduler(config)).__name__ == index_class
    assert scheduler_class_name(load_model(folder).scheduler_config) == index_class


def test_without_model_index_the_config_names_the_class(tmp_path):
    folder = disagreeing_folder(tmp_path, "EulerDiscreteScheduler", "DDIMScheduler")
    (folder / "model_index.json").unlink()
    assert scheduler_class_name(scheduler_config(folder)) == "DDIMScheduler"


def test_engines_folder_runs_the_scheduler_diffusers_runs(tmp_path):
    """model_index.json: DPM-Solver++; scheduler_config.json: DDIM. The engines folder keeps
    DPM-Solver++, and CFG draws diffusers' pipeline's image (DDIM would draw another; DDIM
    and Euler are the same first-order rule, so Euler could not tell them apart)."""
    from diffusers import DiffusionPipeline

    folder = disagreeing_folder(tmp_path, "DPMSolverMultistepScheduler", "DDIMScheduler")
    engines = tmp_path / "engines"
    build(BuildConfig(model=str(folder), out=engines, max_batch=1), log=lambda _m: None)
    copied = json.loads((engines / SCHEDULER_CONFIG).read_text())
    assert copied["_class_name"] == "DPMSolverMultistepScheduler"
    pipe = answer_trt.load(engines)
    assert type(make_scheduler(pipe.scheduler_config)).__name__ == "DPMSolverMultistepScheduler"
    reference = DiffusionPipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a cat", num_inference_steps=5, guidance_scale=6.0, output_type="np",
                         generator=torch.Generator().manual_seed(4)).images
    expected = (expected * 255).round().astype(np.int16)
    got = np.stack([np.asarray(im, dtype=np.int16)
                    for im in pipe.generate("a cat", method="cfg", steps=5, guidance_scale=6.0, seed=4).images])
    ddim = np.stack([np.asarray(im, dtype=np.int16)
                     for im in pipe.generate("a cat", method="cfg", steps=5, guidance_scale=6.0, seed=4,
                                             scheduler="ddim").images])
    assert expected.std() > 5
    assert np.abs(got - expected).max() <= 2
    assert np.abs(ddim - expected).max() > 2  # the check can tell the two schedulers apart
