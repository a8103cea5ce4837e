"""The request schema is the one definition of a generation field: every surface (the
Python API, the CLI, the HTTP body, the PNG metadata and its replay) carries each field,
with the schema's default, and a field missing from a surface fails here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import answer_trt
from answer_trt.cli import make_parser, request_keywords
from answer_trt.errors import UserInputError
from answer_trt.img2img import image_sha256, load_init_image
from answer_trt.inpaint import with_mask
from answer_trt.schema import GenerateRequest, from_parameters, info, make_request, request_fields
from answer_trt.serving.protocol import REQUEST_FIELDS, parse_generate

# The input image and mask of the img2img / inpainting fields (40 x 48, as OTHER's size).
INPUT = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8))
MASK = Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), ((8, 16), (20, 12))))
# Fields that name what travels beside the request (not CLI flags: --image and --mask give the files).
SIDE_FIELDS = {"image_sha256", "mask_sha256", "control_image_sha256"}
# A valid value other than the default for every field; a new field must be added here.
OTHER = {
    "prompt": "a red circle", "negative_prompt": "a blue square", "method": "dns", "steps": 3,
    "guidance_scale": 5.0, "negative_scale": 2.0, "dns_steps": 2, "mode": "parallel", "chain_min_sigma": 0.25,
    "drift_tau": 0.3, "guidance_rescale": 0.5, "guidance_min_sigma": 0.2, "scheduler": "euler", "seed": 7,
    "height": 40, "width": 48,
    "batch": 2, "seeds": (3, 4), "clip_skip": 2, "prompt_syntax": "a1111",
    "strength": 0.5, "image_sha256": image_sha256(np.asarray(INPUT)),
    "mask_sha256": image_sha256(np.asarray(MASK)[..., None]), "mask_blur": 2,
    "controlnet_conditioning_scale": 0.5, "control_guidance_start": 0.1, "control_guidance_end": 0.9,
    "control_image_sha256": image_sha256(np.asarray(INPUT)), "guess_mode": True,
}
# Needs a folder built with --controlnet (tests/test_controlnet.py replays one): not the torch model here.
CONTROL_ONLY = {"control_image_sha256", "guess_mode"}
ANSWER_INNER = {"method": "answer", "mode": "inner", "drift_tau": None}  # the other mode (drift_tau is parallel-only)


def test_every_field_has_a_value_for_these_tests():
    assert set(OTHER) == {f.name for f in request_fields()}
    for f in request_fields():
        if f.name not in ("mode",):
            assert OTHER[f.name] != f.default, f.name


def test_the_cli_has_one_flag_per_field_with_the_schema_default():
    args = make_parser().parse_args(["generate", "x"])
    cli_fields = [f for f in request_fields() if info(f).cli]
    assert {f.name for f in cli_fields} == set(OTHER) - {"prompt"} - SIDE_FIELDS
    assert request_keywords(args) == {f.name: f.default for f in cli_fields}
    argv = ["generate", "x"]
    for f in cli_fields:
        value, flag = OTHER[f.name], f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):  # a switch (--guess-mode)
            argv += [flag]
            continue
        argv += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    assert request_keywords(make_parser().parse_args(argv)) == {f.name: OTHER[f.name] for f in cli_fields}


def test_the_http_body_takes_every_field():
    assert set(REQUEST_FIELDS) == set(OTHER)
    call = parse_generate(json.dumps({**OTHER, "response": "json"}).encode())
    assert call.request == GenerateRequest(**OTHER)
    assert parse_generate(b'{"prompt": "a"}').request == GenerateRequest("a")  # the schema's defaults


def test_a_batch_over_http_needs_the_json_response():
    with pytest.raises(UserInputError, match='"response": "json"'):
        parse_generate(b'{"prompt": "a", "batch": 2}')


@pytest.fixture(scope="module")
def pipe():
    return answer_trt.load("tiny", backend="torch")


@pytest.mark.parametrize("changes", [{}, ANSWER_INNER], ids=["parallel", "inner"])
def test_the_api_takes_every_field_and_the_png_replays_to_the_same_pixels(pipe, changes):
    fields = {key: value for key, value in {**OTHER, **changes}.items() if key not in CONTROL_ONLY}
    prompt = fields.pop("prompt")
    result = pipe.generate(prompt, image=INPUT, mask_image=MASK, **fields)
    assert len(result.images) == 2 and result.images[0].size == (48, 40)
    recorded = json.loads(result.images[1].info["answer-trt"])
    for f in request_fields():
        if info(f).metadata:
            assert f.name in recorded, f.name
    replayed = from_parameters(result.images[1].info["answer-trt"])
    expected = GenerateRequest(prompt, **fields)
    if expected.negative_scale is None:  # recorded as the value it resolved to
        expected = expected.replace(negative_scale=result.config.guidance.wn)
    assert replayed == expected
    again = pipe.run(replayed, init=with_mask(load_init_image(INPUT, 40, 48), MASK, replayed.mask_blur))
    for first, second in zip(result.images, again.images):
        assert np.array_equal(np.asarray(first), np.asarray(second))


def test_an_unknown_keyword_names_the_closest_field(pipe):
    with pytest.raises(UserInputError, match="unknown argument 'guidance': did you mean 'guidance_scale'"):
        pipe.generate("a", guidance=3.0)
    with pytest.raises(UserInputError, match="unknown argument 'prompt'"):
        make_request("a", {"prompt": "b"})


def test_absent_and_empty_negative_prompts_are_told_apart_in_the_record(pipe):
    absent = pipe.generate("a red circle", steps=1)
    empty = pipe.generate("a red circle", steps=1, negative_prompt="")
    assert from_parameters(absent.params["answer-trt"]).negative_prompt is None
    assert from_parameters(empty.params["answer-trt"]).negative_prompt == ""


def test_parameters_that_are_not_a_record_are_refused_in_one_line():
    for text in ("not json", "[1, 2]", '{"seed": 1}'):
        with pytest.raises(UserInputError, match="not written by answer-trt"):
            from_parameters(text)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "100000000"], "--steps must be an integer in 1 .. 1000"),
    (["--batch", "100000000000000000000000000000"], "--batch must be an integer in 1 .. 256"),
    (["--batch", "2000000"], "--batch must be an integer in 1 .. 256"),
])
def test_work_bounds_are_refused_by_the_cli_before_anything_runs(argv, message, capsys):
    import time

    from answer_trt.cli import main

    started = time.perf_counter()
    with pytest.raises(SystemExit) as exited:
        main(["generate", "x", "-o", "/nonexistent/x.png", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert time.perf_counter() - started < 5


def test_work_bounds_hold_on_the_api_http_and_bench(pipe):
    from answer_trt.bench.suite import BenchConfig

    with pytest.raises(UserInputError, match="steps must be at most 1000"):
        pipe.generate("a", scheduler="euler", steps=100_000_000)
    with pytest.raises(UserInputError, match="batch must be at most 256"):
        pipe.generate("a", batch=2_000_000)
    with pytest.raises(UserInputError, match="steps must be at most 1000"):
        parse_generate(b'{"prompt": "a", "scheduler": "euler", "steps": 20000000}')
    with pytest.raises(UserInputError, match="--warmup must be at most 1000"):
        BenchConfig(warmup=10**30)


def test_every_png_of_a_batch_redraws_itself_from_its_own_metadata(tmp_path, capsys):
    """`generate --batch 3`, then `generate --from-png` of each file: the same pixels (0 levels),
    each image knowing its place in the batch."""
    from PIL import Image

    from answer_trt.cli import main

    common = ["--model", "tiny", "--backend", "torch"]
    assert main(["generate", "a red circle and a blue square", *common, "--steps", "3", "--seed", "5", "--batch",
                 "3", "--method", "cfg", "-o", str(tmp_path / "b.png")]) == 0
    originals = [tmp_path / "b.png", tmp_path / "b-1.png", tmp_path / "b-2.png"]
    pixels = [np.asarray(Image.open(p)) for p in originals]
    assert not np.array_equal(pixels[0], pixels[1])  # three different images
    for index, original in enumerate(originals):
        assert json.loads(Image.open(original).info["answer-trt"])["batch_index"] == index
        out = tmp_path / f"again-{index}.png"
        assert main(["generate", "--from-png", str(original), *common, "-o", str(out)]) == 0
        assert np.array_equal(np.asarray(Image.open(out)), pixels[index]), index
    assert main(["generate", "a", "--from-png", str(originals[0]), "-o", str(tmp_path / "x.png")]) == 2
    assert "leave PROMPT out" in capsys.readouterr().err
    (tmp_path / "plain.png").write_bytes(b"not a png")
    assert main(["generate", "--from-png", str(tmp_path / "plain.png"), "-o", str(tmp_path / "y.png")]) == 2
    assert "not a readable PNG" in capsys.readouterr().err


def test_per_image_seeds_and_a_random_seed_draw_and_replay(tmp_path, capsys):
    """Issue 22 item 7: `--seeds 5,6` draws image i from its own seed (image 2 of the batch is
    `--seed 6` alone), each PNG replays to 0 levels; `--seed random` prints the seed it drew
    and records it."""
    from PIL import Image

    from answer_trt.cli import main

    common = ["--model", "tiny", "--backend", "torch", "--steps", "3", "--method", "cfg"]
    assert main(["generate", "a green triangle", *common, "--seeds", "5,6", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["generate", "a green triangle", *common, "--seed", "6", "-o", str(tmp_path / "alone.png")]) == 0
    batch = [np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("s.png", "s-1.png")]
    assert np.abs(batch[1] - np.asarray(Image.open(tmp_path / "alone.png"), dtype=int)).max() <= 1
    for index, name in enumerate(("s.png", "s-1.png")):
        recorded = json.loads(Image.open(tmp_path / name).info["answer-trt"])
        assert (recorded["seeds"], recorded["batch"], recorded["batch_index"]) == ([5, 6], 2, index)
        assert main(["generate", "--from-png", str(tmp_path / name), "--model", "tiny", "--backend", "torch", "-o",
                     str(tmp_path / f"again-{index}.png")]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"again-{index}.png"), dtype=int), batch[index])
    capsys.readouterr()
    assert main(["generate", "a green triangle", *common, "--seed", "random", "-o", str(tmp_path / "r.png")]) == 0
    drawn = int(capsys.readouterr().err.split("drew seed ")[1].split()[0])
    assert json.loads(Image.open(tmp_path / "r.png").info["answer-trt"])["seed"] == drawn
    for bad, message in ((["--seeds", "5,,6"], "comma-separated integers"), (["--seeds", "5,x"], "not an integer"),
                         (["--seeds", "5,6", "--batch", "3"], "2 seeds for a batch of 3"),
                         (["--seeds", "5,6", "--seed", "random"], "leave --seed out")):
        try:
            code = main(["generate", "a", *common, *bad, "-o", str(tmp_path / "bad.png")])
        except SystemExit as exited:  # a usage error, from argparse
            code = exited.code
        err = capsys.readouterr().err
        assert code == 2
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.png").exists()
    with pytest.raises(UserInputError, match="seeds must be a non-empty list"):
        parse_generate(b'{"prompt": "a", "seeds": []}').request.sampling_config()
    with pytest.raises(UserInputError, match="list of integers"):
        parse_generate(b'{"prompt": "a", "seeds": [1, "2"]}')


@pytest.mark.parametrize("model, extra", [
    ("tiny-sdxl", []), ("tiny-sdxl", ["--negative-prompt", ""]), ("tiny", ["--scheduler", "dpm++"]),
], ids=["sdxl-no-negative", "sdxl-empty-negative", "dpm++"])
def test_sdxl_negative_prompts_and_dpm_replay_to_themselves(model, extra, tmp_path):
    """Issue 22 item 7: SDXL without a negative prompt (zeros, as diffusers) and with an empty
    one (the empty text's embedding) record which it was, and DPM++ records its scheduler:
    each PNG replays to 0 levels."""
    from PIL import Image

    from answer_trt.cli import main

    common = ["--model", model, "--backend", "torch"]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(["generate", "a red circle", *common, "--steps", "3", "--seed", "2", *extra, "-o", str(first)]) == 0
    recorded = json.loads(Image.open(first).info["answer-trt"])
    assert recorded["negative_prompt"] == ("" if "--negative-prompt" in extra else None)
    assert main(["generate", "--from-png", str(first), *common, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def test_hostile_values_are_refused_in_one_line_on_every_surface(pipe):
    """Issue 23 items 5 and 7: scales bounded, huge integers and lone surrogates refused,
    numpy integers accepted, load() arguments checked."""
    for field in ("guidance_scale", "negative_scale"):
        with pytest.raises(UserInputError, match="within -100 .. 100"):
            pipe.generate("a", **{field: 1e308})
        with pytest.raises(UserInputError, match="within -100 .. 100"):
            parse_generate(json.dumps({"prompt": "a", field: 1e30}).encode())
    with pytest.raises(UserInputError, match="too many digits"):
        parse_generate(b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}")
    for text in ('{"prompt": "\\ud800"}', '{"prompt": "a", "negative_prompt": "x\\udfff"}'):
        with pytest.raises(UserInputError, match="lone surrogate"):
            parse_generate(text.encode())
    with pytest.raises(UserInputError, match="lone surrogate"):
        pipe.generate("\ud800", steps=1)
    with pytest.raises(UserInputError, match="negative_prompt must be a string"):
        pipe.generate("a", negative_prompt=["x"], steps=1)
    seeded = pipe.generate("a red circle", steps=1, seed=np.int64(3), batch=np.int32(1))
    assert json.loads(seeded.params["answer-trt"])["seed"] == 3
    for source in (None, 5, b"tiny"):
        with pytest.raises(UserInputError, match=r"load\(\) takes a model name"):
            answer_trt.load(source)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="applies to backend='torch'"):
        answer_trt.load("tiny", device="cuda")


def test_diffusers_calling_convention_gives_diffusers_images(pipe, tmp_path):
    """Issue 22 item 8: code written for diffusers' pipeline runs unchanged and draws its
    images (CFG, the same generator), and the result saves PNGs that keep their metadata."""
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from answer_trt.models.source import resolve_model

    reference = StableDiffusionPipeline.from_pretrained(resolve_model("tiny").path, torch_dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, guidance_scale=6.0, num_images_per_prompt=2, negative_prompt="a blue square")
    expected = reference("a red circle", generator=torch.Generator().manual_seed(5), output_type="np", **kwargs).images
    ours = pipe("a red circle", method="cfg", generator=torch.Generator().manual_seed(5), output_type="np", **kwargs)
    assert ours.images.shape == expected.shape == (2, 32, 32, 3)
    assert np.abs(ours.images - expected).max() * 255 <= 2.5
    result = pipe("a red circle", method="cfg", generator=[torch.Generator().manual_seed(5)], **kwargs)
    paths = result.save(tmp_path / "d.png")
    assert [p.name for p in paths] == ["d.png", "d-1.png"]
    assert json.loads(Image.open(paths[1]).info["answer-trt"])["seed"] == 5
    with pytest.raises(UserInputError, match="say the same thing"):
        pipe("a", num_inference_steps=3, steps=3)
    # A list of generators, one per image (diffusers' per-image seeds): diffusers' images, and
    # each PNG records the list (its own seed is seeds[batch_index]).
    generators = [torch.Generator().manual_seed(s) for s in (8, 9)]
    expected = reference("a red circle", generator=generators, output_type="np", **kwargs).images
    generators = [torch.Generator().manual_seed(s) for s in (8, 9)]
    ours = pipe("a red circle", method="cfg", generator=generators, output_type="np", **kwargs)
    assert np.abs(ours.images - expected).max() * 255 <= 2.5
    assert json.loads(ours.params["answer-trt"])["seeds"] == [8, 9]
    with pytest.raises(UserInputError, match="2 seeds for a batch of 3"):
        pipe("a", generator=[torch.Generator(), torch.Generator()], num_images_per_prompt=3, steps=1)
    with pytest.raises(UserInputError, match="did you mean 'num_inference_steps'"):
        pipe("a", num_inference_step=3)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 1.5])
def test_cfg_at_and_below_1_is_diffusers_guidance_off(pipe, w, caplog):
    """Issue 22 item 5: at w <= 1 diffusers runs the conditional prediction alone; so do we
    (one UNet row per step), warning that a negative prompt is then ignored."""
    import torch
    from diffusers import StableDiffusionPipeline

    from answer_trt.bench.suite import counting_unet_calls
    from answer_trt.models.source import resolve_model

    reference = StableDiffusionPipeline.from_pretrained(resolve_model("tiny").path, torch_dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a red circle", negative_prompt="a blue square", num_inference_steps=4, guidance_scale=w,
                         generator=torch.Generator().manual_seed(1), output_type="np").images
    rows: list[int] = []
    with counting_unet_calls(pipe):
        original = pipe.denoiser

        def recording(latents, t, cond):  # type: ignore[no-untyped-def]
            rows.append(int(latents.shape[0]))
            return original(latents, t, cond)

        pipe.denoiser = recording
        ours = pipe("a red circle", method="cfg", negative_prompt="a blue square", num_inference_steps=4,
                    guidance_scale=w, seed=1, output_type="np")
    assert np.abs(ours.images - expected).max() * 255 <= 2.5
    assert set(rows) == ({1} if w <= 1 else {2})
    assert ("negative prompt is ignored" in caplog.text) == (w <= 1)


def test_answer_at_w_1_is_the_conditional_prediction_as_eq5_says(pipe):
    cfg = pipe.generate("a green triangle", method="cfg", guidance_scale=1.0, steps=3, seed=2)
    answer = pipe.generate("a green triangle", method="answer", guidance_scale=1.0, steps=3, seed=2)
    assert np.array_equal(np.asarray(cfg.images[0]), np.asarray(answer.images[0]))


def test_a_replayed_default_size_reuses_the_default_engines():
    """A PNG records its size; asking for the model's default size by number must not build
    a second cache folder of the same engines."""
    from answer_trt.loaders import build_cached

    assert build_cached("tiny", 32, 32) == build_cached("tiny") == build_cached("tiny", None, 32)


def _cli_bad_values(fi) -> list[str]:
    """Values of a flag that its field refuses, from the schema's kind and bounds."""
    if fi.kind == "int":
        return ["x", "2.5", str(int(fi.low) - 1), *([str(int(fi.high) + 1)] if fi.high is not None else [])]
    if fi.kind == "float":
        return ["x", "nan", "inf", *([f"{fi.low - 1:g}"] if fi.low is not None else []),
                *([f"{fi.high + 1:g}"] if fi.high is not None else [])]
    if fi.kind == "ints":
        return ["1,,2", "1,-2", ",".join(["1"] * 300), str(2**64)]
    return ["", "nope"] if fi.choices else []


def test_every_flag_refuses_its_bad_values_before_any_work(tmp_path, monkeypatch, capsys):
    """Issue 32 item 1 as a property: for every schema field with a flag, each value it refuses
    is refused in one line (exit 2) with an empty cache, and nothing is built, locked or
    written: no engines folder, no lock, no PNG."""
    from answer_trt.cli import main
    from answer_trt.schema import info, request_fields

    cache = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(cache))
    tried = 0
    for f in request_fields():
        fi = info(f)
        if not fi.cli:
            continue
        for value in _cli_bad_values(fi):
            argv = ["generate", "a red circle", "--model", "tiny", "--" + f.name.replace("_", "-"), value,
                    "-o", str(tmp_path / "x.png")]
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own refusal (a value of the wrong type)
                code = exit_.code
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(("answer-trt", "usage")), err
            assert not cache.exists() or not any(cache.rglob("*")), (argv, sorted(cache.rglob("*")))
            assert not (tmp_path / "x.png").exists()
            tried += 1
    assert tried >= 40


@pytest.mark.parametrize("name", ["image_sha256", "mask_sha256", "control_image_sha256"])
@pytest.mark.parametrize("value", [5, [], {"a": 1}, "x" * 64, "A" * 64, "a" * 63])
def test_the_image_hashes_of_a_request_are_sha256_text_or_refused_in_one_line(name, value):
    """The hostile probe's walk: a hash field given a number, a list or a dict was a TypeError
    deep in the pipeline (control_image_sha256) or accepted ([])."""
    with pytest.raises(UserInputError, match=f"{name} must be 64 lowercase hex digits"):
        GenerateRequest("a", **{name: value}).sampling_config()
    two = ",".join(["a" * 64, "b" * 64])
    if name == "control_image_sha256":  # two ControlNets' images
        GenerateRequest("a", control_image_sha256=two).sampling_config()
    else:
        with pytest.raises(UserInputError):
            GenerateRequest("a", **{name: two}).sampling_config()
