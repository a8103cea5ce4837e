"""Torch modules with the exact inputs and outputs of each component's IO spec.

The torch backend runs them (``torch_eager.TorchEngine``) and the export stage traces
them into ONNX, so every backend computes the same function under the same tensor names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from answer_trt.iospec import TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER


def layer_from_end(hidden_states: tuple[Tensor, ...], from_end: Tensor) -> Tensor:
    """``hidden_states[-from_end[b]]`` for each row ``b``: CLIP's per-layer hidden states
    (embeddings first, then each layer's output, ``[B, L, D]`` each), ``from_end`` ``[B]``
    int64 >= 1. A one-hot sum over the stacked layers, so the choice is a tensor input of the
    exported graph (not a constant) and the graph keeps the static L and D a gather would
    lose in ONNX's shape inference; exact (the other layers add zeros). Values past the first
    layer select nothing (the request's bound, ``ModelDims.max_clip_skip``, keeps them in range)."""
    stacked = torch.stack(hidden_states, dim=1)  # [B, layers + 1, L, D]
    layers = torch.arange(len(hidden_states), device=from_end.device)
    one_hot = (layers[None, :] == (len(hidden_states) - from_end)[:, None]).to(stacked.dtype)  # [B, layers + 1]
    return (stacked * one_hot[:, :, None, None]).sum(dim=1)


class TextEncoderModule(nn.Module):
    """``(input_ids[B, L], clip_skip[B]) -> text_embeddings[B, L, D]``: CLIP's last hidden state
    as SD 1.x / 2.x use it at clip skip 1; at clip skip N, the output of the Nth layer from the
    end through the final layer norm (A1111's rule, and diffusers' ``clip_skip`` = N - 1)."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: Tensor, clip_skip: Tensor) -> Tensor:
        out = self.text_encoder(input_ids, output_hidden_states=True)
        hidden = layer_from_end(out.hidden_states, clip_skip)
        # transformers 4.x keeps the layers under ``text_model``; 5.x has them on the model itself.
        return getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm(hidden)


class DualTextEncoderModule(nn.Module):
    """SDXL: ``(input_ids, input_ids_2) -> (text_embeddings, pooled_embeddings)``.

    As diffusers' SDXL pipeline: the penultimate hidden states of both encoders,
    concatenated on the feature axis, and the projected pooled output of the second.
    """

    def __init__(self, text_encoder: Any, text_encoder_2: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids: Tensor, input_ids_2: Tensor, clip_skip: Tensor) -> tuple[Tensor, Tensor]:
        """At clip skip N both encoders give their (N + 1)th layer from the end (diffusers'
        ``clip_skip`` = N - 1); the pooled embedding stays the second's last."""
        first = self.text_encoder(input_ids, output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2, output_hidden_states=True)
        hidden = torch.cat([layer_from_end(first.hidden_states, clip_skip + 1),
                            layer_from_end(second.hidden_states, clip_skip + 1)], dim=-1)
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


class InpaintUNetModule(UNetModule):
    """An inpainting UNet (9 input channels): UNetModule's inputs plus the latent ``mask`` and the
    ``masked_image_latents``, concatenated after the (scaled) latents as diffusers' inpaint pipelines do."""

    def forward(  # type: ignore[override]
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, mask: Tensor,
        masked_image_latents: Tensor,
    ) -> Tensor:
        return super().forward(torch.cat([sample, mask, masked_image_latents], dim=1), timestep, encoder_hidden_states)


class SDXLInpaintUNetModule(SDXLUNetModule):
    """SDXLUNetModule for an inpainting UNet (as ``InpaintUNetModule``)."""

    def forward(  # type: ignore[override]
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor, time_ids: Tensor,
        mask: Tensor, masked_image_latents: Tensor,
    ) -> Tensor:
        return super().forward(torch.cat([sample, mask, masked_image_latents], dim=1), timestep, encoder_hidden_states,
                               text_embeds, time_ids)


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


class VaeEncoderModule(nn.Module):
    """``images`` in [-1, 1] ``[B, 3, H, W]`` -> ``(latent_mean, latent_std)``, each ``[B, C, H/8, W/8]``:
    diffusers' ``AutoencoderKL.encode(images).latent_dist`` (``DiagonalGaussianDistribution``:
    log-variance clamped to [-30, 20], std = exp(logvar / 2)), both times the scaling factor, so
    ``mean + std * noise`` is the scaled latent diffusers' img2img pipelines start from. Drawing
    the noise with the request's generator is the runtime's (``answer_trt.img2img``). Runs in the
    VAE's own dtype, as the decoder."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.channels = int(vae.config.latent_channels)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        dtype = next(self.vae.parameters()).dtype
        parameters = self.vae.encode(images.to(dtype), return_dict=False)[0].parameters
        # Sliced by the static channel count (a chunk of the traced shape would leave the exported
        # graph's channel axis symbolic); the rest as DiagonalGaussianDistribution computes it.
        mean, logvar = parameters[:, :self.channels], parameters[:, self.channels:]
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        return mean * self.scaling_factor, std * self.scaling_factor


def component_modules(model: Any) -> dict[str, nn.Module]:
    """The spec-shaped modules of a ``LoadedModel`` (every component of ``iospec.COMPONENTS``),
    in eval mode."""
    inpaint = model.unet.config.in_channels != model.unet.config.out_channels  # models/info.py: unet_channels
    if model.text_encoder_2 is not None:
        text: nn.Module = DualTextEncoderModule(model.text_encoder, model.text_encoder_2)
        unet: nn.Module = SDXLInpaintUNetModule(model.unet) if inpaint else SDXLUNetModule(model.unet)
    else:
        text = TextEncoderModule(model.text_encoder)
        unet = InpaintUNetModule(model.unet) if inpaint else UNetModule(model.unet)
    return {TEXT_ENCODER: text.eval(), UNET: unet.eval(), VAE_DECODER: VaeDecoderModule(model.vae).eval(),
            VAE_ENCODER: VaeEncoderModule(model.vae).eval()}
