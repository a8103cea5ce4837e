"""The synthetic shapes dataset is deterministic and its captions match its pictures;
the pixel checker is validated on ground-truth images (it must be >= 98% right there,
or its compliance numbers mean nothing) and rejects wrong prompts."""

from __future__ import annotations

import numpy as np

from answer_trt.synthetic.checker import count_objects, score
from answer_trt.synthetic.dataset import COLOURS, SHAPES, ShapeObject, make_example, render

N = 400


def test_examples_are_deterministic_and_captioned():
    a, b = make_example(0, 7), make_example(0, 7)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    assert not np.array_equal(make_example(0, 8).image, a.image)
    pair = make_example(0, 3, two_objects=True)
    left, right = pair.objects
    assert pair.caption == f"a {left.colour} {left.shape} and a {right.colour} {right.shape}"
    assert left.cx + left.size / 2 <= 16 <= right.cx - right.size / 2  # one object per half
    assert pair.image.shape == (32, 32, 3) and pair.image.dtype == np.uint8


def test_checker_accuracy_on_ground_truth_is_at_least_98_percent():
    results = [s for i in range(N) for s in score(make_example(1, i).image, make_example(1, i).objects)]
    for field in ("colour", "shape", "side"):
        accuracy = np.mean([getattr(s, field) for s in results])
        print(f"checker {field} accuracy on {len(results)} ground-truth objects: {accuracy:.4f}")
        assert accuracy >= 0.98, (field, accuracy)


def test_checker_rejects_wrong_colours_shapes_and_sides():
    wrong_colour = wrong_shape = swapped = 0
    total = 0
    for i in range(N // 2):
        ex = make_example(2, i, two_objects=True)
        left, right = ex.objects
        other = [c for c in COLOURS if c not in (left.colour, right.colour)][0]
        recoloured = (ShapeObject(other, left.shape, 0, 0, 0), right)
        reshaped = (ShapeObject(left.colour, SHAPES[(SHAPES.index(left.shape) + 1) % 3], 0, 0, 0), right)
        total += 1
        wrong_colour += not score(ex.image, recoloured)[0].colour
        wrong_shape += not score(ex.image, reshaped)[0].shape
        if left.colour != right.colour:
            swapped += not score(ex.image, (right, left))[0].side
    assert wrong_colour / total >= 0.98 and wrong_shape / total >= 0.95
    assert swapped >= 0.95 * sum(
        make_example(2, i, two_objects=True).objects[0].colour != make_example(2, i, two_objects=True).objects[1].colour
        for i in range(N // 2))


def test_object_count_is_right_on_ground_truth_and_rejects_extra_or_missing_objects():
    right = extra = separate = missing = 0
    background = np.array([255, 255, 255])
    for i in range(N):
        ex = make_example(3, i)
        right += count_objects(ex.image) == len(ex.objects)
        # A small extra object in a corner, where it stands apart from the others (a gap of 2 px).
        for corner in ((5.0, 5.0), (27.0, 5.0), (5.0, 27.0), (27.0, 27.0)):
            other = ShapeObject("yellow", "square", *corner, 7.0)
            alone = (render((other,), 32) != background).any(-1)
            grown = np.zeros_like(alone)
            ys, xs = np.nonzero(alone)
            grown[max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = True
            if not ((ex.image != background).any(-1) & grown).any():
                separate += 1
                extra += count_objects(render((*ex.objects, other), 32)) != len(ex.objects)
                break
        if len(ex.objects) == 2:
            missing += count_objects(render(ex.objects[:1], 32)) != 2
        else:
            missing += count_objects(render((), 32)) != 1
    print(f"count right on {N} ground-truth images: {right / N:.4f}; extra rejected {extra}/{separate}, "
          f"missing rejected {missing / N:.4f}")
    assert right / N >= 0.98
    assert separate >= 0.8 * N and extra == separate and missing == N


def test_specks_are_not_objects():
    image = make_example(3, 0, two_objects=False).image.copy()
    image[0:2, 0:2] = COLOURS["red"]  # 4 pixels
    assert count_objects(image) == 1
