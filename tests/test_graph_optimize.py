"""`answer-trt build --optimize`: ONNX Runtime's transformer optimizer per component, kept
only where it fused something, matches the exported graph within tolerance and is not
slower; recorded in the manifest (old manifests still read), printed by `info`, part
of the build key and of the rebuild command."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export import graph_optimize
from answer_trt.export.build import build
from answer_trt.files import sha256_file
from answer_trt.iospec import COMPONENT_SETS, TEXT_ENCODER, VAE_DECODER
from answer_trt.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def optimized(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("optimized") / "tiny-random"
    lines: list[str] = []
    build(BuildConfig(model="tiny-random", out=out, max_batch=1, optimize=True), log=lines.append)
    return out, lines


def test_optimized_build_records_each_component_and_runs(optimized):
    out, lines = optimized
    manifest = read_manifest(out)
    record = manifest.graph_optimization
    assert record is not None and record.tool.startswith("onnxruntime.transformers.optimizer ")
    assert set(record.components) == set(COMPONENT_SETS["all"])  # what a build without ControlNets has
    text = record.components[TEXT_ENCODER]
    assert text.fusions.get("SkipLayerNormalization", 0) > 0  # CLIP's residual + LayerNorm pairs fuse on the CPU
    assert text.max_abs_error is not None and text.atol is not None and text.max_abs_error <= text.atol
    for name, entry in record.components.items():
        assert any(line.startswith(f"graph optimization {name}: ") for line in lines)
        assert not any(op in entry.fusions for op in ("GroupNorm", "NhwcConv", "BiasSplitGelu"))  # CUDA-only
    assert manifest.build_config(out).optimize is True and "--optimize" in manifest.build_command(out)
    import answer_trt

    image = answer_trt.load(out)("a red circle", method="cfg", steps=3)[0]
    assert image.size == (manifest.width.opt, manifest.height.opt)


def test_info_prints_the_graph_optimization(optimized, engines_dir, capsys):
    assert run_cli("info", optimized[0]) == 0
    stdout = capsys.readouterr().out
    assert "graphs:     onnxruntime.transformers.optimizer" in stdout
    assert f"  {TEXT_ENCODER:<13} " in stdout and "SkipLayerNormalization" in stdout
    assert run_cli("info", engines_dir) == 0
    assert "graphs:     as exported" in capsys.readouterr().out


def test_the_flag_is_a_build_option_like_the_others(optimized, tmp_path, capsys):
    out, _ = optimized
    # Same request: up to date. Without --optimize: a different key, so a rebuild.
    lines: list[str] = []
    again = build(BuildConfig(model="tiny-random", out=out, max_batch=1, optimize=True), log=lines.append)
    assert again.skipped
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    plain = build(BuildConfig(model="tiny-random", out=copy, max_batch=1), log=lambda _m: None)
    assert not plain.skipped and plain.manifest.key != again.manifest.key
    assert plain.manifest.graph_optimization is None and "--optimize" not in plain.manifest.build_command(copy)
    assert "--no-optimize" in BuildConfig(optimize=False).command()
    with pytest.raises(UserInputError, match="--optimize"):
        BuildConfig(backend="tensorrt", optimize=True)
    assert run_cli("build", "--backend", "tensorrt", "--optimize", "--out", tmp_path / "trt") == 2
    assert "--optimize" in capsys.readouterr().err


def test_manifest_round_trip_and_strict_schema(optimized):
    out, _ = optimized
    data = json.loads((out / MANIFEST_NAME).read_text())
    manifest = Manifest.from_json(data)
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    old = dict(data)
    del old["graph_optimization"]  # a folder built before the field existed
    assert Manifest.from_json(old).graph_optimization is None
    for path, value in ((("kept",), "yes"), (("fusions",), {"Attention": 0}), (("max_abs_error",), -1.0),
                        (("surprise",), 1)):
        bad = json.loads(json.dumps(data))
        bad["graph_optimization"]["components"][TEXT_ENCODER][path[0]] = value
        with pytest.raises(ManifestError, match="graph_optimization"):
            Manifest.from_json(bad)


@pytest.fixture
def exported(engines_dir, tmp_path) -> tuple[Path, object]:
    folder = tmp_path / "graphs"
    shutil.copytree(engines_dir, folder)
    return folder, read_manifest(engines_dir).components[VAE_DECODER]


def test_a_failing_optimizer_keeps_the_exported_graph(exported, monkeypatch):
    folder, entry = exported
    path = folder / entry.file  # type: ignore[attr-defined]
    before = sha256_file(path)

    def broken(source: Path, out: Path, model_type: str) -> dict[str, int]:
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    monkeypatch.setattr(graph_optimize, "run_optimizer", broken)
    result = graph_optimize.optimize_component(path, entry, "vae")  # type: ignore[arg-type]
    assert not result.kept and result.note.startswith("optimizer failed: TypeError")
    assert sha256_file(path) == before


def test_a_graph_that_differs_or_is_slower_is_not_kept(exported, monkeypatch):
    import onnx
    from onnx import numpy_helper

    folder, entry = exported
    path = folder / entry.file  # type: ignore[attr-defined]
    before = sha256_file(path)

    def perturbed(source: Path, out: Path, model_type: str) -> dict[str, int]:
        model = onnx.load(str(source))
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        values = numpy_helper.to_array(init) * 1.5
        init.CopyFrom(numpy_helper.from_array(values, init.name))
        onnx.save(model, str(out))
        return {"FakeFusion": 1}

    monkeypatch.setattr(graph_optimize, "run_optimizer", perturbed)
    result = graph_optimize.optimize_component(path, entry, "vae")  # type: ignore[arg-type]
    assert not result.kept and "tolerance" in result.note and result.fusions == {"FakeFusion": 1}
    assert result.max_abs_error is not None and result.atol is not None and result.max_abs_error > result.atol
    assert sha256_file(path) == before

    def same(source: Path, out: Path, model_type: str) -> dict[str, int]:
        shutil.copy(source, out)
        return {"FakeFusion": 1}

    monkeypatch.setattr(graph_optimize, "run_optimizer", same)
    monkeypatch.setattr(graph_optimize, "NOT_SLOWER", 0.0)  # nothing is fast enough
    result = graph_optimize.optimize_component(path, entry, "vae")  # type: ignore[arg-type]
    assert not result.kept and result.note == "slower than the exported graph"
    monkeypatch.setattr(graph_optimize, "NOT_SLOWER", 1e9)
    result = graph_optimize.optimize_component(path, entry, "vae")  # type: ignore[arg-type]
    assert result.kept and result.max_abs_error == 0.0


def test_the_build_measures_the_intra_op_threads_and_the_loader_uses_them(engines_dir, tmp_path, monkeypatch, capsys):
    from answer_trt.export import session_tune
    from answer_trt.loaders import from_engines

    manifest = read_manifest(engines_dir)
    session = manifest.session
    assert session is not None and session.intra_op_threads in session_tune.CANDIDATES
    assert set(session.unet_call_ms) == {str(t) for t in session_tune.CANDIDATES}
    assert all(ms > 0 for ms in session.unet_call_ms.values())
    pipe = from_engines(engines_dir)
    assert session.cpus == os.cpu_count()
    assert all(e.settings.intra_op_threads == session.intra_op_threads for e in pipe.engines.values())
    # Measured on another kind of machine: ONNX Runtime's default there, not the measured count.
    assert replace(session, intra_op_threads=1).threads_here(os.cpu_count()) == 1
    assert replace(session, intra_op_threads=1).threads_here((os.cpu_count() or 1) * 8) == 0
    assert replace(session, intra_op_threads=1, cpus=None).threads_here(os.cpu_count()) == 0
    assert run_cli("info", engines_dir) == 0
    assert "session:    intra-op threads" in capsys.readouterr().out
    # The choice itself: a candidate must be clearly faster than the default.
    monkeypatch.setattr(session_tune, "_alternating", lambda *_a: {0: 10.0, 1: 9.8})
    unet = manifest.components["unet"]
    assert session_tune.choose_session(engines_dir, unet, lambda _m: None).intra_op_threads == 0  # type: ignore[union-attr]
    monkeypatch.setattr(session_tune, "_alternating", lambda *_a: {0: 10.0, 1: 8.0})
    assert session_tune.choose_session(engines_dir, unet, lambda _m: None).intra_op_threads == 1  # type: ignore[union-attr]
    # A folder built before the field existed loads with ONNX Runtime's default.
    old = tmp_path / "old"
    shutil.copytree(engines_dir, old)
    data = json.loads((old / MANIFEST_NAME).read_text())
    del data["session"]
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    assert all(e.settings.intra_op_threads == 0 for e in from_engines(old).engines.values())
    data["session"] = {"intra_op_threads": -1, "unet_call_ms": {}}
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="session.intra_op_threads"):
        read_manifest(old)
