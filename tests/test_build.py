"""Build decisions: skip on a matching manifest, rebuild on any difference, and never
leave a folder half-written."""

from __future__ import annotations

import json
import shutil

import pytest

from answer_trt.build_config import BuildConfig
from answer_trt.errors import UserInputError
from answer_trt.export import onnx_export
from answer_trt.export.build import build
from answer_trt.files import sha256_file
from answer_trt.manifest import MANIFEST_NAME, read_manifest, verify_files


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def built(engines_dir, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(engines_dir, out)
    return out


def test_manifest_records_files_specs_profiles_and_versions(engines_dir):
    manifest = read_manifest(engines_dir)
    for rel, digest in manifest.files.items():
        assert sha256_file(engines_dir / rel) == digest
    assert {"unet.onnx", "text_encoder.onnx", "vae_decoder.onnx", "tokenizer/vocab.json"} <= set(manifest.files)
    assert manifest.components["unet"].profile["batch"] == (1, 6, 6)  # 3 branches x max batch 2
    assert manifest.components["text_encoder"].profile["batch"] == (1, 4, 4)
    assert manifest.components["vae_decoder"].profile["batch"] == (1, 2, 2)
    assert manifest.components["unet"].spec.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert {"torch", "onnx", "onnxruntime", "answer_trt"} <= set(manifest.versions)
    assert len(manifest.model_hash) == 64 and manifest.model_name == "tiny-random"


def test_matching_build_is_skipped(built):
    before = (built / "unet.onnx").stat().st_mtime_ns
    result = build(BuildConfig(model="tiny-random", out=built, max_batch=2), log=quiet)
    assert result.skipped
    assert (built / "unet.onnx").stat().st_mtime_ns == before


def test_any_difference_rebuilds(built):
    key = read_manifest(built).key
    result = build(BuildConfig(model="tiny-random", out=built, max_batch=3), log=quiet)
    assert not result.skipped and result.manifest.key != key
    assert read_manifest(built).components["unet"].profile["batch"] == (1, 9, 9)
    verify_files(built, read_manifest(built))


def test_force_rebuilds_a_matching_folder(built):
    result = build(BuildConfig(model="tiny-random", out=built, max_batch=2, force=True), log=quiet)
    assert not result.skipped
    assert result.manifest.key == read_manifest(built).key


def test_tampered_files_rebuild(built):
    (built / "vae_decoder.onnx").write_bytes(b"broken")
    result = build(BuildConfig(model="tiny-random", out=built, max_batch=2), log=quiet)
    assert not result.skipped
    verify_files(built, read_manifest(built))


def test_failed_build_leaves_the_previous_engines_intact(built, monkeypatch):
    manifest_before = (built / MANIFEST_NAME).read_text()
    real_export = onnx_export.export_onnx

    def failing_export(module, spec, dims, path):
        if spec.name == "unet":
            raise RuntimeError("simulated exporter crash")
        return real_export(module, spec, dims, path)

    monkeypatch.setattr(onnx_export, "export_onnx", failing_export)
    with pytest.raises(RuntimeError, match="simulated"):
        build(BuildConfig(model="tiny-random", out=built, max_batch=3), log=quiet)
    assert (built / MANIFEST_NAME).read_text() == manifest_before
    verify_files(built, read_manifest(built))
    assert not [p for p in built.iterdir() if p.name.startswith(".staging")]
    assert [p.name for p in built.parent.iterdir()] == ["engines"]  # no staging folder or lock beside it


def test_failed_first_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing_export(module, spec, dims, path):
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(onnx_export, "export_onnx", failing_export)
    with pytest.raises(RuntimeError, match="simulated"):
        build(BuildConfig(model="tiny-random", out=tmp_path / "new" / "nested" / "engines"), log=quiet)
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_stale_staging_is_cleaned_and_live_staging_kept(built):
    from answer_trt.export.publish import STAGING_TAG, Staging, clean_stale

    dead = built.parent / f".{built.name}{STAGING_TAG}dead"
    (dead / "tokenizer").mkdir(parents=True)
    (dead / "tokenizer" / "vocab.json").write_text("partial")
    dead.with_name(dead.name + ".lock").write_text("")  # its process is gone: nobody holds the lock
    with Staging.beside(built) as live:
        clean_stale(built)
        assert live.path.is_dir() and live.lock.is_file()
        assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists()
    assert [p.name for p in built.parent.iterdir()] == ["engines"]
    verify_files(built, read_manifest(built))


def test_rebuild_without_atomic_exchange_falls_back_to_renames(built, monkeypatch):
    from answer_trt.export import publish

    monkeypatch.setattr(publish, "exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    (built / "notes.txt").write_text("mine")
    result = build(BuildConfig(model="tiny-random", out=built, max_batch=1), log=quiet)
    assert not result.skipped and read_manifest(built).max_batch == 1
    verify_files(built, read_manifest(built))
    assert (built / "notes.txt").read_text() == "mine"
    assert [p.name for p in built.parent.iterdir()] == ["engines"]


def test_bad_build_requests(tmp_path):
    with pytest.raises(UserInputError, match="max-batch"):
        BuildConfig(out=tmp_path, max_batch=0)
    with pytest.raises(UserInputError, match="--height 100 is not a positive multiple of 16 .*: pick 96 or 112"):
        build(BuildConfig(model="tiny-random", out=tmp_path / "e", height=100), log=quiet)
    with pytest.raises(UserInputError, match="not found"):
        build(BuildConfig(model=str(tmp_path / "no-such-model"), out=tmp_path / "e"), log=quiet)
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    with pytest.raises(UserInputError, match="not a diffusers model folder"):
        build(BuildConfig(model=str(not_a_model), out=tmp_path / "e"), log=quiet)
    assert not (tmp_path / "e").exists()


def test_unreadable_manifest_is_a_user_error(built):
    (built / MANIFEST_NAME).write_text(json.dumps({"format": 99}))
    with pytest.raises(UserInputError, match="rebuild with --force"):
        read_manifest(built)


def test_written_files_get_ordinary_permissions(tmp_path):
    from answer_trt.files import write_text_atomic

    target = tmp_path / "file.txt"
    write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o044 == 0o044  # group and others may read, as with open()
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_fp16_build_runs_on_onnxruntime(engines_dir, tmp_path):
    import numpy as np

    import answer_trt

    out = tmp_path / "fp16"
    result = build(BuildConfig(model="tiny-random", out=out, max_batch=1, precision="fp16"), log=quiet)
    specs = {name: entry.spec for name, entry in result.manifest.components.items()}
    assert specs["unet"].inputs[0].dtype == "float16" and specs["vae_decoder"].outputs[0].dtype == "float16"
    assert specs["text_encoder"].outputs[0].dtype == "float32"
    assert result.manifest.key != read_manifest(engines_dir).key
    half = answer_trt.load(out)("a cat", steps=4, seed=3)[0]
    full = answer_trt.load(engines_dir)("a cat", steps=4, seed=3)[0]
    diff = np.abs(np.asarray(half, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert diff.max() <= 8, diff.max()  # same picture up to half-precision rounding


def test_fp16_sdxl_keeps_its_vae_in_fp32(tmp_path):
    result = build(BuildConfig(model="tiny-sdxl", out=tmp_path / "xl16", max_batch=1, precision="fp16"), log=quiet)
    specs = {name: entry.spec for name, entry in result.manifest.components.items()}
    assert specs["unet"].inputs[0].dtype == "float16"
    assert [t.dtype for t in specs["vae_decoder"].inputs + specs["vae_decoder"].outputs] == ["float32", "float32"]
    assert result.manifest.info.vae_force_upcast and result.manifest.info.zero_empty_negative
    assert {"pooled_embeddings"} <= set(specs["text_encoder"].output_names)
    assert specs["unet"].input_names[-2:] == ["text_embeds", "time_ids"]


def test_non_finite_decoder_output_fails_clearly():
    import torch

    from answer_trt.errors import NonFiniteImageError
    from answer_trt.images import to_pil

    images = torch.zeros(1, 3, 8, 8)
    assert to_pil(images, {})[0].size == (8, 8)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteImageError, match="NaN or inf"):
        to_pil(images, {})


def test_unreachable_hub_id_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match="could not fetch model 'nobody/no-such-model'.*local folder"):
        build(BuildConfig(model="nobody/no-such-model", out=tmp_path / "e"), log=quiet)
    assert not (tmp_path / "e").exists()


def test_a_build_never_publishes_a_manifest_its_reader_refuses(tiny_model_dir, tmp_path):
    """A model path with a newline or too many LoRAs: refused before anything is exported, and
    no engines folder is left (loading would refuse the manifest, and the rebuild it suggested
    would fail the same way)."""
    from answer_trt.build_config import LoraSpec
    from answer_trt.manifest import MAX_LORAS

    odd = tmp_path / "tiny\nmodel"
    shutil.copytree(tiny_model_dir, odd)
    out = tmp_path / "engines"
    with pytest.raises(UserInputError, match=r"--model .* is not a one-line string") as caught:
        build(BuildConfig(model=str(odd), out=out), log=lambda _m: None)
    assert "\n" not in str(caught.value).replace(str(odd), "")
    loras = tuple(LoraSpec(tmp_path / f"missing-{i}.safetensors") for i in range(MAX_LORAS + 1))
    with pytest.raises(UserInputError, match=f"one build fuses at most {MAX_LORAS}"):
        build(BuildConfig(model=str(tiny_model_dir), out=out, loras=loras), log=lambda _m: None)
    assert not out.exists()


def test_force_keeps_a_users_file_that_a_hand_edited_manifest_lists(built):
    """Ownership comes from the names a build writes, never from the manifest alone."""
    notes = built / "notes.txt"
    notes.write_text("mine")
    data = json.loads((built / MANIFEST_NAME).read_text())
    data["files"]["notes.txt"] = sha256_file(notes)
    (built / MANIFEST_NAME).write_text(json.dumps(data))
    build(BuildConfig(model="tiny-random", out=built, max_batch=2, force=True), log=quiet)
    assert notes.read_text() == "mine"
    assert "notes.txt" not in read_manifest(built).files


def test_a_tokenizer_config_with_an_absurd_model_max_length_builds_at_the_encoders_length(tiny_model_dir, tmp_path):
    """`model_max_length: 1e30` (a float, as some configs carry "no limit") was an OverflowError
    traceback while the build wrote the engines folder's tokenizer; the model's positions bound it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config_path = model / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 1e30
    config_path.write_text(json.dumps(config))
    result = build(BuildConfig(model=str(model), out=tmp_path / "engines"), log=quiet)
    fast = json.loads((tmp_path / "engines" / "tokenizer" / "answer-trt-tokenizer.json").read_text())
    positions = json.loads((model / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    assert fast["truncation"]["max_length"] == result.manifest.info.dims.text_max_length == positions
