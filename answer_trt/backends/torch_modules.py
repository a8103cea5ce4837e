"""Torch modules with the exact inputs and outputs of each component's IO spec.

The torch backend runs them (``torch_eager.TorchEngine``) and the export stage traces
them into ONNX, so every backend computes the same function under the same tensor names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from answer_trt.iospec import TEXT_ENCODER, UNET, VAE_DECODER


class TextEncoderModule(nn.Module):
    """``input_ids[B, L] -> text_embeddings[B, L, D]`` (CLIP last hidden state, as SD 1.x uses)."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class DualTextEncoderModule(nn.Module):
    """SDXL: ``(input_ids, input_ids_2) -> (text_embeddings, pooled_embeddings)``.

    As diffusers' SDXL pipeline: the penultimate hidden states of both encoders,
    concatenated on the feature axis, and the projected pooled output of the second.
    """

    def __init__(self, text_encoder: Any, text_encoder_2: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids: Tensor, input_ids_2: Tensor) -> tuple[Tensor, Tensor]:
        first = self.text_encoder(input_ids, output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2, output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden, second.text_embeds


class UNetModule(nn.Module):
    """``(sample, timestep[N], encoder_hidden_states) -> noise_pred``: the raw UNet output
    (eps or v, per the scheduler config's prediction_type)."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class SDXLUNetModule(UNetModule):
    """UNetModule plus SDXL's added conditions: pooled ``text_embeds`` and ``time_ids``."""

    def forward(  # type: ignore[override]
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor, time_ids: Tensor
    ) -> Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class VaeDecoderModule(nn.Module):
    """``latent -> images`` in [-1, 1]; undoes the VAE scaling factor first. Runs in the
    VAE's own dtype (an fp32 VAE upcasts fp16 latents, as SDXL's VAE needs)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latent.to(dtype) / self.scaling_factor, return_dict=False)[0]


def component_modules(model: Any) -> dict[str, nn.Module]:
    """The three spec-shaped modules of a ``LoadedModel``, in eval mode."""
    if model.text_encoder_2 is not None:
        text: nn.Module = DualTextEncoderModule(model.text_encoder, model.text_encoder_2)
        unet: nn.Module = SDXLUNetModule(model.unet)
    else:
        text, unet = TextEncoderModule(model.text_encoder), UNetModule(model.unet)
    return {TEXT_ENCODER: text.eval(), UNET: unet.eval(), VAE_DECODER: VaeDecoderModule(model.vae).eval()}
