"""``--lora-dir DIR`` (issue 31, item 2): with ``--prompt-syntax a1111``, ``<lora:NAME:SCALE>``
tags choose ``DIR/NAME.safetensors`` at SCALE, built into the cache once for that set (a second
run reuses the folder); the image equals engines built with ``--lora FILE:SCALE`` (0 levels) and
differs from the model's own; the PNG records the LoRA and replays; refusals are one line;
``serve --lora-dir`` lists the files at ``GET /sdapi/v1/loras`` in A1111's shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from answer_trt.cli import main
from answer_trt.models.source import resolve_model
from tests.cli_run import file_pixels as _pixels
from tests.cli_run import refused_in_one_line as _refused
from tests.cli_run import run_cli as _cli
from tests.lora_files import make_lora

pytest.importorskip("peft")

PROMPT = "a red circle"
RUN = ("--steps", "2", "--method", "cfg", "--seed", "5", "--prompt-syntax", "a1111")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """A1111's models/Lora: ``style.safetensors`` (with kohya-like metadata) and ``other.safetensors``."""
    root = tmp_path_factory.mktemp("lora-dir")
    model = resolve_model("tiny").path
    folder = root / "Lora"
    folder.mkdir()
    style = make_lora(model, root / "a", seed=1)
    save_file(load_file(style), str(folder / "style.safetensors"), metadata={"ss_network_dim": "4"})
    shutil.copy(make_lora(model, root / "b", seed=2), folder / "other.safetensors")
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


@pytest.fixture(scope="module")
def explicit_engines(lora_dir, tmp_path_factory) -> Path:
    """`tiny` built with --lora style.safetensors:0.7, as a user would without tags."""
    out = tmp_path_factory.mktemp("explicit") / "tiny-style"
    assert main(["build", "--model", "tiny", "--out", str(out), "--max-batch", "1", "--components", "txt2img",
                 "--lora", f"{lora_dir / 'style.safetensors'}:0.7"]) == 0
    return out


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(root))
    return root


def _folders(cache: Path) -> list[str]:
    engines = cache / "engines"
    return sorted(p.name for p in engines.iterdir()) if engines.is_dir() else []


def test_tags_select_build_once_and_equal_the_explicit_build(lora_dir, explicit_engines, cache, tmp_path, capsys):
    tagged = f"{PROMPT} <lora:style:0.7>"
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert _cli("generate", tagged, "--model", "tiny", "--lora-dir", lora_dir, *RUN, "-o", first) == 0
    built = _folders(cache)
    assert len(built) == 1, built
    assert _cli("generate", tagged, "--model", "tiny", "--lora-dir", lora_dir, *RUN, "-o", second) == 0
    assert _folders(cache) == built  # the second run found the set's engines in the cache
    explicit = tmp_path / "explicit.png"
    assert _cli("generate", tagged, "--engines", explicit_engines, *RUN, "-o", explicit) == 0
    assert np.array_equal(_pixels(first), _pixels(explicit))  # 0 levels
    assert np.array_equal(_pixels(first), _pixels(second))
    plain = tmp_path / "plain.png"
    assert _cli("generate", PROMPT, "--model", "tiny", *RUN, "-o", plain) == 0
    assert np.abs(_pixels(first) - _pixels(plain)).max() > 2  # the LoRA changed the picture
    record = Image.open(first).info
    assert "style.safetensors" in record["parameters"] and ":0.7" in record["parameters"], record["parameters"]
    assert "<lora:style:0.7>" in record["parameters"]  # the prompt as written


def test_a_tag_selected_image_replays(lora_dir, cache, tmp_path, capsys):
    png = tmp_path / "tagged.png"
    assert _cli("generate", f"{PROMPT} <lora:other>", "--model", "tiny", "--lora-dir", lora_dir, *RUN, "-o", png) == 0
    again = tmp_path / "again.png"
    assert _cli("generate", "--from-png", png, "--model", "tiny", "--lora-dir", lora_dir, "-o", again) == 0
    assert np.array_equal(_pixels(png), _pixels(again))
    capsys.readouterr()
    # Without the folder the tag names nothing built: refused before any build.
    _refused(capsys, _cli("generate", "--from-png", png, "--model", "tiny", "-o", tmp_path / "x.png"), "other")


def test_two_tags_fuse_both_in_tag_order(lora_dir, cache, tmp_path):
    png = tmp_path / "two.png"
    assert _cli("generate", f"{PROMPT} <lora:other:0.5> <lora:style:0.7>", "--model", "tiny", "--lora-dir", lora_dir,
                *RUN, "-o", png) == 0
    text = Image.open(png).info["parameters"]
    assert text.index("other.safetensors") < text.index("style.safetensors"), text


@pytest.mark.parametrize("prompt, extra, needles", [
    (f"{PROMPT} <lora:missing:0.7>", (), ("<lora:missing:0.7>", "missing.safetensors", "other, style")),
    (f"{PROMPT} <lora:style:0.7> <lora:style:0.3>", (), ("one scale",)),
    (f"{PROMPT} <lora:style:high>", (), ("not a number",)),
    (f"{PROMPT} <lora:style:0.7>", ("--prompt-syntax", "plain"), ("--prompt-syntax a1111",)),
])
def test_bad_tags_are_one_line(prompt, extra, needles, lora_dir, cache, tmp_path, capsys):
    code = _cli("generate", prompt, "--model", "tiny", "--lora-dir", lora_dir, *RUN, *extra, "-o", tmp_path / "x.png")
    _refused(capsys, code, *needles)
    assert _folders(cache) == []  # nothing was built


def test_a_missing_folder_and_engines_are_refused(lora_dir, explicit_engines, cache, tmp_path, capsys):
    tagged = f"{PROMPT} <lora:style:0.7>"
    _refused(capsys, _cli("generate", tagged, "--model", "tiny", "--lora-dir", tmp_path / "nope", *RUN,
                          "-o", tmp_path / "x.png"), "--lora-dir", "no such folder")
    _refused(capsys, _cli("generate", tagged, "--engines", explicit_engines, "--lora-dir", lora_dir, *RUN,
                          "-o", tmp_path / "x.png"), "--lora-dir", "--model")
    assert _folders(cache) == []


def test_a_tag_without_lora_dir_not_built_is_refused_naming_the_flag(cache, tmp_path, capsys):
    code = _cli("generate", f"{PROMPT} <lora:style:0.7>", "--model", "tiny", *RUN, "-o", tmp_path / "x.png")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the build's progress lines
    assert err.startswith("answer-trt: error: <lora:style:0.7>") and "--lora-dir" in err, err
    assert not (tmp_path / "x.png").exists()


def test_the_a1111_lora_listing(lora_dir):
    pytest.importorskip("fastapi")
    from answer_trt.serving.http import make_api
    from tests.test_serve_a1111 import call

    class Listing:
        model_name, backend, health = "tiny", "torch", {"status": "ok"}

        def __init__(self, folder: Path | None) -> None:
            self.lora_dir = folder

    answer = call(make_api(Listing(lora_dir)), "GET", "/sdapi/v1/loras")
    assert answer.status_code == 200, answer.text
    items = answer.json()
    assert [item["name"] for item in items] == ["other", "style"]
    style = items[1]
    assert style["alias"] == "style" and style["path"] == str(lora_dir / "style.safetensors")
    assert style["metadata"] == {"ss_network_dim": "4"}
    assert call(make_api(Listing(None)), "GET", "/sdapi/v1/loras").json() == []


def test_serve_takes_lora_dir(lora_dir, explicit_engines, tmp_path, capsys):
    from answer_trt.cli import make_parser
    from answer_trt.serving.cli_serve import serve_config

    args = make_parser().parse_args(["serve", "--engines", str(explicit_engines), "--lora-dir", str(lora_dir)])
    assert serve_config(args).lora_dir == lora_dir.resolve()
    args = make_parser().parse_args(["serve", "--engines", str(explicit_engines), "--lora-dir", str(tmp_path / "no")])
    from answer_trt.errors import UserInputError

    with pytest.raises(UserInputError, match="no such folder"):
        serve_config(args)


def test_load_with_lora_dir_picks_the_tagged_set(lora_dir, explicit_engines, cache):
    import answer_trt

    pipe = answer_trt.load("tiny", lora_dir=lora_dir)
    run = dict(steps=2, method="cfg", seed=5)
    tagged = np.asarray(pipe(f"{PROMPT} <lora:style:0.7>", **run).images[0], dtype=np.int16)
    explicit = answer_trt.load(explicit_engines)(f"{PROMPT} <lora:style:0.7>", prompt_syntax="a1111", **run)
    assert np.array_equal(tagged, np.asarray(explicit.images[0], dtype=np.int16))
    assert pipe.pipeline_for(f"{PROMPT} <lora:style:0.7>") is pipe.pipeline_for("x <lora:style:0.7>")
    with pytest.raises(answer_trt.UserInputError, match="nope.safetensors"):
        pipe(f"{PROMPT} <lora:nope>", **run)
    with pytest.raises(answer_trt.UserInputError, match="pass a MODEL"):
        answer_trt.load(explicit_engines, lora_dir=lora_dir)
