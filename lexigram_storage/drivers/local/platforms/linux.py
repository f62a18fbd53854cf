"""Linux: where an fd lies, from ``/proc/self/fd``.

Linux also has the fast paths of ``../fastpath.py`` (``O_TMPFILE``, ``openat2``/``preadv2``)
and user extended attributes (``../meta.py``): this strategy lets the driver use them."""

from __future__ import annotations

import os
import sys

from lexigram_storage.drivers.local.platforms.common import Platform

__all__ = ["AVAILABLE", "PLATFORM", "fd_path"]

AVAILABLE = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


def fd_path(fd: int) -> str:
    """The path the kernel has for the open file *fd*."""
    return os.readlink(f"/proc/self/fd/{fd}")


PLATFORM = Platform("linux", fd_path, tmpfile=hasattr(os, "O_TMPFILE"), xattrs=True,
                    cached_reads=True)
