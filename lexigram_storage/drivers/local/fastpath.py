"""The Linux fast paths of the local driver, each beside the portable path it stands in for.

Unnamed temp files (``TempFiles``)
    Where the platform and the filesystem allow it, and metadata is in xattrs, a write goes to
    an ``O_TMPFILE`` file (for a small upload in the object's own directory, else in staging):
    it vanishes even if the process is killed, and is linked onto a free name in one
    ``linkat`` (``/proc/self/fd/N``). Else a named temp file in staging.
Cached reads (``read_cached``)
    A download of up to 64 KiB is served on the event loop where the kernel guarantees it will
    not wait: ``openat2(RESOLVE_CACHED)`` (the path is resolved from the dentry cache or the
    call fails with EAGAIN) with ``O_NOATIME`` (no inode update), fstat, the confinement check,
    ``preadv2(RWF_NOWAIT)`` (page cache only, else EAGAIN). Anything else -- a cold path, bytes
    not in memory, a larger object, an older kernel, another platform -- is read in a thread.
Copies (``copy_fd``)
    ``copy_file_range`` (in the kernel, reflinked where the filesystem can), else a read/write
    loop."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from lexigram_storage.drivers.local.confine import Tree
from lexigram_storage.drivers.local.files import BLOCK, OPEN_NEW, OPEN_READ, write_all
from lexigram_storage.drivers.local.layout import SELF, components
from lexigram_storage.drivers.local.meta import MetaStore
from lexigram_storage.drivers.local.platforms import Escape, linux
from lexigram_storage.drivers.local.staging import Staging
from lexigram_storage.errors import StorageFileNotFoundError

__all__ = ["INLINE_READ", "TempFiles", "copy_fd", "open_cached", "pread_nowait",
           "read_cached"]

INLINE_READ = 64 * 1024  # downloads up to this size may be served without a thread hop

# ---------------------------------------------------------------------------- temp files

_OPEN_TMPFILE = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | getattr(os, "O_CLOEXEC", 0)


def _removed(dfd: int) -> bool:
    """Whether the open directory *dfd* has been deleted."""
    try:
        return os.fstat(dfd).st_nlink == 0
    except OSError:
        return True


class TempFiles:
    """The temp files of writes, created with *mode*. ``tmpfile``: ``O_TMPFILE`` may be tried
    (the platform has it and the filesystem has not refused it); it is used while metadata is
    in xattrs (a sidecar's anchor must never be the only name of a file being written).
    *ready* prepares the driver on first use."""

    def __init__(self, staging: Staging, meta: MetaStore, mode: int, tmpfile: bool,
                 ready: Callable[[], None]) -> None:
        self._staging = staging
        self._meta = meta
        self._mode = mode
        self._ready = ready
        self.tmpfile = tmpfile

    @property
    def unnamed(self) -> bool:
        """Whether new temp files are unnamed ones."""
        return self.tmpfile and self._meta.xattrs is not False

    def new(self) -> tuple[int, str | None]:
        """A new temp file in staging: (fd, ``None``) for an unnamed one, else (fd, path)."""
        self._ready()
        if self.unnamed:
            sfd = self._staging.fd()
            try:
                return os.open(".", _OPEN_TMPFILE, self._mode, dir_fd=sfd), None
            except OSError as exc:
                if _removed(sfd):  # staging removed behind our back (EPERM or ENOENT)
                    return os.open(".", _OPEN_TMPFILE, self._mode,
                                   dir_fd=self._staging.fd(renew=True)), None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
                    raise
                self.tmpfile = False
        tmp = self._staging.new_path(".tmp")
        try:
            fd = os.open(tmp, OPEN_NEW, self._mode)
        except FileNotFoundError:  # staging removed behind our back
            os.makedirs(self._staging.path, exist_ok=True)
            fd = os.open(tmp, OPEN_NEW, self._mode)
        return fd, tmp

    def new_in(self, dfd: int) -> int | None:
        """An unnamed temp file in the directory *dfd* (a small upload's, so that its inode is
        allocated beside its directory's); ``None`` where there is none (then: ``new``)."""
        try:
            return os.open(".", _OPEN_TMPFILE, self._mode, dir_fd=dfd)
        except OSError:  # (a filesystem without O_TMPFILE)
            return None

    def name(self, fd: int) -> str:
        """Give the unnamed temp file *fd* a name in staging (just before it is committed)."""
        self._ready()
        name = self._staging.name(".tmp")
        sfd = self._staging.fd()
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=sfd, follow_symlinks=True)
        except OSError:
            if not _removed(sfd):
                raise
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self._staging.fd(renew=True),
                    follow_symlinks=True)
        return f"{self._staging.path}/{name}"


# ---------------------------------------------------------------------------- cached reads


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20  # Linux 5.12: fail with EAGAIN instead of doing I/O for the lookup
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_O_NOATIME: int = getattr(os, "O_NOATIME", 0)
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}  # no file there


def _load_openat2() -> Any:
    if not (linux.AVAILABLE and _RWF_NOWAIT and hasattr(os, "preadv")):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # pragma: no cover - no libc syscall()
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                   ctypes.c_size_t]
    return fn


_openat2: Any = _load_openat2()  # the syscall; None: no cached reads here (or refused since)


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
    how = _OpenHow(OPEN_READ | _O_NOATIME, 0, _RESOLVE_CACHED)
    fd: int = fn(_SYS_OPENAT2, _AT_FDCWD, raw, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0 and ctypes.get_errno() == errno.EPERM and _O_NOATIME:  # not our file
        how.flags = OPEN_READ
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


def read_cached(tree: Tree, key: str) -> bytes | None:
    """The whole object *key*, read on the event loop when that cannot block: it is at most
    ``INLINE_READ`` bytes and the kernel has its path and all its bytes in memory.
    ``None``: read it in a thread."""
    if _openat2 is None or not tree.platform.cached_reads:
        return None
    path = tree.path(components(key))
    for candidate in (path, path + SELF):
        try:
            fd = open_cached(candidate)
        except FileNotFoundError:
            continue
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > INLINE_READ:
                return None
            try:
                tree.check_fd(fd, key)
            except Escape:
                raise tree.escape_error(key) from None
            return pread_nowait(fd, st.st_size) if st.st_size else b""
        finally:
            os.close(fd)
    raise StorageFileNotFoundError(backend=tree.backend, key=key)


# ---------------------------------------------------------------------------- copies


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy the *size* bytes of the open file *src* into the empty file *dst*."""
    offset = 0
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while offset < size:
                n = copy_range(src, dst, size - offset, offset, offset)
                if n == 0:
                    break
                offset += n
            if offset >= size:
                return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    while True:
        data = os.pread(src, BLOCK, offset)
        if not data:
            return
        os.lseek(dst, offset, os.SEEK_SET)
        write_all(dst, data)
        offset += len(data)
