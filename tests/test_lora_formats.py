"""Adapters as people have them (issue 31, item 2): DoRA in peft's format (diffusers fuses it) and
kohya's (``dora_scale``: diffusers drops it with a warning; we merge it by the paper's formula),
kohya SDXL / SD files with the original UNet block names (``input_blocks`` ...), LyCORIS LoHa
and LoKr; any other format refused in one line. Each fused result is compared with an
independent reference: peft's own merge, the same adapter in diffusers' names, a hand merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from answer_trt.build_config import LoraSpec
from answer_trt.errors import UserInputError
from answer_trt.models.lora import check_lora
from answer_trt.models.lora_merge import dora_axis, dora_weight, lora_delta, merge_file
from answer_trt.models.source import load_model, resolve_model
from tests.lora_files import dora_model, make_lora, merged_modules, peft_to_kohya, to_kohya, to_sgm

pytest.importorskip("peft")


def _fused(model: Path, *files: tuple[Path, float]) -> dict[str, dict[str, torch.Tensor]]:
    loaded = load_model(model, loras=[check_lora(LoraSpec(file, scale)) for file, scale in files])
    out = {"unet": loaded.unet.state_dict(), "text_encoder": loaded.text_encoder.state_dict()}
    if loaded.text_encoder_2 is not None:
        out["text_encoder_2"] = loaded.text_encoder_2.state_dict()
    return out


def _max_diff(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> float:
    assert a.keys() == b.keys()
    diffs = []
    for component in a:
        assert a[component].keys() == b[component].keys(), component
        diffs += [(a[component][k] - b[component][k]).abs().max().item() for k in a[component]]
    return max(diffs)


def _one_line(refused: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(refused.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


# --- (a) DoRA ----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [torch.nn.Linear(12, 10), torch.nn.Conv2d(6, 8, 3)], ids=["linear", "conv"])
def test_the_dora_formula_equals_peft_merge(layer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(layer), LoraConfig(r=3, lora_alpha=6, use_dora=True,
                                                                   init_lora_weights=False, target_modules=["0"]))
    tuned = model.base_model.model[0]
    with torch.no_grad():
        tuned.lora_magnitude_vector["default"].weight.mul_(1.5)
    w0 = tuned.base_layer.weight.detach().clone()
    a, b = tuned.lora_A["default"].weight.detach(), tuned.lora_B["default"].weight.detach()
    magnitude = tuned.lora_magnitude_vector["default"].weight.detach().reshape(w0.shape[0], -1)  # kohya: [out, 1]
    delta = (6 / 3) * lora_delta(b, a).reshape(w0.shape)
    axis = dora_axis(tuple(w0.shape), tuple(magnitude.shape))
    assert axis == 0
    ours = dora_weight(w0, delta, magnitude, axis)
    merged = model.merge_and_unload()[0].weight.detach()
    assert torch.allclose(ours, merged, atol=1e-6, rtol=1e-5)
    assert (merged - (w0 + delta)).abs().max() > 1e-2  # the magnitude matters: plain LoRA is not it


def test_a_dora_magnitude_per_input_channel_normalizes_columns():
    torch.manual_seed(1)
    w0, delta, magnitude = torch.randn(5, 7), torch.randn(5, 7) * 0.1, torch.rand(1, 7) + 0.5
    axis = dora_axis((5, 7), (1, 7))
    assert axis == 1 and dora_axis((5, 7), (3, 1)) is None
    merged = dora_weight(w0, delta, magnitude, axis)
    assert torch.allclose(merged.norm(dim=0), magnitude.flatten(), atol=1e-5)  # each column gets m's length
    by_hand = torch.stack([magnitude[0, j] * (w0[:, j] + delta[:, j]) / (w0[:, j] + delta[:, j]).norm()
                           for j in range(7)], dim=1)
    assert torch.allclose(merged, by_hand, atol=1e-6)


@pytest.fixture(scope="module")
def dora_files(tmp_path_factory) -> tuple[Path, Path, Path, dict]:
    """For `tiny`: one seeded DoRA adapter as peft saves it, in kohya's naming with
    ``dora_scale``, and kohya's with ``dora_scale`` stripped; and peft's own merge of it."""
    root = tmp_path_factory.mktemp("dora")
    model = resolve_model("tiny").path
    pipe, state = dora_model(model, seed=5)
    peft_file = root / "dora_peft.safetensors"
    save_file(state, peft_file)
    flat = not hasattr(pipe.text_encoder, "text_model")
    kohya = peft_to_kohya(state, flat_text_model=flat)
    assert any(k.endswith(".dora_scale") and k.startswith("lora_te_") for k in kohya)
    kohya_file = root / "dora_kohya.safetensors"
    save_file(kohya, kohya_file)
    stripped = root / "dora_stripped.safetensors"
    save_file({k: v for k, v in kohya.items() if "dora_scale" not in k}, stripped)
    return peft_file, kohya_file, stripped, merged_modules(pipe)


def test_a_peft_format_dora_file_is_fused_as_peft_merges_it(dora_files):
    peft_file, _kohya, _stripped, reference = dora_files
    model = resolve_model("tiny").path
    got = _fused(model, (peft_file, 1.0))
    assert _max_diff(got, reference) < 1e-5
    assert _max_diff(got, _fused(model)) > 1e-2  # not a no-op


def test_a_kohya_dora_file_is_fused_with_its_magnitudes(dora_files):
    """The bug: diffusers dropped ``dora_scale`` and fused the rest as a plain LoRA."""
    peft_file, kohya_file, stripped, reference = dora_files
    model = resolve_model("tiny").path
    got = _fused(model, (kohya_file, 1.0))
    assert _max_diff(got, reference) < 1e-5
    assert _max_diff(got, _fused(model, (stripped, 1.0))) > 1e-2
    # Another scale: kohya's and peft's file still agree (SCALE inside the norm, as peft's fuse_lora).
    assert _max_diff(_fused(model, (kohya_file, 0.5)), _fused(model, (peft_file, 0.5))) < 1e-5


def test_a_dora_scale_that_fits_no_axis_is_refused_and_nothing_is_fused(dora_files, tmp_path):
    _peft, kohya_file, _stripped, _reference = dora_files
    state = load_file(kohya_file)
    key = sorted(k for k in state if k.endswith(".dora_scale") and k.startswith("lora_unet_"))[-1]
    state[key] = torch.ones(3, 1)
    bad = tmp_path / "bad_dora.safetensors"
    save_file(state, bad)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (bad, 1.0))
    _one_line(refused, str(bad), key, "dora_scale has shape [3, 1]")
    # All or nothing: the modules before the bad one are left as they were.
    loaded = load_model(resolve_model("tiny").path)
    before = {k: v.clone() for k, v in loaded.unet.state_dict().items()}
    with pytest.raises(UserInputError):
        merge_file(bad, state, {"unet": loaded.unet, "text_encoder": loaded.text_encoder}, 1.0)
    assert all(torch.equal(before[k], v) for k, v in loaded.unet.state_dict().items())


def test_a_peft_dora_magnitude_the_loader_drops_is_refused(dora_files, monkeypatch):
    """The guard behind the peft-format path: were a text encoder's magnitudes left unloaded
    (as transformers' load_adapter does with the file's own key names), the file is refused."""
    from answer_trt.models import lora

    monkeypatch.setattr(lora, "_text_dora_named", lambda file: load_file(str(file)))
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (dora_files[0], 1.0))
    _one_line(refused, str(dora_files[0]), "did not load the DoRA magnitude text_encoder.", "kohya's format")


def test_dora_keys_outside_kohya_naming_are_refused(tmp_path):
    bad = tmp_path / "odd.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.dora_scale": torch.ones(32, 1),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.ones(4, 32)},
              bad)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (bad, 1.0))
    _one_line(refused, str(bad), "to_q.dora_scale", "outside kohya's naming")


# --- any other format ----------------------------------------------------------------------


@pytest.mark.parametrize("field,needle", [
    ("lora_mid.weight", "LoCon with a Tucker middle (lora_mid)"),
    ("oft_blocks", "OFT / BOFT"),
    ("weird_tensor", "in no adapter format answer-trt reads"),
])
def test_an_adapter_in_another_format_is_refused_naming_it(field, needle, tmp_path):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    bad = tmp_path / "other.safetensors"
    save_file({f"{name}.lora_down.weight": torch.ones(4, 32), f"{name}.lora_up.weight": torch.ones(32, 4),
               f"{name}.{field}": torch.ones(4, 4)}, bad)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (bad, 1.0))
    _one_line(refused, str(bad), f"{name}.{field}", needle)


# --- (b) kohya files with the original (LDM / SGM) UNet block names ------------------------


@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny"])
def test_a_kohya_file_with_original_block_names_equals_the_one_with_diffusers_names(name, tmp_path):
    model = resolve_model(name).path
    sdxl = name == "tiny-sdxl"
    kohya = to_kohya(make_lora(model, tmp_path / "a", seed=6), tmp_path / "diffusers_names.safetensors",
                     alpha_ratio=0.5, sdxl=sdxl)
    sgm = to_sgm(kohya, tmp_path / "sgm_names.safetensors", layers_per_block=1)
    keys = list(load_file(sgm))
    for block in ("lora_unet_input_blocks_1_1_", "lora_unet_middle_block_1_", "lora_unet_output_blocks_3_1_"):
        assert any(k.startswith(block) for k in keys), block
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block_" in k for k in keys)
    if sdxl:
        assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    got = _fused(model, (sgm, 0.8))
    assert _max_diff(got, _fused(model, (kohya, 0.8))) == 0.0
    plain = _fused(model)
    for component in got:  # the UNet and each text encoder changed
        assert _max_diff({component: got[component]}, {component: plain[component]}) > 1e-2, component


def test_a_kohya_dora_file_with_original_block_names_is_merged_alike(dora_files, tmp_path):
    _peft, kohya_file, _stripped, reference = dora_files
    sgm = to_sgm(kohya_file, tmp_path / "dora_sgm.safetensors", layers_per_block=1)
    assert any(k.startswith("lora_unet_output_blocks_") and k.endswith(".dora_scale") for k in load_file(sgm))
    assert _max_diff(_fused(resolve_model("tiny").path, (sgm, 1.0)), reference) < 1e-5


def test_original_block_names_beside_diffusers_ones_are_refused(tmp_path):
    bad = tmp_path / "mixed.safetensors"
    sgm, ours = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "lora_unet_mid_block_attentions_0_proj_in"
    save_file({f"{sgm}.lora_down.weight": torch.ones(4, 32), f"{sgm}.lora_up.weight": torch.ones(32, 4),
               f"{ours}.lora_down.weight": torch.ones(4, 64), f"{ours}.lora_up.weight": torch.ones(64, 4)}, bad)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (bad, 1.0))
    _one_line(refused, str(bad), f"key {sgm}.lora_down.weight", "original UNet block names")
