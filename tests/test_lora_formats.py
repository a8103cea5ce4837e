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


# --- (c) LyCORIS LoHa and LoKr -------------------------------------------------------------

# kohya names of the modules the LyCORIS files below adapt: (component, module path)
LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
CONV_2 = "lora_unet_down_blocks_0_resnets_0_conv2"
TEXT = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
MODULES = {LINEAR: ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
           CONV: ("unet", "down_blocks.0.resnets.0.conv1"), CONV_2: ("unet", "down_blocks.0.resnets.0.conv2"),
           TEXT: ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")}


def _weight(loaded, name: str) -> torch.Tensor:
    component, path = MODULES[name]
    module = getattr(loaded, component)
    if not hasattr(module, "text_model"):
        path = path.removeprefix("text_model.")
    return module.get_submodule(path).weight.detach().clone()


def _small(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.3


def _kron_by_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """kron(w1, w2) written out: block (i, j) of the result is w1[i, j] * w2."""
    rows, cols = w2.shape[0], w2.shape[1]
    out = torch.zeros(w1.shape[0] * rows, w1.shape[1] * cols, *w2.shape[2:])
    for i in range(w1.shape[0]):
        for j in range(w1.shape[1]):
            out[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols] = w1[i, j] * w2
    return out


def _check_merged(file: Path, scale: float, expected: dict[str, torch.Tensor]) -> None:
    model = resolve_model("tiny").path
    plain = load_model(model)
    loaded = load_model(model, loras=[check_lora(LoraSpec(file, scale))])
    for name, by_hand in expected.items():
        w0 = _weight(plain, name)
        assert torch.allclose(_weight(loaded, name), w0 + scale * by_hand.reshape(w0.shape), atol=1e-5), name
        assert (by_hand.abs().max() * abs(scale)) > 1e-2, name  # the update is not negligible
    untouched = "down_blocks.1.resnets.0.conv1.weight"
    assert torch.equal(loaded.unet.state_dict()[untouched], plain.unet.state_dict()[untouched])


def test_a_loha_file_is_merged_as_a_hand_merge(tmp_path):
    plain = load_model(resolve_model("tiny").path)
    gen = torch.Generator().manual_seed(7)
    rank, alpha = 3, 1.5
    state, expected = {}, {}
    for name in (LINEAR, CONV, TEXT):
        w0 = _weight(plain, name)
        out, inputs = w0.shape[0], w0[0].numel()
        w1a, w1b, w2a, w2b = (_small(out, rank, gen=gen), _small(rank, inputs, gen=gen),
                              _small(out, rank, gen=gen), _small(rank, inputs, gen=gen))
        state |= {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a,
                  f"{name}.hada_w2_b": w2b, f"{name}.alpha": torch.tensor(alpha)}
        expected[name] = (alpha / rank) * (w1a @ w1b) * (w2a @ w2b)
    # A conv with Tucker cores (hada_t1 / hada_t2): each factor sum_ij t[i, j] * outer(wa[i], wb[j]).
    w0 = _weight(plain, CONV_2)
    factors = []
    for part in (1, 2):
        core, wa, wb = _small(rank, rank, 3, 3, gen=gen), _small(rank, w0.shape[0], gen=gen), \
            _small(rank, w0.shape[1], gen=gen)
        state |= {f"{CONV_2}.hada_t{part}": core, f"{CONV_2}.hada_w{part}_a": wa, f"{CONV_2}.hada_w{part}_b": wb}
        factors.append(sum(core[i, j][None, None] * wa[i][:, None, None, None] * wb[j][None, :, None, None]
                           for i in range(rank) for j in range(rank)))
    state[f"{CONV_2}.alpha"] = torch.tensor(alpha)
    expected[CONV_2] = (alpha / rank) * factors[0] * factors[1]
    file = tmp_path / "loha.safetensors"
    save_file(state, file)
    _check_merged(file, 0.7, expected)


def test_a_lokr_file_is_merged_as_a_hand_merge(tmp_path):
    plain = load_model(resolve_model("tiny").path)
    gen = torch.Generator().manual_seed(8)
    rank, alpha = 2, 4.0
    state, expected = {}, {}
    # Linear: w1 full (4 x 4), w2 = a @ b (rank 2): scaled by alpha / rank.
    side = _weight(plain, LINEAR).shape[0] // 4
    w1, w2a, w2b = _small(4, 4, gen=gen), _small(side, rank, gen=gen), _small(rank, side, gen=gen)
    state |= {f"{LINEAR}.lokr_w1": w1, f"{LINEAR}.lokr_w2_a": w2a, f"{LINEAR}.lokr_w2_b": w2b,
              f"{LINEAR}.alpha": torch.tensor(alpha)}
    expected[LINEAR] = (alpha / rank) * _kron_by_blocks(w1, w2a @ w2b)
    # Conv (3 x 3 kernel): both factors full: no scaling, whatever alpha says.
    out, inputs = _weight(plain, CONV).shape[:2]
    w1, w2 = _small(2, 2, gen=gen), _small(out // 2, inputs // 2, 3, 3, gen=gen)
    state |= {f"{CONV}.lokr_w1": w1, f"{CONV}.lokr_w2": w2, f"{CONV}.alpha": torch.tensor(alpha)}
    expected[CONV] = _kron_by_blocks(w1, w2)
    # Text encoder q_proj: w1 = a @ b (rank 2), w2 full.
    w0 = _weight(plain, TEXT)
    half = w0.shape[0] // 2
    w1a, w1b, w2 = _small(2, rank, gen=gen), _small(rank, 2, gen=gen), _small(half, half, gen=gen)
    state |= {f"{TEXT}.lokr_w1_a": w1a, f"{TEXT}.lokr_w1_b": w1b, f"{TEXT}.lokr_w2": w2,
              f"{TEXT}.alpha": torch.tensor(alpha)}
    expected[TEXT] = (alpha / rank) * _kron_by_blocks(w1a @ w1b, w2)
    file = tmp_path / "lokr.safetensors"
    save_file(state, file)
    _check_merged(file, -0.5, expected)


def test_a_lycoris_module_whose_update_does_not_fit_is_refused(tmp_path):
    bad = tmp_path / "loha_bad.safetensors"
    save_file({f"{LINEAR}.hada_w1_a": torch.ones(32, 2), f"{LINEAR}.hada_w1_b": torch.ones(2, 16),
               f"{LINEAR}.hada_w2_a": torch.ones(32, 2), f"{LINEAR}.hada_w2_b": torch.ones(2, 16)}, bad)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (bad, 1.0))
    _one_line(refused, str(bad), f"key {LINEAR}.hada_w1_a", "update has shape [32, 16]", "module's weight has [")
    lone = tmp_path / "lokr_half.safetensors"
    save_file({f"{LINEAR}.lokr_w1": torch.ones(4, 4)}, lone)
    with pytest.raises(UserInputError) as refused:
        _fused(resolve_model("tiny").path, (lone, 1.0))
    _one_line(refused, str(lone), "lacks weights for any format")


def test_an_sdxl_kohya_dora_file_with_original_block_names_equals_peft_merge(tmp_path):
    """The SDXL user's file as A1111 / ComfyUI users have it: kohya names, ``lora_te1_``, the
    original block names and DoRA magnitudes."""
    model = resolve_model("tiny-sdxl").path
    pipe, state = dora_model(model, seed=9)
    kohya = peft_to_kohya(state, flat_text_model=not hasattr(pipe.text_encoder, "text_model"), sdxl=True)
    save_file(kohya, tmp_path / "xl_dora.safetensors")
    sgm = to_sgm(tmp_path / "xl_dora.safetensors", tmp_path / "xl_dora_sgm.safetensors", layers_per_block=1)
    assert any(k.startswith("lora_te1_") and k.endswith(".dora_scale") for k in load_file(sgm))
    got, plain = _fused(model, (sgm, 1.0)), _fused(model)
    assert _max_diff({c: got[c] for c in ("unet", "text_encoder")}, merged_modules(pipe)) < 1e-5
    assert _max_diff({"unet": got["unet"]}, {"unet": plain["unet"]}) > 1e-2
    assert _max_diff({"text_encoder_2": got["text_encoder_2"]}, {"text_encoder_2": plain["text_encoder_2"]}) == 0


def test_an_adapter_with_nan_or_inf_weights_is_refused_before_any_model_loads(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    from answer_trt.build_config import LoraSpec
    from answer_trt.errors import UserInputError
    from answer_trt.models.lora import check_lora

    for bad in (float("nan"), float("inf")):
        path = tmp_path / f"bad-{bad}.safetensors"
        weight = torch.zeros(4, 8)
        weight[1, 2] = bad
        save_file({"lora_unet_x.lora_down.weight": weight, "lora_unet_x.lora_up.weight": torch.zeros(8, 4)},
                  str(path))
        with pytest.raises(UserInputError, match=r"tensor 'lora_unet_x.lora_down.weight' holds NaN or infinite"):
            check_lora(LoraSpec(path))
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UserInputError, match="is not a regular file"):
        check_lora(LoraSpec(fifo))
