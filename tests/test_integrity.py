"""Every file a load reads is covered by a checksum, derived from what is read: an ONNX
graph's external data is found in the graph itself, whatever the file is called, and a
location outside the engines folder is refused in one line (issue 23, item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from answer_trt.cli import main
from answer_trt.files import sha256_file
from answer_trt.manifest import MANIFEST_NAME
from answer_trt.onnx_files import external_data_locations


def _edit_manifest(folder: Path, files: dict[str, str | None]) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    for rel, digest in files.items():
        if digest is None:
            data["files"].pop(rel, None)
        else:
            data["files"][rel] = digest
    path.write_text(json.dumps(data))


def _externalize(folder: Path, location: str) -> None:
    """Move the UNet graph's weights to an external file named ``location`` (relative to
    the folder), rewriting the graph and its checksum in the manifest but listing nothing
    for the new file: what a crafted but checksum-consistent folder looks like."""
    graph = folder / "unet.onnx"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    if location != "w.bin":
        model = onnx.load(str(graph), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(graph))
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(folder / "w.bin", folder / location)
    _edit_manifest(folder, {"unet.onnx": sha256_file(graph)})


@pytest.fixture
def folder(engines_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "engines"
    shutil.copytree(engines_dir, copy)
    return copy


def _generate(folder: Path, out: Path) -> int:
    return main(["generate", "a cat", "--engines", str(folder), "--steps", "1", "-o", str(out)])


def test_external_data_under_another_name_must_be_checksummed(folder, tmp_path, capsys):
    _externalize(folder, "w.bin")
    assert external_data_locations(folder / "unet.onnx") == ["w.bin"]
    assert _generate(folder, tmp_path / "a.png") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'w.bin'" in err and "named in its graph" in err
    assert not (tmp_path / "a.png").exists()

    _edit_manifest(folder, {"w.bin": sha256_file(folder / "w.bin")})  # listed: it loads
    assert _generate(folder, tmp_path / "b.png") == 0
    assert main(["info", str(folder)]) == 0 and "all match" in capsys.readouterr().out

    data = bytearray((folder / "w.bin").read_bytes())  # edited after: refused, info says so
    data[-1] ^= 1
    (folder / "w.bin").write_bytes(bytes(data))
    assert _generate(folder, tmp_path / "c.png") == 2
    assert "w.bin" in capsys.readouterr().err
    main(["info", str(folder)])
    assert "MISMATCH: w.bin" in capsys.readouterr().out


@pytest.mark.parametrize("location", ["../w.bin", "/tmp/answer-trt-w.bin", "sub/../../w.bin"])
def test_external_data_outside_the_folder_is_refused_in_one_line(folder, tmp_path, location, capsys):
    _externalize(folder, "w.bin")
    model = onnx.load(str(folder / "unet.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(folder / "unet.onnx"))
    _edit_manifest(folder, {"unet.onnx": sha256_file(folder / "unet.onnx"), "w.bin": sha256_file(folder / "w.bin")})
    assert _generate(folder, tmp_path / "a.png") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "outside the engines folder" in err and location in err


def test_many_links_to_one_file_are_hashed_once(folder, monkeypatch):
    """Issue 23 item 9: verification cost is bounded by the real files, not the names."""
    import answer_trt.manifest as manifest_module
    from answer_trt.manifest import mismatched_files, read_manifest

    digest = sha256_file(folder / "unet.onnx")
    for i in range(200):
        os_link = folder / f"link-{i}.onnx"
        os_link.symlink_to("unet.onnx")
    _edit_manifest(folder, {f"link-{i}.onnx": digest for i in range(200)})
    calls: list[Path] = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: calls.append(p) or real(p))
    assert mismatched_files(folder, read_manifest(folder)) == []
    assert len(calls) == len({(p.stat().st_dev, p.stat().st_ino) for p in calls}) <= len(list(folder.rglob("*")))
    assert sum(1 for p in calls if p.resolve() == (folder / "unet.onnx").resolve()) == 1


@pytest.mark.parametrize("change, needle", [
    ({"_class_name": "UNet2DConditionModel"}, "is not a diffusers scheduler"),
    ({"num_train_timesteps": 10**12}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": "1000"}, "num_train_timesteps must be an integer"),
])
def test_a_crafted_scheduler_config_is_refused_before_anything_is_built(change, needle):
    """Issue 23 item 2: a checksum-consistent but crafted scheduler config builds nothing."""
    import resource

    from answer_trt.errors import UserInputError
    from answer_trt.schedulers import make_diffusers_scheduler, make_scheduler

    config = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, **change}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for make in (make_scheduler, make_diffusers_scheduler):
        with pytest.raises(UserInputError, match=needle):
            make(config)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: no model was built
