"""A deterministic dataset of plain-background images with one or two coloured shapes.

Captions: ``a {colour} {shape}``, or ``a {colour} {shape} and a {colour} {shape}`` where
the first object lies in the left half and the second in the right half. Example ``i``
of a dataset is a pure function of ``(seed, i, size)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
VOCABULARY = ("a", "and", *COLOURS, *SHAPES)


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    cx: float  # centre, pixels
    cy: float
    size: float  # side of the square / diameter / triangle base, pixels


@dataclass(frozen=True)
class Example:
    caption: str
    objects: tuple[ShapeObject, ...]  # left to right
    image: np.ndarray  # HxWx3 uint8


def caption_of(objects: tuple[ShapeObject, ...]) -> str:
    return " and ".join(f"a {o.colour} {o.shape}" for o in objects)


def object_mask(o: ShapeObject, size: int) -> np.ndarray:
    """The pixels ``[size, size]`` (bool) that ``o`` covers, as ``render`` draws it."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    half = o.size / 2
    dx, dy = xs - o.cx, ys - o.cy
    if o.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if o.shape == "circle":
        return dx * dx + dy * dy <= half * half
    # triangle, apex up: inside when below the two slanted edges and above the base
    return (dy <= half) & (dy >= -half) & (np.abs(dx) <= (dy + half) / 2)


def render(objects: tuple[ShapeObject, ...], size: int) -> np.ndarray:
    """Rasterize the objects (no anti-aliasing) on the plain background."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for o in objects:
        image[object_mask(o, size)] = COLOURS[o.colour]
    return image


def silhouette(objects: tuple[ShapeObject, ...], size: int) -> np.ndarray:
    """The ControlNet control image of ``objects``: their masks white (255) on black,
    ``[size, size, 3]`` uint8, where ``render`` draws them (colours left out: the prompt names them)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for o in objects:
        image[object_mask(o, size)] = 255
    return image


# The biased training set of the benchmark fixture `tiny-biased` (benchmarks/models/): a
# triangle is red and a square is blue this often; otherwise, and for circles, colours are uniform.
BIASED_COLOUR = {"triangle": "red", "square": "blue"}
BIAS_STRENGTH = 0.9


def make_example(seed: int, index: int, size: int = 32, two_objects: bool | None = None,
                 biased: bool = False) -> Example:
    """Example ``index`` of the dataset ``seed``; ``two_objects=None`` draws it (50/50).
    ``biased``: colours follow ``BIASED_COLOUR`` with probability ``BIAS_STRENGTH``."""
    rng = np.random.default_rng([seed, index])
    pair = bool(rng.integers(2)) if two_objects is None else two_objects
    colours, shapes = list(COLOURS), list(SHAPES)
    objects = []
    for slot in range(2 if pair else 1):
        obj_size = float(rng.uniform(0.28, 0.42) * size) if pair else float(rng.uniform(0.35, 0.6) * size)
        half = obj_size / 2
        if pair:  # each object inside its own half
            low, high = slot * size / 2 + half, (slot + 1) * size / 2 - half
        else:
            low, high = half, size - half
        cx = float(rng.uniform(low, max(low, high)))
        cy = float(rng.uniform(half, size - half))
        colour, shape = colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))]
        if biased and shape in BIASED_COLOUR and rng.uniform() < BIAS_STRENGTH:
            colour = BIASED_COLOUR[shape]
        objects.append(ShapeObject(colour, shape, cx, cy, obj_size))
    objs = tuple(objects)
    return Example(caption_of(objs), objs, render(objs, size))


def prompts(seed: int, count: int) -> list[tuple[ShapeObject, ...]]:
    """``count`` seeded two-object prompts (objects without positions matter only by
    colour and shape) for the compliance benchmark."""
    return [make_example(seed, i, two_objects=True).objects for i in range(count)]


FAMILIES = ("single", "pair", "same-colour", "same-shape", "against-bias", "single-against-bias", "with-bias")


def goes_against_bias(obj: ShapeObject) -> bool:
    """A triangle or square in a colour other than its ``BIASED_COLOUR``."""
    return obj.shape in BIASED_COLOUR and obj.colour != BIASED_COLOUR[obj.shape]


def against_bias(objects: tuple[ShapeObject, ...], rng: np.random.Generator) -> tuple[ShapeObject, ...]:
    """The objects, where they are, made triangles or squares in a colour other than
    ``BIASED_COLOUR``'s for their shape (drawn from ``rng``)."""
    against = []
    for obj in objects:
        shape = sorted(BIASED_COLOUR)[rng.integers(len(BIASED_COLOUR))]
        others = [c for c in COLOURS if c != BIASED_COLOUR[shape]]
        against.append(replace(obj, shape=shape, colour=others[rng.integers(len(others))]))
    return tuple(against)


def bias_negative(objects: tuple[ShapeObject, ...]) -> str | None:
    """The negative prompt that names the training set's bias against these objects: the
    caption of the biased counterpart of every object asked against ``BIASED_COLOUR`` ("a red
    triangle" for "a blue triangle"); None when no object goes against it. The
    external-resource baseline ANSWER is meant to replace: it needs to know the bias."""
    biased = tuple(replace(o, colour=BIASED_COLOUR[o.shape]) for o in objects if goes_against_bias(o))
    return caption_of(biased) if biased else None


def bias_shape_negative(objects: tuple[ShapeObject, ...]) -> str | None:
    """The negative prompt that names the bias from the other side: for every object asked
    against ``BIASED_COLOUR`` in a colour that the bias gives another shape, that shape in
    that colour ("a blue square" for "a blue triangle", since squares are blue); None when
    no object has one. What a model that draws the asked colour in its biased shape gets
    wrong; an external resource as much as ``bias_negative``."""
    shape_of = {colour: shape for shape, colour in BIASED_COLOUR.items()}
    named = tuple(replace(o, shape=shape_of[o.colour]) for o in objects
                  if goes_against_bias(o) and o.colour in shape_of)
    return caption_of(named) if named else None


def family_example(family: str, seed: int, index: int, size: int = 32) -> Example:
    """Example ``index`` of a compliance prompt family: ``single`` (one object, nothing
    else), ``pair`` (two objects, colours and shapes drawn freely), ``same-colour`` and
    ``same-shape`` (the right object takes the left one's colour, or shape), ``against-bias``
    (pairs of triangles and squares in colours other than the biased training set's,
    ``BIASED_COLOUR``: hard for the `tiny-biased` fixture), ``single-against-bias`` (one
    such object) and ``with-bias`` (pairs whose triangles and squares take their biased
    colour: nothing asked against the bias, so the fixture's training quality apart from it)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}: choose one of {', '.join(FAMILIES)}")
    example = make_example(seed, index, size, two_objects=not family.startswith("single"))
    if family in ("single", "pair"):
        return example
    if family.endswith("against-bias"):
        objects = against_bias(example.objects, np.random.default_rng([seed, index, 1]))
    elif family == "with-bias":
        objects = tuple(replace(o, colour=BIASED_COLOUR.get(o.shape, o.colour)) for o in example.objects)
    else:
        left, right = example.objects
        right = replace(right, colour=left.colour) if family == "same-colour" else replace(right, shape=left.shape)
        objects = (left, right)
    return Example(caption_of(objects), objects, render(objects, size))
