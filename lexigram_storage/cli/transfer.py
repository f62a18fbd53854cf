"""Moving bytes between objects, local files and stdin/stdout: ``cp``, ``mv``, ``put``, ``get``
and ``sync``.

Everything streams in chunks of ``CHUNK`` bytes: nothing reads a file or an object whole, so
a transfer holds at most a few chunks per running copy (plus what the destination driver
buffers for one upload: its part size times its parts in flight). A local file is handed to
the driver's upload as an open file, its size known, so each driver takes its path for that.
A destination that is the source itself, or a sync between places of which one holds the
other, is refused: writing then removing (or deleting what the source lacks) would lose data.

Objects are written with the driver's upload, which stores nothing unless it completes; local
files are written to a hidden temporary file beside the destination and renamed over it at the
end. An interrupted command therefore leaves every destination either as it was or complete,
and a re-run ``sync`` picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from lexigram_storage.cli.output import Forward, Meter
from lexigram_storage.cli.session import Backends, LocalRef, ObjectRef, Ref, StdioRef, UsageError
from lexigram_storage.drivers.base import BaseDriver
from lexigram_storage.drivers.local import LocalDriver
from lexigram_storage.drivers.local.layout import components
from lexigram_storage.drivers.memory import MemoryDriver

__all__ = ["CHUNK", "SyncResult", "copy", "folder", "move", "sync"]

CHUNK = 1024 * 1024
# temporary files of unfinished local writes: skipped when a local folder is read
_PART = ".lexigram-part-"

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Source:
    """What a copy reads: its chunks, its size if known, and the attributes to keep."""

    size: int | None
    chunks: Callable[[], AsyncIterator[bytes]]
    content_type: str | None = None
    metadata: dict[str, Any] | None = None
    cache_control: str | None = None


def folder(prefix: str) -> str:
    """A prefix taken as a folder: ``""`` stays the root, ``docs`` becomes ``docs/``."""
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


# ---------------------------------------------------------------------- reading


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(open, path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


def _stdio(call: Callable[[], _T]) -> asyncio.Future[_T]:
    """Run *call*, a read of stdin or a write to stdout, in a daemon thread of its own.

    Not in the default executor: ``asyncio.run`` waits for that executor's threads before it
    returns, and such a call can block for as long as the other end keeps the pipe open
    (``sleep 30 | lexigram-storage put - ...``), Ctrl-C or not. A daemon thread still blocked
    then ends with the process. The calls use the descriptors (``os.read``, ``os.write``), not
    ``sys.stdin``/``sys.stdout``, whose locks an abandoned thread would keep at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(outcome: tuple[_T] | BaseException) -> None:
        if future.done():  # cancelled (Ctrl-C) meanwhile
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[0])

    def run() -> None:
        outcome: tuple[_T] | BaseException
        try:
            outcome = (call(),)
        except Exception as exc:
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="lexigram-storage-stdio", daemon=True).start()
    return future


async def _stdin_chunks() -> AsyncIterator[bytes]:
    fd = sys.stdin.fileno()
    while chunk := await _stdio(lambda: os.read(fd, CHUNK)):  # what has arrived, up to CHUNK
        yield chunk


async def _source(backends: Backends, ref: Ref) -> _Source:
    if isinstance(ref, StdioRef):
        return _Source(None, _stdin_chunks)
    if isinstance(ref, LocalRef):
        try:
            size = ref.path.stat().st_size
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(ref.path)) from exc
        if ref.path.is_dir():
            raise UsageError(f"{ref.path} is a directory (use sync for folders)")
        path = ref.path
        return _Source(size, lambda: _file_chunks(path))
    driver = await backends.get(ref.backend)
    info = await driver.info(ref.key)
    key = ref.key
    return _Source(info.size, lambda: driver.stream(key, CHUNK),
                   info.content_type, info.metadata or None, info.cache_control)


class _MeteredFile(io.BufferedReader):
    """A local file opened for a driver's upload: a seekable OS file whose size is known, so
    each driver takes its path for a known size (one streamed request, or parts with the
    digest computed upfront), that advances the progress bar by what the driver reads."""

    def __init__(self, path: Path, advance: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"), CHUNK)
        self._advance = advance

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._advance(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        self._advance(len(data))
        return data


async def _counted(chunks: AsyncIterator[bytes], advance: Callable[[int], None]
                   ) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        advance(len(chunk))
        yield chunk


# ---------------------------------------------------------------------- writing


async def _write_file(path: Path, chunks: AsyncIterator[bytes]) -> None:
    """Write *chunks* to a temporary file beside *path*, then rename it to *path*: the file
    is either complete or as it was."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{_PART}{os.urandom(6).hex()}")
    try:
        with await asyncio.to_thread(open, temp, "xb") as f:
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
        await asyncio.to_thread(os.replace, temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)  # what an interrupted or failed write left


async def _write_stdout(chunks: AsyncIterator[bytes]) -> None:
    sys.stdout.flush()  # what was printed before goes first
    fd = sys.stdout.fileno()

    def write_all(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]

    async for chunk in chunks:
        await _stdio(functools.partial(write_all, chunk))


def _target(src: Ref, dst: Ref) -> Ref:
    """A destination naming a folder (``dir/``, an existing directory, ``NAME:``) gets the
    source's name appended."""
    if isinstance(src, StdioRef):
        name = "-"
    else:
        name = src.path.name if isinstance(src, LocalRef) else PurePosixPath(src.key).name
    if isinstance(dst, LocalRef) and (dst.folder or dst.path.is_dir()):
        return LocalRef(dst.path / name)
    if isinstance(dst, ObjectRef) and (dst.key == "" or dst.key.endswith("/")):
        return ObjectRef(dst.backend, dst.key + name)
    return dst


# ---------------------------------------------------------------------- where things are


def _storage(driver: BaseDriver) -> tuple[object, ...]:
    """What identifies where a backend keeps its objects: backends with equal values (one
    bucket or container of one endpoint) hold the same object under the same key."""
    if isinstance(driver, MemoryDriver):
        return ("memory", id(driver))  # each instance has its own objects
    endpoint = getattr(driver, "endpoint_url", None) or getattr(driver, "account_url", None)
    return (driver.driver, endpoint, driver.bucket)


def _local_path(backends: Backends, ref: LocalRef | ObjectRef) -> Path | None:
    """The file or folder of a local path, or of a key (or prefix) of a local backend; ``None``
    elsewhere. Two local backends can share files: one root, or a root inside another."""
    if isinstance(ref, LocalRef):
        return ref.path
    driver = backends.driver(ref.backend)
    if not isinstance(driver, LocalDriver):
        return None
    key = ref.key.strip("/")
    return driver.root.joinpath(*components(key)) if key else driver.root


def _refuse_same(backends: Backends, src: Ref, dst: Ref) -> None:
    """``UsageError`` when *src* and the (resolved) destination *dst* are one object or file:
    writing it then removing the source would lose it."""
    if isinstance(src, StdioRef) or isinstance(dst, StdioRef):
        return
    here, there = _local_path(backends, src), _local_path(backends, dst)
    if here is not None and there is not None:
        try:
            same = os.path.samefile(here, there)
        except OSError:  # one of them does not exist
            same = False
    else:
        same = (isinstance(src, ObjectRef) and isinstance(dst, ObjectRef) and src.key == dst.key
                and (src.backend == dst.backend or _storage(backends.driver(src.backend))
                     == _storage(backends.driver(dst.backend))))
    if same:
        what = "file" if isinstance(src, LocalRef) and isinstance(dst, LocalRef) else "object"
        raise UsageError(f"{src} and {dst} are the same {what}")


def _refuse_overlap(backends: Backends, src: LocalRef | ObjectRef, dst: LocalRef | ObjectRef
                    ) -> None:
    """``UsageError`` when one of two folders or prefixes holds the other: a sync would copy
    into its own source, and ``--delete`` would remove source objects."""
    here, there = _local_path(backends, src), _local_path(backends, dst)
    if here is not None and there is not None:
        a, b = Path(os.path.realpath(here)), Path(os.path.realpath(there))
        overlap = a.is_relative_to(b) or b.is_relative_to(a)
    elif isinstance(src, ObjectRef) and isinstance(dst, ObjectRef):
        a_key, b_key = folder(src.key), folder(dst.key)
        overlap = ((a_key.startswith(b_key) or b_key.startswith(a_key))
                   and _storage(backends.driver(src.backend))
                   == _storage(backends.driver(dst.backend)))
    else:
        overlap = False
    if overlap:
        raise UsageError(f"{src} and {dst} overlap: sync needs two separate folders or prefixes")


# ---------------------------------------------------------------------- cp, mv


async def copy(backends: Backends, src: Ref, dst: Ref, meter: Meter, *,
               content_type: str | None = None, metadata: dict[str, str] | None = None,
               if_absent: bool = False) -> Ref:
    """Copy one object or file; return where it went. Within one backend the copy is the
    server's (no bytes pass through here). *content_type*, *metadata* and *if_absent* (create
    only) apply to uploads of a file or stdin (``put``)."""
    dst = _target(src, dst)
    _refuse_same(backends, src, dst)
    if isinstance(src, ObjectRef) and isinstance(dst, ObjectRef) and src.backend == dst.backend:
        await (await backends.get(src.backend)).copy(src.key, dst.key)
        return dst
    source = await _source(backends, src)
    with meter.transfer(f"{src} -> {dst}", source.size) as advance:
        if isinstance(dst, StdioRef):
            await _write_stdout(_counted(source.chunks(), advance))
        elif isinstance(dst, LocalRef):
            await _write_file(dst.path, _counted(source.chunks(), advance))
        else:
            driver = await backends.get(dst.backend)
            options: dict[str, Any] = {}
            if metadata or source.metadata:
                options["metadata"] = metadata or source.metadata
            if source.cache_control:
                options["cache_control"] = source.cache_control
            if if_absent:
                options["if_none_match"] = "*"
            content_type = content_type or source.content_type
            if isinstance(src, LocalRef):
                with await asyncio.to_thread(_MeteredFile, src.path, advance) as f:
                    await driver.upload(dst.key, f, content_type, **options)
            else:
                await driver.upload(dst.key, _counted(source.chunks(), advance), content_type,
                                    **options)
    return dst


async def move(backends: Backends, src: Ref, dst: Ref, meter: Meter) -> Ref:
    """Copy, then remove the source (within one backend: the driver's move)."""
    if isinstance(src, StdioRef):
        raise UsageError("mv cannot move from stdin (use cp or put)")
    if isinstance(src, ObjectRef) and isinstance(dst, ObjectRef) and src.backend == dst.backend:
        target = _target(src, dst)
        assert isinstance(target, ObjectRef)
        _refuse_same(backends, src, target)
        await (await backends.get(src.backend)).move(src.key, target.key)
        return target
    done = await copy(backends, src, dst, meter)
    if isinstance(src, LocalRef):
        await asyncio.to_thread(os.unlink, src.path)
    else:
        await (await backends.get(src.backend)).delete(src.key)
    return done


# ---------------------------------------------------------------------- sync


@dataclass(frozen=True)
class _Entry:
    size: int
    etag: str | None  # None: a local file, hashed only when a size matches


@dataclass
class SyncResult:
    copied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "deleted": self.deleted, "unchanged": self.unchanged,
                "bytes": self.bytes, "failed": self.failed, "dry_run": self.dry_run}


def _walk(root: Path, failed: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """Every regular file under *root* as (relative key, path), unfinished writes left out.
    A folder that cannot be read goes into *failed* (``"sub/dir/"``: the reason): its files
    are unknown, not absent."""
    def unreadable(error: OSError) -> None:
        where = Path(error.filename or root).relative_to(root).as_posix()
        failed[folder("" if where == "." else where)] = error.strerror or str(error)

    for top, dirs, files in os.walk(root, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            path = Path(top, name)
            if _PART in name or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


async def _listing(backends: Backends, ref: LocalRef | ObjectRef, failed: dict[str, str], *,
                   must_exist: bool) -> dict[str, _Entry]:
    """What *ref* holds by relative key; what could not be listed goes into *failed*."""
    if isinstance(ref, LocalRef):
        if not ref.path.is_dir():
            if must_exist or ref.path.exists():
                raise UsageError(f"{ref.path}: not a folder")
            return {}

        def scan() -> dict[str, _Entry]:
            return {rel: _Entry(path.stat().st_size, None)
                    for rel, path in _walk(ref.path, failed)}
        return await asyncio.to_thread(scan)
    driver = await backends.get(ref.backend)
    prefix = folder(ref.key)
    return {info.path[len(prefix):]: _Entry(info.size, info.etag)
            async for info in driver.list(prefix)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _child(ref: LocalRef | ObjectRef, rel: str) -> LocalRef | ObjectRef:
    if isinstance(ref, LocalRef):
        return LocalRef(ref.path.joinpath(*rel.split("/")))
    return ObjectRef(ref.backend, folder(ref.key) + rel)


async def _etag(ref: LocalRef | ObjectRef, rel: str, entry: _Entry) -> str:
    if entry.etag is not None:
        return entry.etag
    child = _child(ref, rel)
    assert isinstance(child, LocalRef)
    return await asyncio.to_thread(_sha256, child.path)


async def _run_all(items: list[Any], concurrency: int, work: Callable[[Any], Any]) -> None:
    """Run ``work(item)`` for every item, *concurrency* at a time; the first error raises.

    Cancelled (Ctrl-C), it takes no further item and returns only once every running ``work``
    has ended: an upload whose commit had begun finishes it (and consumes the cancellation,
    see ``await_to_end``), so the drivers are closed only after every commit."""
    pending = iter(items)
    parent = asyncio.current_task()

    async def worker() -> None:
        for item in pending:
            if parent is not None and parent.cancelling():
                return
            await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(items))):
                group.create_task(worker())
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None


async def sync(backends: Backends, src: LocalRef | ObjectRef, dst: LocalRef | ObjectRef,
               meter: Meter, *, delete: bool = False, dry_run: bool = False,
               concurrency: int = 4, report: Callable[[str, str], None] = lambda _a, _b: None,
               ) -> SyncResult:
    """Make *dst* hold what *src* holds: copy what is missing or differs by size or etag
    (content type, metadata and cache control kept), and with *delete* remove what *src*
    lacks. Each copy is complete or absent, so an interrupted sync can simply be run again.
    Any failure, a local folder that cannot be read included, prevents every deletion."""
    _refuse_overlap(backends, src, dst)
    result = SyncResult(dry_run=dry_run)
    listings = []
    for ref, must_exist in ((src, True), (dst, False)):
        unread: dict[str, str] = {}
        listings.append(await _listing(backends, ref, unread, must_exist=must_exist))
        for rel, reason in unread.items():
            result.failed[rel] = reason
            report("failed", f"{_child(ref, rel)}: {reason}")
    source, target = listings

    candidates = sorted(source)
    to_copy: list[str] = []

    async def compare(rel: str) -> None:
        there = target.get(rel)
        here = source[rel]
        if there is not None and there.size == here.size and \
                await _etag(src, rel, here) == await _etag(dst, rel, there):
            result.unchanged += 1
        else:
            to_copy.append(rel)

    await _run_all(candidates, concurrency, compare)
    to_copy.sort()
    to_delete = sorted(set(target) - set(source)) if delete else []

    with meter.sync(len(to_copy), sum(source[rel].size for rel in to_copy)) as progress:
        async def transfer(rel: str) -> None:
            src_ref, dst_ref = _child(src, rel), _child(dst, rel)
            seen = 0

            def advance(size: int) -> None:
                nonlocal seen
                seen += size
                progress.advance(size)

            if not dry_run:
                try:
                    await copy(backends, src_ref, dst_ref, Forward(advance))
                except Exception as exc:  # one failed object does not stop the others
                    result.failed[rel] = _message(exc)
                    report("failed", f"{src_ref} -> {dst_ref}: {result.failed[rel]}")
                    return
            result.copied.append(rel)
            result.bytes += source[rel].size
            progress.object_done(max(source[rel].size - seen, 0))
            report("copy", f"{src_ref} -> {dst_ref}")

        await _run_all(to_copy, concurrency, transfer)
    result.copied.sort()

    if to_delete and not result.failed:
        if not dry_run:
            await _delete_all(backends, dst, to_delete)
        result.deleted = to_delete
        for rel in to_delete:
            report("delete", str(_child(dst, rel)))
    return result


async def _delete_all(backends: Backends, ref: LocalRef | ObjectRef, rels: list[str]) -> None:
    if isinstance(ref, ObjectRef):
        await (await backends.get(ref.backend)).delete_many([folder(ref.key) + r for r in rels])
        return
    for rel in rels:
        child = _child(ref, rel)
        assert isinstance(child, LocalRef)
        await asyncio.to_thread(child.path.unlink)


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())
