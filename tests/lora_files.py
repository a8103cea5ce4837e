"""LoRA adapter files made in code for the tests (no download): seeded, non-zero adapters on a
built-in miniature's UNet attention and text encoder(s), saved as diffusers saves them
(peft ``LoraConfig`` + ``get_peft_model_state_dict`` + the pipeline's ``save_lora_weights``), and
the same weights renamed into kohya's format (what A1111 and ComfyUI users have)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# All four: diffusers reads a kohya text-encoder adapter only where it has out_proj (`to_out_lora`).
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def make_lora(model: Path, out: Path, seed: int, rank: int = 4, text: bool = True) -> Path:
    """A diffusers-format LoRA file for the model folder ``model`` (SD or SDXL); returns it."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    sdxl = (model / "text_encoder_2").is_dir()
    pipe_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = pipe_class.from_pretrained(model, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    # init_lora_weights=False: random A and B (peft's default B = 0 would make a no-op adapter).
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=UNET_TARGETS))
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    if text:
        encoders = [("text_encoder_lora_layers", pipe.text_encoder)]
        if sdxl:
            encoders.append(("text_encoder_2_lora_layers", pipe.text_encoder_2))
        for name, encoder in encoders:
            # peft directly: transformers' own add_adapter asks for a newer peft than diffusers does.
            config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=TEXT_TARGETS)
            inject_adapter_in_model(config, encoder)
            layers[name] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    out.mkdir(parents=True, exist_ok=True)
    pipe_class.save_lora_weights(out, safe_serialization=True, **layers)
    return out / "pytorch_lora_weights.safetensors"


KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def to_kohya(file: Path, out: Path, alpha_ratio: float = 1.0, sdxl: bool = False) -> Path:
    """``file`` (diffusers format) renamed as kohya's scripts name LoRA weights:
    ``lora_unet_down_blocks_0_attentions_0_..._to_q.lora_down.weight`` / ``lora_up.weight`` and an
    ``alpha`` per module (``alpha_ratio`` * rank); SDXL's text encoders as ``lora_te1_`` / ``lora_te2_``."""
    prefixes = dict(KOHYA_PREFIXES, text_encoder="lora_te1_") if sdxl else KOHYA_PREFIXES
    kohya = {}
    for key, tensor in load_file(file).items():
        component, rest = key.split(".", 1)
        module, side = rest.split(".lora", 1)  # `.lora.down.weight`, `.lora_linear_layer.up.weight`, `.lora_A.weight`
        if component != "unet" and not module.startswith("text_model."):
            module = "text_model." + module  # transformers 5 saves CLIP's text model flat; kohya names it in full
        name = prefixes[component] + module.replace(".", "_")
        down = "down" in side or "_A" in side
        kohya[f"{name}.{'lora_down' if down else 'lora_up'}.weight"] = tensor
        if down:
            kohya[f"{name}.alpha"] = torch.tensor(alpha_ratio * tensor.shape[0])
    save_file(kohya, out)
    return out


def foreign_lora(out: Path) -> Path:
    """A LoRA whose first UNet key names a block the SD miniatures lack (a second transformer
    block in down_blocks.0: an SDXL-shaped adapter)."""
    down = torch.ones(4, 32) * 0.01
    save_file({
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.lora_down.weight": down,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.lora_up.weight": torch.ones(32, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q.alpha": torch.tensor(4.0),
    }, out)
    return out
