"""Where a build may write, and how it publishes: the ``--out`` folder inspected for what
is ours and what is the user's, a staging folder beside it (with a lock), the user's files
carried over, and one atomic exchange of the two folders (two renames where the
filesystem cannot exchange; the next build repairs a kill between them). Stale staging
of dead builds is removed at the next build.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from answer_trt.cache import cache_root
from answer_trt.errors import UserInputError
from answer_trt.files import current_umask
from answer_trt.iospec import COMPONENTS
from answer_trt.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    external_data_name,
    load_manifest_json,
    owned_paths,
    write_manifest,
)
from answer_trt.models.source import TOKENIZER_FOLDERS, model_folder_evidence

# Copied beside the engines so that a folder is all `generate --engines` needs.
MODEL_FILES = (*TOKENIZER_FOLDERS, "scheduler")
# Every top-level file name a build may write (besides the manifest): a user's file with one
# of these names is never overwritten (the build is refused instead), and only these names
# and MODEL_FILES' folders can be the build's own in an existing folder.
OUTPUT_NAMES = frozenset(
    name for c in COMPONENTS
    for name in (f"{c}.onnx", external_data_name(f"{c}.onnx"), f"{c}.plan", f"{c}.pt2", f"{c}.xml", f"{c}.bin")
)
# Names of the staging folders (and their lock files) beside --out: `.NAME` + tag + random.
STAGING_TAG = ".answer-trt-staging-"
LOCK_SUFFIX, ASIDE_SUFFIX = ".lock", ".aside"
# Where fcntl is missing (Windows), a staging folder counts as stale after this long.
STALE_AFTER_S = 24 * 3600


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
    # Ownership from our own rules, never from the manifest alone (a hand-edited one may list
    # a user's file): a listed path counts only where it is a name this build writes.
    ours = {rel for rel in (listed or ()) if rel in OUTPUT_NAMES or rel.split("/")[0] in MODEL_FILES}
    return OutFolder(path, True, frozenset({MANIFEST_NAME, *ours}), frozenset(MODEL_FILES))


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
    os.chmod(staging.path, stat.S_IMODE(target.path.stat().st_mode) if target.exists else 0o777 & ~current_umask())
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


# How long a build waits for another build of the same folder (a full-size TensorRT build
# can take most of an hour) before it gives up with a message.
BUILD_LOCK_TIMEOUT_S = 2 * 3600.0


def lock_path(target: Path) -> Path:
    """The lock file of builds into ``target`` (a resolved path): in the cache's ``locks/``
    folder, named by a hash of the path, so nothing is left beside the user's folder."""
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:24]
    return cache_root() / "locks" / f"{digest}.lock"


@contextmanager
def build_lock(target: Path, log: Callable[[str], None], timeout_s: float = BUILD_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the one lock of builds into ``target`` (``filelock``: an OS file lock, released
    if the process dies). A second build of the same folder (another first user of the
    cache, another `answer-trt serve --model`) waits here, then finds the first one's engines up to
    date and reuses them. Raises ``UserInputError`` after ``timeout_s`` or where the lock
    cannot be made (a read-only parent)."""
    from filelock import FileLock, Timeout

    path = lock_path(target)
    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"{target}: another answer-trt build of this folder is running; waiting for it (lock {path})")
            lock.acquire(timeout=timeout_s)
    except Timeout:
        raise UserInputError(f"{target}: another build has held {path} for over {timeout_s:.0f} s; wait for it, "
                             "or delete that file if no answer-trt build is running") from None
    except OSError as exc:
        raise UserInputError(f"cannot make the build lock {path} ({exc.strerror or exc}): set ANSWER_TRT_CACHE "
                             "to a writable folder") from None
    try:
        yield
    finally:
        lock.release()


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
