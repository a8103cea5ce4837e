"""File helpers: checksums and atomic writes (temp file in the same folder + rename)."""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from answer_trt.errors import UserInputError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """One digest over every file under ``folder``: relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


# The most a config file of someone else's folder may hold (model_index.json, a component's
# config.json, scheduler_config.json, a sharded weights index: kilobytes to a few MB).
MAX_CONFIG_BYTES = 64 << 20
# A PNG to replay: a 4096 x 4096 RGB image stored uncompressed is 48 MiB.
MAX_PNG_BYTES = 256 << 20


def read_bounded(path: Path, limit: int = MAX_CONFIG_BYTES, what: str = "config file") -> bytes:
    """The bytes of ``path``, a regular file (links followed) of at most ``limit`` bytes.
    Raises ``FileNotFoundError`` where it is missing, ``OSError`` where it cannot be read,
    and ``UserInputError`` for a device, a FIFO or a folder (reading ``/dev/zero`` never ends;
    a FIFO blocks) and for a file over ``limit``, checked while reading (a file that grows).
    ``what`` names the kind of file in the messages."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise UserInputError(f"{path} is not a regular file (a device, a FIFO or a folder): answer-trt reads a {what} "
                             "only from a regular file; give the file itself")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserInputError(f"{path} is larger than {limit >> 20} MiB, far more than any {what}: give the "
                             f"{what} itself")
    return data


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success,
    delete it on failure, so ``target`` is never left half-written. The temporary is
    recorded in answer-trt's own journal (``temporaries_journal``) while it exists: that
    record, not its name, is what lets a later write remove it if this one is killed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(target.name), suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    record = _journal(tmp, os.fstat(fd))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give what a plain open() would
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        if record is not None:
            record.unlink(missing_ok=True)


# File names are at most 255 bytes on the common file systems: a temporary's name keeps
# this much of its target's, so that any name a user may give has a temporary beside it.
TEMPORARY_NAME_BYTES = 200


def temporary_prefix(name: str) -> str:
    """``.NAME.`` for the temporaries beside a file called ``name``, NAME cut to
    ``TEMPORARY_NAME_BYTES`` bytes (of UTF-8) so the temporary's name stays within 255."""
    cut = name.encode("utf-8", "surrogateescape")[:TEMPORARY_NAME_BYTES].decode("utf-8", "ignore")
    return f".{cut}."


# A temporary of ours untouched for this long belongs to a write that was killed (a write
# takes seconds), not to one in progress.
STALE_TEMPORARY_S = 3600.0


def temporaries_journal() -> Path | None:
    """The folder of records of ``atomic_path``'s temporaries (in the cache), or None where
    there is no cache to keep it in."""
    from answer_trt.cache import cache_root

    try:
        return cache_root() / "temporaries"
    except UserInputError:
        return None


def _record_path(journal: Path, tmp: Path) -> Path:
    return journal / (hashlib.sha256(str(tmp.absolute()).encode()).hexdigest()[:32] + ".rec")


def _journal(tmp: Path, info: os.stat_result) -> Path | None:
    """Record the temporary ``tmp`` (its device and inode) as ours; None where the journal
    cannot be written (the temporary is then never removed by a later write)."""
    journal = temporaries_journal()
    if journal is None:
        return None
    try:
        journal.mkdir(parents=True, exist_ok=True)
        record = _record_path(journal, tmp)
        record.write_text(f"{info.st_dev}:{info.st_ino}\n")
        return record
    except OSError:
        return None


def remove_stale_temporaries(target: Path, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Delete what ``atomic_path`` left beside ``target`` when a write was killed (``kill
    -9``, a power cut): ``.NAME.*.tmp`` files not modified for ``older_than_s`` AND recorded
    in answer-trt's journal as that very file (same device and inode). A user's own file of
    that name is never ours, however old. Returns what was removed."""
    journal = temporaries_journal()
    if journal is None or not journal.is_dir():
        return []
    removed = []
    now = time.time()
    for leftover in target.parent.glob(f"{glob.escape(temporary_prefix(target.name))}*.tmp"):
        record = _record_path(journal, leftover)
        try:
            info = leftover.lstat()
            ours = record.read_text().strip() == f"{info.st_dev}:{info.st_ino}"
            if ours and leftover.is_file() and not leftover.is_symlink() and now - info.st_mtime > older_than_s:
                leftover.unlink()
                record.unlink(missing_ok=True)
                removed.append(leftover)
        except OSError:  # no record (not ours), gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def numbered_paths(first: Path, count: int) -> list[Path]:
    """``out.png, out-1.png, out-2.png, ...``: the first keeps the name the user gave."""
    return [first] + [first.with_name(f"{first.stem}-{i}{first.suffix}") for i in range(1, count)]


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def check_writable_file(flag: str, path: Path) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written: its folder is
    missing or not a folder, ``path`` is a folder, or the folder refuses a new file (read
    only, no permission: tried by creating and removing a temporary file there, which is
    what the atomic write will do)."""
    folder = path.parent
    if path.is_dir():
        raise UserInputError(f"{flag} {path}: that is a folder; give a file name inside it")
    if not folder.exists():
        raise UserInputError(f"{flag} {path}: folder {folder} does not exist; create it or pick another path")
    if not folder.is_dir():
        raise UserInputError(f"{flag} {path}: {folder} is a file, not a folder; pick another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".probe", dir=folder)
    except OSError as exc:
        raise UserInputError(f"{flag} {path}: cannot write into {folder} ({exc.strerror or exc}); "
                             "pick a writable folder") from None
    os.close(fd)
    os.unlink(probe)
