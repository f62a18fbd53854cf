"""``LocalDriver``: atomic, S3-faithful object storage under one root directory.

The driver implements the primitives of ``BaseDriver`` from the package's pieces (see
``__init__.py`` for the map): where a key lives (``layout``), how paths stay inside the root
(``confine``, ``platforms/``), where metadata is kept (``meta``, ``sidecar``), the Linux fast
paths (``fastpath``) and the one thread pool (``threads``).

Atomicity
    Every write goes to a temp file (created with mode ``0o666 & ~umask``): an unnamed one
    (``O_TMPFILE``; for a small upload in the object's own directory, else in ``staging/``)
    where the filesystem supports it, else a named one in ``staging/``. It gets its metadata
    (content type, user metadata, cache control, SHA-256 etag) and only then a name: linked
    onto a free name, else renamed over the old object; create-only writes hard-link, which
    fails if the name exists. A failed, rejected or cancelled upload unlinks its temp file (an
    unnamed one vanishes even on SIGKILL); stale named temp files of a killed process are
    removed by ``prepare()``. ``copy`` writes a temp copy and renames it; ``move`` is a rename
    (the metadata travels with the inode). Cancellation: see ``threads.hop_commit``.

Concurrency
    Concurrent uploads, deletes, copies and moves never fail each other: a delete removes the
    directories it leaves empty and a write turns an object into a directory (``a/b`` ->
    ``a/b\\x02``) while other calls work in those directories; the steps they undo are
    retried (a bounded number of times).

Speed, and what runs on the event loop
    Every blocking call runs in the driver's thread pool (``threads``): creating a file can
    wait for the disk or the journal (on ext4 without a journal it also scans past every inode
    freed in the last minute: up to 1 ms of kernel time seen per file). An upload of up to
    1 MiB given as bytes is one hop of ten syscalls on Linux: open and check the parent,
    ``O_TMPFILE`` open in it, write, fsetxattr, fstat, ``linkat`` onto the free name (an
    existing name: link into the kept-open staging directory and rename over it), look for a
    stale copy, two closes. Larger uploads write ~1 MiB per hop; streams read 1 MiB per hop
    (the next block is read while the current one is consumed), whatever ``chunk_size`` the
    caller asked for; ``info``, ``delete``, ``copy``, ``move`` and each listing page are one
    hop. On Linux a download of up to 64 KiB is served on the event loop where the kernel
    guarantees it will not wait (``fastpath.read_cached``), else it is one hop.

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
import itertools
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from lexigram.contracts.infra.storage import StorageError
from pydantic import SecretStr

from lexigram_storage.capabilities import Capability
from lexigram_storage.config import StorageLocalConfig, settings_from
from lexigram_storage.drivers import _signing
from lexigram_storage.drivers.base import BaseDriver, create_only_conflict
from lexigram_storage.drivers.local import platforms
from lexigram_storage.drivers.local.confine import RETRIES, Tree
from lexigram_storage.drivers.local.fastpath import TempFiles, copy_fd, read_cached
from lexigram_storage.drivers.local.files import (
    BLOCK,
    OPEN_NEW,
    OPEN_READ,
    discard,
    lstat_at,
    write_all,
)
from lexigram_storage.drivers.local.layout import (
    INTERNAL_DIR,
    META,
    SELF,
    STAGING,
    components,
    keys,
)
from lexigram_storage.drivers.local.meta import Meta, MetaStore, object_info
from lexigram_storage.drivers.local.platforms import Escape
from lexigram_storage.drivers.local.sidecar import Sidecars
from lexigram_storage.drivers.local.staging import Staging
from lexigram_storage.drivers.local.threads import Gate, hop, hop_commit, settle
from lexigram_storage.errors import (
    InvalidPathError,
    StorageBootError,
    StorageFileNotFoundError,
    unsupported,
)
from lexigram_storage.events import StorageEvents
from lexigram_storage.models import ObjectInfo
from lexigram_storage.payload import Payload, UploadPolicy, digest_fd

__all__ = ["INTERNAL_DIR", "LocalDriver"]

T = TypeVar("T")

_SMALL = 1024 * 1024  # payloads up to this size are written in one thread hop
_LIST_BATCH = 256
_SIGN_HINT = ("Set a signing key: LocalDriver(signing_key=...), or in configuration "
              "storage.drivers.local.signing_key / the environment variable "
              "LEX_STORAGE__DRIVERS__LOCAL__SIGNING_KEY.")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        # checked by the configuration model: the same rules as a local: block
        self.settings = settings_from(StorageLocalConfig, {
            "root_dir": os.fspath(root_dir), "base_url": base_url, "signing_key": signing_key,
            "fsync": fsync}, backend=self.name)
        self._root = os.path.abspath(self.settings.root_dir)
        # how paths are confined and which kernel features are used (see platforms/)
        platform = platforms.select(
            platforms.portable_requested() if portable is None else portable)
        self._tree = Tree(self._root, platform, self.name)
        self._staging = Staging(os.path.join(self._root, INTERNAL_DIR, STAGING))
        self._meta = MetaStore(Sidecars(os.path.join(self._root, INTERNAL_DIR, META),
                                        self._staging.new_path), platform.xattrs)
        self._mode = 0o666 & ~_umask()
        self._temps = TempFiles(self._staging, self._meta, self._mode, platform.tmpfile,
                                self._ensure_ready)
        self.base_url = self.settings.base_url.rstrip("/")
        self._signing_key = _signing.secret_bytes(self.settings.signing_key)
        if self._signing_key is None:
            self.capabilities = self.capabilities - {Capability.PRESIGN_GET,
                                                     Capability.PRESIGN_PUT}
        self.fsync = self.settings.fsync
        self._ready = False
        self._prepare_lock = threading.Lock()  # the first hops of a new driver run at once

    def __repr__(self) -> str:
        return f"<LocalDriver name={self.name!r} root={self._root!r}>"

    @property
    def bucket(self) -> str:
        return self._root

    @property
    def root(self) -> Path:
        return Path(self._root)

    # every blocking call goes through this: a worker thread of the one pool (see threads)
    _hop = staticmethod(hop)

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
            self._staging.sweep()
            self._tree.locate()
            probe = self._staging.new_path(".probe")  # (unique: other drivers may share the root)
            fd = os.open(probe, OPEN_NEW, self._mode)
            try:
                os.write(fd, b"ok")
                self._meta.probe(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
            self._meta.sweep()
            self._staging.open()
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

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._prepare_sync(again=False)

    async def _close(self) -> None:
        self._ready = False  # reopened on next use
        self._staging.close()

    # ------------------------------------------------------------------ writing

    def _write_parts(self, fd: int, parts: list[bytes]) -> None:
        if len(parts) == 1:
            write_all(fd, parts[0])
            return
        total = sum(len(p) for p in parts)
        written = os.writev(fd, parts)
        if written < total:
            write_all(fd, b"".join(parts)[written:])

    def _small_write(self, key: str, parts: list[bytes], meta: Meta, create_only: bool,
                     gate: Gate) -> ObjectInfo:
        """The whole upload of an in-memory payload in one thread hop. Its unnamed temp file is
        created in the object's own directory, opened (and checked) first and kept for the
        commit: the inode is allocated beside its directory's, as for a file created there,
        rather than in staging's block group."""
        gate.check()
        self._ensure_ready()
        state = _Temp(gate)
        dfd = None
        if self._temps.unnamed:
            dfd = self._tree.open_parent(components(key), key, create=True)
            assert dfd is not None
            state.fd = self._temps.new_in(dfd)  # (None: in staging)
        try:
            if state.fd is None:
                self._begin(state, parts)
            else:
                self._more(state, parts)
            return self._finish(state, key, [], meta, create_only, dfd)
        except BaseException:
            if dfd is not None:
                self._tree.prune(components(key))  # directories made for a write that failed
            raise
        finally:
            if dfd is not None:
                os.close(dfd)

    def _begin(self, state: _Temp, parts: list[bytes]) -> None:
        state.fd, state.path = self._temps.new()
        self._more(state, parts)

    def _more(self, state: _Temp, parts: list[bytes]) -> None:
        assert state.fd is not None
        try:
            if parts:
                self._write_parts(state.fd, parts)
        except BaseException:
            state.discard()
            raise

    def _finish(self, state: _Temp, key: str, parts: list[bytes], meta: Meta,
                create_only: bool, dfd: int | None = None) -> ObjectInfo:
        """Last bytes, metadata, fsync and the atomic commit of the temp file."""
        fd = state.fd
        assert fd is not None
        try:
            state.gate.check()
            if parts:
                self._write_parts(fd, parts)
            state.undo = self._meta.store(fd, state.path, meta)
            if self.fsync:
                os.fsync(fd)
            st = os.fstat(fd)
            # abandoned (threads.Abandoned): discard() removes the temp file and its sidecar
            self._commit(state, key, create_only, st.st_ino, dfd)
        finally:
            state.discard()
        return object_info(key, st, meta)

    def _commit(self, state: _Temp, key: str, create_only: bool, ino: int,
                parent: int | None = None) -> None:
        """Put the complete temp file in place. An unnamed one (``O_TMPFILE``, fd open) is
        linked straight onto the object's name when that name is free (one ``linkat``), else
        named in staging first; a named one is renamed (create-only: hard-linked) onto it.
        *parent*: the object's directory, already opened and checked by the caller. Raises
        ``Abandoned`` (nothing done) when the call was cancelled before the commit began."""
        state.gate.enter()
        parts = components(key)
        name = parts[-1]
        for attempt in range(20):
            own = parent is None or attempt > 0
            dfd = self._tree.open_parent(parts, key, create=True) if own else parent
            assert dfd is not None
            try:
                try:
                    if state.path is None:
                        assert state.fd is not None
                        source = f"/proc/self/fd/{state.fd}"
                        if create_only:
                            self._link_new(source, True, dfd, name, key)
                        elif not self._link_free(source, dfd, name, ino):
                            state.path = self._temps.name(state.fd)
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
        old = lstat_at(name, dfd) if self._meta.xattrs is False else None
        try:
            os.rename(tmp, name, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            # the key is also a directory of other keys: the object lives beside it
            os.rename(tmp, name + SELF, dst_dir_fd=dfd)
            return
        self._meta.drop(old)
        self._drop_stale(dfd, name, ino)

    def _drop_stale(self, dfd: int, name: str, ino: int) -> None:
        """Remove a former copy of the object beside a directory that has since gone."""
        stale = lstat_at(name + SELF, dfd)
        if stale is not None and stale.st_ino != ino:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name + SELF, dir_fd=dfd)

    def _link_new(self, source: str, follow: bool, dfd: int, name: str, key: str) -> None:
        """Hard-link *source* onto *name* only if no object has that key (create-only);
        *follow* for a ``/proc/self/fd`` source."""
        target = name
        current = lstat_at(name, dfd)
        if current is not None and stat.S_ISDIR(current.st_mode):
            target = name + SELF
        elif lstat_at(name + SELF, dfd) is not None:
            raise create_only_conflict(self.name, key)
        try:
            os.link(source, target, dst_dir_fd=dfd, follow_symlinks=follow)
        except FileExistsError:
            if target == name:
                existing = lstat_at(name, dfd)
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    self._link_new(source, follow, dfd, name, key)  # became a directory
                    return
            raise create_only_conflict(self.name, key) from None

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        request = payload.request
        if payload.size_hint is not None and payload.size_hint <= _SMALL:
            raw = payload.take_bytes()  # bytes or str: checked now, no async iteration
            if raw is not None:
                meta = Meta(request.content_type, dict(request.metadata), request.cache_control,
                            payload.etag, time.time())
                gate = Gate()
                return await hop_commit(gate, self._small_write, key, [raw], meta,
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
            meta = Meta(request.content_type, dict(request.metadata), request.cache_control,
                        payload.etag, time.time())
            gate = Gate()
            return await hop_commit(gate, self._small_write, key, parts, meta,
                                    request.create_only, gate)
        return await self._stream_write(key, payload, chunks, parts)

    async def _stream_write(self, key: str, payload: Payload, chunks: AsyncIterator[bytes],
                            parts: list[bytes]) -> ObjectInfo:
        """A large upload: ~1 MiB per thread hop, one write in flight while the next block
        arrives; on any failure or cancellation before the commit the temp file is removed."""
        request = payload.request
        state = _Temp(Gate())
        pending: asyncio.Future[Any] = self._hop(self._begin, state, parts)
        try:
            parts = []
            size = 0
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= BLOCK:
                    await asyncio.shield(pending)
                    pending = self._hop(self._more, state, parts)
                    parts, size = [], 0
            await asyncio.shield(pending)
        except BaseException:
            await settle(pending)  # never close a file a thread is still writing
            state.discard()
            await _aclose(chunks)
            raise
        meta = Meta(request.content_type, dict(request.metadata), request.cache_control,
                    payload.etag, time.time())
        return await hop_commit(state.gate, self._finish, state, key, parts, meta,
                                request.create_only)

    # ------------------------------------------------------------------ reading

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        block = max(BLOCK, chunk_size)
        first_len = block if length is None else min(block, length)
        fd, st, data = await self._hop(self._open_and_read, key, offset, first_len,
                                       release=_close_opened)
        end = st.st_size if length is None else min(st.st_size, offset + length)
        pos = offset + len(data)
        pending: asyncio.Future[bytes] | None = None
        try:
            while data:
                if pos < end:  # read the next block while this one is consumed
                    pending = self._hop(os.pread, fd, min(block, end - pos), pos)
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
        fd, st = self._open_existing(key)
        try:  # (an offset past the end is no error, and may not fit an off_t)
            data = (os.pread(fd, min(length, st.st_size - offset), offset)
                    if length and offset < st.st_size else b"")
        except BaseException:
            os.close(fd)
            raise
        return fd, st, data

    def _open_existing(self, key: str) -> tuple[int, os.stat_result]:
        """Open the object *key* for reading (a download, or the source of a copy or move)."""
        opened = self._tree.open_object(key)
        if opened is None:
            raise StorageFileNotFoundError(backend=self.name, key=key)
        return opened

    async def _read_all(self, key: str) -> bytes:
        data = read_cached(self._tree, key)
        if data is None:
            data = await self._hop(self._read_all_sync, key)
        return data

    def _read_all_sync(self, key: str) -> bytes:
        fd, st = self._open_existing(key)
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
                want = BLOCK
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def _head(self, key: str) -> ObjectInfo | None:
        return await self._hop(self._head_sync, key)

    def _head_sync(self, key: str) -> ObjectInfo | None:
        opened = self._tree.open_object(key)
        if opened is None:
            return None
        fd, st = opened
        try:
            return object_info(key, st, self._meta.load(fd, st, key))
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ deleting

    async def _delete(self, key: str) -> bool:
        return await self._hop(self._delete_sync, key)

    def _delete_sync(self, key: str) -> bool:
        parts = components(key)
        dfd = self._tree.open_parent(parts, key, create=False)
        if dfd is None:
            return False
        found = False
        try:
            name = parts[-1]
            for _ in range(RETRIES):
                for candidate in (name, name + SELF):
                    st = lstat_at(candidate, dfd)
                    if st is None or stat.S_ISDIR(st.st_mode):
                        continue
                    try:
                        os.unlink(candidate, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    self._meta.drop(st)
                    found = True
                if found:
                    break
                # nothing found: unless a writer has just put the object back on its own name
                # (its directory was pruned meanwhile) and dropped the copy beside it
                st = lstat_at(name, dfd)
                if st is None or stat.S_ISDIR(st.st_mode):
                    break
            if found and self.fsync:
                os.fsync(dfd)
        finally:
            os.close(dfd)
        if found:
            self._tree.prune(parts)
        return found

    # ------------------------------------------------------------------ copy and move

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        gate = Gate()
        return await hop_commit(gate, self._copy_sync, src, dst, gate)

    def _copy_sync(self, src: str, dst: str, gate: Gate) -> ObjectInfo:
        gate.check()
        sfd, st = self._open_existing(src)
        try:
            meta = self._meta.load(sfd, st, src)
            if meta.etag is None:
                meta.etag = digest_fd(sfd)
            meta.created = time.time()
            state = _Temp(gate)
            state.fd, state.path = self._temps.new()
            try:
                copy_fd(sfd, state.fd, st.st_size)
            except BaseException:
                state.discard()
                raise
            return self._finish(state, dst, [], meta, False)
        finally:
            os.close(sfd)

    async def _move(self, src: str, dst: str) -> ObjectInfo:
        gate = Gate()
        return await hop_commit(gate, self._move_sync, src, dst, gate)

    def _move_sync(self, src: str, dst: str, gate: Gate) -> ObjectInfo:
        gate.check()
        sfd, st = self._open_existing(src)
        try:
            meta = self._meta.load(sfd, st, src)
        finally:
            os.close(sfd)
        src_parts = components(src)
        sdir = self._tree.open_parent(src_parts, src, create=False)
        if sdir is None:
            raise StorageFileNotFoundError(backend=self.name, key=src)
        try:
            name = src_parts[-1]
            current = lstat_at(name, sdir)
            if current is None or not stat.S_ISREG(current.st_mode):
                name += SELF
            # hard link the source into staging, then rename that onto the destination:
            # the same atomic commit as a write, and the inode (with its metadata) travels
            tmp = self._staging.new_path(".mv")
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
            for candidate in (name, src_parts[-1] + SELF):  # it may have moved beside a dir
                now = lstat_at(candidate, sdir)
                if now is not None and now.st_ino == st.st_ino:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(candidate, dir_fd=sdir)
                    break
        finally:
            os.close(sdir)
        self._tree.prune(src_parts)
        return object_info(dst, st, meta)

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
        """Every object under *prefix* after *start_after*, in key order (lazily: see
        ``layout.keys``)."""
        if not os.path.isdir(self._root):
            return
        after = start_after if start_after is not None and start_after >= prefix else None
        for key, entry in keys(self._root, prefix, after):
            info = self._entry_info(key, entry)
            if info is not None:
                yield info

    def _entry_info(self, key: str, entry: os.DirEntry[str]) -> ObjectInfo | None:
        try:
            if entry.is_symlink() and not self._tree.follows(entry.path):
                return None
            fd = os.open(entry.path, OPEN_READ)
        except OSError:
            return None  # deleted since the directory was read
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return object_info(key, st, self._meta.load(fd, st, key))
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
        tmp = self._staging.new_path(".probe")
        fd = os.open(tmp, OPEN_NEW, self._mode)
        try:
            os.write(fd, b"lexigram-health")
            os.close(fd)
            fd = os.open(tmp, OPEN_READ)
            if os.read(fd, 64) != b"lexigram-health":
                raise OSError(errno.EIO, "health probe read back different bytes", tmp)
        finally:
            discard(fd, tmp)
        return {"root": self._root, "xattrs": bool(self._meta.xattrs),
                "platform": self._tree.platform.name,
                "probe_ms": round((time.perf_counter() - start) * 1000, 3)}

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        if isinstance(exc, Escape):
            return self._tree.escape_error(key)
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


class _Temp:
    """A temp file being written: its fd and path until closed / committed, the gate of its
    commit, and *undo*, which removes what was stored beside it (a metadata sidecar) if it is
    discarded uncommitted."""

    __slots__ = ("fd", "gate", "path", "undo")

    def __init__(self, gate: Gate) -> None:
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


def _close_opened(opened: tuple[int, os.stat_result, bytes]) -> None:
    os.close(opened[0])


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(itertools.islice(it, n))


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
