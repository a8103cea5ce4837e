"""The TensorRT path's pure logic (profiles, rebinding, plan compatibility, build keys),
and a strict type check of the TensorRT modules against tensorrt-stubs. TensorRT itself
cannot be installed on our machines; nothing here runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from answer_trt.backends.bindings import BindingState, check_plan_compatible
from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export.build import BuildPlan
from answer_trt.export.profiles import profile_shapes
from answer_trt.iospec import ModelDims, SizeRange, component_profiles, component_specs
from answer_trt.models.info import ModelInfo
from answer_trt.models.source import ModelSource

REPO = Path(__file__).resolve().parents[1]
DIMS = ModelDims(text_max_length=77, text_hidden_size=2048, latent_channels=4, vae_scale_factor=8,
                 default_latent_size=128, pooled_size=1280, time_ids_size=6)


def test_profile_shapes_follow_the_io_spec():
    profiles = component_profiles(DIMS, max_batch=2, height=SizeRange(768, 1024, 1024), width=1024)
    shapes = profile_shapes(component_specs(DIMS)["unet"], profiles["unet"])
    assert shapes["sample"] == ((1, 4, 96, 128), (6, 4, 128, 128), (6, 4, 128, 128))
    assert shapes["timestep"] == ((1,), (6,), (6,))
    # the text axis: one chunk at opt, three (--max-prompt-chunks 3, the default) at most
    assert shapes["encoder_hidden_states"] == ((1, 77, 2048), (6, 77, 2048), (6, 231, 2048))
    assert shapes["text_embeds"] == ((1, 1280), (6, 1280), (6, 1280))
    assert shapes["time_ids"] == ((1, 6), (6, 6), (6, 6))
    text = profile_shapes(component_specs(DIMS)["text_encoder"], profiles["text_encoder"])
    assert set(text) == {"input_ids", "input_ids_2", "clip_skip"} and text["input_ids"][2] == (4, 77)
    assert text["clip_skip"] == ((1,), (4,), (4,))


def test_binding_state_reports_only_changes():
    state = BindingState()
    assert state.shape_updates({"sample": (3, 4, 8, 8), "timestep": (3,)}) == {"sample": (3, 4, 8, 8),
                                                                              "timestep": (3,)}
    assert state.shape_updates({"sample": (3, 4, 8, 8), "timestep": (3,)}) == {}
    assert state.shape_updates({"sample": (2, 4, 8, 8), "timestep": (3,)}) == {"sample": (2, 4, 8, 8)}
    assert state.address_updates({"sample": 1000, "noise_pred": 2000}) == {"sample": 1000, "noise_pred": 2000}
    assert state.address_updates({"sample": 1000, "noise_pred": 3000}) == {"noise_pred": 3000}
    state.forget()
    assert state.address_updates({"sample": 1000}) == {"sample": 1000}


def test_plan_compatibility():
    check_plan_compatible("10.13.0.35", "9.0", "10.13.0.35", "9.0", "answer-trt build --force")
    with pytest.raises(UserInputError, match="TensorRT 10.9.*has 10.13.*answer-trt build --force"):
        check_plan_compatible("10.9.0", "9.0", "10.13.0.35", "9.0", "answer-trt build --force")
    with pytest.raises(UserInputError, match="compute capability 8.9.*this GPU is 9.0"):
        check_plan_compatible("10.13.0.35", "8.9", "10.13.0.35", "9.0", "answer-trt build --force")


def plan(**config) -> BuildPlan:
    info = ModelInfo(DIMS, "epsilon", True, True)
    return BuildPlan(BuildConfig(**config), ModelSource("m", Path("/m")), "0" * 64, info,
                     SizeRange.fixed(1024), SizeRange.fixed(1024))


def test_build_key_covers_backend_precision_and_shapes():
    base = plan(backend="onnxruntime")
    assert base.key == plan(backend="onnxruntime").key
    assert base.key != plan(backend="onnxruntime", precision="fp16").key
    assert base.key != plan(backend="onnxruntime", max_batch=2).key
    assert plan(backend="tensorrt").key != plan(backend="tensorrt", precision="bf16").key
    assert base.key == plan(backend="onnxruntime", force=True).key  # force rebuilds, it does not change the key


def test_precision_defaults_and_limits():
    assert BuildConfig(backend="onnxruntime").precision == "fp32"
    assert BuildConfig(backend="tensorrt").precision == "fp16"
    with pytest.raises(UserInputError, match="bf16 needs --backend tensorrt"):
        BuildConfig(backend="onnxruntime", precision="bf16")


TRT_MODULES = ["export/tensorrt_build.py", "export/profiles.py", "answer_trt/backends/tensorrt.py",
               "answer_trt/backends/bindings.py", "benchmarks/gpu_check.py"]


def run_strict_mypy(tmp_path: Path, files: list[str]) -> subprocess.CompletedProcess[str]:
    sys.path.insert(0, str(REPO / "tests"))
    from tensorrt_typings import write_typings

    typings = write_typings(tmp_path / "typings")
    config = tmp_path / "mypy.ini"
    config.write_text(textwrap.dedent(f"""\
        [mypy]
        strict = True
        mypy_path = {typings}
        follow_imports = silent
        cache_dir = {tmp_path / "cache"}
        [mypy-tensorrt.*,tensorrt_bindings.*,tensorrt,tensorrt_bindings]
        ignore_errors = True
        [mypy-torch.*,diffusers.*,transformers.*,onnx.*,onnxruntime.*,cuda.*]
        ignore_missing_imports = True
        [mypy-gpu_check]
        # torch and diffusers are partly untyped; the TensorRT calls stay fully checked.
        disallow_untyped_calls = False
        warn_return_any = False
        """))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *files],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_tensorrt_modules_type_check_strictly_and_the_check_bites(tmp_path):
    """One mypy run (the stubs are large): our TensorRT modules are clean, and a probe
    with a misspelled method, a misspelled flag and a wrong argument count is not. The
    probe is written under tmp_path, never into the source tree."""
    probe = tmp_path / "probe" / "_typecheck_probe.py"
    probe.parent.mkdir()
    probe.write_text(textwrap.dedent("""\
        import tensorrt as trt


        def probe(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
            builder.build_serialized_netwrk(network, config)
            config.set_flag(trt.BuilderFlag.FP17)
            builder.create_network(0, 1)
        """))
    result = run_strict_mypy(tmp_path, [*TRT_MODULES, str(probe)])
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line for line in lines if "_typecheck_probe.py:" not in line] == [], result.stdout
    assert any('has no attribute "build_serialized_netwrk"' in line for line in lines), result.stdout
    assert any('has no attribute "FP17"' in line for line in lines), result.stdout
    assert any("Too many arguments" in line for line in lines), result.stdout
