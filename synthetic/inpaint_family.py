"""The compliance benchmark's inpainting family (issue 33): repaint one object of a picture.

Example ``i`` (``inpaint_example``): a two-object picture of the shapes world (``pair``'s
objects, each inside its own half), a mask over its right half (white: repaint; the right
object lies wholly inside it), and the prompt "replace the right object with a green triangle"
written in the suite's prompt style, the caption of the picture asked for: ``a {left} and a green
triangle`` (the shapes model reads captions, not instructions). A right object that already is a
green triangle is made a red square first, so every example asks for a change. The checker
scores the output against the target objects (the left one as it was, a green triangle on the
right), as every family: ``correct`` when both objects are right in colour, shape and side and
there are exactly two. Each method inpaints from the same image, mask and seed (prompt i, seed
i: paired samples) through ``Pipeline.generate(image=, mask_image=)`` at strength 1 (diffusers'
inpainting default; the masked half starts from noise, the rest is kept by the per-step blend).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from answer_trt.synthetic.dataset import Example, ShapeObject, caption_of, make_example, render

FAMILY = "inpaint"
TARGET = ("green", "triangle")
INSTRUCTION = "replace the right object with a green triangle"


@dataclass(frozen=True)
class InpaintExample:
    """One inpainting prompt: the input ``image`` (HxWx3 uint8) of ``before``'s objects, the
    ``mask`` (HxW uint8, 255 = repaint), the ``target`` objects the output should hold, and the
    ``caption`` of the target (the prompt)."""

    image: np.ndarray
    mask: np.ndarray
    before: tuple[ShapeObject, ...]
    target: tuple[ShapeObject, ...]
    caption: str

    def ground_truth(self) -> Example:
        """The target picture, for scoring the checker on this family's ground truth."""
        size = self.image.shape[0]
        return Example(self.caption, self.target, render(self.target, size))


def inpaint_example(seed: int, index: int, size: int = 32) -> InpaintExample:
    """Example ``index`` of the family for prompt set ``seed`` (see the module docstring)."""
    left, right = make_example(seed, index, size, two_objects=True).objects
    if (right.colour, right.shape) == TARGET:
        right = replace(right, colour="red", shape="square")
    before = (left, right)
    target = (left, replace(right, colour=TARGET[0], shape=TARGET[1]))
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    return InpaintExample(render(before, size), mask, before, target, caption_of(target))


def inpaint_draw(pipe: Any, steps: int) -> Callable[[Sequence[InpaintExample], Any, Sequence[int], float],
                                                     tuple[list[np.ndarray], float]]:
    """Inpaint each example (its caption, image and mask) with ``spec``'s guidance at scale ``w``
    and its seed, one ``Pipeline.generate`` call each; returns the HxWx3 uint8 outputs and the
    seconds they took. A model of another default size than the examples' (the shapes world is
    32x32) draws at its own (the image and mask resized by the pipeline, Lanczos), and its output
    is resized back (nearest) for the checker."""
    from PIL import Image

    height, width = pipe.default_size

    def draw(examples: Sequence[InpaintExample], spec: Any, seeds: Sequence[int],
             w: float) -> tuple[list[np.ndarray], float]:
        guidance = spec.guidance(w)
        fields = {name: getattr(guidance, name) for name in ("method", "dns_steps", "mode", "chain_min_sigma",
                                                               "drift_tau", "guidance_rescale", "guidance_min_sigma")}
        started = time.perf_counter()
        images = []
        for example, seed in zip(examples, seeds, strict=True):
            generation = pipe.generate(example.caption, negative_prompt=spec.negative_prompt(example.target),
                                       image=Image.fromarray(example.image), mask_image=Image.fromarray(example.mask),
                                       strength=1.0, steps=steps, seed=seed, guidance_scale=w,
                                       negative_scale=guidance.negative_scale, height=height, width=width,
                                       **fields)
            output = generation.images[0]
            if output.size != (example.image.shape[1], example.image.shape[0]):
                output = output.resize((example.image.shape[1], example.image.shape[0]), Image.Resampling.NEAREST)
            images.append(np.asarray(output))
        return images, time.perf_counter() - started

    return draw


def left_kept(image: np.ndarray, example: InpaintExample) -> float:
    """Mean absolute difference (levels) of the output's left half to the input's: what the
    per-step blend keeps (the VAE's round trip apart)."""
    half = image.shape[1] // 2
    return float(np.abs(image[:, :half].astype(np.int16) - example.image[:, :half].astype(np.int16)).mean())

