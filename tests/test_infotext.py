"""A1111's infotext in each PNG's `parameters` chunk (what PNG readers show), answer-trt's
record as JSON beside it (what replay reads), and replay of A1111's PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from answer_trt.infotext import RECORD, infotext, parse_infotext
from answer_trt.schema import field_kinds


def test_infotext_is_a1111s_three_lines():
    record = {"prompt": "a red circle, big", "negative_prompt": "blur", "steps": 30, "scheduler": "Euler a",
              "guidance_scale": 7.5, "seed": 5, "height": 512, "width": 768, "clip_skip": 2, "model": "tiny",
              "method": "answer", "negative_scale": 1.0, "drift_tau": None, "batch": 1, "batch_index": 0}
    assert infotext(record) == (
        "a red circle, big\nNegative prompt: blur\n"
        "Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 768x512, Clip skip: 2, Model: tiny, "
        "Method: answer, Negative scale: 1.0")
    batch = {**record, "scheduler": "ddim", "batch": 2, "batch_index": 1, "seeds": [8, 9], "model": "a, b"}
    last = infotext(batch).splitlines()[-1]
    assert "Sampler: DDIM" in last and "Seed: 9" in last and "Batch size: 2, Batch pos: 1" in last
    assert 'Model: "a, b"' in last  # a value with a comma is quoted, as A1111 does
    # A1111's "Model hash" is the checkpoint's short hash (10 hex digits), before "Model"
    hashed = infotext({**record, "model_hash": "6ce0161689b3853a"}).splitlines()[-1]
    assert "Clip skip: 2, Model hash: 6ce0161689, Model: tiny" in hashed
    # ControlNet's guidance window is written only where it is not the whole schedule
    window = {**record, "control_guidance_start": 0.0, "control_guidance_end": 1.0}
    assert "Control guidance" not in infotext(window)
    assert "Control guidance end: 0.5" in infotext({**window, "control_guidance_end": 0.5})


def test_parse_reads_a1111s_infotext_and_names_what_it_cannot_honour():
    text = ("masterpiece, a cat\nNegative prompt: lowres, (bad:1.2)\nSteps: 20, Sampler: DPM++ 2M Karras, "
            'CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Clip skip: 2, '
            'Denoising strength: 0.5, Hires upscale: 2, Lora hashes: "detail: 1a2b", Version: v1.10.1')
    fields, ignored = parse_infotext(text, field_kinds())
    assert fields == {"prompt": "masterpiece, a cat", "negative_prompt": "lowres, (bad:1.2)", "steps": 20,
                      "scheduler": "DPM++ 2M Karras", "guidance_scale": 7.0, "seed": 1234, "width": 512,
                      "height": 768, "clip_skip": 2, "strength": 0.5}  # img2img's: a replay asks for --image
    assert ignored == ["Model hash", "Hires upscale", "Lora hashes", "Version"]
    ours = infotext({**fields, "method": "cfg", "dns_steps": 4})
    again, nothing = parse_infotext(ours, field_kinds())
    assert again == {**fields, "method": "cfg", "dns_steps": 4} and nothing == []


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    from answer_trt.cli import main

    out = tmp_path_factory.mktemp("png") / "a.png"
    assert main(["generate", "a red circle", "--model", "tiny", "--backend", "torch", "--steps", "4", "--seed", "3",
                 "--scheduler", "Euler a", "--batch", "2", "-o", str(out)]) == 0
    return out


def test_our_pngs_carry_infotext_and_the_record_and_replay_from_the_record(drawn, tmp_path):
    from answer_trt.cli import main

    second = drawn.with_name("a-1.png")
    info = Image.open(second).info
    assert json.loads(info[RECORD])["batch_index"] == 1
    assert info["parameters"].splitlines() == [
        "a red circle",
        "Steps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 32x32, Model: tiny, Batch size: 2, Batch pos: 1"
        + info["parameters"].splitlines()[-1].split("Batch pos: 1", 1)[1]]
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(second), "--model", "tiny", "--backend", "torch", "-o",
                 str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(again)))


def test_an_a1111_png_is_redrawn_with_what_answer_trt_supports(tmp_path, capsys):
    from answer_trt.cli import main

    png = tmp_path / "a1111.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a red circle\nNegative prompt: a blue square\nSteps: 5, Sampler: Euler a, "
                                "CFG scale: 6, Seed: 11, Size: 32x32, Model hash: abc, Hires upscale: 2")
    Image.new("RGB", (32, 32)).save(png, pnginfo=meta)
    out = tmp_path / "redrawn.png"
    assert main(["generate", "--from-png", str(png), "--model", "tiny", "--backend", "torch", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "redrawn without what answer-trt does not have: Model hash, Hires upscale" in err
    record = json.loads(Image.open(out).info[RECORD])
    assert (record["prompt"], record["negative_prompt"], record["steps"], record["scheduler"], record["seed"]) == (
        "a red circle", "a blue square", 5, "Euler a", 11)
    direct = tmp_path / "direct.png"
    assert main(["generate", "a red circle", "--negative-prompt", "a blue square", "--steps", "5", "--scheduler",
                 "Euler a", "--guidance-scale", "6", "--seed", "11", "--model", "tiny", "--backend", "torch",
                 "-o", str(direct)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(direct)))


def test_the_models_own_scheduler_is_named_as_a1111_names_it():
    record = {"prompt": "x", "scheduler": None, "scheduler_class": "EulerAncestralDiscreteScheduler", "steps": 3}
    assert "Sampler: Euler a" in infotext(record)
    assert "Sampler: DDIM," in infotext({**record, "scheduler_class": "DDIMScheduler"})
    assert "Sampler: LCMScheduler" in infotext({**record, "scheduler_class": "LCMScheduler"})
