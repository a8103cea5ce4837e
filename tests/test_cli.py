"""The CLI contract: generate from an empty cache, info, and every bad input exiting
with code 2, a one-line message, and no output file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from answer_trt.cli import main


def run_cli(*args: object) -> int:
    """Exit code of the CLI, whether it returns one or argparse exits."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_generate_from_empty_cache_then_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "fresh-cache"))
    out = tmp_path / "cat.png"
    assert run_cli("generate", "a cat", "--model", "tiny-random", "--steps", "3", "-o", out) == 0
    first = capsys.readouterr().err
    assert "built text_encoder, unet, vae_decoder" in first and "wrote" in first
    image = Image.open(out)
    assert image.size == (64, 64)
    assert image.text["prompt"] == "a cat" and image.text["method"] == "answer"
    assert json.loads(image.text["answer-trt"])["dns_steps"] == 4

    out2 = tmp_path / "cat2.png"
    assert run_cli("generate", "a cat", "--model", "tiny-random", "--steps", "3", "-o", out2) == 0
    assert "up to date" in capsys.readouterr().err
    assert out.read_bytes() == out2.read_bytes()  # deterministic for the seed


def test_generate_batch_numbers_the_files(engines_dir, tmp_path):
    out = tmp_path / "b.png"
    assert run_cli("generate", "a dog", "--engines", engines_dir, "--steps", "2", "--batch", "2", "-o", out) == 0
    assert out.is_file() and (tmp_path / "b-1.png").is_file()
    assert not (tmp_path / "b-2.png").exists()


def test_info_prints_the_manifest(engines_dir, capsys):
    assert run_cli("info", engines_dir) == 0
    text = capsys.readouterr().out
    assert "unet" in text and "all match their checksums" in text and "batch 1..6" in text


def test_console_script_runs(engines_dir, tmp_path):
    out = tmp_path / "sub.png"
    proc = subprocess.run(
        [sys.executable, "-m", "answer_trt.cli", "generate", "a cat", "--engines", str(engines_dir),
         "--steps", "2", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "ms/step" in proc.stderr


BAD_INPUTS = {
    "height-not-multiple-of-8": (["--height", "60"], "multiple of 8"),
    "height-outside-built": (["--height", "128"], "outside what was built"),
    "batch-beyond-built": (["--batch", "3"], "beyond the built maximum of 2"),
    "steps-below-1": (["--steps", "0"], "--steps must be an integer in 1 .. 1000, got 0"),
    "dns-steps-below-1": (["--dns-steps", "0"], "must be an integer in 1 .. 1000, got 0"),
    "unknown-method": (["--method", "pag"], "invalid choice"),
    "unknown-scheduler": (["--scheduler", "lms"], "invalid choice"),
    "not-png": (["-o", "{tmp}/x.jpg"], "must be a .png"),
    "missing-output-folder": (["-o", "{tmp}/nowhere/x.png"], "does not exist"),
    "cuda-graph-on-cpu-engines": (["--cuda-graph"], "needs engines on a CUDA GPU"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_without_output(case, engines_dir, tmp_path, capsys):
    extra, message = BAD_INPUTS[case]
    extra = [a.format(tmp=tmp_path) for a in extra]
    out = tmp_path / "out.png"
    args = ["generate", "a cat", "--engines", str(engines_dir), "--steps", "2"]
    if "-o" not in extra:
        args += ["-o", str(out)]
    code = run_cli(*args, *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) <= 3  # usage line(s) + one error line, no traceback
    assert "Traceback" not in err
    assert list(tmp_path.glob("*.png")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_missing_engines_folder(tmp_path, capsys):
    assert run_cli("generate", "a cat", "--engines", tmp_path / "absent", "-o", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "answer-trt build" in err
    assert not (tmp_path / "x.png").exists()


def test_engines_that_do_not_match_the_manifest(engines_dir, tmp_path, capsys):
    copy = tmp_path / "engines"
    shutil.copytree(engines_dir, copy)
    with open(copy / "unet.onnx", "ab") as f:
        f.write(b"tampered")
    assert run_cli("generate", "a cat", "--engines", copy, "-o", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "unet.onnx" in err and "checksum" in err and "--force" in err
    assert not (tmp_path / "x.png").exists()
    assert run_cli("info", copy) == 2
    assert "MISMATCH: unet.onnx" in capsys.readouterr().out


def test_tensorrt_build_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    from answer_trt.backends import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    assert run_cli("build", "--model", "tiny-random", "--out", tmp_path / "trt", "--backend", "tensorrt") == 2
    assert "TensorRT" in capsys.readouterr().err
    assert not (tmp_path / "trt").exists()


def test_existing_output_is_kept_when_generation_fails(engines_dir, tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"previous image")
    assert run_cli("generate", "a cat", "--engines", engines_dir, "--batch", "5", "-o", out) == 2
    assert out.read_bytes() == b"previous image"


def test_resolution_range_build_and_generate(tmp_path, capsys):
    out = tmp_path / "ranged"
    assert run_cli("build", "--model", "tiny-random", "--out", out, "--height", "64:128", "--width", "64:96",
                   "--max-batch", "1") == 0
    assert run_cli("info", out) == 0
    assert "width 64:96 x height 64:128" in capsys.readouterr().out
    for height, width in ((64, 64), (128, 96), (96, 80)):
        png = tmp_path / f"{height}x{width}.png"
        assert run_cli("generate", "a cat", "--engines", out, "--steps", "2", "--height", height, "--width", width,
                       "-o", png) == 0
        assert Image.open(png).size == (width, height)
    assert run_cli("generate", "a cat", "--engines", out, "--steps", "2", "--height", "144", "-o",
                   tmp_path / "big.png") == 2
    err = capsys.readouterr().err
    assert "outside what was built (height 64:128)" in err and "--height 144" in err
    assert not (tmp_path / "big.png").exists()
    assert run_cli("build", "--model", "tiny-random", "--out", tmp_path / "bad", "--height", "128:64") == 2
    assert "low end is above" in capsys.readouterr().err


def test_built_in_families_generate_from_the_cli(tmp_path, capsys):
    for name in ("tiny-sd21", "tiny-sdxl"):
        png = tmp_path / f"{name}.png"
        assert run_cli("generate", "a cat", "--model", name, "--steps", "2", "-o", png) == 0
        image = Image.open(png)
        assert image.text["model"] == name and image.size == (64, 64)


def test_torch_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = run_cli("generate", "a cat", "--model", "tiny-random", "--backend", "torch", "--device", "cuda",
                   "-o", tmp_path / "x.png")
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_smaller_frictions_info_on_a_cache_help_defaults_truncation(engines_dir, capsys, caplog):
    """Issue 22 item 9: `info` on a folder of engines folders lists them; every option's help
    shows its default; the truncation warning says which text lost what."""
    from answer_trt.cli import make_parser

    assert main(["info", str(engines_dir.parent.parent)]) == 0
    out = capsys.readouterr().out
    assert "holds" in out and str(engines_dir) in out
    build_help = make_parser()._subparsers._group_actions[0].choices["build"].format_help()  # type: ignore[union-attr]
    assert "default: onnxruntime" in " ".join(build_help.split())
    long_prompt = "a red circle and a blue square and a green triangle and a yellow circle and a red square"
    import answer_trt

    answer_trt.load("tiny", backend="torch").generate(long_prompt, negative_prompt="a blue square", steps=1)
    assert "the prompt is 21 tokens" in caplog.text and "'circle and a red square' is dropped" in caplog.text
    assert "negative prompt is" not in caplog.text


def test_images_from_engines_record_the_model_hash(engines_dir, tmp_path):
    from answer_trt.manifest import read_manifest

    png = tmp_path / "h.png"
    assert main(["generate", "a cat", "--engines", str(engines_dir), "--steps", "1", "-o", str(png)]) == 0
    recorded = json.loads(Image.open(png).info["answer-trt"])
    assert recorded["model_hash"] == read_manifest(engines_dir).model_hash[:16]


def test_text_from_files_is_shown_escaped_on_one_line(engines_dir, tmp_path, capsys):
    """A manifest's text (C1 controls pass its schema's one-line check) never reaches the
    terminal raw: `info` and errors show it escaped."""
    from answer_trt.errors import printable

    assert printable("a\x1b[31mred\x9b2J\nnext\r\x7f") == "a\\x1b[31mred\\x9b2J\\nnext\\r\\x7f"
    assert printable("plain text, \u00fcn\u00efcode \u2713") == "plain text, \u00fcn\u00efcode \u2713"
    folder = tmp_path / "engines"
    shutil.copytree(engines_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_name"] = "evil\x9b2J\x9b31mname"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "\x9b" not in out and "evil\\x9b2J\\x9b31mname" in out


@pytest.mark.parametrize("flags", [
    ["--guidance-scale", "nan"], ["--guidance-scale", "inf"], ["--negative-scale", "-1"], ["--drift-tau", "nan"],
    ["--guidance-rescale", "1e309"], ["--chain-min-sigma", "-3"], ["--mode", "inner", "--drift-tau", "0.5"],
    ["--seeds", "1,2", "--batch", "3"], ["--cuda-graph"],
])
def test_bad_request_values_are_refused_before_any_engines_are_built(flags, tmp_path, monkeypatch, capsys):
    """With an empty cache, an invalid value or cross-field rule builds and leaves nothing."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(cache))
    assert main(["generate", "a cat", *flags, "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("answer-trt: error: ")
    assert not (cache / "engines").exists() and not (cache / "locks").exists()


def _png_with_parameters(path, text, size=(8, 8)):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", size).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("text, message", [
    (json.dumps({"prompt": "x", "batch": None}), "batch must be an integer >= 1, got None"),
    (json.dumps({"prompt": "x", "batch": "3"}), "batch must be an integer >= 1, got '3'"),
    ('{"prompt": "x", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a readable PNG with answer-trt's"),
])
def test_replayed_values_of_any_type_or_depth_are_refused_in_one_line(text, message, tmp_path, capsys):
    png = _png_with_parameters(tmp_path / "in.png", text)
    assert main(["generate", "--from-png", str(png), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_png_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = tmp_path / "bomb.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                    + chunk(b"tEXt", b"parameters\x00" + json.dumps({"prompt": "x"}).encode())
                    + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    assert main(["generate", "--from-png", str(png), "-o", str(tmp_path / "out.png")]) == 2
    assert "claims a size no answer-trt image has" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_from_png_refuses_what_is_not_a_regular_file_without_blocking(kind, tmp_path, capsys):
    """A FIFO blocked replay until a writer came (the hostile probe waited 120 s); a device
    never ends. Each is refused in one line before it is opened."""
    import os

    png = tmp_path / "in.png"
    if kind == "fifo":
        os.mkfifo(png)
    elif kind == "device":
        png.symlink_to("/dev/zero")
    else:
        png.mkdir()
    assert main(["generate", "--from-png", str(png), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file" in err and len(err.strip().splitlines()) == 1


def test_messages_say_exactly_what_is_allowed(tmp_path, monkeypatch, capsys):
    """An empty --model is refused (it ran `tiny`), the seed range ends at 2**64 - 1 (it said
    2**64), and a legal 251-byte output name is written (its temporary's name was too long)."""
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    assert main(["generate", "a cat", "--model", "", "-o", str(tmp_path / "x.png")]) == 2
    assert "--model '' names no model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "a cat", "--seeds", "-1"])
    assert "in 0 .. 18446744073709551615, got -1" in capsys.readouterr().err
    out = tmp_path / ("x" * 251 + ".png")
    assert main(["generate", "a red circle", "--model", "tiny", "--backend", "torch", "--steps", "1", "-o",
                 str(out)]) == 0
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".probe"))]
