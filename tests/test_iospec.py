"""The IO spec is the one source of names and shapes; everything else derives from it."""

from __future__ import annotations

import pytest

from answer_trt.errors import UserInputError
from answer_trt.iospec import ComponentSpec, ModelDims, check_shapes, component_profiles, component_specs

DIMS = ModelDims(text_max_length=77, text_hidden_size=768, latent_channels=4, vae_scale_factor=8,
                 default_latent_size=64)


def test_dynamic_axes_are_every_symbolic_dim():
    unet = component_specs(DIMS)["unet"]
    assert unet.dynamic_axes() == {
        "sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "text_length"},
        "noise_pred": {0: "batch", 2: "latent_height", 3: "latent_width"},
    }


def test_bind_and_profiles_follow_the_build_shape():
    specs = component_specs(DIMS)
    dims = DIMS.bind(3, 512, 768)
    assert specs["unet"].inputs[0].bind(dims) == (3, 4, 64, 96)
    assert specs["vae_decoder"].outputs[0].bind(dims) == (3, 3, 512, 768)
    profiles = component_profiles(DIMS, max_batch=2, height=512, width=768)
    assert profiles["unet"]["batch"] == (1, 6, 6)
    assert profiles["unet"]["latent_width"] == (96, 96, 96)


def test_spec_survives_json_and_dtype_change():
    spec = component_specs(DIMS)["unet"]
    assert ComponentSpec.from_json(spec.to_json()) == spec
    half = spec.with_dtype("float16")
    assert [t.dtype for t in half.inputs] == ["float16", "float16", "float16"]
    assert component_specs(DIMS)["text_encoder"].with_dtype("float16").inputs[0].dtype == "int64"


def test_check_shapes_names_profile_and_build_flag():
    spec = component_specs(DIMS)["unet"]
    profile = component_profiles(DIMS, max_batch=1, height=512, width=512)["unet"]
    ok = {"sample": (3, 4, 64, 64), "timestep": (3,), "encoder_hidden_states": (3, 77, 768)}
    check_shapes(spec, profile, ok)
    with pytest.raises(UserInputError, match=r"batch=4 is outside the built profile \[1, 3\].*--max-batch"):
        check_shapes(spec, profile, {**ok, "sample": (4, 4, 64, 64), "timestep": (4,),
                                     "encoder_hidden_states": (4, 77, 768)})
    with pytest.raises(UserInputError, match="--height"):
        check_shapes(spec, profile, {**ok, "sample": (3, 4, 96, 64)})
    rebuild = "answer-trt build --model m --out e --backend tensorrt --precision fp16 --max-batch 1 --force"
    with pytest.raises(UserInputError, match=f"rebuild with `{rebuild}`, its --height widened"):
        check_shapes(spec, profile, {**ok, "sample": (3, 4, 96, 64)}, rebuild)
    with pytest.raises(UserInputError, match="batch is 3 in one input and 2"):
        check_shapes(spec, profile, {**ok, "timestep": (2,)})
    with pytest.raises(UserInputError, match="needs 768"):
        check_shapes(spec, profile, {**ok, "encoder_hidden_states": (3, 77, 1024)})


def test_the_unets_text_axis_takes_whole_chunks_up_to_the_built_maximum():
    """A1111's long prompts: the UNet's text axis is text_length (77 per chunk), one chunk at opt,
    --max-prompt-chunks at most; a longer condition is refused naming that flag."""
    profile = component_profiles(DIMS, max_batch=1, height=512, width=512, max_prompt_chunks=3)
    assert profile["unet"]["text_length"] == (77, 77, 231)
    assert "text_length" not in profile["text_encoder"]  # the text encoder still sees one chunk per row
    assert DIMS.bind(1, 512, 512, chunks=2)["text_length"] == 154
    spec = component_specs(DIMS)["unet"]
    ok = {"sample": (3, 4, 64, 64), "timestep": (3,), "encoder_hidden_states": (3, 231, 768)}
    check_shapes(spec, profile["unet"], ok)
    with pytest.raises(UserInputError, match=r"text_length=308 is outside the built profile \[77, 231\].*"
                                             "--max-prompt-chunks"):
        check_shapes(spec, profile["unet"], {**ok, "encoder_hidden_states": (3, 308, 768)})


def test_an_engines_shape_check_runs_once_per_new_shape_set_and_refuses_as_check_shapes(monkeypatch):
    import torch

    from answer_trt import iospec

    spec = component_specs(DIMS)["unet"]
    profile = component_profiles(DIMS, max_batch=1, height=512, width=512)["unet"]
    ok = {"sample": (3, 4, 64, 64), "timestep": (3,), "encoder_hidden_states": (3, 77, 768)}
    calls = []
    monkeypatch.setattr(iospec, "check_shapes", lambda *args: calls.append(args) or check_shapes(*args))
    check = iospec.ShapeCheck(spec, profile, "answer-trt build --model m")
    feeds = {name: torch.zeros(shape) for name, shape in ok.items()}
    assert check(feeds) == tuple(ok[name] for name in spec.input_names)
    check(feeds)
    assert len(calls) == 1  # the same shapes again: not checked again
    wide = {**feeds, "sample": torch.zeros(4, 4, 64, 64), "timestep": torch.zeros(4),
            "encoder_hidden_states": torch.zeros(4, 77, 768)}
    with pytest.raises(UserInputError, match=r"batch=4 is outside the built profile \[1, 3\].*answer-trt build"):
        check(wide)
    assert len(calls) == 2
    with pytest.raises(UserInputError):  # a refused set is refused again, never remembered as checked
        check(wide)
