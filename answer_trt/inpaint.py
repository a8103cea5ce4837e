"""Inpainting: repaint where a mask is white, keep the rest, as diffusers'
``StableDiffusionInpaintPipeline`` / ``StableDiffusionXLInpaintPipeline`` do for both kinds of UNet.

- The mask (``load_mask``): a greyscale image of the input image's size (white: repaint, black:
  keep); ``mask_blur`` blurs it first (PIL's Gaussian blur of that radius, diffusers'
  ``VaeImageProcessor.blur``); then as diffusers' mask processor: resized with the image
  (Lanczos), scaled to [0, 1] and binarized at 0.5. The masked image is the image where the mask
  is 0 (``pixels * (mask < 0.5)``).
- The start (``inpaint_start``), drawing from the request's generator(s) in diffusers' order: the
  image's latents (an ordinary UNet, or ``strength < 1``), the noise, then the masked image's
  latents; at ``strength == 1`` the loop starts from the noise alone (times the scheduler's
  ``init_noise_sigma``), else from the image's latents noised to the first timestep.
- An ordinary (4-channel) UNet: after every step the latents outside the mask are replaced by the
  image's latents noised to the next timestep (the clean latents after the last): ``after_step``.
- An inpainting UNet (9 input channels, ``ModelDims.inpaint_unet``): the UNet reads the latent
  mask (the mask resized to the latents, nearest) and the masked image's latents beside the
  latents, as extra inputs of every row (``conditioning.TextCondition``); nothing is blended.

ANSWER's negative chain z starts at x (step 0 is an anchor) and is re-anchored to the blended x;
between anchors it is not blended (it is the negative prediction's chain, not the image).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from answer_trt.errors import UserInputError
from answer_trt.img2img import (
    MAX_IMAGE_PIXELS,
    ImageStart,
    InitImage,
    _open_image,
    add_noise,
    encode_sample,
    image_sha256,
)
from answer_trt.schedulers import StepNoise, draw_noise, noise_generators

MAX_MASK_BLUR = 64  # pixels of Gaussian blur radius


def with_mask(init: InitImage, mask: Any, blur: Any = 0, what: str = "mask") -> InitImage:
    """``init`` with its inpainting ``mask`` (``load_mask``: the image's size as given, resized as the
    image was, blurred by ``blur`` pixels first)."""
    assert init.given_size is not None  # load_init_image records it
    values, sha256 = load_mask(mask, init.given_size, (init.height, init.width), blur, what)
    return replace(init, mask=values, mask_sha256=sha256)


def load_mask(value: Any, image_size: tuple[int, int], size: tuple[int, int], blur: int = 0,
              what: str = "mask") -> tuple[Tensor, str]:
    """``(mask [1, 1, H, W] float32 of 0 and 1, sha256)`` of a mask given as a path, a PIL image
    or an ``[H, W]`` / ``[H, W, 3]`` uint8 array: ``image_size`` ``(H, W)`` is the input image's as
    given (the mask's must equal it), ``size`` the size the image was resized to, ``blur`` the
    Gaussian blur radius in pixels. ``sha256``: ``img2img.image_sha256`` of the greyscale mask as
    given. Refuses in one line a mask of another size, with colours, or unreadable."""
    from PIL import Image, ImageFilter

    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        from pathlib import Path

        image = _open_image(value if isinstance(value, bytes) else Path(value), what)
    elif isinstance(value, Image.Image):
        if value.width * value.height > MAX_IMAGE_PIXELS:
            raise UserInputError(f"{what} is {value.width}x{value.height}, above the cap of {MAX_IMAGE_PIXELS} pixels")
        image = value.convert("RGB")
    elif isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3):
        image = Image.fromarray(value if value.ndim == 2 else value[..., :3]).convert("RGB")
    else:
        raise UserInputError(f"{what} must be a path, a PIL image or a uint8 [H, W] array (white: repaint), got "
                             f"{type(value).__name__}")
    rgb = np.asarray(image)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
        raise UserInputError(f"{what} has colours: give a greyscale mask (white: repaint, black: keep)")
    if rgb.shape[:2] != tuple(image_size):
        raise UserInputError(f"{what} is {rgb.shape[1]}x{rgb.shape[0]} and the image {image_size[1]}x{image_size[0]}: "
                             "give a mask of the image's size")
    if isinstance(blur, bool) or not isinstance(blur, int) or not 0 <= blur <= MAX_MASK_BLUR:
        raise UserInputError(f"mask_blur must be an integer in 0 .. {MAX_MASK_BLUR} (pixels), got {blur!r}")
    grey = Image.fromarray(rgb[..., 0])
    sha256 = image_sha256(rgb[..., :1])
    if blur:
        grey = grey.filter(ImageFilter.GaussianBlur(blur))
    if (grey.height, grey.width) != tuple(size):
        grey = grey.resize((size[1], size[0]), resample=Image.Resampling.LANCZOS)
    values = torch.from_numpy(np.asarray(grey).astype(np.float32) / 255.0)[None, None]
    return (values >= 0.5).to(torch.float32), sha256


def inpaint_start(encoder: Any, image: InitImage, scheduler: Any, start: int, steps: int, strength: float,
                  latent_shape: tuple[int, int, int], batch: int, seed: int, seeds: tuple[int, ...] | None,
                  device: torch.device, inpaint_unet: bool) -> ImageStart:
    """diffusers' inpaint ``prepare_latents`` and ``prepare_mask_latents`` (see the module
    docstring) for ``image`` (with its mask), the schedule begun at ``start`` running ``steps``
    steps, ``batch`` images of ``latent_shape`` ``(C, h, w)`` from the request's generator(s)."""
    assert image.mask is not None  # an inpainting request's image carries its mask
    generators = noise_generators(seed, seeds)
    full = strength == 1.0
    image_latents = None
    if not inpaint_unet or not full:
        image_latents = encode_sample(encoder, image.pixels, generators, batch, device)
    shape = (batch, *latent_shape)
    noise = draw_noise(generators, shape).to(device)
    if full:
        latents, noised = noise, False
    else:
        assert image_latents is not None
        latents, noised = add_noise(scheduler, image_latents, noise, start).to(torch.float32), True
    mask = image.mask.to(device)
    latent_mask = torch.nn.functional.interpolate(mask, size=shape[2:]).expand(batch, 1, *shape[2:])
    step_noise = StepNoise(generators, (seed,) if seeds is None else seeds)
    if inpaint_unet:
        masked = encode_sample(encoder, image.pixels.to(device) * (mask < 0.5), generators, batch, device)
        return ImageStart(latents, noised, step_noise, unet_inputs=(latent_mask.contiguous(), masked))
    draw_noise(generators, (len(generators), *shape[1:]))  # diffusers encodes the masked image here: its draw
    assert image_latents is not None
    clean: Tensor = image_latents

    def after_step(i: int, x: Tensor) -> Tensor:
        proper = add_noise(scheduler, clean, noise, start + i + 1) if i < steps - 1 else clean
        return (1 - latent_mask) * proper + latent_mask * x

    return ImageStart(latents, noised, step_noise, after_step=after_step)

