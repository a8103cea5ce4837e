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


def dora_model(model: Path, seed: int, rank: int = 4) -> tuple[object, dict[str, torch.Tensor]]:
    """``model``'s pipeline with a seeded peft DoRA adapter (``LoraConfig(use_dora=True)``, random
    A, B and magnitudes) on its UNet attention and text encoder(s), and the adapter's peft state
    dict with diffusers' component prefixes (``unet.``, ``text_encoder.``): a peft-format DoRA file's
    contents. The pipeline's modules still hold the adapter layers (merge them for a reference)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    sdxl = (model / "text_encoder_2").is_dir()
    pipe = (StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline).from_pretrained(
        model, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    targets = [("unet", pipe.unet, UNET_TARGETS), ("text_encoder", pipe.text_encoder, TEXT_TARGETS)]
    for component, module, names in targets:
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, use_dora=True, target_modules=names)
        inject_adapter_in_model(config, module)
        with torch.no_grad():  # magnitudes away from peft's start (the weights' own norms)
            for name, param in module.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(1.0 + 0.5 * torch.rand_like(param))
        state.update({f"{component}.{k}": v.detach().clone().contiguous()
                      for k, v in get_peft_model_state_dict(module).items()})
    return pipe, state


def merged_modules(pipe: object) -> dict[str, dict[str, torch.Tensor]]:
    """The UNet's and text encoder's weights with their peft adapter layers merged by peft
    (``merge()`` on each tuner layer), by plain module names: the reference a fused file is
    compared with."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    weights = {}
    for component in ("unet", "text_encoder"):
        module = getattr(pipe, component)
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.merge()
        weights[component] = {k.replace("base_layer.", ""): v for k, v in module.state_dict().items()
                              if "lora_" not in k}
    return weights


def peft_to_kohya(state: dict[str, torch.Tensor], flat_text_model: bool, sdxl: bool = False) -> dict[str, torch.Tensor]:
    """A peft-format (DoRA) state dict renamed as kohya / LyCORIS name it: ``lora_down`` /
    ``lora_up`` / ``alpha`` (= rank) and the magnitude as ``dora_scale`` of shape ``[out, 1]``
    (LyCORIS' per-output-channel layout); SDXL's first text encoder as ``lora_te1_``."""
    kohya = {}
    for key, tensor in state.items():
        component, rest = key.split(".", 1)
        module, field = rest.split(".lora_", 1)
        if component == "text_encoder" and flat_text_model:
            module = "text_model." + module
        name = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_"}[component]
        name += module.replace(".", "_")
        if field.startswith("A"):
            kohya[f"{name}.lora_down.weight"] = tensor
            kohya[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
        elif field.startswith("B"):
            kohya[f"{name}.lora_up.weight"] = tensor
        else:
            kohya[f"{name}.dora_scale"] = tensor.reshape(-1, 1)
    return kohya


def to_sgm(file: Path, out: Path, layers_per_block: int) -> Path:
    """A kohya-named file (diffusers' block names) renamed to the original LDM / SGM UNet block
    names, as many SDXL LoRAs have them: ``down_blocks.B.attentions.J`` ->
    ``input_blocks.{B * (L + 1) + J + 1}.1``, ``mid_block.attentions.0`` -> ``middle_block.1``,
    ``up_blocks.B.attentions.J`` -> ``output_blocks.{B * (L + 1) + J}.1`` (L: layers per block)."""
    import re

    step = layers_per_block + 1

    def rename(key: str) -> str:
        key = re.sub(r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_",
                     lambda m: f"lora_unet_input_blocks_{int(m[1]) * step + int(m[2]) + 1}_1_", key)
        key = re.sub(r"^lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_", key)
        return re.sub(r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_",
                      lambda m: f"lora_unet_output_blocks_{int(m[1]) * step + int(m[2])}_1_", key)

    save_file({rename(key): tensor for key, tensor in load_file(file).items()}, out)
    return out
