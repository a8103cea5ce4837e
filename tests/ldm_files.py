"""Single-file checkpoints made in code for the tests (no download): a diffusers model folder's
weights renamed into the CompVis / AUTOMATIC1111 ("LDM") layout that model sites share, written
as one ``.safetensors`` file.

This is the reverse of diffusers' single-file conversion, written here from the LDM layout
(``ldm/modules/diffusionmodules/openaimodel.py``'s ``input_blocks`` / ``middle_block`` /
``output_blocks``, ``ldm/modules/diffusionmodules/model.py``'s VAE ``down`` / ``mid`` / ``up``,
CLIP under ``cond_stage_model.transformer``, OpenCLIP's ``resblocks``), for the test only:
``tests/test_single_file.py`` checks it by round trip (diffusers' loader on the file gives back
every tensor of the folder, exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _config(folder: Path, sub: str) -> dict[str, Any]:
    return json.loads((folder / sub / "config.json").read_text())


def _rename(state: dict[str, torch.Tensor], prefixes: dict[str, tuple[str, dict[str, str]]]) -> dict[str, torch.Tensor]:
    """Each key by its longest matching diffusers prefix -> (LDM prefix, renames of the first
    names after it); a key no prefix matches is an error (the mapping must be complete)."""
    out = {}
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, tensor in state.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no LDM name for {key}")
        target, inner = prefixes[prefix]
        rest = key[len(prefix):]
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        out[target + rest] = tensor
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the LDM ``model.diffusion_model.*`` layout."""
    per = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    plain: dict[str, str] = {}
    p: dict[str, tuple[str, dict[str, str]]] = {
        "time_embedding.linear_1.": ("time_embed.0.", plain), "time_embedding.linear_2.": ("time_embed.2.", plain),
        "add_embedding.linear_1.": ("label_emb.0.0.", plain), "add_embedding.linear_2.": ("label_emb.0.2.", plain),
        "conv_in.": ("input_blocks.0.0.", plain), "conv_norm_out.": ("out.0.", plain), "conv_out.": ("out.2.", plain),
        "mid_block.resnets.0.": ("middle_block.0.", RESNET_UNET), "mid_block.attentions.0.": ("middle_block.1.", plain),
        "mid_block.resnets.1.": ("middle_block.2.", RESNET_UNET),
    }
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            p[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{n}.0.", RESNET_UNET)
            p[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{n}.1.", plain)
        if i < levels - 1:
            p[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{1 + i * (per + 1) + per}.0.op.", plain)
        attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            n = i * (per + 1) + j
            p[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{n}.0.", RESNET_UNET)
            p[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{n}.1.", plain)
        if i < levels - 1:
            n = i * (per + 1) + per
            p[f"up_blocks.{i}.upsamplers.0.conv."] = (f"output_blocks.{n}.{2 if attention else 1}.conv.", plain)
    return {"model.diffusion_model." + k: v for k, v in _rename(state, p).items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM ``first_stage_model.*`` layout (the
    mid-block attention's linear layers as the 1x1 convolutions LDM stores)."""
    levels = len(config["block_out_channels"])
    shortcut = {"conv_shortcut": "nin_shortcut"}
    plain: dict[str, str] = {}
    p: dict[str, tuple[str, dict[str, str]]] = {"quant_conv.": ("quant_conv.", plain),
                                                "post_quant_conv.": ("post_quant_conv.", plain)}
    for part in ("encoder", "decoder"):
        p.update({f"{part}.conv_in.": (f"{part}.conv_in.", plain), f"{part}.conv_out.": (f"{part}.conv_out.", plain),
                  f"{part}.conv_norm_out.": (f"{part}.norm_out.", plain),
                  f"{part}.mid_block.resnets.0.": (f"{part}.mid.block_1.", shortcut),
                  f"{part}.mid_block.resnets.1.": (f"{part}.mid.block_2.", shortcut),
                  f"{part}.mid_block.attentions.0.": (f"{part}.mid.attn_1.", VAE_ATTENTION)})
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            p[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", shortcut)
            p[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{levels - 1 - i}.block.{j}.", shortcut)
        p[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = (f"encoder.down.{i}.downsample.conv.", plain)
        p[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = (f"decoder.up.{levels - 1 - i}.upsample.conv.", plain)
    out = {}
    for key, tensor in _rename(state, p).items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + key] = tensor
    return out


def _text_model_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP's names as the original checkpoints (and transformers 4) have them, ``text_model.*``:
    transformers 5 saves them without that prefix."""
    return {k if k.startswith("text_model.") or k.startswith("text_projection.") else "text_model." + k: v
            for k, v in state.items()}


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict under ``prefix`` (SD 1.x: ``cond_stage_model.transformer.``)."""
    return {prefix + k: v for k, v in _text_model_names(state).items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection state dict in OpenCLIP's layout under ``prefix``
    (SDXL: ``conditioner.embedders.1.model.``): q, k, v stacked as ``in_proj``, the projection
    stored transposed."""
    state = _text_model_names(state)
    out: dict[str, torch.Tensor] = {}
    layer_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for n in layers:
        here = f"text_model.encoder.layers.{n}."
        for kind in ("weight", "bias"):
            out[f"{prefix}transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(
                [state[f"{here}self_attn.{q}_proj.{kind}"] for q in ("q", "k", "v")])
            for old, new in layer_names.items():
                out[f"{prefix}transformer.resblocks.{n}.{new}.{kind}"] = state[f"{here}{old}.{kind}"]
    out[prefix + "token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = state["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = state["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    return out


def folder_weights(folder: Path, sub: str) -> dict[str, torch.Tensor]:
    """The safetensors weights of one component of a diffusers folder."""
    name = "model.safetensors" if sub.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
    return load_file(folder / sub / name)


def real_file_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that shared SD 1.x files carry beside the weights (A1111 files from the CompVis
    training code): the training schedule, the EMA's bookkeeping, CLIP's position ids as floats."""
    extras = {"alphas_cumprod": torch.linspace(0.999, 0.005, 1000), "betas": torch.linspace(8.5e-4, 0.012, 1000),
              "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32)}
    positions = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
    if positions in state:
        extras[positions.replace("position_embedding.weight", "position_ids")] = \
            torch.arange(state[positions].shape[0], dtype=torch.float32)[None]
    return extras


def write_ldm_checkpoint(folder: Path, out: Path, dtype: torch.dtype | None = None, open_clip: bool = False,
                         extras: bool = False) -> Path:
    """The diffusers folder ``folder`` (SD 1.x-shaped or SDXL-shaped) as one LDM-layout
    ``.safetensors`` file at ``out`` (tensors cast to ``dtype`` where given; ``open_clip``: the
    text encoder in SD 2.x's OpenCLIP layout, ``cond_stage_model.model.*``; ``extras``: with
    ``real_file_extras``); returns ``out``."""
    sdxl = (folder / "text_encoder_2").is_dir()
    state = {**unet_to_ldm(folder_weights(folder, "unet"), _config(folder, "unet")),
             **vae_to_ldm(folder_weights(folder, "vae"), _config(folder, "vae"))}
    if sdxl:
        state.update(clip_to_ldm(folder_weights(folder, "text_encoder"), "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(folder_weights(folder, "text_encoder_2"), "conditioner.embedders.1.model."))
    elif open_clip:  # SD 2.x: OpenCLIP-H, whose text projection the UNet does not use (diffusers drops it)
        text = folder_weights(folder, "text_encoder")
        hidden = text[next(k for k in text if k.endswith("token_embedding.weight"))].shape[1]
        text["text_projection.weight"] = torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0))
        state.update(open_clip_to_ldm(text, "cond_stage_model.model."))
    else:
        state.update(clip_to_ldm(folder_weights(folder, "text_encoder"), "cond_stage_model.transformer."))
    if extras:
        state.update(real_file_extras(state))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
