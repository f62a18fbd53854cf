"""How the local driver confines its paths to the root, one strategy per platform, and the one
place that picks it (``select``; one strategy per driver, reported as ``platform`` by health).

linux (``linux.py``)
    Every file and directory the driver opens by a key's path is checked after opening: the
    kernel's path for the fd (``/proc/self/fd``) must lie inside the root and outside
    ``.lexigram/``, else the call fails with ``InvalidPathError`` before any byte is read or
    written. A symlink that stays inside the root is followed. Also used: unnamed temp files
    (``O_TMPFILE``), the ``user.lexigram`` xattr, cached reads (``../fastpath.py``).
darwin (macOS, ``darwin.py``)
    The same check, with ``fcntl(F_GETPATH)`` as the fd's path (for a file with several hard
    links, the name last looked up: if that is not the key's, the file is accepted only if the
    key leads to it without a symlink). No ``O_TMPFILE`` (named temp files in staging), no
    xattrs (Python has no ``os.setxattr`` there: sidecars), no cached reads.
portable (``portable.py``: any other POSIX system, or ``LEX_STORAGE_LOCAL_PORTABLE=1`` /
``portable=True``)
    Nothing tells where an fd lies, so nothing is followed: a key's path is opened one segment
    at a time from the root's fd with ``O_NOFOLLOW``, and every symlink below the root is
    refused with ``InvalidPathError``, even one that stays inside (the root itself may be a
    symlink). Named temp files, sidecar metadata, no cached reads.

Whatever the strategy, an fd is never used unchecked: where the path of an fd cannot be had, it
is refused (``../confine.py`` applies the strategy). Listings skip symlinked directories,
symlinks leading outside the root and, in the portable strategy, every symlink."""

from __future__ import annotations

import os

from lexigram_storage.drivers.local.platforms import darwin, linux, portable
from lexigram_storage.drivers.local.platforms.common import Escape, Platform

__all__ = ["PORTABLE_ENV", "Escape", "Platform", "portable_requested", "select"]

PORTABLE_ENV = "LEX_STORAGE_LOCAL_PORTABLE"


def portable_requested() -> bool:
    """Whether ``LEX_STORAGE_LOCAL_PORTABLE`` asks for the portable pieces only."""
    return os.environ.get(PORTABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def select(portable_only: bool = False) -> Platform:
    """The strategy for this machine: Linux's or macOS's where available and not refused by
    *portable_only*, else the portable walk (never no confinement at all)."""
    if not portable_only:
        if linux.AVAILABLE:
            return linux.PLATFORM
        if darwin.AVAILABLE:
            return darwin.PLATFORM
    return portable.PLATFORM
