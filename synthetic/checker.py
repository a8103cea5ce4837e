"""Scores how well an image complies with a shapes prompt, from its pixels alone.

For each expected object, the region it should occupy (the left or right half for a
two-object prompt, the whole image for one) is searched for pixels of the expected
colour; the object counts as present in colour if they are a clear share of the
region's foreground. Its shape is read from how much of its bounding box the largest
such blob fills: square ~1, circle ~pi/4, triangle ~1/2. Side: the colour's pixels lie
mostly in the expected half. Count: the number of foreground blobs of a clear size must
equal the number of objects asked for (nothing extra, nothing missing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from answer_trt.synthetic.dataset import BACKGROUND, COLOURS, ShapeObject

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground
MIN_PIXELS = 4
MIN_OBJECT_PIXELS = 12  # a blob smaller than this is a speck, not an object (objects: >= ~40 px at 32x32)


@dataclass(frozen=True)
class ObjectScore:
    colour: bool
    shape: bool
    side: bool


def nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour of each pixel ``[N, 3]``."""
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    distances = ((pixels[:, None, :].astype(np.float32) - palette[None]) ** 2).sum(-1)
    return distances.argmin(1)


def classify_shape(mask: np.ndarray) -> str:
    """Shape of the blob in a boolean mask, by the fill ratio of its bounding box."""
    ys, xs = np.nonzero(mask)
    if len(ys) < MIN_PIXELS:
        return "none"
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = len(ys) / box
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The 4-connected components of ``mask`` (small images: a plain flood fill)."""
    seen = np.zeros_like(mask)
    components: list[list[tuple[int, int]]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, component = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            component.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        components.append(component)
    return components


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask``."""
    best = max(_components(mask), key=len, default=[])
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _foreground(flat: np.ndarray) -> np.ndarray:
    return np.sqrt(((flat - np.array(BACKGROUND, dtype=np.float32)) ** 2).sum(-1)) > FOREGROUND_DISTANCE


def count_objects(image: np.ndarray) -> int:
    """Foreground blobs of at least ``MIN_OBJECT_PIXELS`` pixels, whatever their colour (a
    colour-blind count: blurred edges change colour, not connectivity)."""
    height, width, _ = image.shape
    mask = _foreground(image.reshape(-1, 3).astype(np.float32)).reshape(height, width)
    return sum(len(c) >= MIN_OBJECT_PIXELS for c in _components(mask))


def colour_labels(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` int: each foreground pixel's index into COLOURS (its nearest palette colour),
    -1 for the background."""
    height, width, _ = image.shape
    flat = image.reshape(-1, 3).astype(np.float32)
    foreground = _foreground(flat)
    flat_labels = np.full(flat.shape[0], -1)
    flat_labels[foreground] = nearest_colour(flat[foreground])
    return flat_labels.reshape(height, width)


def slot_region(count: int, slot: int, height: int, width: int) -> np.ndarray:
    """Where object ``slot`` of ``count`` is looked for, [height, width] bool: the whole image for
    one object, else its half (the first object on the left)."""
    region = np.zeros((height, width), dtype=bool)
    if count == 1:
        region[:] = True
    else:
        region[:, slot * width // 2 : (slot + 1) * width // 2] = True
    return region


def score(image: np.ndarray, objects: tuple[ShapeObject, ...]) -> list[ObjectScore]:
    """One score per expected object (``objects`` left to right)."""
    height, width, _ = image.shape
    labels = colour_labels(image)
    names = list(COLOURS)
    scores = []
    for slot, obj in enumerate(objects):
        region = slot_region(len(objects), slot, height, width)
        colour_mask = (labels == names.index(obj.colour))
        in_region = colour_mask & region
        region_foreground = (labels >= 0) & region
        colour_ok = in_region.sum() >= MIN_PIXELS and in_region.sum() >= 0.3 * max(1, region_foreground.sum())
        shape_ok = colour_ok and classify_shape(_largest_component(in_region)) == obj.shape
        # Side: more of the colour here than in the other half, unless the other object
        # is expected in the same colour (then presence here is all that can be asked).
        shared = any(o.colour == obj.colour for i, o in enumerate(objects) if i != slot)
        side_ok = colour_ok and (len(objects) == 1 or shared or in_region.sum() > (colour_mask & ~region).sum())
        scores.append(ObjectScore(bool(colour_ok), bool(shape_ok), bool(side_ok)))
    return scores
