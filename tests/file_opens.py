"""Record which files under a folder are opened, by any code in this process (Python, or
native libraries such as ONNX Runtime and `tokenizers` that open files without Python):
Linux inotify's IN_OPEN events on the folder and every subfolder, read through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IN_OPEN = 0x00000020
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


@contextmanager
def recorded_opens(root: Path) -> Iterator[set[str]]:
    """Yield a set that, when the block ends, holds every file under ``root`` (relative,
    POSIX) opened inside the block. Raises ``OSError`` where inotify is unavailable."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    watches: dict[int, Path] = {}
    for dirpath, _dirs, _names in os.walk(root):
        wd = libc.inotify_add_watch(fd, os.fsencode(dirpath), IN_OPEN)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {dirpath}")
        watches[wd] = Path(dirpath)
    opened: set[str] = set()
    try:
        yield opened
    finally:
        buffer = b""
        while select.select([fd], [], [], 0)[0]:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            buffer += chunk
        os.close(fd)
        offset = 0
        while offset + _EVENT.size <= len(buffer):
            wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
            name = buffer[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_OPEN and name and wd in watches:
                path = watches[wd] / os.fsdecode(name)
                if not path.is_dir():
                    opened.add(path.relative_to(root).as_posix())
