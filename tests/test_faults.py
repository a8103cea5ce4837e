"""Fault injection: nothing a user owns is lost, nothing outside an engines folder is
read, a kill at any moment of a publish leaves a whole folder, and one prompt encoder
serves many threads.

Every refusal goes through the CLI: exit code 2, one line on stderr, no traceback, and
the next ordinary command on a good folder still works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from answer_trt.cli import main
from answer_trt.files import sha256_file
from answer_trt.manifest import FAST_TOKENIZER_FILE, MANIFEST_NAME, read_manifest, write_manifest

Tree = dict[str, str]


def run_cli(*args: object) -> int:
    """Exit code of the CLI, whether it returns one or argparse exits."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def snapshot(root: Path) -> Tree:
    """Every entry under ``root`` (links not followed): file digests, link targets, folders."""
    tree: Tree = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            tree[rel] = "dir"
        else:
            tree[rel] = sha256_file(path)
    return tree


def assert_refused(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """Exit code 2 with one error line (naming ``needles``) and no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("answer-trt: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def assert_good_folder_still_works(engines_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("info", engines_dir) == 0
    assert "all match their checksums" in capsys.readouterr().out


@pytest.fixture
def copy(engines_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "engines"
    shutil.copytree(engines_dir, folder, symlinks=True)
    return folder


# --- build: --out must be ours --------------------------------------------------------


def user_folder(root: Path) -> Path:
    """A folder of the user's own: the names a build would write, and more."""
    (root / "scheduler").mkdir(parents=True)
    (root / "scheduler" / "plan.txt").write_text("my schedule")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text('{"mine": 1}')
    (root / "unet.onnx").write_bytes(b"my own graph")
    (root / "notes.txt").write_text("notes")
    return root


def model_folder(tiny_model_dir: Path, root: Path) -> Path:
    shutil.copytree(tiny_model_dir, root)
    return root


def foreign_manifest_folder(root: Path) -> Path:
    root.mkdir()
    (root / MANIFEST_NAME).write_text(json.dumps({"name": "my web app", "icons": []}))
    (root / "index.html").write_text("<html></html>")
    return root


def file_not_folder(root: Path) -> Path:
    root.write_text("a file")
    return root


BUILD_REFUSALS: dict[str, tuple[Callable[..., Path], list[str], str]] = {
    "user-folder": (lambda tmp, _model: user_folder(tmp / "out"), [], "not an engines folder"),
    "user-folder-force": (lambda tmp, _model: user_folder(tmp / "out"), ["--force"], "not an engines folder"),
    "model-folder": (lambda tmp, model: model_folder(model, tmp / "out"), [], "looks like a model folder"),
    "model-folder-force": (lambda tmp, model: model_folder(model, tmp / "out"), ["--force"],
                           "looks like a model folder"),
    "foreign-manifest": (lambda tmp, _model: foreign_manifest_folder(tmp / "out"), [], "did not write"),
    "a-file": (lambda tmp, _model: file_not_folder(tmp / "out"), [], "is a file"),
}


@pytest.mark.parametrize("case", list(BUILD_REFUSALS))
def test_build_into_a_folder_that_is_not_ours_is_refused(case, tmp_path, tiny_model_dir, engines_dir, capsys):
    make, extra, message = BUILD_REFUSALS[case]
    out = make(tmp_path, tiny_model_dir)
    before = snapshot(tmp_path)
    code = run_cli("build", "--model", "tiny-random", "--out", out, "--max-batch", "2", *extra)
    assert_refused(capsys, code, message, str(out))
    assert snapshot(tmp_path) == before  # nothing changed, nothing staged beside it
    assert_good_folder_still_works(engines_dir, capsys)


def test_build_inside_the_model_folder_is_refused(tmp_path, tiny_model_dir, capsys):
    model = model_folder(tiny_model_dir, tmp_path / "model")
    before = snapshot(tmp_path)
    code = run_cli("build", "--model", model, "--out", model / "engines")
    assert_refused(capsys, code, "inside the model folder")
    assert snapshot(tmp_path) == before


def test_user_file_with_a_name_the_build_writes_is_refused(copy, capsys):
    (copy / "unet.onnx.data").write_bytes(b"the user's, not in the manifest")
    before = snapshot(copy.parent)
    code = run_cli("build", "--model", "tiny-random", "--out", copy, "--max-batch", "2", "--force")
    assert_refused(capsys, code, "unet.onnx.data", "not listed")
    assert snapshot(copy.parent) == before


def test_force_keeps_the_users_own_files(tmp_path, engines_dir, capsys):
    out = tmp_path / "fresh"
    out.mkdir()  # an empty folder is accepted
    assert run_cli("build", "--model", "tiny-random", "--out", out, "--max-batch", "1") == 0
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(b"\x00\x01")
    (out / "link-to-notes").symlink_to("notes.txt")
    (out / "unet.onnx").write_bytes(b"corrupted: ours, so replaced")
    assert run_cli("build", "--model", "tiny-random", "--out", out, "--max-batch", "1", "--force") == 0
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "mine" / "data.bin").read_bytes() == b"\x00\x01"
    assert os.readlink(out / "link-to-notes") == "notes.txt"
    assert run_cli("info", out) == 0  # the corrupted unet.onnx was rebuilt
    assert "all match their checksums" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]  # no staging or lock left beside it


# --- manifests: validated before use --------------------------------------------------


def edit_manifest(folder: Path, change: Callable[[dict], object]) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)  # edits in place; what it returns is ignored
    path.write_text(json.dumps(data))


def outside_copy(folder: Path, name: str) -> Path:
    """A copy of one of the folder's files next to the folder (outside it)."""
    target = folder.parent / f"outside-{name.replace('/', '-')}"
    shutil.copy(folder / name, target)
    return target


def nested(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def add_file(data: dict, rel: str, digest: str = "0" * 64) -> None:
    data["files"][rel] = digest


def component_file(data: dict, file: str, digest: str) -> None:
    data["components"]["unet"]["file"] = file
    data["files"][file] = digest


def symlink_outside(folder: Path, name: str) -> None:
    target = outside_copy(folder, name)
    (folder / name).unlink()
    (folder / name).symlink_to(target)


def symlink_folder_outside(folder: Path, name: str) -> None:
    target = folder.parent / f"outside-{name}"
    shutil.copytree(folder / name, target)
    shutil.rmtree(folder / name)
    (folder / name).symlink_to(target, target_is_directory=True)


def manifest_symlink_outside(folder: Path) -> None:
    target = outside_copy(folder, MANIFEST_NAME)
    (folder / MANIFEST_NAME).unlink()
    (folder / MANIFEST_NAME).symlink_to(target)


def unlisted_external_data(folder: Path) -> None:
    (folder / "unet.onnx.data").write_bytes(b"weights nobody checksummed")


def extra_file_for_transformers(folder: Path) -> None:
    """A folder whose tokenizer transformers reads (built before the build wrote its own
    tokenizer file), with a file transformers would open that has no checksum. (Beside the
    build's own tokenizer file such a file is never opened, so it needs none.)"""
    (folder / "tokenizer" / FAST_TOKENIZER_FILE).unlink()
    edit_manifest(folder, lambda d: d["files"].pop(f"tokenizer/{FAST_TOKENIZER_FILE}"))
    (folder / "tokenizer" / "added_tokens.json").write_text("{}")


def corrupt_unlisted_unet(folder: Path) -> None:
    edit_manifest(folder, lambda d: d["files"].pop("unet.onnx"))
    with open(folder / "unet.onnx", "ab") as f:
        f.write(b"corrupted")


def write_raw(folder: Path, raw: bytes) -> None:
    (folder / MANIFEST_NAME).write_bytes(raw)


def set_field(*keys_and_value: object) -> Callable[[Path], None]:
    *keys, value = keys_and_value

    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return lambda folder: edit_manifest(folder, change)


def digest_of(folder: Path, name: str) -> str:
    return sha256_file(folder / name)


MANIFEST_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    # paths
    "files-dotdot": (lambda f: edit_manifest(f, lambda d: add_file(d, "../x")), "'..'"),
    "files-dotdot-real-file": (lambda f: edit_manifest(f, lambda d: add_file(
        d, "../" + outside_copy(f, "unet.onnx").name, digest_of(f, "unet.onnx"))), "'..'"),
    "files-absolute": (lambda f: edit_manifest(f, lambda d: add_file(d, "/etc/passwd")), "absolute"),
    "files-inner-dotdot": (lambda f: edit_manifest(f, lambda d: add_file(d, "tokenizer/../../x")), "'..'"),
    "files-backslash": (lambda f: edit_manifest(f, lambda d: add_file(d, "..\\x")), "backslash"),
    "files-windows-drive": (lambda f: edit_manifest(f, lambda d: add_file(d, "C:/x")), "absolute"),
    "component-dotdot": (lambda f: edit_manifest(f, lambda d: component_file(
        d, "../" + outside_copy(f, "unet.onnx").name, digest_of(f, "unet.onnx"))), "'..'"),
    "component-absolute": (lambda f: edit_manifest(f, lambda d: component_file(
        d, str(outside_copy(f, "unet.onnx")), digest_of(f, "unet.onnx"))), "absolute"),
    "component-symlink-outside": (lambda f: symlink_outside(f, "unet.onnx"), "outside the folder"),
    "tokenizer-file-symlink-outside": (lambda f: symlink_outside(f, "tokenizer/vocab.json"), "outside the folder"),
    "tokenizer-folder-symlink-outside": (lambda f: symlink_folder_outside(f, "tokenizer"), "outside the folder"),
    "manifest-symlink-outside": (manifest_symlink_outside, "outside the folder"),
    # integrity
    "files-empty": (lambda f: edit_manifest(f, lambda d: d.update(files={})), "every loaded file must have"),
    "component-not-checksummed": (corrupt_unlisted_unet, "lacks 'unet.onnx'"),
    "external-data-not-checksummed": (unlisted_external_data, "lacks 'unet.onnx.data'"),
    "scheduler-not-checksummed": (lambda f: edit_manifest(
        f, lambda d: d["files"].pop("scheduler/scheduler_config.json")), "scheduler"),
    "extra-tokenizer-file": (extra_file_for_transformers, "lacks 'tokenizer/added_tokens.json'"),
    "tokenizer-file-not-checksummed": (lambda f: edit_manifest(
        f, lambda d: d["files"].pop(f"tokenizer/{FAST_TOKENIZER_FILE}")), f"lacks 'tokenizer/{FAST_TOKENIZER_FILE}'"),
    # JSON shape
    "json-list": (lambda f: write_raw(f, b"[1, 2, 3]"), "must be a JSON object, not a list"),
    "json-string": (lambda f: write_raw(f, b'"manifest"'), "must be a JSON object"),
    "json-null": (lambda f: write_raw(f, b"null"), "must be a JSON object"),
    "empty-file": (lambda f: write_raw(f, b""), "not valid JSON"),
    "not-json": (lambda f: write_raw(f, b"{format: 2,"), "not valid JSON"),
    "binary": (lambda f: write_raw(f, bytes(range(256))), "not valid JSON"),
    "too-large": (lambda f: write_raw(f, b" " * (5 << 20) + b"{}"), "larger than"),
    "nested-100-whole": (lambda f: write_raw(f, json.dumps(nested(100)).encode()), "nests deeper"),
    "nested-100-in-field": (set_field("versions", nested(100)), "nests deeper"),
    "nested-100000": (lambda f: write_raw(f, b"[" * 100_000 + b"]" * 100_000), "nests deeper"),
    # types and ranges
    "format-wrong": (set_field("format", 3), "format"),
    "format-string": (set_field("format", "2"), "format"),
    "max-batch-string": (set_field("max_batch", "2"), "max_batch must be an integer"),
    "max-batch-bool": (set_field("max_batch", True), "max_batch must be an integer"),
    "max-batch-zero": (set_field("max_batch", 0), "max_batch is 0"),
    "max-batch-huge": (set_field("max_batch", 10**30), "outside"),
    "max-batch-float": (set_field("max_batch", 2.5), "max_batch must be an integer"),
    "height-list": (set_field("height", [64, 64, 64]), "height must be a JSON object"),
    "height-unordered": (set_field("height", {"low": 128, "opt": 64, "high": 64}), "increasing order"),
    "backend-unknown": (set_field("backend", "tensorflow"), "backend"),
    "key-not-hex": (set_field("key", "x" * 64), "sha256"),
    "digest-int": (set_field("files", "unet.onnx", 5), "must be a string"),
    "files-list": (set_field("files", ["unet.onnx"]), "files must be a JSON object"),
    "components-missing-unet": (lambda f: edit_manifest(f, lambda d: d["components"].pop("unet")), "unet"),
    "component-file-int": (set_field("components", "unet", "file", 7), "must be a string"),
    "spec-shape-float": (set_field("components", "unet", "spec", "inputs", 0, "shape", 1, 4.0), "integer"),
    "spec-dtype-unknown": (set_field("components", "unet", "spec", "inputs", 0, "dtype", "object"), "dtype"),
    "profile-not-triple": (set_field("components", "unet", "profile", "batch", [1, 6]), "[min, opt, max]"),
    "profile-missing-symbol": (lambda f: edit_manifest(
        f, lambda d: d["components"]["unet"]["profile"].pop("batch")), "symbols"),
    "spec-renamed-input": (set_field("components", "unet", "spec", "inputs", 0, "name", "x"), "does not match"),
    "spec-other-size": (set_field("components", "unet", "spec", "inputs", 0, "shape", 1, 5), "does not match"),
    "dims-negative": (set_field("info", "dims", "latent_channels", -4), "latent_channels"),
    "unknown-field": (set_field("surprise", 1), "unknown field"),
    "missing-field": (lambda f: edit_manifest(f, lambda d: d.pop("info")), "lacks info"),
    "model-name-newline": (set_field("model_name", "tiny\nsecond line"), "model_name"),
    "nan": (lambda f: write_raw(f, (f / MANIFEST_NAME).read_bytes().replace(b'"max_batch": 2', b'"max_batch": NaN')),
            "max_batch must be an integer"),
}


@pytest.mark.parametrize("command", ["info", "generate"])
@pytest.mark.parametrize("case", list(MANIFEST_FAULTS))
def test_bad_manifest_is_refused(case, command, copy, engines_dir, tmp_path, capsys):
    fault, message = MANIFEST_FAULTS[case]
    fault(copy)
    png = tmp_path / "x.png"
    if command == "info":
        code = run_cli("info", copy)
    else:
        code = run_cli("generate", "a cat", "--engines", copy, "--steps", "1", "-o", png)
    err = assert_refused(capsys, code, message)
    assert "answer-trt build" in err  # says how to rebuild
    assert not png.exists()
    assert_good_folder_still_works(engines_dir, capsys)


def test_good_folder_generates_after_refusals(copy, engines_dir, tmp_path, capsys):
    for case in ("files-dotdot", "json-list", "files-empty"):
        folder = tmp_path / case
        shutil.copytree(engines_dir, folder)
        MANIFEST_FAULTS[case][0](folder)
        assert run_cli("generate", "a cat", "--engines", folder, "--steps", "1", "-o", tmp_path / "bad.png") == 2
    png = tmp_path / "good.png"
    assert run_cli("generate", "a cat", "--engines", engines_dir, "--steps", "2", "-o", png) == 0
    assert png.is_file() and not (tmp_path / "bad.png").exists()


def test_scheduler_config_that_is_not_an_object_is_refused(copy, engines_dir, tmp_path, capsys):
    (copy / "scheduler" / "scheduler_config.json").write_text("[1, 2]")
    edit_manifest(copy, lambda d: add_file(d, "scheduler/scheduler_config.json",
                                           digest_of(copy, "scheduler/scheduler_config.json")))
    code = run_cli("generate", "a cat", "--engines", copy, "--steps", "1", "-o", tmp_path / "x.png")
    assert_refused(capsys, code, "not a scheduler config", "answer-trt build")
    assert not (tmp_path / "x.png").exists()
    assert_good_folder_still_works(engines_dir, capsys)


@pytest.mark.parametrize("key, value", [("beta_end", float("nan")), ("beta_start", 1.5), ("beta_end", "0.02")])
def test_scheduler_config_with_a_broken_beta_is_refused(key, value, copy, engines_dir, tmp_path, capsys):
    """Hostile probe: a checksummed scheduler config with beta_end NaN made a NaN image (exit 1)."""
    path = copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    edit_manifest(copy, lambda d: add_file(d, "scheduler/scheduler_config.json",
                                           digest_of(copy, "scheduler/scheduler_config.json")))
    code = run_cli("generate", "a cat", "--engines", copy, "--steps", "1", "-o", tmp_path / "x.png")
    assert_refused(capsys, code, key, "scheduler config is broken")
    assert not (tmp_path / "x.png").exists()
    assert_good_folder_still_works(engines_dir, capsys)


def test_tensorrt_folder_without_the_tensorrt_runtime_is_one_line(copy, engines_dir, tmp_path, monkeypatch, capsys):
    """Hostile probe: with only tensorrt-stubs installed (an empty ``tensorrt`` namespace
    package), a TensorRT folder was an AttributeError traceback."""
    import answer_trt.versions

    edit_manifest(copy, lambda d: d.update(backend="tensorrt"))
    monkeypatch.setattr(answer_trt.versions, "tensorrt_available", lambda: False)
    code = run_cli("generate", "a cat", "--engines", copy, "--steps", "1", "-o", tmp_path / "x.png")
    assert_refused(capsys, code, "TensorRT")
    assert not (tmp_path / "x.png").exists()


def test_graph_that_is_not_its_spec_is_refused(copy, engines_dir, tmp_path, capsys):
    """A checksummed graph of the wrong component (a crafted folder) fails on load, not in a run."""
    shutil.copy(copy / "text_encoder.onnx", copy / "unet.onnx")
    edit_manifest(copy, lambda d: add_file(d, "unet.onnx", digest_of(copy, "unet.onnx")))
    code = run_cli("generate", "a cat", "--engines", copy, "--steps", "1", "-o", tmp_path / "x.png")
    assert_refused(capsys, code, "unet.onnx", "do not match the manifest's spec", "answer-trt build")
    assert not (tmp_path / "x.png").exists()
    assert_good_folder_still_works(engines_dir, capsys)


def test_symlink_inside_the_folder_is_allowed(copy, capsys):
    (copy / "weights").mkdir()
    (copy / "unet.onnx").rename(copy / "weights" / "unet.onnx")
    (copy / "unet.onnx").symlink_to(Path("weights") / "unet.onnx")
    assert run_cli("info", copy) == 0
    assert "all match their checksums" in capsys.readouterr().out


def test_a_broken_manifest_can_be_rebuilt_with_force(copy, capsys):
    """An unreadable manifest lists nothing: --force replaces it and the folders a build
    writes, and refuses to overwrite the unlisted graphs until they are moved away."""
    (copy / MANIFEST_NAME).write_text("[1, 2, 3]")
    (copy / "notes.txt").write_text("mine")
    args = ("build", "--model", "tiny-random", "--out", copy, "--max-batch", "2")
    assert_refused(capsys, run_cli(*args), "did not write", "--force")
    assert_refused(capsys, run_cli(*args, "--force"), "unet.onnx", "move it elsewhere")
    for graph in copy.glob("*.onnx"):
        graph.unlink()
    assert run_cli(*args, "--force") == 0
    assert run_cli("info", copy) == 0
    assert (copy / "notes.txt").read_text() == "mine"


# --- a kill at any moment of a publish --------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import answer_trt.export.publish as b
    from answer_trt.manifest import read_manifest

    out, new_source, phase = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            kill()
            return result
        return wrapped

    if phase == "after-carry-over":
        b.carry_over = after(b.carry_over)
    elif phase == "after-exchange":
        b.exchange = after(b.exchange)
    elif phase == "during-old-removal":
        def partial_rmtree(path, ignore_errors=False):
            first = sorted(p for p in Path(path).iterdir() if p.is_file())[0]
            first.unlink()
            kill()
        b.shutil.rmtree = partial_rmtree
    elif phase.startswith("fallback"):
        b.exchange = lambda a, c: False
        if phase == "fallback-between-renames":
            real_rename, calls = os.rename, []
            def rename(a, c):
                real_rename(a, c)
                calls.append(a)
                if len(calls) == 1:
                    kill()
            b.os.rename = rename

    target = b.inspect_out(out, force=True)
    manifest = read_manifest(new_source)
    with b.Staging.beside(target.path) as staging:
        staging.path.rmdir()
        shutil.copytree(new_source, staging.path)
        b.publish(staging, target, manifest)
""")

KILL_PHASES = ["after-carry-over", "after-exchange", "during-old-removal", "fallback-between-renames",
               "fallback-complete"]


@pytest.mark.parametrize("phase", KILL_PHASES)
def test_a_kill_during_publish_leaves_old_or_new_whole(phase, engines_dir, tmp_path, capsys):
    from answer_trt.export.publish import clean_stale

    out = tmp_path / "engines"
    shutil.copytree(engines_dir, out)
    (out / "notes.txt").write_text("the user's")
    new = tmp_path / "new-build"  # a different, valid build: one more tokenizer file
    shutil.copytree(engines_dir, new)
    (new / "tokenizer" / "added_tokens.json").write_text("{}")
    edit_manifest(new, lambda d: add_file(d, "tokenizer/added_tokens.json",
                                          digest_of(new, "tokenizer/added_tokens.json")))
    write_manifest(new, read_manifest(new))  # as a build writes it
    old_tree, new_tree = snapshot(out), {**snapshot(new), "notes.txt": snapshot(out)["notes.txt"]}

    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), str(new), phase], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parents[1])
    killed = proc.returncode == -9
    assert killed or (phase == "fallback-complete" and proc.returncode == 0), proc.stderr
    if phase == "fallback-between-renames":
        assert not out.exists()  # the one non-atomic window of the fallback
    else:
        assert snapshot(out) in (old_tree, new_tree)

    clean_stale(out)  # what the next build does first
    assert snapshot(out) in (old_tree, new_tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines", "new-build"]
    assert run_cli("info", out) == 0


# --- threads ----------------------------------------------------------------------------


class OverlapProbe:
    """Wraps a tokenizer and records how many threads were inside it at once (a short
    sleep widens the window a race needs)."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer, self.active, self.most = tokenizer, 0, 0
        self.count_lock = threading.Lock()

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.count_lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.001)
            return self.tokenizer(*args, **kwargs)  # type: ignore[operator]
        finally:
            with self.count_lock:
                self.active -= 1


def test_prompt_encoder_is_thread_safe(ort_pipe):
    """5 threads x 10 encodes on one PromptEncoder give the sequential results, and the
    (thread-unsafe) tokenizer is never entered by two threads at once."""
    import torch

    from answer_trt.text import PromptEncoder

    text = ort_pipe.text

    def encoder(tokenizers: tuple[object, ...]) -> PromptEncoder:
        return PromptEncoder(tokenizers, text.engine, text.max_length, text.zero_empty_negative)

    colours, shapes = ("red", "green", "blue", "yellow", "purple"), ("circle", "square", "triangle", "star")
    calls = [(f"a {colours[t]} {shapes[i % 4]} number {i}", None if i % 3 else f"a {colours[i % 5]} blob")
             for t in range(5) for i in range(10)]
    sequential = encoder(text.tokenizers)
    expected = [sequential.encode(prompt, negative) for prompt, negative in calls]

    probes = tuple(OverlapProbe(t) for t in text.tokenizers)
    shared = encoder(probes)
    results: list[object] = [None] * len(calls)
    errors: list[Exception] = []

    def work(thread: int) -> None:
        try:
            for i in range(thread * 10, thread * 10 + 10):
                results[i] = shared.encode(*calls[i])
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert max(probe.most for probe in probes) == 1
    assert not errors, errors
    for got, want in zip(results, expected):
        assert got is not None
        for a, b in zip(got, want):  # type: ignore[call-overload]
            assert torch.allclose(a.hidden, b.hidden, atol=1e-6, rtol=0)


# --- resources: sized before any build or allocation ------------------------------------


def assert_one_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """Exit code 2 and one error line naming ``needles``, no traceback: the CLI's own
    ("answer-trt: error: ...") or argparse's ("answer-trt generate: error: argument ...")."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("answer-trt") and "error: " in lines[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def generate_still_works(engines_dir: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = folder / "after.png"
    assert run_cli("generate", "a cat", "--engines", engines_dir, "--steps", "1", "-o", png) == 0
    capsys.readouterr()
    assert png.is_file()
    png.unlink()


RESOURCE_FAULTS: dict[str, tuple[list[str], str | None, tuple[str, ...]]] = {
    # args (ENGINES stands for the good engines folder), ANSWER_TRT_MAX_MEMORY_GB, needles
    "generate-height-100000": (["generate", "x", "--model", "tiny", "--height", "100000", "--width", "100000"],
                               None, ("100000", "4096 px")),
    "generate-width-4104": (["generate", "x", "--model", "tiny", "--width", "4104"], None, ("4104", "4096 px")),
    "generate-batch-10000": (["generate", "x", "--model", "tiny", "--batch", "10000"], "16",
                             ("--batch", "1 .. 256", "10000")),
    "generate-batch-memory": (["generate", "x", "--model", "tiny", "--batch", "200"], "1",
                              ("--batch 200", "GB", "ANSWER_TRT_MAX_MEMORY_GB=1", "or fewer")),
    "generate-4096-square": (["generate", "x", "--model", "tiny", "--height", "4096", "--width", "4096"], "16",
                             ("4096x4096", "even one image", "smaller --height/--width")),
    "generate-engines-tiny-limit": (["generate", "x", "--engines", "ENGINES", "--batch", "2"], "0.001",
                                    ("--batch 2", "(the default size, fp32)", "ANSWER_TRT_MAX_MEMORY_GB=0.001")),
    "generate-torch-batch": (["generate", "x", "--model", "tiny", "--backend", "torch", "--batch", "200"], "1",
                             ("--batch 200", "or fewer")),
    "bench-batch-10000": (["bench", "--model", "tiny", "--batch", "10000", "--runs", "1"], "16",
                          ("--batch must be at most 256",)),
    "bench-batch-memory": (["bench", "--model", "tiny", "--batch", "200", "--runs", "1"], "1",
                           ("--batch 200", "ANSWER_TRT_MAX_MEMORY_GB")),
    "build-max-batch-huge": (["build", "--model", "tiny", "--out", "OUT", "--max-batch", "1000000"], "16",
                             ("--max-batch 1000000", "or fewer")),
    "build-height-8192": (["build", "--model", "tiny", "--out", "OUT", "--height", "64:8192"], None,
                          ("8192", "4096 px")),
    "build-largest-size": (["build", "--model", "tiny", "--out", "OUT", "--height", "64:4096", "--width", "64:4096"],
                           "16", ("(the largest built size, fp32)", "even one image")),
    "memory-env-not-a-number": (["generate", "x", "--model", "tiny"], "lots", ("ANSWER_TRT_MAX_MEMORY_GB='lots'",)),
    "memory-env-negative": (["generate", "x", "--model", "tiny"], "-3", ("positive number of GB",)),
}


@pytest.mark.parametrize("case", list(RESOURCE_FAULTS))
def test_absurd_resources_are_refused_before_any_work(case, engines_dir, tmp_path, monkeypatch, capsys):
    args, limit, needles = RESOURCE_FAULTS[case]
    cache = tmp_path / "cache"
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(cache))
    if limit is not None:
        monkeypatch.setenv("ANSWER_TRT_MAX_MEMORY_GB", limit)
    out, png = tmp_path / "out", tmp_path / "x.png"
    argv = [str(engines_dir) if a == "ENGINES" else str(out) if a == "OUT" else a for a in args]
    if argv[0] == "generate":
        argv += ["--steps", "1", "-o", str(png)]
    started = time.perf_counter()
    assert_one_line(capsys, run_cli(*argv), *needles)
    assert time.perf_counter() - started < 30  # refused up front, not after a build
    assert not png.exists() and not out.exists()
    assert not (cache / "engines").exists()  # no engines build started
    monkeypatch.delenv("ANSWER_TRT_MAX_MEMORY_GB", raising=False)
    generate_still_works(engines_dir, tmp_path, capsys)


# --- request values: checked where they enter ---------------------------------------------


def read_only_folder(_tmp: Path) -> Path:
    """A folder nobody can create files in, root included."""
    return Path("/proc")


OUTPUT_FAULTS: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "seed-negative": (lambda t: ["--seed", "-1", "-o", str(t / "x.png")], ("0 to 2**64 - 1",)),
    "seed-2**64": (lambda t: ["--seed", str(2**64), "-o", str(t / "x.png")], ("0 to 2**64 - 1",)),
    "seed-float": (lambda t: ["--seed", "1.5", "-o", str(t / "x.png")], ("not an integer",)),
    "out-read-only-folder": (lambda t: ["-o", str(read_only_folder(t) / "x.png")], ("cannot write into /proc",)),
    "out-missing-folder": (lambda t: ["-o", str(t / "missing" / "x.png")], ("does not exist",)),
    "out-existing-folder": (lambda t: ["-o", str(t)], ("that is a folder",)),
    "out-existing-folder-png": (lambda t: (t / "dir.png").mkdir() or ["-o", str(t / "dir.png")],
                                ("that is a folder",)),
    "out-folder-is-a-file": (lambda t: (t / "afile").write_text("x") and ["-o", str(t / "afile" / "x.png")],
                             ("is a file, not a folder",)),
    "out-not-png": (lambda t: ["-o", str(t / "x.jpg")], (".png",)),
    "batch-target-is-folder": (lambda t: (t / "x-1.png").mkdir() or ["-o", str(t / "x.png"), "--batch", "2"],
                               ("x-1.png is a folder",)),
    # K scales work in inner mode (K DNS iterations per step): bounded like steps (hostile probe)
    "dns-steps-huge": (lambda t: ["--dns-steps", str(10**12), "-o", str(t / "x.png")], ("--dns-steps", "1000")),
}


@pytest.mark.parametrize("case", list(OUTPUT_FAULTS))
def test_bad_request_values_are_refused(case, engines_dir, tmp_path, capsys):
    make, needles = OUTPUT_FAULTS[case]
    args = make(tmp_path)
    before = snapshot(tmp_path)
    code = run_cli("generate", "a cat", "--engines", engines_dir, "--steps", "1", *args)
    assert_one_line(capsys, code, *needles)
    assert snapshot(tmp_path) == before  # nothing written, no probe left behind
    generate_still_works(engines_dir, tmp_path, capsys)


def test_largest_seed_is_accepted(engines_dir, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert run_cli("generate", "a cat", "--engines", engines_dir, "--steps", "1", "--seed", str(2**64 - 1),
                   "-o", png) == 0
    from PIL import Image

    assert Image.open(png).text["seed"] == str(2**64 - 1)


BENCH_JSON_FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a-folder": (lambda t: t, "that is a folder"),
    "missing-folder": (lambda t: t / "missing" / "r.json", "does not exist"),
    "read-only-folder": (lambda t: read_only_folder(t) / "r.json", "cannot write into /proc"),
    "folder-is-a-file": (lambda t: (t / "afile").write_text("x") and t / "afile" / "r.json", "is a file"),
}


@pytest.mark.parametrize("case", list(BENCH_JSON_FAULTS))
def test_bench_json_that_cannot_be_written_is_refused_before_benchmarking(case, engines_dir, tmp_path, capsys):
    make, needle = BENCH_JSON_FAULTS[case]
    target = make(tmp_path)
    before = snapshot(tmp_path)
    code = run_cli("bench", "--engines", engines_dir, "--steps", "1", "--runs", "1", "--json", target)
    err = assert_one_line(capsys, code, needle, "--json")
    assert "answer |" not in err  # no table: nothing was benchmarked
    assert snapshot(tmp_path) == before
    generate_still_works(engines_dir, tmp_path, capsys)


def test_build_out_on_an_existing_file_is_refused(tmp_path, engines_dir, capsys):
    out = file_not_folder(tmp_path / "engines.txt")
    code = run_cli("build", "--model", "tiny-random", "--out", out)
    assert_refused(capsys, code, "is a file", str(out))
    assert out.read_text() == "a file"


# --- broken model folders: one line naming the file --------------------------------------


def rewrite(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        target = model / rel
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return change


def drop_key(rel: str, key: str) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        data = json.loads((model / rel).read_text())
        data.pop(key)
        (model / rel).write_text(json.dumps(data))

    return change


def truncate(rel: str) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        data = (model / rel).read_bytes()
        (model / rel).write_bytes(data[: len(data) // 2])

    return change


def rename(rel: str, new_name: str) -> Callable[[Path], None]:
    return lambda model: (model / rel).rename((model / rel).with_name(new_name)) and None


def pickle_only(model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()


def two_variants_only(model: Path) -> None:
    weights = model / UNET_WEIGHTS
    shutil.copy(weights, weights.with_name("diffusion_pytorch_model.ema.safetensors"))
    weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))


def mismatched_config(model: Path) -> None:
    path = model / "unet" / "config.json"
    data = json.loads(path.read_text())
    data["block_out_channels"] = [16, 32]
    path.write_text(json.dumps(data))


UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
MODEL_FAULTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "unet-config-not-json": (rewrite("unet/config.json", "{in_channels: 4,"), ("unet/config.json", "not valid JSON")),
    "text-config-empty": (rewrite("text_encoder/config.json", ""), ("text_encoder/config.json", "not valid JSON")),
    "vae-config-list": (rewrite("vae/config.json", "[1, 2]"), ("vae/config.json", "JSON object")),
    "vae-config-binary": (rewrite("vae/config.json", bytes(range(256))), ("vae/config.json", "cannot be read")),
    "unet-config-missing-key": (drop_key("unet/config.json", "in_channels"), ("unet/config.json", "in_channels")),
    "vae-config-no-blocks": (drop_key("vae/config.json", "block_out_channels"),
                             ("vae/config.json", "block_out_channels")),
    "scheduler-config-missing": (lambda m: (m / "scheduler" / "scheduler_config.json").unlink(),
                                 ("scheduler_config.json", "is missing")),
    "tokenizer-config-not-json": (rewrite("tokenizer/tokenizer_config.json", "nope"),
                                  ("tokenizer_config.json", "not valid JSON")),
    "model-index-not-json": (rewrite("model_index.json", "{"), ("model_index.json", "not valid JSON")),
    "unet-weights-missing": (lambda m: (m / UNET_WEIGHTS).unlink(), (UNET_WEIGHTS, "is missing")),
    "vae-weights-missing": (lambda m: (m / "vae/diffusion_pytorch_model.safetensors").unlink(),
                            ("vae/diffusion_pytorch_model.safetensors", "is missing")),
    "unet-weights-truncated": (truncate(UNET_WEIGHTS), (UNET_WEIGHTS, "truncated")),
    "text-weights-truncated": (truncate("text_encoder/model.safetensors"),
                               ("text_encoder/model.safetensors", "truncated")),
    "unet-weights-garbage": (rewrite(UNET_WEIGHTS, b"\x00" * 5), (UNET_WEIGHTS, "not a safetensors file")),
    "unet-weights-empty": (rewrite(UNET_WEIGHTS, b""), (UNET_WEIGHTS, "not a safetensors file")),
    "unet-pickle-only": (pickle_only, ("unet/diffusion_pytorch_model.bin", "pickle")),
    # One variant alone loads without being asked (tests/test_variants.py); two leave the choice to the user.
    "unet-two-variants-only": (two_variants_only, ("unet weights only as the variants ema, fp16",
                                                   "--variant ema")),
    "unet-config-does-not-fit-weights": (mismatched_config, ("unet", "could not be loaded")),
}


@pytest.mark.parametrize("command", ["build", "generate-torch"])
@pytest.mark.parametrize("case", list(MODEL_FAULTS))
def test_broken_model_folder_is_named(case, command, tiny_model_dir, engines_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANSWER_TRT_CACHE", str(tmp_path / "cache"))
    model = model_folder(tiny_model_dir, tmp_path / "model")
    fault, needles = MODEL_FAULTS[case]
    fault(model)
    out, png = tmp_path / "out", tmp_path / "x.png"
    if command == "build":
        code = run_cli("build", "--model", model, "--out", out)
    else:
        code = run_cli("generate", "x", "--model", model, "--backend", "torch", "--steps", "1", "-o", png)
    assert_refused(capsys, code, *needles)
    assert not out.exists() and not png.exists()
    generate_still_works(engines_dir, tmp_path, capsys)


# --- messages that make sense -------------------------------------------------------------


def test_model_that_is_a_file_is_not_called_missing(tmp_path, capsys):
    checkpoint = tmp_path / "model.bin"
    checkpoint.write_bytes(b"weights")
    code = run_cli("build", "--model", checkpoint, "--out", tmp_path / "out")
    err = assert_refused(capsys, code, "is a pickle checkpoint (.bin), which answer-trt does not load")
    assert "not found" not in err
    # a .safetensors file is read as a single-file checkpoint: this one is not a safetensors file
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    code = run_cli("build", "--model", tmp_path / "model.safetensors", "--out", tmp_path / "out")
    assert_refused(capsys, code, "is not a safetensors file or is truncated")


def test_memory_hint_never_suggests_less_than_one_image(engines_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANSWER_TRT_MAX_MEMORY_GB", "1e-9")
    code = run_cli("generate", "x", "--engines", engines_dir, "--steps", "1", "-o", tmp_path / "x.png")
    err = assert_refused(capsys, code, "even one image")
    assert "or fewer" not in err and "--batch 0" not in err and "--batch -" not in err


@pytest.mark.parametrize("callback", ["x", 5])
def test_a_callback_that_is_not_callable_is_refused(callback, ort_pipe):
    """Hostile probe: ``generate(..., callback="x")`` was a TypeError after the first step."""
    from answer_trt.errors import UserInputError

    with pytest.raises(UserInputError, match="callback must be a function") as info:
        ort_pipe.generate("a cat", steps=1, callback=callback)
    assert "\n" not in str(info.value)
