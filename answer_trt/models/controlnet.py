"""ControlNet models for ``--controlnet DIR[:SCALE]``: diffusers-format ControlNet folders
(``ControlNetModel.save_pretrained``: ``config.json`` and the weights), checked against the
model's UNet from their configs alone, hashed by content, loaded for export.

A ControlNet adds one residual to each of the UNet's down-block outputs (its skip
connections) and one to the mid block's output: ``residual_layout`` lists their
``(channels, down factor)`` from the UNet or ControlNet config, as diffusers'
``UNet2DConditionModel`` / ``ControlNetModel`` build their down blocks (``conv_in``, then
``layers_per_block`` resnets per block and a downsampler after every block but the last).
A ControlNet fits a UNet when the two layouts, the cross-attention width and SDXL's added
embedding agree (``check_controlnet``); anything else is refused in one line before a build.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from answer_trt.build_config import ControlNetSpec
from answer_trt.errors import UserInputError
from answer_trt.files import tree_sha256
from answer_trt.models.info import ModelInfo, config_json, read_json_object

Residuals = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ControlNetFolder:
    """A checked ControlNet (``check_controlnet``): its folder, content ``sha256`` (of every
    file, ``files.tree_sha256``) and ``scale``."""

    path: Path
    sha256: str
    scale: float

    @property
    def tag(self) -> str:
        """``name:sha256-prefix:scale``, as PNG metadata names it."""
        return f"{self.path.name}:{self.sha256[:12]}:{self.scale!r}"


def residual_layout(config: dict[str, Any], file: Path) -> Residuals:
    """``(channels, down factor)`` of each down-block residual, then of the mid-block residual,
    of a UNet or ControlNet with diffusers' ``config`` (``block_out_channels``,
    ``layers_per_block``); ``UserInputError`` naming ``file`` where they are malformed."""
    blocks = config.get("block_out_channels")
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, int) and b > 0 for b in blocks):
        raise UserInputError(f"{file}: block_out_channels must be a list of positive widths, got {blocks!r}")
    layers = config.get("layers_per_block", 2)
    per_block = [layers] * len(blocks) if isinstance(layers, int) else layers
    if not isinstance(per_block, list) or len(per_block) != len(blocks) or not all(
            isinstance(n, int) and n > 0 for n in per_block):
        raise UserInputError(f"{file}: layers_per_block must be a positive integer or one per block, got {layers!r}")
    out = [(blocks[0], 1)]  # conv_in
    factor = 1
    for index, (channels, count) in enumerate(zip(blocks, per_block)):
        out += [(channels, factor)] * count
        if index < len(blocks) - 1:  # every block but the last ends with a downsampler
            factor *= 2
            out.append((channels, factor))
    out.append((blocks[-1], factor))  # the mid block
    return tuple(out)


def _family(config: dict[str, Any]) -> str:
    return "SDXL" if config.get("addition_embed_type") == "text_time" else "SD-1.x/2.x"


def check_controlnet(spec: ControlNetSpec, model_path: Path) -> ControlNetFolder:
    """``spec``'s folder checked against the model at ``model_path`` (its ``unet/config.json``),
    from the configs alone: a diffusers ControlNet (``_class_name`` ControlNetModel) of the same
    family (cross-attention width, SDXL's added embedding) and residual layout. Raises
    ``UserInputError`` in one line naming the mismatch."""
    folder = spec.path.expanduser()
    if not (folder / "config.json").is_file():
        raise UserInputError(f"--controlnet {spec.path}: not a diffusers ControlNet folder (no config.json); save it "
                             "with ControlNetModel.save_pretrained")
    file = folder / "config.json"
    config = read_json_object(file)
    if config.get("_class_name") not in ("ControlNetModel", None):
        raise UserInputError(f"--controlnet {spec.path}: {file} describes a {config.get('_class_name')}, not a "
                             "ControlNetModel")
    if config.get("global_pool_conditions"):
        raise UserInputError(f"--controlnet {spec.path}: its config sets global_pool_conditions (a shuffle-type "
                             "ControlNet, which diffusers always runs in guess mode with a per-ControlNet rule these "
                             "engines do not have): use another ControlNet")
    unet_file = model_path / "unet" / "config.json"
    unet = config_json(model_path, "unet")
    mine, theirs = _family(config), _family(unet)
    width, unet_width = config.get("cross_attention_dim"), unet.get("cross_attention_dim")
    if mine != theirs or width != unet_width:
        raise UserInputError(f"--controlnet {spec.path}: a {mine} ControlNet (cross_attention_dim {width}) for a "
                             f"{theirs} model (cross_attention_dim {unet_width}): use a ControlNet trained for this "
                             "model's family")
    if residual_layout(config, file) != residual_layout(unet, unet_file):
        raise UserInputError(f"--controlnet {spec.path}: its blocks (block_out_channels "
                             f"{config.get('block_out_channels')}, layers_per_block {config.get('layers_per_block')}) "
                             f"differ from the UNet's ({unet.get('block_out_channels')}, "
                             f"{unet.get('layers_per_block')}): use a ControlNet made for this model")
    return ControlNetFolder(folder.resolve(), tree_sha256(folder), spec.scale)


def load_controlnet(folder: ControlNetFolder) -> Any:
    """diffusers' ``ControlNetModel`` from ``folder``, float32, in eval mode."""
    from diffusers import ControlNetModel

    from answer_trt.models import quiet_libraries

    quiet_libraries()
    return ControlNetModel.from_pretrained(folder.path).float().eval()


def controlled_info(info: ModelInfo, model_path: Path, count: int) -> ModelInfo:
    """``info`` of the model at ``model_path`` built with ``count`` ControlNets: its dims name them
    and the residuals its UNet takes (``iospec.control_residual_specs``); ``info`` itself for none."""
    if not count:
        return info
    file = model_path / "unet" / "config.json"
    residuals = residual_layout(read_json_object(file), file)
    return replace(info, dims=replace(info.dims, controlnets=count, control_residuals=residuals))
