"""Image to image: the input image, ``strength``, and where the sampling loop starts, as
diffusers' ``StableDiffusionImg2ImgPipeline`` and ``StableDiffusionXLImg2ImgPipeline`` do it.

- The image (a path, a PIL image or an ``[H, W, 3]`` array) becomes ``[1, 3, H, W]`` float32 in
  [-1, 1] as diffusers' ``VaeImageProcessor.preprocess`` makes it (8-bit values / 255, then
  ``2 x - 1``); RGBA and greyscale are converted to RGB first. Its size is the output size;
  a requested ``height``/``width`` that differs resizes it with Lanczos, as ``VaeImageProcessor``
  resizes (``load_init_image``). It is identified by ``image_sha256``, the sha256 of its pixels,
  which each output PNG records and a replay checks.
- ``strength`` picks the first step as diffusers' ``get_timesteps``: of ``steps`` timesteps the
  last ``min(int(steps * strength), steps)`` run (``strength_start``); ``StartedRule`` is a step
  rule begun there.
- The start latents (``start_latents``): the VAE encoder's distribution sampled with the
  request's generator(s) (diffusers' ``retrieve_latents(..., sample_mode="sample")``), then
  ``scheduler.add_noise`` at the first timestep with noise drawn next from the same
  generator(s); the generators, so advanced, draw a stochastic sampler's step noise after.

ANSWER's negative chain starts from the same noised latent: its first step is an anchor
(``guiders.anchored_steps``: step 0 always is), where z <- x.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from answer_trt.conditioning import Conditioning
from answer_trt.errors import UserInputError
from answer_trt.iospec import LATENT_MEAN, LATENT_STD
from answer_trt.schedulers import StepNoise, StepRule, draw_noise, noise_generators

# The largest input image, in pixels (checked from the file's header, before decoding it).
MAX_IMAGE_PIXELS = 4096 * 4096
# diffusers' default strengths: StableDiffusionImg2ImgPipeline 0.8, StableDiffusionXLImg2ImgPipeline 0.3.
DEFAULT_STRENGTH, DEFAULT_STRENGTH_XL = 0.8, 0.3
# ... and their inpaint pipelines': StableDiffusionInpaintPipeline 1.0, StableDiffusionXLInpaintPipeline 0.9999.
INPAINT_STRENGTH, INPAINT_STRENGTH_XL = 1.0, 0.9999


@dataclass(frozen=True)
class InitImage:
    """An input image ready for the VAE encoder: ``pixels`` ``[1, 3, H, W]`` float32 in [-1, 1]
    (resized where the request asked for another size), ``sha256``: ``image_sha256`` of the image
    as given."""

    pixels: Tensor
    sha256: str
    # Inpainting (``answer_trt.inpaint.load_mask``): ``[1, 1, H, W]`` float32, 1 where the image is
    # repainted and 0 where it is kept, and ``mask_sha256`` of the mask as given.
    mask: Tensor | None = None
    mask_sha256: str | None = None
    given_size: tuple[int, int] | None = None  # (H, W) of the image as given, before any resize

    @property
    def height(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[3])


def image_sha256(pixels: np.ndarray) -> str:
    """The sha256 (hex) of an image's pixels ``[H, W, 3]`` (uint8, or float32 in [0, 1] for a
    float array), prefixed with its shape and dtype: the same for the same picture whether it
    comes as a PNG file, a PIL image or an array (not the file's own sha256: the container and
    its metadata do not count)."""
    header = f"{pixels.shape[0]}x{pixels.shape[1]}x{pixels.shape[2]} {pixels.dtype}\n".encode()
    return hashlib.sha256(header + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _open_image(path: Path | bytes, what: str) -> Any:
    """The image file at ``path`` (or its bytes) as an RGB PIL image; its size checked from the
    header first."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(path, bytes):
        source: Any = io.BytesIO(path)
        label = what
    elif not path.is_file():
        raise UserInputError(f"{what} {path}: no such file; give the path of a PNG or JPEG image")
    else:
        source, label = path, f"{what} {path}"
    too_large = None
    try:
        with Image.open(source) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                too_large = f"{width}x{height}"
            else:
                return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserInputError(f"{label} is not a readable image ({type(exc).__name__}): give a PNG or JPEG "
                             "file") from None
    raise UserInputError(f"{label} is {too_large}, above the cap of {MAX_IMAGE_PIXELS} pixels: resize it first")


def _rgb_array(value: Any, what: str) -> tuple[np.ndarray, Any]:
    """``(pixels [H, W, 3], PIL image or None)`` of an image given as a path, its file's bytes, a
    PIL image or an array."""
    from PIL import Image

    if isinstance(value, (str, os.PathLike, bytes)):
        image = _open_image(value if isinstance(value, bytes) else Path(value), what)
        return np.asarray(image), image
    if isinstance(value, Image.Image):
        if value.width * value.height > MAX_IMAGE_PIXELS:
            raise UserInputError(f"{what} is {value.width}x{value.height}, above the cap of {MAX_IMAGE_PIXELS} pixels")
        image = value.convert("RGB")
        return np.asarray(image), image
    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[2] != 3 or value.shape[0] * value.shape[1] > MAX_IMAGE_PIXELS:
            raise UserInputError(f"{what}: an array must be [height, width, 3] (RGB) of at most {MAX_IMAGE_PIXELS} "
                                 f"pixels, got shape {list(value.shape)}")
        if value.dtype == np.uint8:
            return value, Image.fromarray(value)
        if np.issubdtype(value.dtype, np.floating):
            pixels = value.astype(np.float32)
            if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
                raise UserInputError(f"{what}: a float array holds values in [0, 1] (diffusers' convention)")
            return pixels, None
        raise UserInputError(f"{what}: an array must be uint8 or float in [0, 1], got {value.dtype}")
    raise UserInputError(f"{what} must be a path, a PIL image or an [H, W, 3] array, got {type(value).__name__}")


def load_init_image(value: Any, height: int | None = None, width: int | None = None,
                    what: str = "image") -> InitImage:
    """``value`` (a path, a PIL image or an ``[H, W, 3]`` uint8 / float [0, 1] array) as an
    ``InitImage``. ``height``/``width`` (None: the image's own) resize it where they differ, with
    Lanczos as diffusers' ``VaeImageProcessor`` (a float array is not resized: refused). Raises
    ``UserInputError`` in one line for what is not a readable image or is above ``MAX_IMAGE_PIXELS``."""
    from PIL import Image

    pixels, image = _rgb_array(value, what)
    sha256 = image_sha256(pixels)
    pixels_given_shape = pixels.shape
    size = (height or pixels.shape[0], width or pixels.shape[1])
    if size != pixels.shape[:2]:
        if image is None:
            raise UserInputError(f"{what}: a float array is not resized; give it at {size[1]}x{size[0]}, or as uint8")
        pixels = np.asarray(image.resize((size[1], size[0]), resample=Image.Resampling.LANCZOS))
    values = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
    tensor = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))[None]
    return InitImage(2.0 * tensor - 1.0, sha256, given_size=(int(pixels_given_shape[0]), int(pixels_given_shape[1])))


def check_strength(strength: Any, steps: int) -> float:
    """``strength`` in (0, 1], giving at least one denoising step of ``steps``; else ``UserInputError``."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise UserInputError(f"strength must be a number in (0, 1] (the share of the steps that redraw the image), "
                             f"got {strength!r}")
    if int(steps * strength) < 1:
        raise UserInputError(f"strength {strength} of {steps} steps runs no denoising step (int(steps x strength) "
                             "is 0): raise --strength or --steps")
    return float(strength)


def strength_start(steps: int, strength: float, order: int = 1) -> int:
    """The index of the first timestep an img2img run takes of the ``steps``-step schedule
    (diffusers' ``get_timesteps``: ``t_start = steps - min(int(steps * strength), steps)``,
    times the scheduler's ``order``)."""
    return max(steps - min(int(steps * strength), steps), 0) * order


class StartedRule:
    """A step rule begun at timestep index ``start`` of ``rule``: step i here is step
    ``start + i`` there (timesteps, levels, input scaling and update)."""

    def __init__(self, rule: StepRule, start: int) -> None:
        self.rule, self.start = rule, start
        self.timesteps = rule.timesteps[start:]
        self.init_noise_sigma = rule.init_noise_sigma
        self.draws_noise = rule.draws_noise

    def levels(self, i: int) -> tuple[float, float]:
        return self.rule.levels(self.start + i)

    def scale_input(self, x: Tensor, i: int) -> Tensor:
        return self.rule.scale_input(x, self.start + i)

    def step(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        return self.rule.step(eps, self.start + i, x)

    def fork(self) -> StepRule:
        return StartedRule(self.rule.fork(), self.start)

    def seeded(self, noise: StepNoise | None) -> StepRule:
        return StartedRule(self.rule.seeded(noise), self.start)


def begin_at(scheduler: Any, start: int) -> None:
    """Tell a scheduler with a step index that sampling begins at ``start`` (diffusers'
    ``set_begin_index``, which its ``add_noise`` and first ``step`` read)."""
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)


def add_noise(scheduler: Any, latents: Tensor, noise: Tensor, start: int) -> Tensor:
    """``latents`` noised to the schedule's timestep ``start`` (set by ``set_timesteps``), as
    diffusers' ``scheduler.add_noise`` (which a diffusers scheduler runs itself): sigma-indexed
    schedules (Euler) ``x0 + sigma noise``; the others ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``."""
    t = scheduler.timesteps[start:start + 1].repeat(latents.shape[0])
    own = getattr(scheduler, "add_noise", None)
    if callable(own):
        return own(latents, noise, t)
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas):
        return latents + noise * sigmas.to(latents.device, latents.dtype)[start]
    alphas_cumprod = scheduler.alphas_cumprod.to(latents.device, latents.dtype)
    alphabar = alphas_cumprod[t.to(latents.device).long()][:, None, None, None]
    return alphabar**0.5 * latents + (1 - alphabar) ** 0.5 * noise


@dataclass(frozen=True)
class ImageStart:
    """Where a run from an input image starts: ``latents`` ``[B, C, h, w]`` float32 (``noised``:
    already at the first step's level; else unit noise the sampler scales), the generators'
    ``step_noise`` for a stochastic sampler, ``after_step`` (inpainting with an ordinary UNet: the
    blend after step i, ``answer_trt.inpaint``) and ``unet_inputs`` (an inpainting UNet: the latent
    mask ``[B, 1, h, w]`` and the masked image's latents ``[B, C, h, w]``)."""

    latents: Tensor
    noised: bool
    step_noise: StepNoise
    after_step: Callable[[int, Tensor], Tensor] | None = None
    unet_inputs: tuple[Tensor, Tensor] | None = None

    def condition(self, cond: Conditioning) -> Conditioning:
        """``cond`` with an inpainting UNet's further inputs (``unet_inputs``) on both conditions."""
        if self.unet_inputs is None:
            return cond
        mask, masked = self.unet_inputs
        return Conditioning(replace(cond.positive, mask=mask, masked_image_latents=masked),
                            replace(cond.negative, mask=mask, masked_image_latents=masked))


def start_latents(encoder: Any, image: InitImage, scheduler: Any, start: int, batch: int, seed: int,
                  seeds: tuple[int, ...] | None, device: torch.device) -> ImageStart:
    """The latents ``[batch, C, h, w]`` float32 an img2img run starts from, and the step noise of a
    stochastic sampler, as diffusers' img2img ``prepare_latents`` with the request's generator(s)
    (``noise_generators(seed, seeds)``): the encoder's mean and std (scaled) at the image, one
    latent drawn ``mean + std * n`` (one per image with per-image seeds), repeated to the batch,
    then ``add_noise`` at timestep ``start`` with noise drawn next (``draw_noise``)."""
    generators = noise_generators(seed, seeds)
    latents = encode_sample(encoder, image.pixels, generators, batch, device)
    noise = draw_noise(generators, latents.shape).to(device)
    noised = add_noise(scheduler, latents, noise, start)
    return ImageStart(noised.to(torch.float32), True, StepNoise(generators, (seed,) if seeds is None else seeds))


def encode_sample(encoder: Any, pixels: Tensor, generators: list[torch.Generator], batch: int,
                  device: torch.device) -> Tensor:
    """diffusers' ``scaling_factor * retrieve_latents(vae.encode(pixels), generator)`` for one image
    ``pixels`` ``[1, 3, H, W]``, repeated to ``batch`` rows (float32): the encoder's mean and std
    (scaled), one draw ``mean + std * n`` from the generator, or one per image from each of a
    list (``draw_noise``)."""
    out = encoder.run({encoder.spec.input_names[0]: pixels.to(device)})
    mean, std = (out[name].to(torch.float32) for name in (LATENT_MEAN, LATENT_STD))
    sample = draw_noise(generators, (len(generators), *mean.shape[1:])).to(device)
    latents = mean + std * sample
    return latents if latents.shape[0] == batch else torch.cat([latents] * batch)


def check_init(request: Any, init: InitImage | None, *, has_encoder: bool, rebuild_command: str, sdxl: bool,
               multiple: int, height: Any = None, width: Any = None, inpaint_unet: bool = False) -> float | None:
    """The img2img ``strength`` of ``request`` (a ``GenerateRequest``) with its input image
    ``init``, or None for text to image; refuses in one line: ``strength`` without an image, an
    image the request does not name (``image_sha256``) or a named one missing, engines without the
    VAE encoder (``has_encoder``; ``rebuild_command`` adds it), a size that is not a multiple of
    ``multiple`` or outside the built ``height``/``width`` ranges (``SizeRange`` or None); the
    same for inpainting's mask (``mask_sha256``), which an inpainting UNet (``inpaint_unet``) needs."""
    named = request.image_sha256
    masked = init is not None and init.mask is not None
    if request.mask_sha256 != (init.mask_sha256 if init is not None else None):
        if not masked:
            raise UserInputError(f"the request names a mask (mask_sha256 {str(request.mask_sha256)[:16]}...) and none "
                                 "came with it: pass the mask (mask_image=..., --mask FILE) with its image")
        raise UserInputError("the mask given is not the one the request names: pass that mask")
    if request.mask_blur and not masked:
        raise UserInputError("mask_blur applies to inpainting: pass a mask (mask_image=..., --mask FILE), or leave "
                             "mask_blur out")
    if inpaint_unet and not masked:
        raise UserInputError("this model's UNet is an inpainting UNet (9 input channels): give an image and a mask "
                             "(image=..., mask_image=...; --image FILE --mask FILE)")
    if init is None:
        if named:
            raise UserInputError(f"the request names an input image (image_sha256 {str(named)[:16]}...) and none came "
                                 "with it: pass the image (image=..., --image FILE), or leave image_sha256 out")
        if request.strength is not None:
            raise UserInputError("strength applies to img2img: pass an input image (image=..., --image FILE), or "
                                 "leave strength out")
        return None
    if named != init.sha256:
        raise UserInputError(f"the image given (sha256 {init.sha256[:16]}...) is not the one the request names "
                             f"({str(named)[:16]}...): pass that image")
    if not has_encoder:
        raise UserInputError(f"these engines were built without the VAE encoder that img2img needs: rebuild with "
                             f"`{rebuild_command}`")
    if (request.height, request.width) != (init.height, init.width):
        raise UserInputError(f"the request asks for {request.width}x{request.height} and the image is "
                             f"{init.width}x{init.height}: resize the image (pass height/width with it)")
    for side, value, built in (("height", init.height, height), ("width", init.width, width)):
        if value % multiple or (built is not None and not built.low <= value <= built.high):
            served = f"a multiple of {multiple}" + (f" in {built.low}..{built.high}" if built is not None else "")
            raise UserInputError(f"img2img draws at the input image's size, here {init.width}x{init.height} (--height/"
                                 f"--width resize it, Lanczos): its {side} must be {served} for these engines")
    strength = request.strength
    if strength is None and masked:  # diffusers' inpaint pipelines' defaults
        strength = INPAINT_STRENGTH_XL if sdxl else INPAINT_STRENGTH
    elif strength is None:
        strength = DEFAULT_STRENGTH_XL if sdxl else DEFAULT_STRENGTH
    return check_strength(strength, request.steps)


def started(scheduler: Any, rule: StepRule, steps: int, strength: float) -> tuple[StepRule, int]:
    """``rule`` (of ``scheduler``, its ``steps`` timesteps set) begun where ``strength`` starts
    (``strength_start``), and that index; the scheduler told so (``begin_at``)."""
    start = strength_start(steps, strength, int(getattr(scheduler, "order", 1)))
    begin_at(scheduler, start)
    return StartedRule(rule, start), start
