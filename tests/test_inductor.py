"""`--backend inductor`: AOTInductor packages built, checked, loaded and run on the CPU
through the real build and loading path, against ONNX Runtime's engines."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from tests.cli_run import generation_pixels as _pixels

PROMPT = "a red circle and a blue square"
# AOTInductor compiles C++: a machine without a compiler gets the one-line refusal instead
# (test_cuda_packages_on_a_machine_without_a_gpu_are_refused_in_one_line checks the GPU one).
pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
                                reason="AOTInductor needs a C++ compiler (apt-get install g++)")


@pytest.fixture(scope="module")
def inductor_engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``answer-trt build --model tiny --backend inductor --check`` (the CLI), and its seconds."""
    from answer_trt.cli import main

    out = tmp_path_factory.mktemp("inductor") / "tiny-inductor"
    started = time.perf_counter()
    assert main(["build", "--model", "tiny", "--out", str(out), "--backend", "inductor", "--check"]) == 0
    return out, time.perf_counter() - started


def test_the_build_writes_checksummed_packages_and_records_torch_and_device(inductor_engines):
    from answer_trt.manifest import read_manifest

    folder, _ = inductor_engines
    manifest = read_manifest(folder)
    assert manifest.backend == "inductor" and manifest.device == "cpu" and manifest.precision == "fp32"
    assert {e.file for e in manifest.components.values()} == {"text_encoder.pt2", "unet.pt2", "vae_decoder.pt2",
                                                               "vae_encoder.pt2"}
    assert all(e.file in manifest.files for e in manifest.components.values())
    assert manifest.versions["torch"] == torch.__version__
    assert manifest.accuracy is not None  # --check compared each package with torch
    assert all(r.max_abs_error < 1e-4 for r in manifest.accuracy.components.values())
    assert "--backend inductor" in manifest.build_command(folder)


def test_images_are_within_2_levels_of_onnxruntime(inductor_engines):
    import answer_trt
    from answer_trt.loaders import from_engines

    pipe = from_engines(inductor_engines[0])
    reference = answer_trt.load("tiny")
    for method in ("answer", "cfg", "dns"):
        got = pipe.generate(PROMPT, method=method, steps=12, seed=3, batch=2)
        ref = reference.generate(PROMPT, method=method, steps=12, seed=3, batch=2)
        assert np.abs(_pixels(got) - _pixels(ref)).max() <= 2, method
        assert got.params["backend"] == "inductor"


def test_the_one_row_call_of_guidance_off_runs_on_the_dynamic_batch(inductor_engines):
    """torch.export's 0/1 rule: traced at 2 rows, the packages must still take 1 (and the max)."""
    from answer_trt.loaders import from_engines

    pipe = from_engines(inductor_engines[0])
    rows = []
    run = pipe.engines["unet"].run
    pipe.engines["unet"].run = lambda feeds: rows.append(feeds["sample"].shape[0]) or run(feeds)  # type: ignore
    pipe.generate(PROMPT, guidance_scale=1.0, steps=3, seed=0)
    pipe.generate(PROMPT, steps=3, seed=0, batch=4, guidance_min_sigma=0.0)  # 3 rows x 4 at the chain's steps
    assert 1 in rows and 12 in rows


def test_the_text_axis_takes_one_to_three_chunks(inductor_engines):
    """A1111's long prompts: traced at two chunks, the UNet package takes one and three (the
    built --max-prompt-chunks) and draws onnxruntime's image."""
    import answer_trt
    from answer_trt.loaders import from_engines

    pipe = from_engines(inductor_engines[0])
    reference = answer_trt.load("tiny")
    three = " BREAK ".join(["a red circle", "a blue square", "a green triangle"])
    lengths = []
    run = pipe.engines["unet"].run
    pipe.engines["unet"].run = lambda feeds: lengths.append(feeds["encoder_hidden_states"].shape[1]) or run(feeds)  # type: ignore
    for prompt in (three, "a red circle"):
        got = pipe.generate(prompt, prompt_syntax="a1111", steps=4, seed=1)
        ref = reference.generate(prompt, prompt_syntax="a1111", steps=4, seed=1)
        assert np.abs(_pixels(got) - _pixels(ref)).max() <= 2, prompt
    length = pipe.dims.text_max_length
    assert set(lengths) == {3 * length, length}


def test_a_second_load_does_not_compile(inductor_engines):
    from answer_trt.loaders import from_engines

    folder, build_s = inductor_engines
    started = time.perf_counter()
    pipe = from_engines(folder)
    pipe.generate(PROMPT, steps=2, seed=0)  # the first call too: nothing is compiled lazily
    assert time.perf_counter() - started < 0.1 * build_s


def test_shapes_outside_the_profile_are_refused_before_running(inductor_engines):
    from answer_trt.export.sample_inputs import sample_inputs
    from answer_trt.loaders import from_engines

    pipe = from_engines(inductor_engines[0])
    unet = pipe.engines["unet"]
    feeds = sample_inputs(unet.spec, pipe.dims.bind(13, 32, 32))
    with pytest.raises(UserInputError, match=r"batch=13 is outside the built profile \[1, 12\].*--max-batch"):
        unet.run(feeds)


def _copy_with_manifest(folder: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "manifest.json").read_text())
    change(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_packages_of_another_torch_are_refused_with_the_rebuild_command(inductor_engines, tmp_path):
    from answer_trt.loaders import from_engines

    copy = _copy_with_manifest(inductor_engines[0], tmp_path, lambda d: d["versions"].update(torch="2.9.1"))
    with pytest.raises(UserInputError, match=r"compiled by torch 2\.9\.1.*answer-trt build .*--backend inductor"):
        from_engines(copy)


def test_a_manifest_of_inductor_packages_must_say_their_device(inductor_engines, tmp_path):
    from answer_trt.loaders import from_engines

    copy = _copy_with_manifest(inductor_engines[0], tmp_path, lambda d: d.pop("device"))
    with pytest.raises(UserInputError, match="lacks device"):
        from_engines(copy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_cuda_packages_on_a_machine_without_a_gpu_are_refused_in_one_line():
    from answer_trt.backends.inductor import check_packages_compatible

    with pytest.raises(UserInputError, match="compiled for a CUDA GPU, and torch sees none.*--device cpu"):
        check_packages_compatible(torch.__version__, "cuda", "9.0", "answer-trt build --backend inductor "
                                  "--device cuda --out x")
    from answer_trt.cli import main

    assert main(["build", "--model", "tiny", "--out", "unused", "--backend", "inductor", "--device", "cuda"]) == 2


def test_build_requests_for_devices():
    assert BuildConfig(backend="inductor", device="cuda").precision == "fp16"
    assert BuildConfig(backend="inductor").precision == "fp32"
    assert "--device cuda" in BuildConfig(backend="inductor", device="cuda").command()
    assert "--device" not in BuildConfig(backend="inductor").command()
    with pytest.raises(UserInputError, match="--device cuda chooses what --backend inductor compiles for"):
        BuildConfig(backend="onnxruntime", device="cuda")
    assert BuildConfig(backend="inductor", precision="bf16").precision == "bf16"


def test_dynamic_shapes_follow_the_profile():
    """batch over its range (one Dim shared by every input), a spatial side in steps of the
    UNet's up factor where the build spans sizes, and fixed where it does not."""
    from answer_trt.export.inductor_build import dynamic_shapes, trace_binding
    from answer_trt.iospec import UNET, ModelDims, SizeRange, component_profiles, component_specs

    dims = ModelDims(77, 768, 4, 8, 64, unet_overall_up_factor=8)
    spec = component_specs(dims)[UNET]
    fixed = component_profiles(dims, 2, SizeRange.fixed(512), SizeRange.fixed(512))[UNET]
    shapes = dynamic_shapes(spec, fixed, dims)
    assert set(shapes["sample"]) == {0} and shapes["sample"][0] is shapes["timestep"][0]
    assert shapes["encoder_hidden_states"][0] is shapes["sample"][0]
    assert trace_binding(spec, fixed)["batch"] == 2
    ranged = component_profiles(dims, 2, SizeRange(512, 512, 1024), SizeRange.fixed(768))[UNET]
    shapes = dynamic_shapes(spec, ranged, dims)
    assert set(shapes["sample"]) == {0, 2}
    height = shapes["sample"][2]
    assert "8*latent_height_units" in str(height).replace(" ", "")
