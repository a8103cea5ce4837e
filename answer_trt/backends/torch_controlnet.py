"""Spec-shaped torch modules of a folder built with ControlNets (``iospec.CONTROLNETS``): each
ControlNet as its own component, and the UNet taking their summed residuals as inputs. The
export stage exports them, the torch backend runs them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from answer_trt.iospec import CONTROLNETS, UNET


class ControlNetModule(nn.Module):
    """``(sample, timestep[B], encoder_hidden_states, controlnet_cond [B, 3, H, W] in [0, 1],
    conditioning_scale[B]) -> (down_block_res_0, ..., mid_block_res)``: diffusers'
    ``ControlNetModel`` (guess mode off) with each row's residuals times its scale, as diffusers
    multiplies them by ``conditioning_scale``."""

    def __init__(self, controlnet: Any) -> None:
        super().__init__()
        self.controlnet = controlnet

    def residuals(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, controlnet_cond: Tensor,
                  conditioning_scale: Tensor, added: dict[str, Tensor] | None = None) -> tuple[Tensor, ...]:
        dtype = next(self.controlnet.parameters()).dtype
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=controlnet_cond.to(dtype), conditioning_scale=1.0,
                                    added_cond_kwargs=added, return_dict=False)
        scale = conditioning_scale.to(mid.dtype).view(-1, 1, 1, 1)
        return (*(d * scale for d in down), mid * scale)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, controlnet_cond: Tensor,
                conditioning_scale: Tensor) -> tuple[Tensor, ...]:
        return self.residuals(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale)


class SDXLControlNetModule(ControlNetModule):
    """ControlNetModule plus SDXL's added conditions (pooled ``text_embeds``, ``time_ids``)."""

    def forward(  # type: ignore[override]
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor, time_ids: Tensor,
        controlnet_cond: Tensor, conditioning_scale: Tensor,
    ) -> tuple[Tensor, ...]:
        return self.residuals(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                              {"text_embeds": text_embeds, "time_ids": time_ids})


class _ResidualUNet(nn.Module):
    """A diffusers UNet called with the ControlNet residuals set on it (``residuals``)."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet
        self.residuals: tuple[Tensor, ...] = ()

    @property
    def config(self) -> Any:
        return self.unet.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dtype = next(self.unet.parameters()).dtype
        *down, mid = (r.to(dtype) for r in self.residuals)
        return self.unet(*args, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid,
                         **kwargs)


class ControlledUNetModule(nn.Module):
    """A spec-shaped UNet module (``torch_modules``) whose inputs end with the ControlNet residuals
    (``iospec.control_residual_specs``), added to its down-block and mid-block outputs as
    diffusers' ``down_block_additional_residuals`` / ``mid_block_additional_residual``."""

    def __init__(self, inner: nn.Module, residuals: int) -> None:
        super().__init__()
        self.proxy = _ResidualUNet(inner.unet)
        inner.unet = self.proxy
        self.inner = inner
        self.count = residuals

    def forward(self, *inputs: Tensor) -> Tensor:
        self.proxy.residuals = tuple(inputs[-self.count:])
        try:
            out: Tensor = self.inner(*inputs[:-self.count])
        finally:
            self.proxy.residuals = ()
        return out


def with_controlnets(modules: dict[str, nn.Module], controlnets: list[Any], residuals: int,
                     sdxl: bool) -> dict[str, nn.Module]:
    """``modules`` (``torch_modules.component_modules``) with the UNet taking ``residuals`` inputs
    and one ControlNet component per diffusers ``ControlNetModel`` of ``controlnets``, in order."""
    if not controlnets:
        return modules
    kind = SDXLControlNetModule if sdxl else ControlNetModule
    return {**modules, UNET: ControlledUNetModule(modules[UNET], residuals).eval(),
            **{name: kind(model).eval() for name, model in zip(CONTROLNETS, controlnets)}}
