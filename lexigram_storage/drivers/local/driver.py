"""Local filesystem driver: atomic, S3-faithful object storage under one root directory.

Layout
    ``<root>/<key>`` holds the object ``key``; ``<root>/.lexigram/`` is the driver's own area
    (``staging/`` for temp files, ``meta/`` for metadata sidecars when the filesystem has no
    user extended attributes). Keys whose first segment is ``.lexigram`` are rejected.

    Every valid key can be stored (the key rule is the same on every driver), including what
    a filesystem does not allow:

    * a key that is also a "directory" of other keys (``a/b`` and ``a/b/c``): the object
      ``a/b`` then lives in the file ``a/b\\x02`` beside the directory ``a/b``;
    * a segment longer than 200 UTF-8 bytes (a file name may have 255): it is split into
      pieces of at most 200 bytes (never inside a character), each but the last stored as a
      directory whose name ends in ``\\x01``. Every stored name, with its suffix, is at most
      201 bytes, whatever the key: the names are decided before anything is written;
    * a key whose first segment is ``.lexigram``: that segment is stored as ``.lexigram\\x03``,
      so such keys never reach the driver's own area, which listings skip.

    No control character can appear in a key, so the mapping is reversible; plain keys are
    plain paths.

Atomicity
    Every write goes to a temp file (created with mode ``0o666 & ~umask``): an unnamed one
    (``O_TMPFILE``; for a small upload in the object's own directory, else in ``staging/``)
    where the filesystem supports it, else a named one in ``staging/``. It gets its metadata
    (the ``user.lexigram`` extended attribute: content type, user metadata, cache control,
    SHA-256 etag) and only then a name: linked onto a free name, else renamed over the old
    object; create-only writes hard-link, which fails if the name exists. A failed, rejected
    or cancelled upload unlinks its temp file (an unnamed one vanishes even on SIGKILL); stale
    named temp files of a killed process are removed by ``prepare()``. ``copy`` writes a temp
    copy and renames it; ``move`` is a rename (the metadata travels with the inode).

Platforms and symlinks (``lexigram_storage/drivers/_fs/``; one strategy per driver)
    linux
        Every file and directory the driver opens by a key's path is checked after opening:
        the kernel's path for the fd (``/proc/self/fd``) must lie inside the root and outside
        ``.lexigram/``, else the call fails with ``InvalidPathError`` before any byte is read
        or written. A symlink that stays inside the root is followed. Also used: unnamed temp
        files (``O_TMPFILE``), the ``user.lexigram`` xattr, cached reads (below).
    darwin (macOS)
        The same check, with ``fcntl(F_GETPATH)`` as the fd's path (for a file with several
        hard links, the name last looked up: if that is not the key's, the file is accepted
        only if the key leads to it without a symlink). No ``O_TMPFILE`` (named temp files in
        staging), no xattrs (Python has no ``os.setxattr`` there: sidecars), no cached reads.
    portable (any other POSIX system, or ``LEX_STORAGE_LOCAL_PORTABLE=1`` / ``portable=True``)
        Nothing tells where an fd lies, so nothing is followed: a key's path is opened one
        segment at a time from the root's fd with ``O_NOFOLLOW``, and every symlink below the
        root is refused with ``InvalidPathError``, even one that stays inside (the root itself
        may be a symlink). Named temp files, sidecar metadata, no cached reads.

    Whatever the strategy, an fd is never used unchecked: where the path of an fd cannot be
    had, it is refused. Listings skip symlinked directories, symlinks leading outside the root
    and, in the portable strategy, every symlink.

Metadata sidecars
    Where there are no user xattrs (macOS, portable, some Linux filesystems) an object's
    metadata is the file ``meta/<dev>-<ino>``, beside a hard link to the object's inode
    (``meta/<dev>-<ino>.link``) that keeps the inode number from being reused while the record
    exists. Temp files are then always named ones, and a replaced or deleted object's sidecar
    is collected without a check-then-delete race (see ``_fs/sidecar.py``).

Cancellation
    An upload, copy or move ends with one thread hop that commits (the link or rename). A
    cancellation that arrives before that commit begins aborts the call: the hop stops before
    the commit (or never starts), is waited for, its temp file is removed, nothing changed,
    and ``CancelledError`` propagates. Once the commit has begun it is not interrupted: the
    call waits for it (through further cancellations) and then completes as if it had not
    been cancelled -- the object is stored and its info returned (the cancellation is consumed:
    ``asyncio.timeout`` exits without ``TimeoutError``) -- or raises the commit's own error.

Concurrency
    Concurrent uploads, deletes, copies and moves never fail each other: a delete removes the
    directories it leaves empty and a write turns an object into a directory (``a/b`` ->
    ``a/b\\x02``) while other calls work in those directories; the steps they undo are
    retried (a bounded number of times).

Speed, and what runs on the event loop
    Writes always run in worker threads: creating a file can wait for the disk or the journal
    (on ext4 without a journal it also scans past every inode freed in the last minute: up to
    1 ms of kernel time seen per file). An upload of up to 1 MiB given as bytes is one hop of
    ten syscalls: open and check the parent, ``O_TMPFILE`` open in it, write, fsetxattr,
    fstat, ``linkat`` onto the free name (an existing name: link into the kept-open staging
    directory and rename over it), look for a stale copy, two closes. Larger uploads write
    ~1 MiB per hop; streams read 1 MiB per hop (the next block is read while the current one
    is consumed), whatever ``chunk_size`` the caller asked for; ``info``, ``delete``,
    ``copy``, ``move`` and each listing page are one hop.

    On Linux, a download of up to 64 KiB is served on the event loop where the kernel
    guarantees it will not wait: ``openat2(RESOLVE_CACHED)`` (the path is resolved from the
    dentry cache or the call fails with EAGAIN) with ``O_NOATIME`` (no inode update), fstat, the symlink
    check, ``preadv2(RWF_NOWAIT)`` (page cache only, else EAGAIN). Anything else -- a cold
    path, bytes not in memory, a larger object, an older kernel -- is one hop.

    Hops go to the driver's own thread pool (as many threads as asyncio's default executor),
    whose threads hand results back with a single ``call_soon_threadsafe``.

Serving presigned URLs
    ``get_presigned_url`` and ``verify_presigned_url`` are ``drivers/_signing.py`` (HMAC-SHA256
    under ``signing_key``): a web app mounts a route on ``base_url``'s path, passes the full
    request URL and method to ``LocalDriver.verify_presigned_url(url, method)``, which returns
    the key or raises ``StoragePermissionError`` (for any URL it did not sign, however
    malformed), and then answers with ``store.stream(key)`` (GET) or
    ``store.upload(key, request_body_stream)`` (PUT).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import json
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from lexigram.contracts.infra.storage import StorageError
from pydantic import SecretStr

from lexigram_storage.config import NamedStorageConfig, StorageLocalConfig
from lexigram_storage.drivers import _signing
from lexigram_storage.drivers.base import BaseDriver, create_only_conflict
from lexigram_storage.drivers.local import platforms as _fs
from lexigram_storage.drivers.local.platforms import Escape as _Escape
from lexigram_storage.drivers.local.platforms import portable as _portable
from lexigram_storage.drivers.local.platforms.linux import OPENAT2 as _openat2
from lexigram_storage.drivers.local.platforms.linux import open_cached as _open_cached
from lexigram_storage.drivers.local.platforms.linux import pread_nowait as _pread_nowait
from lexigram_storage.drivers.local.sidecar import Sidecars
from lexigram_storage.errors import (
    InvalidPathError,
    StorageBootError,
    StorageFileNotFoundError,
    unsupported,
)
from lexigram_storage.events import StorageEvents
from lexigram_storage.models import ObjectInfo
from lexigram_storage.payload import Payload, UploadPolicy, digest_fd, guess_content_type
from lexigram_storage.registry import DriverContext

__all__ = ["INTERNAL_DIR", "LocalDriver"]

T = TypeVar("T")

INTERNAL_DIR = ".lexigram"
_STAGING = "staging"
_META = "meta"
_XATTR = "user.lexigram"
_CONT = "\x01"  # suffix of a directory holding the rest of an over-long segment
_SELF = "\x02"  # suffix of the file of an object whose key is also a directory
_OWN = INTERNAL_DIR + "\x03"  # the stored name of a key's first segment ".lexigram"
_PIECE = 200  # bytes per stored name piece (NAME_MAX is 255)
_SMALL = 1024 * 1024  # payloads up to this size are written in one thread hop
_INLINE_READ = 64 * 1024  # downloads up to this size may be served without a thread hop
_BLOCK = 1024 * 1024  # bytes per read/write hop for large objects
_LIST_BATCH = 256
_RETRIES = 100  # attempts of a step that concurrent deletes and writers can undo
_OPEN_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_OPEN_TMPFILE = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_XATTR_UNSUPPORTED = {errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}
_SIGN_HINT = ("Set a signing key: LocalDriver(signing_key=...), or in configuration "
              "storage.drivers.local.signing_key / the environment variable "
              "LEX_STORAGE__DRIVERS__LOCAL__SIGNING_KEY.")
_counter = itertools.count()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- key <-> path


def _components(key: str) -> list[str]:
    """The stored names for *key*: one per segment, a segment over ``_PIECE`` UTF-8 bytes
    split into pieces, a first segment ``.lexigram`` escaped (see the module docstring)."""
    if len(key) <= _PIECE and (key.isascii() or len(key.encode("utf-8", "surrogatepass"))
                               <= _PIECE):
        parts = key.split("/")
    else:
        parts = []
        for segment in key.split("/"):
            raw = segment.encode("utf-8", "surrogatepass")
            while len(raw) > _PIECE:
                cut = _PIECE
                while (raw[cut] & 0xC0) == 0x80:  # keep UTF-8 sequences whole
                    cut -= 1
                parts.append(raw[:cut].decode("utf-8", "surrogatepass") + _CONT)
                raw = raw[cut:]
            parts.append(raw.decode("utf-8", "surrogatepass"))
    if parts[0] == INTERNAL_DIR:
        parts[0] = _OWN
    return parts


# The common record (no user metadata, no cache control) is packed: creation time (big-endian
# double, so the first byte is never the "{" of the JSON form), raw SHA-256, content type. For
# "application/octet-stream" that is 64 bytes, which ext4 (256-byte inodes) keeps inside the
# inode; the 130-byte JSON form costs every object an extra 4 KiB block and ~10 us to write.
_PACKED = struct.Struct(">d32s")


@dataclass(slots=True)
class _Meta:
    content_type: str
    metadata: dict[str, str]
    cache_control: str | None
    etag: str | None
    created: float | None

    def encode(self) -> bytes:
        if (not self.metadata and self.cache_control is None and self.created is not None
                and self.etag is not None and len(self.etag) == 64):
            with contextlib.suppress(ValueError):  # (an etag that is not hex: JSON)
                return (_PACKED.pack(self.created, bytes.fromhex(self.etag))
                        + self.content_type.encode())
        record: dict[str, Any] = {"ct": self.content_type, "etag": self.etag}
        if self.metadata:
            record["md"] = self.metadata
        if self.cache_control is not None:
            record["cc"] = self.cache_control
        if self.created is not None:
            record["t"] = self.created
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, raw: bytes | None, key: str) -> _Meta:
        if raw and raw[:1] != b"{" and len(raw) >= _PACKED.size:
            with contextlib.suppress(ValueError):
                created, digest = _PACKED.unpack_from(raw)
                return cls(raw[_PACKED.size:].decode(), {}, None, digest.hex(), created)
        if raw:
            try:
                record = json.loads(raw)
                return cls(str(record["ct"]), {str(k): str(v) for k, v in record.get("md", {}).items()},
                           record.get("cc"), record.get("etag"), record.get("t"))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
        return cls(guess_content_type(key), {}, None, None, None)


def _info(key: str, st: os.stat_result, meta: _Meta) -> ObjectInfo:
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return ObjectInfo(
        path=key,
        size=st.st_size,
        content_type=meta.content_type,
        last_modified=modified,
        created_at=datetime.fromtimestamp(meta.created, UTC) if meta.created else modified,
        etag=meta.etag,
        metadata=dict(meta.metadata),
        cache_control=meta.cache_control,
    )


class LocalDriver(BaseDriver):
    """Objects are files under ``root_dir``; see the module docstring for the guarantees.

    Args:
        root_dir: the directory holding the objects (created by ``prepare()`` and on first
            write).
        base_url: the URL prefix of ``get_url`` and presigned URLs.
        signing_key: HMAC key for ``get_presigned_url`` (``str`` or ``SecretStr``).
        fsync: fsync each file and its directory before a write returns (durable across
            power loss, slower).
        portable: use only the portable pieces (the symlink-refusing walk, named temp files,
            sidecar metadata) even where Linux's or macOS's are available; ``None`` (default):
            ``True`` when the environment variable ``LEX_STORAGE_LOCAL_PORTABLE`` is ``1``.
    """

    driver = "local"

    def __init__(
        self,
        root_dir: str | os.PathLike[str] = "./storage",
        base_url: str = "http://localhost:8000/storage",
        signing_key: str | SecretStr | None = None,
        *,
        fsync: bool = False,
        portable: bool | None = None,
        name: str | None = None,
        policy: UploadPolicy | None = None,
        events: StorageEvents | None = None,
    ) -> None:
        super().__init__(name=name, policy=policy, events=events)
        self._root = os.path.abspath(os.fspath(root_dir))
        # how paths are confined and which kernel features are used (see the module docstring)
        self._fs = _fs.select(_fs.portable_requested() if portable is None else portable)
        self._real = self._root_real()
        self._staging = os.path.join(self._root, INTERNAL_DIR, _STAGING)
        self._meta_dir = os.path.join(self._root, INTERNAL_DIR, _META)
        self._sidecars = Sidecars(self._meta_dir, self._staging_name)
        self._internal_real = os.path.join(self._real, INTERNAL_DIR)
        self.base_url = base_url.rstrip("/")
        self._signing_key = _signing.secret_bytes(signing_key)
        self.fsync = fsync
        self._mode = 0o666 & ~_umask()
        self._xattrs: bool | None = None if self._fs.xattrs else False  # None: not probed yet
        self._tmpfile = self._fs.tmpfile
        self._ready = False
        self._prepare_lock = threading.Lock()  # the first hops of a new driver run at once
        # staging/ stays open: temp files are created and named relative to this fd (one path
        # walk and two syscalls less per write); replaced fds are closed only by close()
        self._staging_fd: int | None = None
        self._old_fds: list[int] = []

    def __repr__(self) -> str:
        return f"<LocalDriver name={self.name!r} root={self._root!r}>"

    @classmethod
    def from_named(cls, entry: NamedStorageConfig, context: DriverContext) -> LocalDriver:
        block = entry.local or StorageLocalConfig()
        return cls(root_dir=block.root_dir, base_url=block.base_url,
                   signing_key=block.signing_key, fsync=block.fsync,
                   name=entry.name, policy=context.policy)

    @property
    def bucket(self) -> str:
        return self._root

    @property
    def root(self) -> Path:
        return Path(self._root)

    # ------------------------------------------------------------------ threads

    def _hop(self, fn: Callable[..., T], *args: Any,
             release: Callable[[T], object] | None = None) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in a worker thread of the driver pool; await the result.

        The thread hands the result to the loop with one ``call_soon_threadsafe``
        (``run_in_executor`` chains a second future through it: ~40% more per hop). As with
        ``run_in_executor``, a call cancelled before its thread picked it up does not run;
        a result that arrives after the call was cancelled is passed to *release* (an fd to
        close)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        _pool().submit(_run_job, loop, fut, fn, args, release)
        return fut

    async def _hop_commit(self, gate: _Gate, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, a hop whose commit *gate* guards, in a worker thread; await it
        with the guarantee of the module docstring ("Cancellation"): cancelled before the
        commit began, the hop is stopped there, waited for, and ``CancelledError`` propagates;
        once it began, the hop is waited for through cancellations, which are consumed, and
        its outcome is the call's."""
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        fut = self._hop(fn, *args)
        waiter: _Waiter[T] = _Waiter(gate, loop=asyncio.get_running_loop())
        fut.add_done_callback(waiter.follow)
        try:
            return await waiter
        except asyncio.CancelledError:
            if gate.abandon():
                await _settle(fut)  # the thread removes its temp file
                raise
        await _settle(fut)
        if task is not None:
            while task.cancelling() > cancelling:
                task.uncancel()
        return fut.result()

    # ------------------------------------------------------------------ setup

    async def prepare(self) -> None:
        """Create the root and staging area, check they are writable, remove stale temp files."""
        await self._hop(self._prepare_sync)

    def _prepare_sync(self, again: bool = True) -> None:
        """Prepare the root; *again* ``False``: only if that is not done yet (first use). Once
        at a time: every worker thread of the first calls on a new driver may get here."""
        with self._prepare_lock:
            if again or not self._ready:
                self._prepare_locked()

    def _prepare_locked(self) -> None:
        try:
            os.makedirs(self._staging, exist_ok=True)
            self._real = self._root_real()
            self._internal_real = os.path.join(self._real, INTERNAL_DIR)
            now = time.time()
            with os.scandir(self._staging) as entries:
                for entry in entries:
                    # temp files of this process are in use; others are left by dead writers
                    if entry.name.startswith(_process_prefix()):
                        continue
                    with contextlib.suppress(OSError):
                        if not _writer_alive(entry.name) or now - entry.stat().st_mtime > 86400:
                            os.unlink(entry.path)
            probe = self._staging_name(".probe")  # (unique: other drivers may share the root)
            fd = os.open(probe, _OPEN_NEW, self._mode)
            try:
                os.write(fd, b"ok")
                self._probe_xattrs(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
            if self._xattrs is False:
                self._sidecars.sweep()  # anchors of writers that failed or were killed
            if self._staging_fd is None:
                self._staging_fd = os.open(self._staging, _OPEN_DIR)
        except OSError as exc:
            raise StorageBootError(
                f"cannot create or write the storage root {self._root!r}: "
                f"{exc.strerror or exc} ({exc.filename or self._root})",
                backend=self.name,
                hint="Check that root_dir is a writable directory path "
                     "(LEX_STORAGE__DRIVERS__LOCAL__ROOT_DIR).",
                cause=exc,
            ) from exc
        self._ready = True

    def _probe_xattrs(self, fd: int) -> None:
        if self._xattrs is None:
            try:
                os.setxattr(fd, _XATTR, b"{}")
                self._xattrs = True
                return
            except (OSError, AttributeError):  # (macOS: Python has no os.setxattr)
                pass
        if not self._xattrs:
            self._use_sidecars()

    def _use_sidecars(self) -> None:
        """Metadata goes to sidecars from now on. Temp files are then named ones: a sidecar's
        anchor (see ``_fs.sidecar``) must never be the only name of a file being written."""
        self._xattrs = False
        self._tmpfile = False
        os.makedirs(self._meta_dir, exist_ok=True)

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._prepare_sync(again=False)

    def _staging_name(self, suffix: str) -> str:
        """A new path in staging that no other writer (thread, process, driver) uses."""
        return f"{self._staging}/{_process_prefix()}{next(_counter)}{suffix}"

    def _root_real(self) -> str:
        """The root's real path, as the platform reports the paths of open files (on macOS
        ``F_GETPATH`` may spell it differently from ``realpath``: case, firmlinks)."""
        fd_path = self._fs.fd_path
        if fd_path is not None:
            with contextlib.suppress(OSError):
                fd = os.open(self._root, _OPEN_DIR)
                try:
                    return fd_path(fd)
                finally:
                    os.close(fd)
        return os.path.realpath(self._root)

    def _stage_fd(self, renew: bool = False) -> int:
        """The open staging directory; *renew* after it was removed behind our back (the old
        fd may still be in use by another thread: it is closed by ``close()``)."""
        self._ensure_ready()
        fd = self._staging_fd
        if fd is None or renew:
            os.makedirs(self._staging, exist_ok=True)
            self._staging_fd = os.open(self._staging, _OPEN_DIR)
            if fd is not None:
                self._old_fds.append(fd)
            fd = self._staging_fd
        return fd

    async def _close(self) -> None:
        fds, self._old_fds = self._old_fds, []
        if self._staging_fd is not None:
            fds.append(self._staging_fd)
            self._staging_fd = None
        self._ready = False  # reopened on next use
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ path safety

    def _check_fd(self, fd: int, key: str | None) -> None:
        """Fail unless the opened file or directory lies inside the root, outside .lexigram.
        Where the platform cannot tell where an fd lies (the portable walk, whose fds need no
        check) or fails to, the fd is refused: there is no unchecked path."""
        fd_path = self._fs.fd_path
        if fd_path is None:
            raise _Escape(f"fd {fd}: the {self._fs.name} strategy cannot tell where it lies")
        try:
            real = fd_path(fd)
        except OSError as exc:
            raise _Escape(f"fd {fd}: {exc}") from None
        try:
            self._check_real(real, key)
        except _Escape:
            if key is None or not self._is_key_file(fd, key):
                raise

    def _is_key_file(self, fd: int, key: str) -> bool:
        """Whether the open regular file *fd* has several names, one of them *key*'s, reached
        from the root without following any symlink. Such a file may be reported under another
        of its names: on macOS ``F_GETPATH`` gives the name last looked up, which for an object
        with a sidecar can be its anchor in ``.lexigram/meta``."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return False
        parts = _components(key)
        try:
            dfd = _portable.open_dir(self._root, parts[:-1])
        except (OSError, _Escape):
            return False
        try:
            for name in (parts[-1], parts[-1] + _SELF):
                try:
                    other = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
            return False
        finally:
            os.close(dfd)

    def _check_real(self, real: str, key: str | None) -> None:
        root = self._real
        if real == root:
            return
        if not real.startswith(root) or real[len(root)] != "/" or (
                real.startswith(self._internal_real)
                and (len(real) == len(self._internal_real) or real[len(self._internal_real)] == "/")):
            raise _Escape(real)

    def _checked(self, fd: int, key: str) -> int:
        """*fd*, once checked to lie inside the root; closed when the check fails."""
        try:
            self._check_fd(fd, key)
        except _Escape:
            os.close(fd)
            raise self._escape_error(key) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_link_target(self, name: str, dir_fd: int, key: str) -> int:
        """Open the directory a symlink *name* points to, refusing a target outside the root
        (the portable walk refuses every symlink)."""
        if self._fs.fd_path is None:
            raise self._escape_error(key)
        return self._checked(os.open(name, _OPEN_DIR, dir_fd=dir_fd), key)

    def _escape_error(self, key: str | None) -> InvalidPathError:
        if self._fs.fd_path is None:
            return InvalidPathError(
                "the key runs through a symlink: the portable confinement refuses every "
                "symlink below the storage root, as it cannot tell whether it leads outside",
                backend=self.name, key=key)
        return InvalidPathError("the key resolves outside the storage root (symlink)",
                                backend=self.name, key=key)

    def _path(self, parts: list[str]) -> str:
        return self._root + "/" + "/".join(parts)

    def _open_object(self, key: str) -> tuple[int, os.stat_result] | None:
        """Open the object's file for reading: (fd, stat), or None when there is none."""
        parts = _components(key)
        if self._fs.fd_path is None:
            return self._walk_to_object(parts, key)
        path = self._path(parts)
        for candidate in (path, path + _SELF):
            try:
                fd = os.open(candidate, _OPEN_READ)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                    continue
                raise
            st = _regular_file(fd)
            if st is not None:
                return self._checked(fd, key), st
        return None

    def _walk_to_object(self, parts: list[str], key: str) -> tuple[int, os.stat_result] | None:
        """``_open_object`` by the portable walk: no symlink is followed, on the way or at the
        end (one is refused), so the file is inside the root by construction."""
        try:
            dfd = _portable.open_dir(self._root, parts[:-1])
        except _Escape:
            raise self._escape_error(key) from None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return None
            raise
        try:
            for name in (parts[-1], parts[-1] + _SELF):
                try:
                    fd = _portable.open_in(dfd, name, _OPEN_READ)
                except _Escape:
                    raise self._escape_error(key) from None
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENAMETOOLONG:
                        continue
                    raise
                st = _regular_file(fd)
                if st is not None:
                    return fd, st
            return None
        finally:
            os.close(dfd)

    def _open_parent(self, parts: list[str], key: str, create: bool) -> int | None:
        """An fd of the directory that holds the object's file (checked to be inside the root);
        creates the missing directories (never through a symlink leading outside) when asked."""
        if self._fs.fd_path is None:  # the portable walk: no symlink on the way
            try:
                return _portable.open_dir(self._root, parts[:-1])
            except _Escape:
                raise self._escape_error(key) from None
            except (FileNotFoundError, NotADirectoryError):
                if not create:
                    return None
                return self._make_parents(parts, key)
        parent = self._root if len(parts) == 1 else self._path(parts[:-1])
        try:
            fd = os.open(parent, _OPEN_DIR)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            return self._make_parents(parts, key)
        return self._checked(fd, key)

    def _make_parents(self, parts: list[str], key: str) -> int:
        """Open the directories of *parts* from the root, creating the missing ones.

        Concurrent deletes remove the directories they leave empty, concurrent writers turn
        objects into directories: when a directory on the way was removed, the walk starts
        again from the root (a bounded number of times)."""
        for _ in range(_RETRIES):
            fd: int | None = os.open(self._root, _OPEN_DIR)
            try:
                for name in parts[:-1]:
                    assert fd is not None
                    child = self._make_dir(fd, name, key)
                    os.close(fd)
                    fd = child
                    if fd is None:
                        break
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            if fd is not None:
                return fd
        raise OSError(errno.EAGAIN, "the directories kept changing while being created", key)

    def _make_dir(self, fd: int, name: str, key: str) -> int | None:
        """Open the directory *name* in *fd*, creating it (an object of that name moves beside
        it, to ``name\\x02``); ``None`` when *fd* itself has been removed."""
        for _ in range(_RETRIES):
            try:
                os.mkdir(name, dir_fd=fd)
            except FileExistsError:
                pass
            except FileNotFoundError:  # our directory was pruned by a concurrent delete
                return None
            try:
                return os.open(name, _OPEN_DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:  # pruned by a concurrent delete: make it again
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
            current = _lstat_at(name, fd)
            if current is None or stat.S_ISDIR(current.st_mode):
                continue  # changed meanwhile: look again
            if stat.S_ISLNK(current.st_mode):
                return self._open_link_target(name, fd, key)
            self._move_beside(fd, name)
        raise OSError(errno.EAGAIN, "the directory kept changing while being created", name)

    def _move_beside(self, fd: int, name: str) -> None:
        """Move the object's file *name* to ``name\\x02``, making room for a directory.

        A concurrent writer may have done it first and made *name* a directory: the rename
        then fails (the directory cannot replace the object beside it), or, if that object
        has just been deleted too, moves the directory, which is put back."""
        try:
            os.rename(name, name + _SELF, src_dir_fd=fd, dst_dir_fd=fd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # changed meanwhile: the caller looks again
        moved = _lstat_at(name + _SELF, fd)
        if moved is not None and stat.S_ISDIR(moved.st_mode):
            with contextlib.suppress(OSError):
                os.rename(name + _SELF, name, src_dir_fd=fd, dst_dir_fd=fd)

    # ------------------------------------------------------------------ metadata

    def _store_meta(self, state: _Temp, meta: _Meta) -> None:
        """Give the complete temp file of *state* its metadata (before it gets its name)."""
        fd = state.fd
        assert fd is not None
        raw = meta.encode()
        if self._xattrs:
            try:
                os.setxattr(fd, _XATTR, raw)
                return
            except OSError as exc:
                if exc.errno in _XATTR_UNSUPPORTED:
                    self._use_sidecars()
                elif exc.errno not in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                    raise
                else:  # too big for an attribute: a sidecar, and a marker pointing to it
                    self._sidecars.write(fd, raw, None)  # (the marker is its identity)
                    os.setxattr(fd, _XATTR, b'{"sidecar":1}')
                    return
        # the anchor is linked from the temp file's name (an unnamed one only when xattrs
        # turned out unsupported after it was opened)
        if state.path is not None:
            base = self._sidecars.write(fd, raw, state.path)
        else:
            base = self._sidecars.write(fd, raw, f"/proc/self/fd/{fd}", follow=True)
        state.undo = lambda: self._sidecars.collect(base)  # if the write is not committed

    def _load_meta(self, fd: int, st: os.stat_result, key: str) -> _Meta:
        raw: bytes | None = None
        if self._xattrs is not False:
            try:
                raw = os.getxattr(fd, _XATTR)
            except OSError:
                raw = None
            if raw == b'{"sidecar":1}':
                raw = self._read_sidecar(st)
        if raw is None and self._xattrs is False:
            raw = self._read_sidecar(st)
        return _Meta.decode(raw, key)

    def _read_sidecar(self, st: os.stat_result) -> bytes | None:
        return self._sidecars.read(st)

    def _drop_sidecar(self, st: os.stat_result | None) -> None:
        """After the file *st* lost its name: collect its sidecar unless the inode still has
        another name (whatever happened since *st* was taken: see ``_fs.sidecar``)."""
        if st is not None and self._xattrs is False:
            with contextlib.suppress(OSError):
                self._sidecars.drop(st)

    # ------------------------------------------------------------------ writing

    def _new_temp(self) -> tuple[int, str | None]:
        """A new temp file in staging: unnamed (``O_TMPFILE``, gone if the process dies) where
        the filesystem supports it, else a named one."""
        if self._tmpfile:
            sfd = self._stage_fd()
            try:
                return os.open(".", _OPEN_TMPFILE, self._mode, dir_fd=sfd), None
            except OSError as exc:
                if _removed(sfd):  # staging removed behind our back (EPERM or ENOENT)
                    return os.open(".", _OPEN_TMPFILE, self._mode,
                                   dir_fd=self._stage_fd(renew=True)), None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
                    raise
                self._tmpfile = False
        self._ensure_ready()
        tmp = f"{self._staging}/{_process_prefix()}{next(_counter)}.tmp"
        try:
            fd = os.open(tmp, _OPEN_NEW, self._mode)
        except FileNotFoundError:  # staging removed behind our back
            os.makedirs(self._staging, exist_ok=True)
            fd = os.open(tmp, _OPEN_NEW, self._mode)
        return fd, tmp

    def _name_temp(self, fd: int) -> str:
        """Give an unnamed temp file a name in staging (just before it is committed)."""
        name = f"{_process_prefix()}{next(_counter)}.tmp"
        sfd = self._stage_fd()
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=sfd, follow_symlinks=True)
        except OSError:
            if not _removed(sfd):
                raise
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self._stage_fd(renew=True),
                    follow_symlinks=True)
        return f"{self._staging}/{name}"

    def _write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _write_parts(self, fd: int, parts: list[bytes]) -> None:
        if len(parts) == 1:
            self._write_all(fd, parts[0])
            return
        total = sum(len(p) for p in parts)
        written = os.writev(fd, parts)
        if written < total:
            self._write_all(fd, b"".join(parts)[written:])

    def _small_write(self, key: str, parts: list[bytes], meta: _Meta, create_only: bool,
                     gate: _Gate) -> ObjectInfo:
        """The whole upload of an in-memory payload in one thread hop. Its unnamed temp file is
        created in the object's own directory, opened (and checked) first and kept for the
        commit: the inode is allocated beside its directory's, as for a file created there,
        rather than in staging's block group."""
        gate.check()
        self._ensure_ready()
        state = _Temp(gate)
        dfd = None
        if self._tmpfile:
            dfd = self._open_parent(_components(key), key, create=True)
            assert dfd is not None
            with contextlib.suppress(OSError):  # (a filesystem without O_TMPFILE): staging
                state.fd = os.open(".", _OPEN_TMPFILE, self._mode, dir_fd=dfd)
        try:
            if state.fd is None:
                self._begin(state, parts)
            else:
                self._more(state, parts)
            return self._finish(state, key, [], meta, create_only, dfd)
        except BaseException:
            if dfd is not None:
                self._prune(_components(key))  # directories made for a write that failed
            raise
        finally:
            if dfd is not None:
                os.close(dfd)

    def _begin(self, state: _Temp, parts: list[bytes]) -> None:
        state.fd, state.path = self._new_temp()
        self._more(state, parts)

    def _more(self, state: _Temp, parts: list[bytes]) -> None:
        assert state.fd is not None
        try:
            if parts:
                self._write_parts(state.fd, parts)
        except BaseException:
            state.discard()
            raise

    def _finish(self, state: _Temp, key: str, parts: list[bytes], meta: _Meta,
                create_only: bool, dfd: int | None = None) -> ObjectInfo:
        """Last bytes, metadata, fsync and the atomic commit of the temp file."""
        fd = state.fd
        assert fd is not None
        try:
            state.gate.check()
            if parts:
                self._write_parts(fd, parts)
            self._store_meta(state, meta)
            if self.fsync:
                os.fsync(fd)
            st = os.fstat(fd)
            # abandoned (_Abandoned): discard() removes the temp file and its sidecar
            self._commit(state, key, create_only, st.st_ino, dfd)
        finally:
            state.discard()
        return _info(key, st, meta)

    def _commit(self, state: _Temp, key: str, create_only: bool, ino: int,
                parent: int | None = None) -> None:
        """Put the complete temp file in place. An unnamed one (``O_TMPFILE``, fd open) is
        linked straight onto the object's name when that name is free (one ``linkat``), else
        named in staging first; a named one is renamed (create-only: hard-linked) onto it.
        *parent*: the object's directory, already opened and checked by the caller. Raises
        ``_Abandoned`` (nothing done) when the call was cancelled before the commit began."""
        state.gate.enter()
        parts = _components(key)
        name = parts[-1]
        for attempt in range(20):
            own = parent is None or attempt > 0
            dfd = self._open_parent(parts, key, create=True) if own else parent
            assert dfd is not None
            try:
                try:
                    if state.path is None:
                        assert state.fd is not None
                        source = f"/proc/self/fd/{state.fd}"
                        if create_only:
                            self._link_new(source, True, dfd, name, key)
                        elif not self._link_free(source, dfd, name, ino):
                            state.path = self._name_temp(state.fd)
                            self._replace(state.path, dfd, name, ino)
                    elif create_only:
                        self._link_new(state.path, False, dfd, name, key)
                        os.unlink(state.path)
                    else:
                        self._replace(state.path, dfd, name, ino)
                except FileNotFoundError:
                    if state.path is not None and not os.path.exists(state.path):
                        raise
                    continue  # the directory was removed by a concurrent delete: again
                state.path = None
                if self.fsync:
                    os.fsync(dfd)
                return
            finally:
                if own:
                    os.close(dfd)
        raise OSError(errno.EAGAIN, "could not commit the object", key)  # pragma: no cover

    def _link_free(self, source: str, dfd: int, name: str, ino: int) -> bool:
        """Link an unnamed temp file onto *name* unless that name exists (then ``False``)."""
        try:
            os.link(source, name, dst_dir_fd=dfd, follow_symlinks=True)
        except FileExistsError:
            return False
        self._drop_stale(dfd, name, ino)
        return True

    def _replace(self, tmp: str, dfd: int, name: str, ino: int) -> None:
        old = _lstat_at(name, dfd) if self._xattrs is False else None
        try:
            os.rename(tmp, name, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            # the key is also a directory of other keys: the object lives beside it
            os.rename(tmp, name + _SELF, dst_dir_fd=dfd)
            return
        self._drop_sidecar(old)
        self._drop_stale(dfd, name, ino)

    def _drop_stale(self, dfd: int, name: str, ino: int) -> None:
        """Remove a former copy of the object beside a directory that has since gone."""
        stale = _lstat_at(name + _SELF, dfd)
        if stale is not None and stale.st_ino != ino:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name + _SELF, dir_fd=dfd)

    def _link_new(self, source: str, follow: bool, dfd: int, name: str, key: str) -> None:
        """Hard-link *source* onto *name* only if no object has that key (create-only);
        *follow* for a ``/proc/self/fd`` source."""
        target = name
        current = _lstat_at(name, dfd)
        if current is not None and stat.S_ISDIR(current.st_mode):
            target = name + _SELF
        elif _lstat_at(name + _SELF, dfd) is not None:
            raise create_only_conflict(self.name, key)
        try:
            os.link(source, target, dst_dir_fd=dfd, follow_symlinks=follow)
        except FileExistsError:
            if target == name:
                existing = _lstat_at(name, dfd)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    self._link_new(source, follow, dfd, name, key)  # became a directory
                    return
            raise create_only_conflict(self.name, key) from None

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        request = payload.request
        if payload.size_hint is not None and payload.size_hint <= _SMALL:
            raw = payload.take_bytes()  # bytes or str: checked now, no async iteration
            if raw is not None:
                meta = _Meta(request.content_type, dict(request.metadata), request.cache_control,
                             payload.etag, time.time())
                gate = _Gate()
                return await self._hop_commit(gate, self._small_write, key, [raw], meta,
                                              request.create_only, gate)
        chunks = payload.__aiter__()
        parts: list[bytes] = []
        size = 0
        ended = False
        try:
            while size < _SMALL:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    ended = True
                    break
                parts.append(chunk)
                size += len(chunk)
        except BaseException:
            await _aclose(chunks)
            raise
        if ended:
            meta = _Meta(request.content_type, dict(request.metadata), request.cache_control,
                         payload.etag, time.time())
            gate = _Gate()
            return await self._hop_commit(gate, self._small_write, key, parts, meta,
                                          request.create_only, gate)
        return await self._stream_write(key, payload, chunks, parts)

    async def _stream_write(self, key: str, payload: Payload, chunks: AsyncIterator[bytes],
                            parts: list[bytes]) -> ObjectInfo:
        """A large upload: ~1 MiB per thread hop, one write in flight while the next block
        arrives; on any failure or cancellation before the commit the temp file is removed."""
        request = payload.request
        state = _Temp(_Gate())
        pending: asyncio.Future[Any] = self._hop(self._begin, state, parts)
        try:
            parts = []
            size = 0
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= _BLOCK:
                    await asyncio.shield(pending)
                    pending = self._hop(self._more, state, parts)
                    parts, size = [], 0
            await asyncio.shield(pending)
        except BaseException:
            await _settle(pending)  # never close a file a thread is still writing
            state.discard()
            await _aclose(chunks)
            raise
        meta = _Meta(request.content_type, dict(request.metadata), request.cache_control,
                     payload.etag, time.time())
        return await self._hop_commit(state.gate, self._finish, state, key, parts, meta,
                                      request.create_only)

    # ------------------------------------------------------------------ reading

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        block = max(_BLOCK, chunk_size)
        first_len = block if length is None else min(block, length)
        fd, st, data = await self._hop(self._open_and_read, key, offset, first_len,
                                       release=_close_opened)
        loop = asyncio.get_running_loop()
        end = st.st_size if length is None else min(st.st_size, offset + length)
        pos = offset + len(data)
        pending: asyncio.Future[bytes] | None = None
        try:
            while data:
                if pos < end:  # read the next block while this one is consumed
                    pending = loop.run_in_executor(None, os.pread, fd, min(block, end - pos), pos)
                if len(data) <= chunk_size:
                    yield data
                else:
                    view = memoryview(data)
                    for i in range(0, len(data), chunk_size):
                        yield bytes(view[i:i + chunk_size])
                if pending is None:
                    break
                data = await pending
                pending = None
                pos += len(data)
        finally:
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: os.close(fd))
            else:
                os.close(fd)

    def _open_and_read(self, key: str, offset: int, length: int
                       ) -> tuple[int, os.stat_result, bytes]:
        opened = self._open_object(key)
        if opened is None:
            raise StorageFileNotFoundError(backend=self.name, key=key)
        fd, st = opened
        try:  # (an offset past the end is no error, and may not fit an off_t)
            data = (os.pread(fd, min(length, st.st_size - offset), offset)
                    if length and offset < st.st_size else b"")
        except BaseException:
            os.close(fd)
            raise
        return fd, st, data

    async def _read_all(self, key: str) -> bytes:
        data = self._read_cached(key)
        if data is None:
            data = await self._hop(self._read_all_sync, key)
        return data

    def _read_cached(self, key: str) -> bytes | None:
        """The whole object, read on the event loop when that cannot block: it is at most
        ``_INLINE_READ`` bytes and the kernel has its path and all its bytes in memory (see
        ``_open_cached``; the read uses ``RWF_NOWAIT``). ``None``: read it in a thread."""
        if _openat2 is None or not self._fs.cached_reads:
            return None
        path = self._path(_components(key))
        for candidate in (path, path + _SELF):
            try:
                fd = _open_cached(candidate)
            except FileNotFoundError:
                continue
            if fd is None:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size > _INLINE_READ:
                    return None
                try:
                    self._check_fd(fd, key)
                except _Escape:
                    raise self._escape_error(key) from None
                return _pread_nowait(fd, st.st_size) if st.st_size else b""
            finally:
                os.close(fd)
        raise StorageFileNotFoundError(backend=self.name, key=key)

    def _read_all_sync(self, key: str) -> bytes:
        opened = self._open_object(key)
        if opened is None:
            raise StorageFileNotFoundError(backend=self.name, key=key)
        fd, st = opened
        try:
            parts: list[bytes] = []
            total, want = 0, st.st_size + 1
            while True:  # files are replaced, never rewritten: stat's size is the size
                data = os.read(fd, min(want, 1 << 30))
                if not data:
                    break
                parts.append(data)
                total += len(data)
                if total == st.st_size:
                    break
                want = _BLOCK
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def _head(self, key: str) -> ObjectInfo | None:
        return await self._hop(self._head_sync, key)

    def _head_sync(self, key: str) -> ObjectInfo | None:
        opened = self._open_object(key)
        if opened is None:
            return None
        fd, st = opened
        try:
            return _info(key, st, self._load_meta(fd, st, key))
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ deleting

    async def _delete(self, key: str) -> bool:
        return await self._hop(self._delete_sync, key)

    def _delete_sync(self, key: str) -> bool:
        parts = _components(key)
        dfd = self._open_parent(parts, key, create=False)
        if dfd is None:
            return False
        found = False
        try:
            name = parts[-1]
            for _ in range(_RETRIES):
                for candidate in (name, name + _SELF):
                    st = _lstat_at(candidate, dfd)
                    if st is None or stat.S_ISDIR(st.st_mode):
                        continue
                    try:
                        os.unlink(candidate, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    self._drop_sidecar(st)
                    found = True
                if found:
                    break
                # nothing found: unless a writer has just put the object back on its own name
                # (its directory was pruned meanwhile) and dropped the copy beside it
                st = _lstat_at(name, dfd)
                if st is None or stat.S_ISDIR(st.st_mode):
                    break
            if found and self.fsync:
                os.fsync(dfd)
        finally:
            os.close(dfd)
        if found:
            self._prune(parts)
        return found

    def _prune(self, parts: list[str]) -> None:
        """Remove the directories a delete left empty, up to (not including) the root. Each is
        removed relative to its parent opened and checked like any other path, so a directory
        swapped for a symlink meanwhile never leads the removal outside the root."""
        for depth in range(len(parts) - 1, 0, -1):
            try:
                dfd = self._open_parent(parts[:depth], "/".join(parts[:depth]), create=False)
            except (OSError, StorageError):
                return
            if dfd is None:
                return
            try:
                os.rmdir(parts[depth - 1], dir_fd=dfd)
            except OSError:
                return
            finally:
                os.close(dfd)

    # ------------------------------------------------------------------ copy and move

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        gate = _Gate()
        return await self._hop_commit(gate, self._copy_sync, src, dst, gate)

    def _open_source(self, src: str) -> tuple[int, os.stat_result]:
        """Open the source object of a copy or move."""
        opened = self._open_object(src)
        if opened is None:
            raise StorageFileNotFoundError(backend=self.name, key=src)
        return opened

    def _copy_sync(self, src: str, dst: str, gate: _Gate) -> ObjectInfo:
        gate.check()
        sfd, st = self._open_source(src)
        try:
            meta = self._load_meta(sfd, st, src)
            if meta.etag is None:
                meta.etag = digest_fd(sfd)
            meta.created = time.time()
            state = _Temp(gate)
            state.fd, state.path = self._new_temp()
            try:
                _copy_fd(sfd, state.fd, st.st_size)
            except BaseException:
                state.discard()
                raise
            return self._finish(state, dst, [], meta, False)
        finally:
            os.close(sfd)

    async def _move(self, src: str, dst: str) -> ObjectInfo:
        gate = _Gate()
        return await self._hop_commit(gate, self._move_sync, src, dst, gate)

    def _move_sync(self, src: str, dst: str, gate: _Gate) -> ObjectInfo:
        gate.check()
        sfd, st = self._open_source(src)
        try:
            meta = self._load_meta(sfd, st, src)
        finally:
            os.close(sfd)
        src_parts = _components(src)
        sdir = self._open_parent(src_parts, src, create=False)
        if sdir is None:
            raise StorageFileNotFoundError(backend=self.name, key=src)
        try:
            name = src_parts[-1]
            current = _lstat_at(name, sdir)
            if current is None or not stat.S_ISREG(current.st_mode):
                name += _SELF
            # hard link the source into staging, then rename that onto the destination:
            # the same atomic commit as a write, and the inode (with its metadata) travels
            tmp = f"{self._staging}/{_process_prefix()}{next(_counter)}.mv"
            self._ensure_ready()
            try:
                os.link(name, tmp, src_dir_fd=sdir, follow_symlinks=False)
            except FileNotFoundError:
                raise StorageFileNotFoundError(backend=self.name, key=src) from None
            except OSError as exc:  # no hard links here: copy instead
                if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                    raise
                info = self._copy_sync(src, dst, gate)
                self._delete_sync(src)
                return info
            state = _Temp(gate)
            state.path = tmp
            try:
                self._commit(state, dst, False, st.st_ino)
            finally:
                state.discard()
            for candidate in (name, src_parts[-1] + _SELF):  # it may have moved beside a dir
                now = _lstat_at(candidate, sdir)
                if now is not None and now.st_ino == st.st_ino:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(candidate, dir_fd=sdir)
                    break
        finally:
            os.close(sdir)
        self._prune(src_parts)
        return _info(dst, st, meta)

    # ------------------------------------------------------------------ listing

    async def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        walk = self._walk(prefix, start_after)
        try:
            while True:
                batch = await self._hop(_take, walk, _LIST_BATCH)
                for info in batch:
                    yield info
                if len(batch) < _LIST_BATCH:
                    return
        finally:
            walk.close()

    def _walk(self, prefix: str, start_after: str | None) -> Generator[ObjectInfo, None, None]:
        """Every object under *prefix* after *start_after*, in key order (a lazy k-way merge
        of directory walks: a directory is read only when its keys are next)."""
        if not os.path.isdir(self._root):
            return
        after = start_after if start_after is not None and start_after >= prefix else None
        for key, entry in self._dir_keys(self._root, "", prefix, after, top=True):
            info = self._entry_info(key, entry)
            if info is not None:
                yield info

    def _dir_keys(self, path: str, base: str, prefix: str, after: str | None, top: bool = False
                  ) -> Iterator[tuple[str, Any]]:
        """(key, DirEntry) of the files below *path* in key order; *base* is the key prefix.

        Entries are sorted by the smallest key they can hold; a subdirectory is read only when
        that bound is reached, and overlapping ranges (continuation pieces) are merged."""

        try:
            with os.scandir(path) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        items: list[tuple[str, int, os.DirEntry[str]]] = []  # (lower bound, kind, entry)
        for entry in entries:
            name = entry.name
            if top and name.startswith(INTERNAL_DIR):
                if name == INTERNAL_DIR:
                    continue  # the driver's own area
                if name.startswith(_OWN):
                    name = INTERNAL_DIR + name[len(_OWN):]  # a key's escaped ".lexigram"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if name.endswith(_CONT):
                    kp, kind = base + name[:-1], 2
                else:
                    kp, kind = base + name + "/", 1
                # prune subtrees outside the prefix or wholly before start_after
                if not (kp.startswith(prefix) or prefix.startswith(kp)):
                    continue
                if after is not None and kp < after and not after.startswith(kp):
                    continue
            else:
                kp = base + (name[:-1] if name.endswith(_SELF) else name)
                kind = 0
                if not kp.startswith(prefix) or (after is not None and kp <= after):
                    continue
            items.append((kp, kind, entry))
        items.sort(key=lambda item: item[0])
        heap: list[tuple[str, int, os.DirEntry[str] | None, Iterator[tuple[str, Any]] | None]] = []
        seq = itertools.count()
        i = 0
        while i < len(items) or heap:
            while i < len(items) and (not heap or items[i][0] <= heap[0][0]):
                kp, kind, entry = items[i]
                i += 1
                if kind == 0:
                    heapq.heappush(heap, (kp, next(seq), entry, None))
                else:
                    sub = self._dir_keys(entry.path, kp, prefix, after)
                    for key, sub_entry in sub:
                        heapq.heappush(heap, (key, next(seq), sub_entry, sub))
                        break
            if not heap:
                continue
            key, _, entry_, sub_it = heapq.heappop(heap)
            yield key, entry_
            if sub_it is not None:
                for nkey, nentry in sub_it:
                    heapq.heappush(heap, (nkey, next(seq), nentry, sub_it))
                    break

    def _entry_info(self, key: str, entry: os.DirEntry[str]) -> ObjectInfo | None:
        try:
            if entry.is_symlink():
                if self._fs.fd_path is None:  # the portable walk refuses every symlink
                    return None
                try:
                    self._check_real(os.path.realpath(entry.path), key)
                except _Escape:
                    return None
            fd = os.open(entry.path, _OPEN_READ)
        except OSError:
            return None  # deleted since the directory was read
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return _info(key, st, self._load_meta(fd, st, key))
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ URLs

    def _url(self, key: str) -> str:
        return _signing.object_url(self.base_url, key)

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        if self._signing_key is None:
            raise unsupported(self.name, "get_presigned_url without a signing_key", hint=_SIGN_HINT)
        if options:
            raise TypeError(f"{self.name}: unknown presign option(s) {sorted(options)}")
        return _signing.presign(self._signing_key, self.base_url, key, method, expires_in)

    def verify_presigned_url(self, url: str, method: str = "GET") -> str:
        """Check a URL made by ``get_presigned_url`` for *method*; return its key.

        Raises ``StoragePermissionError`` for every URL that is not one this driver signed for
        *method* and that has not expired: malformed, altered or truncated in any way, signed
        with another key or for another method, or expired (see ``drivers/_signing.py``)."""
        if self._signing_key is None:
            raise unsupported(self.name, "verify_presigned_url without a signing_key",
                              hint=_SIGN_HINT)
        return _signing.verify(self._signing_key, self.base_url, url, method, self.name)

    # ------------------------------------------------------------------ health and errors

    async def _ping(self) -> dict[str, Any]:
        return await self._hop(self._ping_sync)

    def _ping_sync(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._ensure_ready()
        tmp = f"{self._staging}/{_process_prefix()}{next(_counter)}.probe"
        fd = os.open(tmp, _OPEN_NEW, self._mode)
        try:
            os.write(fd, b"lexigram-health")
            os.close(fd)
            fd = os.open(tmp, _OPEN_READ)
            if os.read(fd, 64) != b"lexigram-health":
                raise OSError(errno.EIO, "health probe read back different bytes", tmp)
        finally:
            _discard(fd, tmp)
        return {"root": self._root, "xattrs": bool(self._xattrs), "platform": self._fs.name,
                "probe_ms": round((time.perf_counter() - start) * 1000, 3)}

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        if isinstance(exc, _Escape):
            return self._escape_error(key)
        if isinstance(exc, OSError):
            if exc.errno == errno.ENAMETOOLONG:
                return InvalidPathError("the key is too long for this filesystem",
                                        backend=self.name, key=key, cause=exc)
            if exc.errno == errno.ELOOP:
                return InvalidPathError("the key runs into a symlink loop", backend=self.name,
                                        key=key, cause=exc)
            if isinstance(exc, IsADirectoryError | NotADirectoryError):
                return StorageFileNotFoundError(backend=self.name, key=key, cause=exc)
        return None


# ---------------------------------------------------------------------------- helpers


_PREFIX: tuple[int, str] = (0, "")
_POOL: tuple[int, ThreadPoolExecutor | None] = (0, None)


def _pool() -> ThreadPoolExecutor:
    """The worker threads of every local driver (as many as asyncio's default executor has;
    a new pool after a fork, whose child has none of the parent's threads)."""
    global _POOL
    pid, pool = _POOL
    if pool is None or pid != os.getpid():
        pool = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4),
                                  thread_name_prefix="lexigram-local")
        _POOL = (os.getpid(), pool)
    return pool


def _run_job(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[T], fn: Callable[..., T],
             args: tuple[Any, ...], release: Callable[[T], object] | None) -> None:
    if fut.cancelled():  # the caller gave up before a thread was free
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        loop.call_soon_threadsafe(_job_failed, fut, exc)
    else:
        loop.call_soon_threadsafe(_job_done, fut, result, release)


def _job_done(fut: asyncio.Future[T], result: T, release: Callable[[T], object] | None) -> None:
    if not fut.done():
        fut.set_result(result)
    elif release is not None:  # the caller gave up while the thread worked
        release(result)


def _close_opened(opened: tuple[int, os.stat_result, bytes]) -> None:
    os.close(opened[0])


def _job_failed(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _process_prefix() -> str:
    """``<pid>-<random>-``: names this process's temp files (recomputed after a fork)."""
    global _PREFIX
    pid = os.getpid()
    if _PREFIX[0] != pid:
        _PREFIX = (pid, f"{pid}-{secrets.token_hex(4)}-")
    return _PREFIX[1]


def _writer_alive(name: str) -> bool:
    """Whether another live process may still be writing the staging file *name*."""
    pid_text = name.split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():  # ours, from a former process with the same pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _removed(dfd: int) -> bool:
    """Whether the open directory *dfd* has been deleted."""
    try:
        return os.fstat(dfd).st_nlink == 0
    except OSError:
        return True


def _regular_file(fd: int) -> os.stat_result | None:
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


def _lstat_at(name: str, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Abandoned(Exception):
    """Raised in a worker thread: the call was cancelled before its commit began."""


class _Gate:
    """Whether a write may still commit. The worker thread calls ``enter()`` just before the
    commit, the event loop ``abandon()`` when the call is cancelled: the first one wins."""

    __slots__ = ("_lock", "_state")

    _OPEN, _COMMITTING, _ABANDONED = range(3)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = self._OPEN

    def check(self) -> None:
        """Raise ``_Abandoned`` if the call was cancelled (spares the work before the commit)."""
        if self._state == self._ABANDONED:
            raise _Abandoned

    def enter(self) -> None:
        """The commit begins: from now on a cancellation waits for it. Raises ``_Abandoned``
        if the call was cancelled first."""
        with self._lock:
            if self._state == self._ABANDONED:
                raise _Abandoned
            self._state = self._COMMITTING

    def abandon(self) -> bool:
        """The call is cancelled: ``True`` if the commit is prevented, ``False`` if it began."""
        with self._lock:
            if self._state == self._COMMITTING:
                return False
            self._state = self._ABANDONED
            return True


class _Waiter(asyncio.Future[T]):
    """What the caller of a committing hop awaits in place of the hop's own future (like the
    outer future of ``asyncio.shield``, so the thread's outcome is never lost). Cancelling it
    abandons the gate at once: a hop that no thread has picked up yet will not commit."""

    def __init__(self, gate: _Gate, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._gate = gate

    def cancel(self, msg: Any | None = None) -> bool:
        self._gate.abandon()
        return super().cancel(msg=msg)

    def follow(self, fut: asyncio.Future[T]) -> None:
        """Take the outcome of the hop's future *fut* (unless cancelled meanwhile)."""
        if self.done():
            return
        exc = fut.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(fut.result())


class _Temp:
    """A temp file being written: its fd and path until closed / committed, the gate of its
    commit, and *undo*, which removes what was stored beside it (a metadata sidecar) if it is
    discarded uncommitted."""

    __slots__ = ("fd", "gate", "path", "undo")

    def __init__(self, gate: _Gate) -> None:
        self.fd: int | None = None
        self.path: str | None = None
        self.undo: Callable[[], object] | None = None
        self.gate = gate

    def discard(self) -> None:
        fd, path, undo = self.fd, self.path, self.undo
        self.fd = self.path = self.undo = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if path is not None:  # never committed (a commit clears the path)
            with contextlib.suppress(OSError):
                os.unlink(path)
            if undo is not None:
                with contextlib.suppress(OSError):
                    undo()


async def _settle(fut: asyncio.Future[Any]) -> None:
    """Wait until *fut* is done, through cancellations (cleanup must not race a thread)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({fut})
    if not fut.cancelled():
        fut.exception()  # retrieved: no "never retrieved" warning


def _discard(fd: int, tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(itertools.islice(it, n))


def _copy_fd(src: int, dst: int, size: int) -> None:
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
        data = os.pread(src, _BLOCK, offset)
        if not data:
            return
        os.lseek(dst, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
        offset += len(data)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
