"""The silhouette ControlNet for `tiny` (issue 34 part 4): its control images, the placement check
that scores it (on constructed images, where the answer is known), and the trained ControlNet
(benchmarks/models/tiny-silhouette-controlnet) through the real path: `build --controlnet`, then
`generate --control-image` puts the objects inside their silhouettes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from answer_trt.synthetic.control_family import (
    ControlExample,
    control_example,
    placement,
    prompt_row,
    run_check,
)
from answer_trt.synthetic.dataset import (
    COLOURS,
    SHAPES,
    ShapeObject,
    make_example,
    object_mask,
    render,
    silhouette,
)
from answer_trt.synthetic.train_controlnet import control_dataset

FIXTURE = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "tiny-silhouette-controlnet"
BUDGET_BYTES = 6_000_000


def test_silhouette_is_white_exactly_where_render_draws_the_objects():
    for index in range(20):
        example = make_example(5, index)
        control = silhouette(example.objects, 32)
        drawn = (example.image != 255).any(-1)
        assert control.dtype == np.uint8 and control.shape == (32, 32, 3)
        assert set(np.unique(control)) <= {0, 255}
        np.testing.assert_array_equal(control[..., 0] == 255, drawn)
        np.testing.assert_array_equal(control[..., 0], control[..., 2])


def test_object_mask_has_the_shapes_area():
    for shape, area in (("square", 100.0), ("circle", np.pi * 25), ("triangle", 50.0)):
        mask = object_mask(ShapeObject("red", shape, 16.0, 16.0, 10.0), 32)
        assert mask.sum() == pytest.approx(area, rel=0.15), shape


def test_training_pairs_line_up_images_controls_and_captions():
    images, controls, captions = control_dataset(seed=3, count=6)
    assert images.shape == controls.shape == (6, 3, 32, 32)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert set(np.unique(controls.numpy())) <= {0.0, 1.0}  # diffusers feeds control images in [0, 1]
    for i in range(6):
        example = make_example(3, i)
        assert captions[i] == example.caption
        np.testing.assert_array_equal(controls[i, 0].numpy() == 1.0, (example.image != 255).any(-1))


def test_check_examples_are_seeded_pairs_with_their_silhouettes():
    first, again = control_example(3000, 4), control_example(3000, 4)
    assert first.caption == again.caption and len(first.objects) == 2
    np.testing.assert_array_equal(first.control, again.control)
    np.testing.assert_array_equal(first.control, silhouette(first.objects, 32))
    assert control_example(3000, 5).caption != first.caption or control_example(3000, 6).caption != first.caption


def test_placement_reads_objects_drawn_in_their_silhouettes_as_landed():
    for index in range(32):
        example = control_example(3000, index)
        assert placement(render(example.objects, 32), example.objects) == [(True, 1.0), (True, 1.0)]
        assert list(prompt_row(render(example.objects, 32), example.objects)[:3]) == [1.0, 1.0, 1.0]


def test_placement_rejects_objects_away_from_their_silhouettes_missing_or_in_another_colour():
    left = ShapeObject("red", "circle", 6.0, 6.0, 9.0)
    right = ShapeObject("blue", "square", 25.0, 25.0, 9.0)
    asked = (left, right)
    # the left object drawn at the bottom instead of the top: not landed, no overlap
    moved = (replace(left, cy=25.0), right)
    assert placement(render(moved, 32), asked) == [(False, 0.0), (True, 1.0)]
    # half overlapping: the IoU says how much; the centroid lies outside the silhouette
    shifted = (replace(left, cx=6.0 + 4.5), right)
    (landed, iou), _ = placement(render(shifted, 32), asked)
    assert not landed and 0.1 < iou < 0.6
    # missing, or drawn in another colour: not there at all
    assert placement(render((right,), 32), asked)[0] == (False, 0.0)
    recoloured = (replace(left, colour="green"), right)
    assert placement(render(recoloured, 32), asked)[0] == (False, 0.0)
    assert prompt_row(render(moved, 32), asked)[1] == 0.0  # both landed: no


def test_placement_refuses_a_non_square_image():
    with pytest.raises(ValueError, match="square"):
        placement(np.full((32, 48, 3), 255, np.uint8), (ShapeObject("red", "circle", 6.0, 6.0, 9.0),))


def test_run_check_pairs_on_and_off_and_reports_intervals():
    """A fake drawer: ControlNet on draws the objects in their silhouettes, off draws them moved."""
    from answer_trt.synthetic.compliance import CFG

    examples = [control_example(3000, i) for i in range(8)]

    def draw(batch, spec, seeds, w, scale):
        (example,) = batch
        if scale:
            return [render(example.objects, 32)]
        return [render(tuple(replace(o, cy=32 - o.cy if abs(o.cy - 16) > 6 else o.cy + 12) for o in example.objects),
                       32)]

    results = run_check(draw, [CFG], examples, 7.5, 1.0)
    off, on = results
    assert (off["controlnet_scale"], on["controlnet_scale"]) == (0.0, 1.0)
    assert on["rates"]["both"].value == 1.0 and on["rates"]["iou"].value == 1.0
    assert off["rates"]["iou"].value < 0.5
    delta = on["on_minus_off"]["both"]
    assert delta.low <= delta.value <= delta.high and delta.value > 0.5


def test_trained_controlnet_is_small_fp16_and_outside_the_package():
    files = [p for p in FIXTURE.rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) <= BUDGET_BYTES
    with safe_open(str(FIXTURE / "diffusion_pytorch_model.safetensors"), "pt") as tensors:
        assert {str(tensors.get_tensor(k).dtype) for k in tensors.keys()} == {"torch.float16"}
    assert "answer_trt" not in FIXTURE.parts


def test_trained_controlnet_puts_the_objects_inside_their_silhouettes(tmp_path):
    """Through the real path: build tiny with --controlnet, generate with a silhouette; on most of a
    few seeds both objects land inside their silhouettes with the ControlNet on, and the pictures
    overlap the silhouettes more than with it off (scale 0)."""
    import answer_trt
    from answer_trt.build_config import BuildConfig, ControlNetSpec
    from answer_trt.export.build import build

    out = tmp_path / "engines"
    build(BuildConfig(model="tiny", out=out, max_batch=2, components="txt2img",
                      controlnets=(ControlNetSpec(FIXTURE, 1.0),)), log=lambda _m: None)
    pipe = answer_trt.load(out)
    rows = {0.0: [], 1.0: []}
    for index in range(4):
        example: ControlExample = control_example(3000, index)
        for scale in rows:
            image = pipe.generate(example.caption, control_image=example.control, seed=index, steps=20,
                                  method="cfg", guidance_scale=7.5, controlnet_conditioning_scale=scale).images[0]
            rows[scale].append(prompt_row(np.asarray(image), example.objects))
    on, off = np.mean(rows[1.0], axis=0), np.mean(rows[0.0], axis=0)
    assert on[0] >= 0.75, on  # objects landed
    assert on[2] > off[2] + 0.1, (on, off)  # IoU with the silhouettes


def test_colours_and_shapes_cover_the_world():  # the check's prompts draw from these
    captions = {control_example(3000, i).caption for i in range(64)}
    words = set(" ".join(captions).split())
    assert set(COLOURS) <= words and set(SHAPES) <= words


def test_training_script_writes_a_controlnet_that_build_accepts(tmp_path, capsys):
    """Two steps on a tiny budget (quality needs the full one): an fp16 diffusers ControlNet of
    tiny's UNet, its conditioning embedding mapping 32x32 control images onto the 8x8 latents,
    that `build --controlnet`'s check accepts for tiny; --stop-after ends early and says where."""
    from diffusers import ControlNetModel

    from answer_trt.build_config import ControlNetSpec
    from answer_trt.models.controlnet import check_controlnet
    from answer_trt.models.source import resolve_model
    from answer_trt.synthetic import train_controlnet

    out = tmp_path / "cn"
    args = ["--out", str(out), "--examples", "16", "--steps", "3", "--stop-after", "2", "--batch", "4",
            "--threads", "1"]
    assert train_controlnet.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("command: python -m answer_trt.synthetic.train_controlnet")
    assert "diffusion_pytorch_model.safetensors" in printed and not out.with_name("cn.partial").exists()
    assert (out / "STEP.txt").read_text() == "2\n"
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as tensors:
        assert {str(tensors.get_tensor(k).dtype) for k in tensors.keys()} == {"torch.float16"}
    check_controlnet(ControlNetSpec(out), resolve_model("tiny").path)
    import torch

    model = ControlNetModel.from_pretrained(out).float()
    embedded = model.controlnet_cond_embedding(torch.zeros(1, 3, 32, 32))
    assert embedded.shape[-2:] == (8, 8)
