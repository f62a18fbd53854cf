"""File-descriptor helpers shared by the local driver's modules: the open flags, and small
calls on an open file or relative to an open directory."""

from __future__ import annotations

import contextlib
import os
import stat

__all__ = ["BLOCK", "OPEN_DIR", "OPEN_NEW", "OPEN_READ", "discard", "lstat_at", "regular_file",
           "write_all"]

BLOCK = 1024 * 1024  # bytes per read or write of a large object (one thread hop each)
OPEN_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def lstat_at(name: str, dfd: int) -> os.stat_result | None:
    """The stat of *name* in the directory *dfd*, not following a symlink; ``None`` if absent."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def regular_file(fd: int) -> os.stat_result | None:
    """The stat of the open *fd* if it is a regular file; else ``None``, and *fd* is closed
    (as it is when fstat fails)."""
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(st.st_mode):
        return st
    os.close(fd)
    return None


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def discard(fd: int, path: str) -> None:
    """Close *fd* and remove the file *path*, whatever fails."""
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
