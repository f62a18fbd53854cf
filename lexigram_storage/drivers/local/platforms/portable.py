"""Everywhere else (and the switch ``LEX_STORAGE_LOCAL_PORTABLE=1``): confinement by a walk.

Nothing tells where an open fd lies, so no path is ever followed: a key's directories are
opened one segment at a time, each relative to the previous one's fd (starting from the root's)
with ``O_NOFOLLOW``, and so is the object's file. A symlink anywhere below the root is refused
(``Escape``), whether it leads outside the root or not; the root itself may be a symlink."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from lexigram_storage.drivers.local.files import OPEN_DIR
from lexigram_storage.drivers.local.platforms.common import Escape, Platform

__all__ = ["PLATFORM", "open_dir", "open_in"]

# what O_NOFOLLOW gives for a symlink: ELOOP (POSIX), EMLINK (FreeBSD), ENOTDIR with
# O_DIRECTORY (Linux), EFTYPE (NetBSD, absent from errno elsewhere)
_LINK_ERRORS = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR, getattr(errno, "EFTYPE", errno.ELOOP)}


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o777) -> int:
    """``os.open(name, flags, dir_fd=dir_fd)`` that never follows a symlink: ``Escape`` if
    *name* is one."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _LINK_ERRORS and _is_link(name, dir_fd):
            raise Escape(name) from None
        raise


def open_dir(root: str, names: Sequence[str]) -> int:
    """An fd of the directory ``root/names[0]/names[1]/...``, reached without following any
    symlink below *root*. Raises ``Escape`` at a symlink, and what ``os.open`` raises for a
    missing or non-directory segment (``FileNotFoundError``, ``NotADirectoryError``)."""
    fd = os.open(root, OPEN_DIR)
    try:
        for name in names:
            child = open_in(fd, name, OPEN_DIR)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


PLATFORM = Platform("portable", None)
