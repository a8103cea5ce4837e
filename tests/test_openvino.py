"""`--backend openvino`: OpenVINO IR converted from the exported graphs, built, checked,
loaded and run on the CPU through the real build and loading path, against ONNX Runtime's
engines; the bf16 refusal and the missing-package line without OpenVINO."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError

PROMPT = "a red circle and a blue square"
METHODS = ("answer", "cfg", "dns")


def _openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


needs_openvino = pytest.mark.skipif(not _openvino_installed(),
                                    reason="OpenVINO is not installed (pip install 'answer-trt[openvino]')")


def _has_bf16() -> bool:
    from answer_trt.backends.openvino import cpu_capabilities

    return _openvino_installed() and "BF16" in cpu_capabilities()


def _build(tmp_path_factory: pytest.TempPathFactory, precision: str) -> Path:
    from answer_trt.cli import main

    out = tmp_path_factory.mktemp("openvino") / f"tiny-openvino-{precision}"
    assert main(["build", "--model", "tiny", "--out", str(out), "--backend", "openvino", "--precision", precision,
                 "--check"]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``answer-trt build --model tiny --backend openvino --precision fp32 --check`` (the CLI)."""
    return _build(tmp_path_factory, "fp32")


@pytest.fixture(scope="module")
def reference_images() -> dict[str, np.ndarray]:
    """ONNX Runtime's images (the cached `tiny` build) per method."""
    import answer_trt

    pipe = answer_trt.load("tiny")
    return {method: _pixels(pipe.generate(PROMPT, method=method, steps=12, seed=3, batch=2)) for method in METHODS}


def _pixels(generation) -> np.ndarray:
    return np.stack([np.asarray(im).astype(np.int16) for im in generation.images])


@needs_openvino
def test_the_build_writes_checksummed_ir_and_records_openvino(fp32_engines):
    from answer_trt.manifest import read_manifest

    manifest = read_manifest(fp32_engines)
    assert manifest.backend == "openvino" and manifest.precision == "fp32"
    assert {e.file for e in manifest.components.values()} == {"text_encoder.xml", "unet.xml", "vae_decoder.xml",
                                                               "vae_encoder.xml"}
    for entry in manifest.components.values():  # the IR and its weights are checksummed; no ONNX is left
        assert entry.file in manifest.files and entry.file.replace(".xml", ".bin") in manifest.files
    assert not list(fp32_engines.glob("*.onnx*"))
    assert manifest.versions["openvino"]
    assert manifest.session is not None and set(manifest.session.unet_call_ms) == {"0", "1", "static"}  # measured
    assert manifest.accuracy is not None  # --check compared each IR with torch: fp32 measured 1e-6 .. 4e-6
    assert all(r.precision == "fp32" and r.max_abs_error < 1e-4 for r in manifest.accuracy.components.values())
    assert "--backend openvino" in manifest.build_command(fp32_engines)


@needs_openvino
def test_fp32_images_are_within_2_levels_of_onnxruntime(fp32_engines, reference_images):
    """Measured: at most 1 level (of 255) apart, per method."""
    from answer_trt.loaders import from_engines

    pipe = from_engines(fp32_engines)
    assert {engine.hint for engine in pipe.engines.values()} == {"f32"}  # fp32 asked for explicitly
    for method in METHODS:
        got = pipe.generate(PROMPT, method=method, steps=12, seed=3, batch=2)
        assert np.abs(_pixels(got) - reference_images[method]).max() <= 2, method
        assert got.params["backend"] == "openvino"


@needs_openvino
@pytest.mark.skipif(not _openvino_installed() or not _has_bf16(), reason="this CPU has no native bf16")
def test_bf16_images_stay_close_to_onnxruntime(tmp_path_factory, reference_images):
    """bf16 UNet and VAE decoder, fp32 text encoder (the precision rule). Measured on `tiny`:
    at most 21-31 levels apart, 0.6-0.9 on average; --check: max abs error 0.019 (UNet) and
    0.024 (VAE decoder)."""
    from answer_trt.loaders import from_engines
    from answer_trt.manifest import read_manifest

    folder = _build(tmp_path_factory, "bf16")
    accuracy = read_manifest(folder).accuracy
    assert accuracy is not None and accuracy.components["unet"].precision == "bf16"
    assert accuracy.components["text_encoder"].precision == "fp32"
    assert accuracy.components["unet"].max_abs_error < 0.1
    pipe = from_engines(folder)
    assert pipe.engines["unet"].hint == "bf16" and pipe.engines["text_encoder"].hint == "f32"
    for method in METHODS:
        diff = np.abs(_pixels(pipe.generate(PROMPT, method=method, steps=12, seed=3, batch=2))
                      - reference_images[method])
        assert diff.mean() <= 2 and diff.max() <= 64, method
        assert diff.max() > 0, method  # bf16 really ran: it is not bit-identical to fp32


@needs_openvino
def test_shapes_outside_the_profile_are_refused_before_running(fp32_engines):
    from answer_trt.export.sample_inputs import sample_inputs
    from answer_trt.loaders import from_engines

    pipe = from_engines(fp32_engines)
    unet = pipe.engines["unet"]
    feeds = sample_inputs(unet.spec, pipe.dims.bind(13, 32, 32))
    with pytest.raises(UserInputError, match=r"batch=13 is outside the built profile \[1, 12\].*--max-batch"):
        unet.run(feeds)


@needs_openvino
def test_a_tampered_bin_is_refused_with_the_rebuild_command(fp32_engines, tmp_path):
    from answer_trt.loaders import from_engines

    copy = tmp_path / "copy"
    shutil.copytree(fp32_engines, copy)
    weights = copy / "unet.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"unet\.bin missing or not matching the checksum.*--backend openvino"):
        from_engines(copy)


@needs_openvino
def test_a_bin_left_out_of_the_checksums_is_refused(fp32_engines, tmp_path):
    from answer_trt.loaders import from_engines

    copy = tmp_path / "copy"
    shutil.copytree(fp32_engines, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["vae_decoder.bin"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match=r"lacks 'vae_decoder\.bin'.*checksum"):
        from_engines(copy)


@needs_openvino
def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(monkeypatch, fp32_engines, tmp_path):
    import answer_trt.backends.openvino as backend
    from answer_trt.cli import main

    monkeypatch.setattr(backend, "cpu_capabilities", lambda: ("FP32", "INT8"))
    with pytest.raises(UserInputError, match=r"^--precision bf16 needs a CPU with native bf16.*--precision fp32$"):
        backend.check_precision_here("bf16")
    backend.check_precision_here("fp32")  # fp32 runs anywhere
    assert main(["build", "--model", "tiny", "--out", str(tmp_path / "x"), "--backend", "openvino",
                 "--precision", "bf16"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserInputError, match="built for bf16.*native bf16.*--precision fp32"):
        backend.OpenVinoEngine(fp32_engines / "unet.xml", None, {}, hint="bf16")  # type: ignore[arg-type]
    monkeypatch.setattr(backend, "cpu_capabilities", lambda: ("BF16", "FP32"))
    backend.check_precision_here("bf16")


def test_the_inference_precision_follows_the_precision_rule():
    from answer_trt.backends.openvino import compile_config, inference_precision

    assert inference_precision("unet", "bf16", False) == "bf16"
    assert inference_precision("vae_decoder", "bf16", False) == "bf16"
    assert inference_precision("vae_decoder", "bf16", True) == "f32"  # force_upcast VAE stays fp32
    assert inference_precision("text_encoder", "bf16", False) == "f32"
    assert inference_precision("unet", "fp32", False) == "f32"
    with pytest.raises(UserInputError, match="fp32 or bf16"):
        inference_precision("unet", "fp16", False)
    assert compile_config("f32", 0) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert compile_config("bf16", 2)["INFERENCE_NUM_THREADS"] == "2"


def test_build_requests_for_openvino(monkeypatch):
    import answer_trt.backends.openvino as backend

    # bf16 passed the quality gate (issue 35): the default where the CPU has native bf16, fp32 elsewhere.
    monkeypatch.setattr(backend, "cpu_capabilities", lambda: ("BF16", "FP32", "INT8"))
    assert BuildConfig(backend="openvino").precision == "bf16"
    assert BuildConfig(backend="openvino").checks_accuracy  # a bf16 build is checked against torch by default
    monkeypatch.setattr(backend, "cpu_capabilities", lambda: ("FP32", "INT8"))
    assert BuildConfig(backend="openvino").precision == "fp32"
    assert BuildConfig(backend="onnxruntime").precision == "fp32"
    assert BuildConfig(backend="openvino", precision="bf16").precision == "bf16"
    with pytest.raises(UserInputError, match="--backend openvino runs fp32 or bf16"):
        BuildConfig(backend="openvino", precision="fp16")
    with pytest.raises(UserInputError, match="bf16 needs --backend tensorrt, inductor or openvino"):
        BuildConfig(backend="onnxruntime", precision="bf16")
    assert "--backend openvino --precision bf16" in BuildConfig(backend="openvino", precision="bf16").command()


def test_a_machine_without_openvino_gets_one_line(monkeypatch, tmp_path, capsys):
    from answer_trt.backends.openvino import require_openvino
    from answer_trt.cli import main

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(UserInputError, match=r"^the openvino backend needs OpenVINO, which is not installed: "
                                             r"pip install 'answer-trt\[openvino\]'"):
        require_openvino()
    assert main(["build", "--model", "tiny", "--out", str(tmp_path / "x"), "--backend", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'answer-trt[openvino]'" in err and "Traceback" not in err and len(err.splitlines()) == 1


@needs_openvino
def test_loading_openvino_engines_without_openvino_gets_one_line(monkeypatch, fp32_engines):
    from answer_trt.loaders import from_engines

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UserInputError, match=r"^the openvino backend needs OpenVINO.*answer-trt\[openvino\]"):
        from_engines(fp32_engines)


@needs_openvino
def test_load_and_generate_build_openvino_engines_into_the_cache(tmp_path, monkeypatch, capsys):
    """`load(model, backend="openvino")` and `generate --model --backend openvino`: a cache folder of
    their own (ONNX Runtime's keeps its name), in the default precision (bf16 where the CPU has it);
    an fp32 image (openvino's default before bf16) replays from its PNG on fp32 engines, to 0 levels."""
    import answer_trt
    from answer_trt.cli import main
    from answer_trt.loaders import cached_engines_folder
    from tests.cli_run import file_pixels

    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    fp32_folder = cached_engines_folder("tiny", None, None, 4, backend="openvino")
    assert len({cached_engines_folder("tiny", None, None, 4), fp32_folder,
                cached_engines_folder("tiny", None, None, 4, backend="openvino", precision="bf16")}) == 3
    default = "bf16" if _has_bf16() else "fp32"
    pipe = answer_trt.load("tiny", backend="openvino")
    assert pipe.backend == "openvino" and pipe.precision == default
    assert answer_trt.load("tiny", backend="openvino", precision="fp32").precision == "fp32"
    assert fp32_folder.is_dir()  # the fp32 build keeps the folder name it had before bf16 was the default
    generate = ["generate", PROMPT, "--model", "tiny", "--backend", "openvino", "--steps", "2"]
    assert main([*generate, "--precision", "fp32", "-o", str(tmp_path / "fp32.png")]) == 0
    assert main([*generate, "-o", str(tmp_path / "default.png")]) == 0
    assert main(["generate", "--from-png", str(tmp_path / "fp32.png"), "--backend", "openvino",
                 "-o", str(tmp_path / "replay.png")]) == 0
    assert np.array_equal(file_pixels(tmp_path / "replay.png"), file_pixels(tmp_path / "fp32.png"))
    if default == "bf16":  # bf16 draws the same picture within a few levels, not the same pixels
        diff = np.abs(file_pixels(tmp_path / "default.png").astype(int) - file_pixels(tmp_path / "fp32.png"))
        assert 0 < diff.mean() < 3
    capsys.readouterr()
    for flags, message in ((["--precision", "bf16"], "--precision bf16 runs on OpenVINO: add --backend openvino"),
                           (["--backend", "torch", "--precision", "fp32"], "--precision fp32 chooses the engines "
                                                                           "built into the cache")):
        assert main(["generate", PROMPT, "--model", "tiny", *flags, "-o", str(tmp_path / "no.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1
    with pytest.raises(UserInputError, match="precision chooses the engines built into the cache"):
        answer_trt.load(fp32_folder, precision="bf16")


def test_a_replay_builds_openvino_engines_in_the_images_precision(monkeypatch, capsys):
    import answer_trt.backends.openvino as backend
    from answer_trt.cli import _replay_precision

    png = Path("x.png")
    monkeypatch.setattr(backend, "has_native_bf16", lambda: True)
    assert _replay_precision({"backend": "openvino", "precision": "fp32"}, "openvino", png) == "fp32"
    assert _replay_precision({"backend": "openvino", "precision": "bf16"}, "openvino", png) == "bf16"
    assert _replay_precision({"backend": "onnxruntime", "precision": "fp32"}, "openvino", png) is None
    assert _replay_precision({"backend": "openvino", "precision": "fp32"}, None, png) is None  # onnxruntime: fp32
    assert _replay_precision({"backend": "openvino", "precision": 3}, "openvino", png) is None
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(backend, "has_native_bf16", lambda: False)
    assert _replay_precision({"backend": "openvino", "precision": "bf16"}, "openvino", png) is None
    assert "drawn in bf16, which this CPU lacks: redrawn in fp32" in capsys.readouterr().err


@needs_openvino
def test_static_shape_engines_match_the_dynamic_one_and_compile_per_shape(fp32_engines, monkeypatch):
    from answer_trt.backends.openvino import OpenVinoEngine
    from answer_trt.export.sample_inputs import sample_inputs
    from answer_trt.manifest import read_manifest

    manifest = read_manifest(fp32_engines)
    assert manifest.session is not None and isinstance(manifest.session.static_shapes, bool)  # measured
    assert "static" in manifest.session.unet_call_ms
    entry = manifest.components["unet"]
    dynamic = OpenVinoEngine(fp32_engines / entry.file, entry.spec, entry.profile)
    static = OpenVinoEngine(fp32_engines / entry.file, entry.spec, entry.profile, static=True)
    for rows in (1, 3, 1):
        feeds = sample_inputs(entry.spec, manifest.info.dims.bind(rows, manifest.height.opt, manifest.width.opt))
        want, got = dynamic.run(feeds)["noise_pred"], static.run(feeds)["noise_pred"]
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    assert len(static._compiled) == 2 and len(dynamic._compiled) == 1  # one static model per row count
    import answer_trt.backends.openvino as backend

    monkeypatch.setattr(backend, "MAX_STATIC", 2)  # a third shape set beyond the cap runs on the dynamic model
    feeds = sample_inputs(entry.spec, manifest.info.dims.bind(2, manifest.height.opt, manifest.width.opt))
    assert (static.run(feeds)["noise_pred"] - dynamic.run(feeds)["noise_pred"]).abs().max() < 1e-5
    assert None in static._compiled and len(static._compiled) == 3


@needs_openvino
def test_a_rebuild_owns_the_ir_files_it_wrote(fp32_engines):
    from answer_trt.export.publish import inspect_out

    target = inspect_out(fp32_engines, True)
    assert target.owns(Path("unet.xml")) and target.owns(Path("unet.bin"))


@needs_openvino
def test_a_component_that_is_not_an_ir_is_refused(fp32_engines, tmp_path):
    """An IR reads only its own .bin; an ONNX file named in an openvino manifest could name other files."""
    from answer_trt.loaders import from_engines

    copy = tmp_path / "copy"
    shutil.copytree(fp32_engines, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["components"]["unet"]["file"] = "unet.bin"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match=r"component unet is 'unet\.bin', not an OpenVINO IR"):
        from_engines(copy)


def test_a_small_unet_takes_one_thread_unless_clearly_slower():
    from answer_trt.export.openvino_build import pick_threads

    assert pick_threads({0: 9.4, 1: 9.3}, small=True) == 1  # level back to back: one thread (faster in the sampler)
    assert pick_threads({0: 9.0, 1: 9.3}, small=True) == 1  # within 5%
    assert pick_threads({0: 8.0, 1: 9.3}, small=True) == 0  # the default clearly faster
    assert pick_threads({0: 9.4, 1: 9.3}, small=False) == 0  # a full-size UNet: the default unless clearly beaten
    assert pick_threads({0: 9.4, 1: 8.0}, small=False) == 1


def test_the_image_benchmark_reads_label_folder_and_threads():
    from benchmarks.openvino_images import parse_folder

    assert parse_folder("ov=/tmp/e/openvino") == ("ov", "/tmp/e/openvino", None)
    assert parse_folder("ov2=/tmp/e@x/openvino@0") == ("ov2", "/tmp/e@x/openvino", 0)
    for bad in ("/tmp/e/openvino", "ov=", "ov=/tmp/e@two"):
        with pytest.raises(ValueError, match="LABEL=FOLDER|whole number"):
            parse_folder(bad)


@needs_openvino
def test_the_compliance_suite_runs_an_openvino_engines_folder(fp32_engines, tmp_path, capsys):
    import json

    from answer_trt.synthetic.compliance import main

    common = ["--engines", str(fp32_engines), "--prompts", "2", "--families", "single", "--methods", "cfg",
              "--steps", "2"]
    assert main([*common, "--batch", "64"]) == 2
    assert "--max-batch 64" in capsys.readouterr().err.splitlines()[-1]
    assert main([*common, "--batch", "2", "--json", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    assert (report["backend"], report["precision"]) == ("openvino", "fp32") and report["cells"][0]["prompts"] == 2


def test_paired_runs_compare_two_runs_prompt_by_prompt():
    from answer_trt.errors import UserInputError
    from answer_trt.synthetic.compliance import paired_runs

    fp32 = [1.0, 1.0, 0.0, 1.0] * 16
    bf16 = [1.0, 0.0, 0.0, 1.0] * 16  # one prompt in four lost
    diff = paired_runs(fp32, bf16)
    assert diff.value == pytest.approx(-0.25) and diff.low < -0.25 < diff.high < 0
    assert paired_runs(fp32, fp32).value == 0 and paired_runs(fp32, fp32).low == 0
    with pytest.raises(UserInputError, match="same prompts"):
        paired_runs(fp32, bf16[:-1])
