"""macOS: where an fd lies, from ``fcntl(F_GETPATH)``.

Python on macOS has no ``os.setxattr`` and there is no ``O_TMPFILE``, ``openat2`` or
``preadv2``: metadata goes to sidecar files and temp files are named ones in staging."""

from __future__ import annotations

import os
import sys

from lexigram_storage.drivers.local.platforms.common import Platform

__all__ = ["AVAILABLE", "PLATFORM", "fd_path"]

AVAILABLE = sys.platform == "darwin"

_F_GETPATH = 50  # <sys/fcntl.h> (fcntl.F_GETPATH in Python >= 3.9 on macOS)
_MAXPATHLEN = 1024


def fd_path(fd: int) -> str:
    """The path the kernel has for the open file *fd* (the buffer is MAXPATHLEN bytes)."""
    import fcntl  # (not on every platform this package is imported on)

    raw = fcntl.fcntl(fd, _F_GETPATH, bytes(_MAXPATHLEN))
    return os.fsdecode(raw.split(b"\0", 1)[0])


PLATFORM = Platform("darwin", fd_path)
