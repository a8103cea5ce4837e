"""`answer-trt build --check`: each built component against its torch reference through
Polygraphy, recorded in the manifest; a mismatch is one line, exit 2, nothing published."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export import accuracy
from answer_trt.export.build import build
from answer_trt.export.publish import STAGING_TAG
from answer_trt.iospec import (
    COMPONENT_SETS,
    COMPONENTS,
    TEXT_ENCODER,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
    ComponentSpec,
    TensorSpec,
)
from answer_trt.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
from tests.test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def build_logged(out: Path, **kwargs: object) -> tuple[Manifest, list[str]]:
    lines: list[str] = []
    result = build(BuildConfig(model="tiny-random", out=out, max_batch=1, **kwargs), log=lines.append)  # type: ignore[arg-type]
    return result.manifest, lines


def nothing_left(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}{STAGING_TAG}*"))


def test_fp32_check_passes_and_is_recorded_in_the_manifest(tiny_model_dir, tmp_path):
    out = tmp_path / "fp32"
    manifest, lines = build_logged(out, check=True)
    check = read_manifest(out).accuracy
    assert check is not None and check == manifest.accuracy  # written, and read back the same
    assert check.tool.startswith("polygraphy ") and "torch float32" in check.reference
    assert set(check.components) == set(COMPONENT_SETS["all"])  # what a build without ControlNets has
    for name, entry in check.components.items():
        assert entry.precision == "fp32"
        assert (entry.atol, entry.rtol) == (accuracy.TOLERANCES["fp32"][name].atol,
                                             accuracy.TOLERANCES["fp32"][name].rtol)
        assert 0 <= entry.max_abs_error <= entry.atol
        assert any(line.startswith(f"accuracy check {name} (fp32)") and line.endswith(": pass") for line in lines)


def test_fp16_builds_check_by_default_each_component_at_its_own_precision(tiny_model_dir, tmp_path):
    manifest, _lines = build_logged(tmp_path / "fp16", precision="fp16")
    check = manifest.accuracy
    assert check is not None
    assert {name: e.precision for name, e in check.components.items()} == {
        TEXT_ENCODER: "fp32", UNET: "fp16", VAE_DECODER: "fp16",
        VAE_ENCODER: "fp16"}  # the text encoder stays fp32 on onnxruntime
    assert all(e.max_abs_error <= e.atol for e in check.components.values())


def test_no_check_skips_it_and_writes_no_field(tiny_model_dir, tmp_path):
    out = tmp_path / "fp16-unchecked"
    manifest, lines = build_logged(out, precision="fp16", check=False)
    assert manifest.accuracy is None and not any("accuracy" in line for line in lines)
    assert "accuracy" not in json.loads((out / MANIFEST_NAME).read_text())  # as before the check existed
    fp32, lines = build_logged(tmp_path / "fp32-default")  # fp32: off by default
    assert fp32.accuracy is None and not any("accuracy" in line for line in lines)


def test_an_unchecked_folder_is_rebuilt_when_the_check_is_asked_for(tiny_model_dir, tmp_path):
    out = tmp_path / "engines"
    build_logged(out)
    manifest, lines = build_logged(out, check=True)
    assert manifest.accuracy is not None and any("rebuilding to run it" in line for line in lines)
    again = build(BuildConfig(model="tiny-random", out=out, max_batch=1, check=True), log=lambda _m: None)
    assert again.skipped and again.manifest.accuracy == manifest.accuracy


class Shifted(nn.Module):
    """A reference whose output is off by ``shift``: an injected mismatch."""

    def __init__(self, module: nn.Module, shift: float) -> None:
        super().__init__()
        self.module, self.shift = module, shift

    def forward(self, *inputs):  # type: ignore[no-untyped-def]
        return self.module(*inputs) + self.shift


def shift_reference(monkeypatch: pytest.MonkeyPatch, component: str, shift: float) -> None:
    real = accuracy.reference_runner

    def runner(module, spec, binding):  # type: ignore[no-untyped-def]
        return real(Shifted(module, shift) if spec.name == component else module, spec, binding)

    monkeypatch.setattr(accuracy, "reference_runner", runner)


def test_a_mismatch_fails_the_cli_build_in_one_line_and_publishes_nothing(tiny_model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    shift_reference(monkeypatch, VAE_DECODER, 0.25)
    out = tmp_path / "engines"
    assert run_cli("build", "--model", "tiny-random", "--out", out, "--max-batch", "1", "--check") == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = err[-1]
    assert message.startswith("answer-trt: error: accuracy check failed: vae_decoder (fp32, output images)")
    assert "max abs error 0.25" in message and "atol 0.0001" in message and "--no-check" in message
    assert not any(line.startswith("answer-trt: error") for line in err[:-1])
    assert any(line.startswith("accuracy check vae_decoder (fp32)") and line.endswith("FAIL") for line in err)
    assert nothing_left(out)


def test_a_failed_rebuild_leaves_the_published_folder_as_it_was(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    build_logged(out)
    before = (out / MANIFEST_NAME).read_text()
    monkeypatch.setitem(accuracy.TOLERANCES["fp32"], UNET, accuracy.Tolerance(1e-12, 1e-12))  # deliberately tiny
    with pytest.raises(UserInputError) as failure:
        build_logged(out, check=True, force=True)
    message = str(failure.value)
    assert "\n" not in message and "unet (fp32, output noise_pred)" in message and "atol 1e-12" in message
    assert "text_encoder" not in message and "vae_decoder" not in message  # only the failing component
    assert (out / MANIFEST_NAME).read_text() == before
    assert not list(tmp_path.glob(f".{out.name}{STAGING_TAG}*"))


def test_no_check_flag_skips_a_check_that_would_fail(tiny_model_dir, tmp_path, monkeypatch, capsys):
    shift_reference(monkeypatch, UNET, 1.0)
    out = tmp_path / "engines"
    assert run_cli("build", "--model", "tiny-random", "--out", out, "--max-batch", "1", "--precision", "fp16",
                   "--no-check") == 0
    assert "accuracy" not in capsys.readouterr().err and read_manifest(out).accuracy is None


def test_the_runner_follows_the_backend_without_loading_tensorrt(tmp_path):
    code = f"""
import sys
from pathlib import Path
from answer_trt.export.accuracy import artifact_runner
plan = Path({str(tmp_path / 'unet.plan')!r})
trt = artifact_runner(plan, "tensorrt")
engine = trt._engine_or_context
print(type(trt).__name__, type(engine).__name__, type(engine._serialized_engine).__name__,
      engine._serialized_engine._path == str(plan))
ort = artifact_runner(plan.with_suffix(".onnx"), "onnxruntime")
print(type(ort).__name__, type(ort._sess).__name__, ort._sess._model_bytes_or_path == str(plan.with_suffix(".onnx")))
print("tensorrt" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["TrtRunner EngineFromBytes BytesFromPath True",
                                          "OnnxrtRunner SessionFromOnnx True", "False"]
    with pytest.raises(ValueError):
        accuracy.artifact_runner(tmp_path / "x", "openvino")


def test_the_tolerance_follows_what_each_component_computes_in():
    fp32 = ComponentSpec("unet", (TensorSpec("sample", ("batch", 4), "float32"),),
                         (TensorSpec("noise_pred", ("batch", 4), "float32"),))
    fp16 = fp32.with_dtype("float16")
    assert accuracy.arithmetic_precision("onnxruntime", "fp16", fp32) == "fp32"  # kept fp32 in an fp16 build
    assert accuracy.arithmetic_precision("onnxruntime", "fp16", fp16) == "fp16"
    # Strongly typed TensorRT builds: the graph's dtype, as on ONNX Runtime (answer_trt/precision.py).
    assert accuracy.arithmetic_precision("tensorrt", "fp16", fp32) == "fp32"
    assert accuracy.arithmetic_precision("tensorrt", "fp16", fp16) == "fp16"
    assert accuracy.arithmetic_precision("tensorrt", "bf16", fp16.with_dtype("bfloat16")) == "bf16"
    assert accuracy.check_binding({"batch": (1, 6, 6), "latent_height": (4, 8, 16)}) == {
        "batch": 1, "latent_height": 8}
    for table in accuracy.TOLERANCES.values():
        assert set(table) == set(COMPONENTS)
    assert accuracy.TOLERANCES["fp32"][UNET].atol < accuracy.TOLERANCES["fp16"][UNET].atol


def test_check_flags_default_by_precision_and_replay():
    assert not BuildConfig(precision="fp32").checks_accuracy
    assert BuildConfig(precision="fp16").checks_accuracy
    assert BuildConfig(backend="tensorrt", precision="bf16").checks_accuracy
    assert BuildConfig(precision="fp32", check=True).checks_accuracy
    assert not BuildConfig(precision="fp16", check=False).checks_accuracy
    assert "--check" not in BuildConfig().command()
    assert BuildConfig(check=False).command().endswith("--no-check")


@pytest.mark.parametrize("change, where", [
    (lambda a: a["components"]["unet"].update(max_abs_error=-1), "accuracy.components.unet.max_abs_error"),
    (lambda a: a["components"]["unet"].update(atol=float("nan")), "accuracy.components.unet.atol"),
    (lambda a: a["components"]["unet"].update(atol="0.1"), "accuracy.components.unet.atol"),
    (lambda a: a["components"].update(refiner=a["components"]["unet"]), "accuracy.components has unknown"),
    (lambda a: a["components"]["unet"].update(precision="fp8"), "accuracy.components.unet.precision"),
    (lambda a: a.update(passed=True), "accuracy has unknown"),
    (lambda a: a.pop("tool"), "accuracy lacks tool"),
])
def test_the_manifest_validates_the_accuracy_record_strictly(engines_dir, change, where):
    data = json.loads((engines_dir / MANIFEST_NAME).read_text())
    assert "accuracy" not in data and Manifest.from_json(data).accuracy is None  # old manifests stay valid
    data["accuracy"] = {"tool": "polygraphy 0.53.6", "reference": "torch float32 (cpu)", "components": {
        "unet": {"precision": "fp32", "atol": 1e-4, "rtol": 1e-3, "max_abs_error": 1e-6, "max_rel_error": 0.01}}}
    assert Manifest.from_json(data).accuracy is not None
    change(data["accuracy"])
    with pytest.raises(ManifestError, match=f"^{where}"):
        Manifest.from_json(data)


def test_importing_the_runtime_and_the_build_loads_no_polygraphy():
    code = ("import sys, answer_trt, answer_trt.cli, answer_trt.manifest, answer_trt.export.build, "
            "answer_trt.export.accuracy; "
            "print([m for m in sys.modules if m.split('.')[0] == 'polygraphy'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    for path in sorted((REPO / "answer_trt").rglob("*.py")):
        imports = re.findall(r"^\s*(?:import|from)\s+polygraphy\b", path.read_text(), re.MULTILINE)
        assert not imports, f"{path} imports polygraphy: keep it in export/"
