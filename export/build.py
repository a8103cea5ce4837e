"""`answer-trt build`: model -> ONNX per component -> engines folder with a manifest.

A build whose key (model content, backend, precision, shapes, library versions)
matches the folder's manifest, and whose files still match their checksums, is
skipped.

The build writes only into an engines folder it owns: a new folder, an empty one, or
one with a manifest of ours. It never writes into a model folder, and a folder with
other content is refused. Everything is written into a staging folder beside
``--out`` (``.NAME.answer-trt-staging-*``); the user's own files in the old folder
(anything the old manifest does not list, outside the folders the build writes) are
hard-linked into it; then one atomic exchange of the two folders publishes it, and the
old one is deleted. With ``--check`` the staged components are first compared with
their torch reference (``export.accuracy``); a failure publishes nothing. A kill at
any moment leaves ``--out`` either old and whole or new and whole; the next build
removes stale staging folders (those whose lock no live build holds). Where the
filesystem cannot exchange folders, two renames do, and the next build puts the old
folder back if a kill fell between them.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from answer_trt.backends import tensorrt_available
from answer_trt.build_config import BuildConfig, BuildResult
from answer_trt.errors import UserInputError
from answer_trt.files import sha256_file
from answer_trt.iospec import (
    COMPONENTS,
    ComponentSpec,
    ModelDims,
    Profile,
    SizeRange,
    component_profiles,
    component_specs,
)
from answer_trt.manifest import (
    MANIFEST_NAME,
    ComponentEntry,
    Manifest,
    ManifestError,
    external_data_name,
    load_manifest_json,
    mismatched_files,
    owned_paths,
    read_manifest,
    write_manifest,
)
from answer_trt.models.info import ModelInfo, read_model_info
from answer_trt.models.source import (
    TOKENIZER_FOLDERS,
    LoadedModel,
    ModelSource,
    load_model,
    model_folder_evidence,
    resolve_model,
)
from answer_trt.rules import check_memory, check_size_range
from answer_trt.versions import gpu_capability, library_versions
from export.precision import graph_dtype

# Copied beside the engines so that a folder is all `generate --engines` needs.
MODEL_FILES = (*TOKENIZER_FOLDERS, "scheduler")
# Every top-level name a build may write (besides the manifest): a user's file with one
# of these names is never overwritten; the build is refused instead.
OUTPUT_NAMES = frozenset(
    name for c in COMPONENTS for name in (f"{c}.onnx", external_data_name(f"{c}.onnx"), f"{c}.plan")
)
# Names of the staging folders (and their lock files) beside --out: `.NAME` + tag + random.
STAGING_TAG = ".answer-trt-staging-"
LOCK_SUFFIX, ASIDE_SUFFIX = ".lock", ".aside"
# Where fcntl is missing (Windows), a staging folder counts as stale after this long.
STALE_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class BuildPlan:
    """A build request resolved against its model: what the artifacts will be."""

    config: BuildConfig
    source: ModelSource
    model_hash: str
    info: ModelInfo
    height: SizeRange
    width: SizeRange

    @cached_property
    def key(self) -> str:
        """sha256 of everything that decides the artifacts; ``force`` and ``out`` are not in it."""
        from export.onnx_export import OPSET

        inputs = {
            "model_hash": self.model_hash,
            "backend": self.config.backend,
            "precision": self.config.precision,
            "max_batch": self.config.max_batch,
            "height": asdict(self.height),
            "width": asdict(self.width),
            "opset": OPSET,
            "versions": library_versions(),
            "gpu": gpu_capability() if self.config.backend == "tensorrt" else None,
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build(config: BuildConfig, log: Callable[[str], None] = print) -> BuildResult:
    if config.backend == "tensorrt" and not tensorrt_available():
        raise UserInputError(
            "the tensorrt backend needs TensorRT, which is not installed: on a machine with an NVIDIA GPU run "
            "`pip install 'tensorrt-cu12>=10.12,<12'` (or use the NGC image in docker/), or build with "
            "--backend onnxruntime"
        )
    clean_stale(config.out.resolve())
    target = inspect_out(config.out, config.force)
    source = resolve_model(config.model)
    if target.path.is_relative_to(source.path):
        raise UserInputError(f"--out {config.out} is inside the model folder {source.path}: answer-trt never "
                             "writes into a model; choose an --out outside it")
    info = read_model_info(source.path)
    height, width = (_size_range(side, value, info.dims) for side, value in
                     (("height", config.height), ("width", config.width)))
    check_build_memory(config, info.dims, height, width)
    plan = BuildPlan(config, source, source.content_hash(), info, height, width)
    key = plan.key
    out = config.out
    if not config.force and _up_to_date(out, key):
        if not config.checks_accuracy or read_manifest(out).accuracy is not None:
            log(f"{out}: up to date with {source.name} (manifest key {key[:12]}), nothing to build")
            return BuildResult(read_manifest(out), out, skipped=True)
        log(f"{out}: up to date but built without the accuracy check; rebuilding to run it")

    check_collisions(target, OUTPUT_NAMES)
    created = _make_folders(target.path.parent)
    try:
        with Staging.beside(target.path) as staging:
            model = load_model(source.path)
            manifest = _export_all(plan, model, staging.path, log)
            if config.checks_accuracy:
                if config.precision == "fp16":  # the export cast its half components in place: reload fp32
                    del model
                    model = load_model(source.path)
                manifest = _check_accuracy(plan, model, staging.path, manifest, log)
            del model
            publish(staging, target, manifest)
    except BaseException:
        _remove_empty(created)
        raise
    log(f"{out}: built {', '.join(manifest.components)} ({config.backend}, {config.precision})")
    return BuildResult(manifest, out, skipped=False)


def _size_range(side: str, value: SizeRange | int | None, dims: ModelDims) -> SizeRange:
    """The built range of one image side; opt is the model's default size when it lies
    inside, else the low end."""
    default = dims.default_image_size
    if value is None:
        return SizeRange.fixed(default)
    size = check_size_range(f"--{side}", SizeRange.fixed(value) if isinstance(value, int) else value,
                            multiple=dims.vae_scale_factor)
    opt = default if size.low <= default <= size.high else size.low
    return SizeRange(size.low, opt, size.high)


def check_build_memory(config: BuildConfig, dims: ModelDims, height: SizeRange, width: SizeRange) -> None:
    """Refuse, before anything is exported, engines whose promises no run could keep within
    the memory limit (``answer_trt.rules.check_memory``): ``--max-batch`` images at the
    smallest built size, and one image at the largest. (The two corners together may
    exceed it: a folder built for both serves large batches of small images and small
    batches of large ones.)"""
    precision = str(config.precision)
    check_memory(dims, config.max_batch, height.low, width.low, precision, batch_flag="--max-batch",
                 size_label="the smallest built size, ")
    check_memory(dims, 1, height.high, width.high, precision, batch_flag="batch",
                 size_label="the largest built size, ")


def _up_to_date(out: Path, key: str) -> bool:
    if not (out / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = read_manifest(out)
    except UserInputError:
        return False
    return manifest.key == key and not mismatched_files(out, manifest)


def _export_all(plan: BuildPlan, model: LoadedModel, staging: Path, log: Callable[[str], None]) -> Manifest:
    import torch

    from export.onnx_export import export_onnx
    from answer_trt.backends.torch_modules import component_modules

    config, dims = plan.config, plan.info.dims
    # Builds are strongly typed: each graph is exported in the dtype it runs in (fp16 / bf16
    # UNet and VAE, fp32 text encoder and upcast VAE: export/precision.py).
    dtypes = {name: graph_dtype(name, str(config.precision), plan.info.vae_force_upcast) for name in COMPONENTS}
    specs = {
        name: spec.with_dtype(dtypes[name]) if dtypes[name] != "float32" else spec
        for name, spec in component_specs(dims).items()
    }
    profiles = component_profiles(dims, config.max_batch, plan.height, plan.width)
    modules = component_modules(model)
    components = {}
    for name, module in modules.items():
        log(f"exporting {name} to ONNX")
        if dtypes[name] != "float32":
            module = module.to(getattr(torch, dtypes[name]))
        file = f"{name}.onnx"
        export_onnx(module, specs[name], dims, staging / file)
        if config.backend == "tensorrt":
            file = _build_tensorrt_plan(staging / file, specs[name], profiles[name], config.precision, log)
        components[name] = ComponentEntry(file, specs[name], profiles[name])
    for sub in MODEL_FILES:
        if (plan.source.path / sub).is_dir():
            shutil.copytree(plan.source.path / sub, staging / sub)
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    return Manifest(
        key=plan.key,
        backend=config.backend,
        precision=str(config.precision),
        model_name=plan.source.name,
        model_hash=plan.model_hash,
        max_batch=config.max_batch,
        height=plan.height,
        width=plan.width,
        info=plan.info,
        components=components,
        files=files,
        versions=library_versions(),
        gpu_capability=gpu_capability() if config.backend == "tensorrt" else None,
    )


def _check_accuracy(plan: BuildPlan, model: LoadedModel, staging: Path, manifest: Manifest,
                    log: Callable[[str], None]) -> Manifest:
    """Compare the staged components with the float32 torch modules of ``model`` (``export.accuracy``),
    before anything is published; a failure raises ``UserInputError``, and the staging
    folder goes with it. Returns the manifest with the check's record."""
    from export.accuracy import check_components
    from answer_trt.backends.torch_modules import component_modules

    log("checking the built components against the torch reference (Polygraphy)")
    check = check_components(staging, manifest.components, component_modules(model), plan.config.backend,
                             str(plan.config.precision), log)
    return replace(manifest, accuracy=check)


def _build_tensorrt_plan(
    onnx_path: Path, spec: ComponentSpec, profile: Profile, precision: str | None, log: Callable[[str], None]
) -> str:
    """Build ``<component>.plan`` beside its ONNX file; returns the plan's file name."""
    from answer_trt.cache import cache_root
    from export.tensorrt_build import build_plan, tensorrt_version

    log(f"building the TensorRT engine for {spec.name}")
    plan = onnx_path.with_suffix(".plan")
    timing_cache = cache_root() / "tensorrt" / f"timing-{tensorrt_version()}-sm{gpu_capability()}.cache"
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    build_plan(onnx_path, spec, profile, str(precision), plan, timing_cache, log)
    return plan.name




# --- where a build may write, and how it publishes --------------------------------------


@dataclass(frozen=True)
class OutFolder:
    """The ``--out`` of a build, inspected: its resolved path, whether it exists, and
    which of its entries are the build's own (replaced) rather than the user's (kept)."""

    path: Path
    exists: bool = False
    owned_files: frozenset[str] = frozenset()  # relative paths: the manifest and what it lists
    owned_folders: frozenset[str] = frozenset()  # top-level folders the build writes

    def owns(self, rel: Path) -> bool:
        name = rel.parts[0]
        return (rel.as_posix() in self.owned_files or name in self.owned_folders
                or (len(rel.parts) == 1 and _leftover_of_ours(name)))


def _leftover_of_ours(name: str) -> bool:
    """Staging folders of earlier answer-trt versions (inside --out) and atomic-write temp files."""
    return name.startswith(".staging-") or (name.startswith(f".{MANIFEST_NAME}.") and name.endswith(".tmp"))


def inspect_out(out: Path, force: bool) -> OutFolder:
    """Decide whether a build may write ``out``: absent, empty, or an engines folder of
    ours (one whose manifest.json is not ours only with ``force``). Never a model
    folder, never a folder with other content. Raises ``UserInputError`` otherwise."""
    path = out.resolve()  # a link to a folder: the build replaces the folder it points to
    if not path.exists():
        return OutFolder(path)
    if not path.is_dir():
        raise UserInputError(f"--out {out} is a file, not a folder: choose a folder path for the engines")
    evidence = model_folder_evidence(path)
    if evidence:
        raise UserInputError(f"--out {out} looks like a model folder (it has {evidence}): answer-trt never writes "
                             f"into a model, even with --force; choose another --out, such as {out}-engines")
    try:
        names = [entry.name for entry in path.iterdir()]
    except OSError as exc:
        raise UserInputError(f"--out {out} cannot be listed ({exc.strerror}): choose a folder you can read and "
                             "write") from None
    if all(_leftover_of_ours(name) for name in names):
        return OutFolder(path, exists=True)
    if not (path / MANIFEST_NAME).is_file():
        raise UserInputError(f"--out {out} is a folder with content and not an engines folder (it has no "
                             f"{MANIFEST_NAME}): answer-trt writes only into a new or empty folder or one it "
                             "built; choose another --out")
    try:
        listed = owned_paths(load_manifest_json(path))
    except ManifestError:
        listed = None
    if listed is None and not force:
        raise UserInputError(f"--out {out} has a {MANIFEST_NAME} that answer-trt did not write: choose another "
                             f"--out, or, if answer-trt built this folder, pass --force (it replaces {MANIFEST_NAME} "
                             f"and the {', '.join(MODEL_FILES)} folders, and keeps every other file)")
    return OutFolder(path, True, frozenset({MANIFEST_NAME, *(listed or ())}), frozenset(MODEL_FILES))


def check_collisions(target: OutFolder, names: frozenset[str]) -> None:
    """Refuse before building when a user's entry in ``--out`` has a name the build writes."""
    if not target.exists:
        return
    clashes = sorted(name for name in names if os.path.lexists(target.path / name) and not target.owns(Path(name)))
    if clashes:
        raise UserInputError(f"{target.path}: {', '.join(clashes)} would be overwritten and is not listed in its "
                             f"{MANIFEST_NAME}: move it elsewhere, or choose another --out")


def foreign_entries(target: OutFolder) -> Iterator[Path]:
    """Relative paths of the entries under ``target`` that are not the build's own,
    parents before their children."""
    pending = [Path()]
    while pending:
        folder = pending.pop()
        for entry in sorted(os.scandir(target.path / folder), key=lambda e: e.name):
            rel = folder / entry.name
            if target.owns(rel):
                continue
            yield rel
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)


def carry_over(target: OutFolder, staging: Path) -> None:
    """Hard-link (or copy) the user's entries of the old folder into the staged one, so
    that publishing keeps them; folders and links are recreated."""
    if not target.exists:
        return
    folder_modes = []
    for rel in foreign_entries(target):
        source, dest = target.path / rel, staging / rel
        if os.path.lexists(dest):
            raise UserInputError(f"{source} would be overwritten by the build and is not listed in the "
                                 f"{MANIFEST_NAME}: move it elsewhere, or choose another --out")
        info = source.lstat()
        if stat.S_ISDIR(info.st_mode):
            dest.mkdir(mode=0o700)
            folder_modes.append((dest, stat.S_IMODE(info.st_mode)))
        else:
            _link_entry(source, dest, info)
    for dest, mode in reversed(folder_modes):  # last: a read-only folder is filled first
        os.chmod(dest, mode)


def _link_entry(source: Path, dest: Path, info: os.stat_result) -> None:
    """Recreate a link, hard-link a file (copy it where linking is not allowed)."""
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), dest)
    else:
        try:
            os.link(source, dest)
        except OSError:
            if not stat.S_ISREG(info.st_mode):
                raise UserInputError(f"{source} is a special file that cannot be kept through a rebuild: move it "
                                     "out of the engines folder") from None
            shutil.copy2(source, dest)


@dataclass
class Staging:
    """A staging folder beside ``--out``, with a lock file that marks it live while this
    process holds it (``clean_stale`` leaves live ones alone)."""

    path: Path
    lock: Path
    _lock_fd: int = field(repr=False)

    @classmethod
    def beside(cls, target: Path) -> Staging:
        try:
            fd, lock_name = tempfile.mkstemp(prefix=f".{target.name}{STAGING_TAG}", suffix=LOCK_SUFFIX,
                                             dir=target.parent)
        except PermissionError as exc:
            raise UserInputError(f"cannot write in {target.parent} ({exc.strerror}): a build stages its files "
                                 "beside --out; choose an --out in a folder you can write to") from None
        staging = cls(Path(lock_name[: -len(LOCK_SUFFIX)]), Path(lock_name), fd)
        try:
            _lock(fd)
            staging.path.mkdir(mode=0o700)
        except BaseException:
            staging.remove()
            raise
        return staging

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Delete the staging path (after a publish: the old folder) and the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.lock.unlink(missing_ok=True)
        os.close(self._lock_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: staleness goes by age instead
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _is_live(lock: Path) -> bool:
    """Whether a live build holds ``lock``."""
    try:
        import fcntl
    except ImportError:
        try:
            return time.time() - lock.stat().st_mtime < STALE_AFTER_S
        except OSError:
            return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale(target: Path) -> None:
    """Remove what killed builds left beside ``target``: staging folders and lock files
    no live build holds; a folder set aside by an interrupted two-rename swap goes back
    to ``target`` when ``target`` is missing."""
    if not target.parent.is_dir():
        return
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}{STAGING_TAG}*")):
        stem = str(leftover).removesuffix(LOCK_SUFFIX).removesuffix(ASIDE_SUFFIX)
        if _is_live(Path(stem + LOCK_SUFFIX)):
            continue
        if leftover.name.endswith(ASIDE_SUFFIX) and not (target.exists() or target.is_symlink()):
            os.rename(leftover, target)
        elif leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def publish(staging: Staging, target: OutFolder, manifest: Manifest) -> None:
    """Complete the staged folder (manifest, the user's entries) and put it in place of
    ``target`` in one atomic step; the old folder ends up at the staging path."""
    write_manifest(staging.path, manifest)
    carry_over(target, staging.path)
    os.chmod(staging.path, stat.S_IMODE(target.path.stat().st_mode) if target.exists else 0o777 & ~_umask())
    try:
        if not target.exists:
            os.rename(staging.path, target.path)
        elif not exchange(staging.path, target.path):
            _swap_by_renames(staging.path, target.path)
    except OSError as exc:
        raise UserInputError(f"could not put the built engines in place of {target.path} ({exc.strerror}): "
                             "check that nothing else writes there, or choose another --out") from None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or the filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, some musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _swap_by_renames(staging: Path, target: Path) -> None:
    """The non-atomic fallback: old folder aside, new one in, old one to the staging
    path. A kill between the first two renames leaves the old folder whole under the
    aside name, which ``clean_stale`` puts back."""
    aside = staging.with_name(staging.name + ASIDE_SUFFIX)
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(aside, target)
        raise
    os.rename(aside, staging)


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
