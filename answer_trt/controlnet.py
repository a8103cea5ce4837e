"""ControlNet at run time: control images, their windows, and the fused denoiser.

A folder built with ``--controlnet`` (``answer_trt.models.controlnet``) holds one engine per
ControlNet (``iospec.CONTROLNETS``) and a UNet that takes their residuals. Each UNet call's rows
(every branch of every image: CFG's 2, ANSWER's 2-3) first go through each ControlNet in one
call, the residuals of several ControlNets are summed as diffusers' ``MultiControlNetModel``
sums them, and then the UNet runs once on the rows with the sums (``ControlledDenoiser``).

As diffusers' ControlNet pipelines (``StableDiffusionControlNetPipeline.prepare_image``): the
control image is resized to the output size (Lanczos, ``VaeImageProcessor``), scaled to [0, 1]
(not normalized) and repeated for every row; each ControlNet's residuals are times its
conditioning scale at steps inside ``control_guidance_start``/``end`` and times 0 outside
(diffusers' ``controlnet_keep``: step i of n is kept unless ``i / n < start`` or
``(i + 1) / n > end``). The rows carry the control (``TextCondition.control*``), so the
negative and adaptive branches get the same control as the positive one.

Guess mode (diffusers' ``guess_mode``; docs/ANSWER.md, "ControlNet"): with CFG diffusers runs the
ControlNet on the conditional rows alone and gives the unconditional rows zero residuals, and
``ControlNetModel`` scales the residuals block by block with ``torch.logspace(-1, 0, n + 1)``
(0.1 at the first down residual up to 1 at the mid block). Here every row conditioned on the
prompt (c_p: CFG's and DNS's positive row, ANSWER's x and z rows on c_p) gets the control with
those factors, and every row on c_0 or a negative prompt gets scale 0 (zero residuals); the
ControlNets still run on all rows in one call (the zero rows cost the same, the shapes stay
those of the step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from answer_trt.backends.base import Engine, EngineDenoiser
from answer_trt.build_config import MAX_CONTROLNET_SCALE
from answer_trt.conditioning import Conditioning, TextCondition
from answer_trt.errors import UserInputError
from answer_trt.iospec import CONDITIONING_SCALE, CONTROL_IMAGE, CONTROLNETS, HIDDEN, POOLED, TIME_IDS, UNET

# A control image's aspect ratio may differ from the output's by this share (rounding to the
# size multiple); more would distort it when resized, and is refused.
ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class ControlImages:
    """The control images of a request: ``pixels`` ``[1, K, 3, H, W]`` float32 in [0, 1] at the
    output size, one per ControlNet, and the sha256 of each as given (``img2img.image_sha256``)."""

    pixels: Tensor
    sha256s: tuple[str, ...]

    @property
    def sha256(self) -> str:
        """What the request records (``control_image_sha256``): the hashes, comma-separated."""
        return ",".join(self.sha256s)


def load_control_images(value: Any, count: int, height: int, width: int) -> ControlImages:
    """``value``: one image (path, PIL image, ``[H, W, 3]`` array) for every ControlNet, or a list
    of ``count``, one each. Each is resized to ``height`` x ``width`` (Lanczos) where its size
    differs; ``UserInputError`` in one line for an unreadable image, a wrong count or an aspect
    ratio other than the output's."""
    from answer_trt.img2img import load_init_image

    if count == 0:
        raise UserInputError("control_image: these engines were built without a ControlNet: rebuild with "
                             "--controlnet DIR[:SCALE], or drop the control image")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values *= count
    if len(values) != count:
        raise UserInputError(f"control_image: {len(values)} images for {count} ControlNet(s): give one image for all, "
                             f"or one per ControlNet in --controlnet order")
    pixels, hashes = [], []
    for index, item in enumerate(values):
        what = "control_image" if count == 1 else f"control_image {index + 1}"
        given = load_init_image(item, None, None, what=what)
        aspect, wanted = given.width / given.height, width / height
        if abs(aspect / wanted - 1) > ASPECT_TOLERANCE:
            raise UserInputError(f"{what} is {given.width}x{given.height}, and the output is {width}x{height}: give a "
                                 "control image of the output's aspect ratio (it is resized to the output size)")
        image = given if (given.height, given.width) == (height, width) else load_init_image(item, height, width,
                                                                                              what=what)
        pixels.append((image.pixels[0] + 1.0) * 0.5)  # [-1, 1] back to [0, 1]: diffusers does not normalize
        hashes.append(given.sha256)
    return ControlImages(torch.stack(pixels)[None], tuple(hashes))


def _check_number(name: str, value: Any, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= high:
        raise UserInputError(f"{name} must be a number in 0 .. {high:g}, got {value!r}")


def check_guidance_window(start: float, end: float) -> None:
    """Both in [0, 1], and diffusers' rule: ``control_guidance_start < control_guidance_end``."""
    _check_number("control_guidance_start", start, 1.0)
    _check_number("control_guidance_end", end, 1.0)
    if start >= end:
        raise UserInputError(f"control_guidance_start {start} must be below control_guidance_end {end}")


def check_control_fields(request: Any) -> None:
    """The request's ControlNet fields in their bounds (what the CLI refuses before any build)."""
    check_guidance_window(request.control_guidance_start, request.control_guidance_end)
    if request.controlnet_conditioning_scale is not None:
        _check_number("controlnet_conditioning_scale", request.controlnet_conditioning_scale, MAX_CONTROLNET_SCALE)


def check_control(request: Any, control: ControlImages | None, height: int, width: int) -> None:
    """Refuse, in one line, a request whose control images are missing or are not the ones it
    names (``control_image_sha256``: a replay needs the same pixels), are not at the output size
    ``height`` x ``width``, or whose guidance window is empty."""
    check_control_fields(request)
    named = request.control_image_sha256
    if control is None:
        if request.guess_mode is True:
            raise UserInputError("guess_mode is ControlNet's: pass a control image (control_image=... / "
                                 "--control-image FILE), or drop guess_mode")
        if named:
            raise UserInputError(f"the request was drawn with control image(s) (sha256 {named[:16]}...): pass them "
                                 "(control_image=... / --control-image FILE)")
        return
    if named and named != control.sha256:
        raise UserInputError(f"the control image(s) given are not the ones the request was drawn with (sha256 "
                             f"{named[:16]}...): pass those")
    size = tuple(control.pixels.shape[-2:])
    if size != (height, width):
        raise UserInputError(f"the control image is {size[1]}x{size[0]} and the output {width}x{height}: load it at "
                             "the output size (answer_trt.controlnet.load_control_images)")


def control_windows(timesteps: Tensor, start: float, end: float, count: int) -> Tensor:
    """``[count, 2]`` (low, high) timesteps of the steps diffusers keeps the control at (the
    module docstring) over a schedule's ``timesteps`` (each UNet call's t); an empty window
    (low > high) where no step is kept."""
    n = len(timesteps)
    kept = [float(timesteps[i]) for i in range(n) if not (i / n < start or (i + 1) / n > end)]
    window = (min(kept), max(kept)) if kept else (float("inf"), float("-inf"))
    return torch.tensor([window] * count, dtype=torch.float32)


def attach_control(cond: Conditioning, images: ControlImages, scales: Sequence[float], windows: Tensor,
                   batch: int, device: torch.device, guess_mode: bool = False) -> Conditioning:
    """``cond`` with the control on both conditions, for ``batch`` images each; in guess mode the
    negative condition's scale is 0 and both carry the guess flag (the module docstring)."""
    pixels = images.pixels.to(device).expand(batch, *images.pixels.shape[1:])
    scale = torch.tensor([list(scales)], dtype=torch.float32, device=device).expand(batch, -1)
    window = windows.to(device)[None].expand(batch, *windows.shape)
    guess = torch.full((batch,), float(guess_mode), dtype=torch.float32, device=device)

    def add(c: TextCondition, row_scale: Tensor) -> TextCondition:
        return replace(c, control=pixels, control_scale=row_scale, control_window=window, control_guess=guess)

    return Conditioning(add(cond.positive, scale), add(cond.negative, scale * 0.0 if guess_mode else scale))


def guess_factors(guess: Tensor, blocks: int) -> Tensor:
    """``[B, blocks]`` factors of each row's residuals (down residuals, then the mid block's):
    diffusers' guess-mode scales ``torch.logspace(-1, 0, blocks)`` on rows whose ``guess`` ``[B]``
    is 1, and 1 on rows where it is 0."""
    scales = torch.logspace(-1, 0, blocks, device=guess.device)
    g = guess.to(torch.float32)[:, None]
    return g * scales[None] + (1.0 - g)


def _side(symbol: str, latent: tuple[int, int]) -> int:
    """A residual's spatial size from its symbol (``latent_height``, ``latent_width_2``, ...)."""
    axis, _, factor = symbol.partition("_")[2].partition("_")
    size = latent[0] if axis == "height" else latent[1]
    return size // int(factor or 1)


class ControlledDenoiser:
    """The sampler's ``denoiser(latents, t, cond)`` over a UNet engine with ControlNet residual
    inputs and the ControlNet engines (in ``--controlnet`` order): one call of each ControlNet on
    all rows, then one UNet call. Rows without control (``cond.control`` None: a request that gave
    no control image) feed zero residuals, which leave the UNet as it is."""

    def __init__(self, unet: Engine, controlnets: Sequence[Engine]) -> None:
        self.unet, self.controlnets = unet, list(controlnets)
        self.base = EngineDenoiser(unet)
        self.residuals = [t for t in unet.spec.inputs if t.name.startswith(("down_block_res_", "mid_block_res"))]

    def __call__(self, latents: Tensor, timesteps: Tensor, cond: TextCondition) -> Tensor:
        feeds = {self.base.sample_name: latents, self.base.timestep_name: timesteps, **cond.feeds()}
        if cond.control is None or cond.control_scale is None or cond.control_window is None:
            rows, side = latents.shape[0], (latents.shape[2], latents.shape[3])
            for spec in self.residuals:
                shape = (rows, int(spec.shape[1]), _side(str(spec.shape[2]), side), _side(str(spec.shape[3]), side))
                feeds[spec.name] = latents.new_zeros(shape)
            return self.unet.run(feeds)[self.base.output_name]
        text = {name: feeds[name] for name in (HIDDEN, POOLED, TIME_IDS) if name in feeds}
        t = timesteps.to(torch.float32)
        summed: dict[str, Tensor] = {}
        for k, engine in enumerate(self.controlnets):
            window = cond.control_window[:, k]
            keep = (t >= window[:, 0]) & (t <= window[:, 1])
            out = engine.run({"sample": latents, "timestep": timesteps, **text, CONTROL_IMAGE: cond.control[:, k],
                              CONDITIONING_SCALE: cond.control_scale[:, k] * keep.to(torch.float32)})
            summed = out if not summed else {name: summed[name] + out[name] for name in summed}
        if cond.control_guess is not None:
            summed = self.guessed(summed, cond.control_guess)
        return self.unet.run({**feeds, **summed})[self.base.output_name]

    def guessed(self, residuals: dict[str, Tensor], guess: Tensor) -> dict[str, Tensor]:
        """``residuals`` (by the UNet's input names) times ``guess_factors`` per row and block
        (the same factor for every ControlNet of a block: applied to their sum)."""
        names = [spec.name for spec in self.residuals]  # down_block_res_0 .., then mid_block_res
        factors = guess_factors(guess, len(names))
        out = dict(residuals)
        for index, name in enumerate(names):
            out[name] = residuals[name] * factors[:, index].to(residuals[name].dtype).view(-1, 1, 1, 1)
        return out


def controlnet_engines(engines: Mapping[str, Engine]) -> list[Engine]:
    """The ControlNet engines of a folder, in ``--controlnet`` order."""
    return [engines[name] for name in CONTROLNETS if name in engines]


def make_denoiser(engines: Mapping[str, Engine]) -> Any:
    """The denoiser over a folder's engines: ``ControlledDenoiser`` where it has ControlNets,
    else the UNet alone (``EngineDenoiser``)."""
    controlnets = controlnet_engines(engines)
    return ControlledDenoiser(engines[UNET], controlnets) if controlnets else EngineDenoiser(engines[UNET])
