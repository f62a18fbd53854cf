"""Platform-specific pieces of the local driver, and the one place that picks them.

``linux``: ``/proc/self/fd`` tells where an fd lies; ``O_TMPFILE``, user xattrs and cached
reads (``openat2``/``preadv2``). ``darwin``: ``fcntl(F_GETPATH)`` tells where an fd lies.
``portable``: no such call, so a walk that refuses every symlink. ``sidecar``: metadata files
for filesystems without user xattrs."""

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
