"""Decoded image tensors -> PIL images -> PNG files carrying the generation parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from answer_trt.errors import NonFiniteImageError
from answer_trt.files import atomic_path, numbered_paths
from answer_trt.infotext import RECORD, infotext


def to_pil(images: Tensor, params: Mapping[str, str]) -> list[Image.Image]:
    """``images[B, 3, H, W]`` in [-1, 1] -> RGB images; ``params`` go into ``image.info``."""
    if not torch.isfinite(images).all():
        raise NonFiniteImageError(
            "the VAE decoder produced NaN or inf values; with fp16 engines rebuild with --precision fp32"
        )
    pixels = ((images.detach().cpu().to(torch.float32) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).contiguous().numpy()
    result = []
    for index, array in enumerate(arrays):
        image = Image.fromarray(np.ascontiguousarray(array), mode="RGB")
        image.info.update(with_batch_index(params, index))
        result.append(image)
    return result


def with_batch_index(params: Mapping[str, str], index: int) -> dict[str, str]:
    """An image's own parameters: its batch's, plus its place in the batch (text and JSON),
    so the image alone says how to redraw it."""
    own = dict(params)
    own["batch_index"] = str(index)
    if RECORD in own:
        try:
            record = json.loads(own[RECORD])
        except ValueError:
            return own
        if isinstance(record, dict):
            record = {**record, "batch_index": index}
            own[RECORD] = json.dumps(record, sort_keys=True)
            own["parameters"] = infotext(record)
    return own


def png_info(image: Image.Image) -> PngInfo:
    """The image's ``info`` (the generation parameters) as PNG text chunks."""
    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            info.add_text(key, value)
    return info


def save_pngs(images: Sequence[Image.Image], first: Path) -> list[Path]:
    """Write each image atomically with its ``info`` as PNG text chunks."""
    paths = numbered_paths(first, len(images))
    for image, path in zip(images, paths):
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=png_info(image))
    return paths
