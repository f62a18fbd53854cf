"""Linux: where an fd lies (``/proc/self/fd``), and the fast paths only Linux has.

``O_TMPFILE`` (unnamed temp files) and user extended attributes are used by the driver
directly; this module holds the ``openat2(RESOLVE_CACHED)`` / ``preadv2(RWF_NOWAIT)`` pair that
lets a small download be served on the event loop without ever waiting for the disk."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any

from lexigram_storage.drivers.local.platforms.common import Platform

__all__ = ["AVAILABLE", "OPENAT2", "PLATFORM", "fd_path", "open_cached", "pread_nowait"]

AVAILABLE = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")

_OPEN_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}  # no file there


def fd_path(fd: int) -> str:
    """The path the kernel has for the open file *fd*."""
    return os.readlink(f"/proc/self/fd/{fd}")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20  # Linux 5.12: fail with EAGAIN instead of doing I/O for the lookup
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_O_NOATIME: int = getattr(os, "O_NOATIME", 0)


def _load_openat2() -> Any:
    if not (AVAILABLE and _RWF_NOWAIT and hasattr(os, "preadv")):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # pragma: no cover - no libc syscall()
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                   ctypes.c_size_t]
    return fn


OPENAT2: Any = _load_openat2()  # the syscall as found at import; None: no cached reads here
_openat2: Any = OPENAT2  # set to None when the kernel refuses it at run time


def open_cached(path: str) -> int | None:
    """Open *path* for reading if the kernel can resolve it from its caches, without I/O and
    without updating the access time (``openat2`` with ``RESOLVE_CACHED``, ``O_NOATIME``).

    Returns the fd, or ``None`` when that is not possible (the lookup would wait for the disk,
    openat2 is unavailable, or any error other than "no such file": the caller then does the
    work in a thread, where the error is reported). Raises ``FileNotFoundError`` for a path
    that does not lead to a file."""
    global _openat2
    fn = _openat2
    if fn is None:
        return None
    raw = os.fsencode(path)
    how = _OpenHow(_OPEN_READ | _O_NOATIME, 0, _RESOLVE_CACHED)
    fd: int = fn(_SYS_OPENAT2, _AT_FDCWD, raw, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0 and ctypes.get_errno() == errno.EPERM and _O_NOATIME:  # not our file
        how.flags = _OPEN_READ
        fd = fn(_SYS_OPENAT2, _AT_FDCWD, raw, ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in _ABSENT:
        raise FileNotFoundError(err, os.strerror(err), path)
    if err in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM):
        _openat2 = None  # old kernel, or a seccomp filter (containers) refusing the syscall
    return None


def pread_nowait(fd: int, size: int) -> bytes | None:
    """The first *size* bytes of *fd* if they are all in the page cache, else ``None``."""
    global _openat2
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], 0, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem without RWF_NOWAIT
            _openat2 = None
        return None
    return bytes(buf) if got == size else None


PLATFORM = Platform("linux", fd_path, tmpfile=hasattr(os, "O_TMPFILE"), xattrs=True,
                    cached_reads=OPENAT2 is not None)
