"""BaseDriver: the public storage API, written once on top of a few driver primitives.

A driver implements only primitives (write a checked payload, read a range as chunks, head,
delete, list in key order, and optionally copy, move, batch delete, sign a URL, ping, close).
Everything a caller sees -- key validation, option parsing, upload policy, checksums, error
translation, events, paging, copy/move semantics -- lives here, so every driver behaves the same.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar
from urllib.parse import quote

from lexigram.contracts.core.health import HealthCheckResult, HealthStatus
from lexigram.contracts.infra.storage import StorageError, Uploadable, UploadOptions

from lexigram_storage.capabilities import Capability
from lexigram_storage.errors import (
    PreconditionFailedError,
    StorageFileNotFoundError,
    StoragePartialDeleteError,
    StoragePermissionError,
    StorageUnavailableError,
    unsupported,
)
from lexigram_storage.events import NO_EVENTS, StorageEvents
from lexigram_storage.keys import validate_key, validate_prefix
from lexigram_storage.models import DirListing, ObjectInfo
from lexigram_storage.payload import (
    Payload,
    UploadPolicy,
    UploadRequest,
    check_content_type,
    guess_content_type,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from lexigram_storage.config import NamedStorageConfig

__all__ = ["MAX_PRESIGN_EXPIRY", "MIN_PRESIGN_EXPIRY", "BaseDriver", "DriverContext",
           "await_to_end", "create_only_conflict"]

MIN_PRESIGN_EXPIRY = timedelta(seconds=1)
MAX_PRESIGN_EXPIRY = timedelta(days=7)
_BATCH = 1000
_T = TypeVar("_T")


@dataclass(frozen=True)
class DriverContext:
    """What the provider passes to every driver factory besides the backend's own settings."""

    policy: UploadPolicy | None = None
    enable_encryption: bool = False


async def await_to_end(work: Awaitable[_T], *, consume: bool = True) -> _T:
    """Await *work* to its end even if the calling task is cancelled meanwhile.

    For the commit step of a write, after which a cancellation may no longer interrupt the call
    (the cancellation guarantee). *work* runs as its own task; cancellations of the caller while
    it runs are ignored and consumed (``uncancel``), so the caller gets *work*'s result (or its
    exception) as if no cancellation had come: it then returns normally, and ``asyncio.timeout``
    simply exits without ``TimeoutError`` because the work finished. Only commits and batch
    deletes use it (one task per network request, file commit or batch is noise), never the
    per-call hot path.

    With *consume* ``False`` the cancellation is kept instead: once *work* has ended,
    ``CancelledError`` is raised in place of its result (its exception, if it failed, still
    propagates), for a call made of several steps that stops after the one in progress."""
    future = asyncio.ensure_future(work)
    caller = asyncio.current_task()
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():  # the work itself was cancelled, not (only) the caller
                raise
            cancelled = True
            if consume and caller is not None:
                caller.uncancel()
            continue
        if cancelled and not consume:
            raise asyncio.CancelledError
        return result


class BaseDriver:
    """Common implementation of ``BlobStoreProtocol`` and ``StorageDriverProtocol``.

    Args:
        name: the backend name used in errors, logs, events and DI (defaults to the driver name).
        policy: upload policy (size limit, allowed MIME types) enforced while bytes pass.
        events: where domain events go; the provider sets this, standalone drivers send none.
    """

    driver: ClassVar[str] = "base"
    #: upload keyword options a driver accepts beyond the common ones
    extra_upload_options: ClassVar[frozenset[str]] = frozenset()
    #: what the driver can do beyond the common API (the conformance suite checks each one);
    #: a class default an instance may narrow (a local driver without a signing key)
    capabilities: frozenset[Capability] = frozenset(Capability)

    def __init__(
        self,
        *,
        name: str | None = None,
        policy: UploadPolicy | None = None,
        events: StorageEvents | None = None,
    ) -> None:
        self.name = name or self.driver
        self.policy = policy
        self.events = events or NO_EVENTS
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} bucket={self.bucket!r}>"

    @classmethod
    def from_named(cls, entry: NamedStorageConfig, context: DriverContext) -> Self:
        """Build the driver for a named backend (the registry's factory for built-ins)."""
        return cls.from_config(entry.driver_config(), name=entry.name, policy=context.policy)

    @classmethod
    def from_config(cls, block: BaseModel | Mapping[str, Any], *, name: str | None = None,
                    policy: UploadPolicy | None = None, events: StorageEvents | None = None,
                    **options: Any) -> Self:
        """Build the driver from its settings block (``s3:``, ``local:``...). The constructor
        takes the block's fields as keyword arguments and validates them with the same model
        (``config.settings_from``), so code and configuration pass the same checks."""
        return cls(**dict(block), name=name, policy=policy, events=events, **options)

    # ------------------------------------------------------------------ primitives

    @property
    def bucket(self) -> str:
        """The bucket, container, local root or memory store name (used in events)."""
        raise NotImplementedError

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        """Store the payload under *key*. Consume it completely before committing anything;
        honour ``payload.request.create_only`` atomically (``PreconditionFailedError``)."""
        raise NotImplementedError

    def _read(self, key: str, offset: int, length: int | None, chunk_size: int
              ) -> AsyncIterator[bytes]:
        """Yield the bytes ``[offset, offset+length)`` in chunks of at most *chunk_size*;
        raise ``StorageFileNotFoundError`` when there is no object."""
        raise NotImplementedError

    async def _read_all(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self._read(key, 0, None, 1024 * 1024)])

    async def _head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    async def _delete(self, key: str) -> bool:
        """Delete *key*; return whether an object was there."""
        raise NotImplementedError

    def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        """Yield the objects whose key starts with *prefix* and sorts after *start_after*,
        in ascending key order, without materialising the whole listing."""
        raise NotImplementedError

    async def _list_keys(self, prefix: str, start_after: str | None) -> AsyncIterator[str]:
        """The keys ``_list`` would yield, in the same order (for ``clear``); a driver whose
        listing needs a request per object for its details lists the keys alone here."""
        items = self._list(prefix, start_after)
        try:
            async for info in items:
                yield info.path
        finally:
            await _aclose(items)

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy an object with its content type, metadata and cache control (default:
        stream it through ``_write``)."""
        head = await self._head(src)
        if head is None:
            raise StorageFileNotFoundError(backend=self.name, key=src)
        request = UploadRequest(
            content_type=head.content_type,
            metadata=dict(head.metadata or {}),
            cache_control=head.cache_control,
        )
        payload = Payload(self._read(src, 0, None, 1024 * 1024), request,
                          backend=self.name, key=dst)
        return await self._write(dst, payload)

    async def _move(self, src: str, dst: str) -> ObjectInfo:
        """Copy, then delete the source; once the copy is stored the delete runs to its end
        even if the call is cancelled (a move never ends with the object under both keys)."""
        info = await self._copy(src, dst)
        await await_to_end(self._delete(src))
        return info

    async def _delete_many(self, keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Delete *keys*; return the keys now absent and a map of key -> failure reason."""
        deleted: list[str] = []
        failed: dict[str, str] = {}
        for key in keys:
            try:
                await self._delete(key)
            except Exception as exc:
                failed[key] = str(self._translate(exc, key).message)
            else:
                deleted.append(key)
        return deleted, failed

    async def _list_dir(self, prefix: str, delimiter: str) -> DirListing:
        files: list[ObjectInfo] = []
        prefixes: list[str] = []
        async for info in self._list(prefix, None):
            rest = info.path[len(prefix):]
            cut = rest.find(delimiter)
            if cut < 0:
                files.append(info)
            else:
                # keys come in order, so equal common prefixes are adjacent and sorted
                common = prefix + rest[: cut + len(delimiter)]
                if not prefixes or prefixes[-1] != common:
                    prefixes.append(common)
        return DirListing(files=files, prefixes=prefixes)

    def _url(self, key: str) -> str:
        return f"{self.driver}://{quote(self.bucket, safe='')}/{quote(key)}"

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        raise unsupported(self.name, "get_presigned_url")

    async def _ping(self) -> dict[str, Any]:
        """Prove the backend works; return details for the health report."""
        return {}

    async def _close(self) -> None:
        return None

    def _map_error(self, exc: BaseException, key: str | None) -> StorageError | None:
        """Translate a driver/SDK exception; ``None`` falls back to the generic mapping."""
        return None

    # ------------------------------------------------------------------ helpers

    def _translate(self, exc: BaseException, key: str | None) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        mapped = self._map_error(exc, key)
        if mapped is not None:
            return mapped
        if isinstance(exc, FileNotFoundError):
            return StorageFileNotFoundError(backend=self.name, key=key, cause=exc)
        if isinstance(exc, PermissionError):
            return StoragePermissionError(str(exc), backend=self.name, key=key, cause=exc)
        if isinstance(exc, TimeoutError | ConnectionError):
            return StorageUnavailableError(f"{type(exc).__name__}: {exc}", backend=self.name,
                                           key=key, cause=exc)
        error = StorageError(
            f"{self.name}: {type(exc).__name__}: {exc}"
            + (f" (key {key!r})" if key is not None else ""),
            details={"backend": self.name, "key": key},
            cause=exc,
        )
        error.__cause__ = exc
        return error

    def _errors(self, key: str | None) -> _ErrorGuard:
        """``with self._errors(key):`` lets ``StorageError`` through and turns any other
        exception into the driver's ``StorageError`` (``_translate``), chained to it."""
        return _ErrorGuard(self, key)

    def _validate_range(self, chunk_size: int, offset: int, length: int | None) -> None:
        if chunk_size <= 0:
            raise ValueError(f"{self.name}: chunk_size must be positive, got {chunk_size}")
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"{self.name}: offset and length must not be negative")

    # ------------------------------------------------------------------ lifecycle

    async def prepare(self) -> None:
        """Make the backend ready (create roots, open clients). Called at application boot."""
        return None

    async def close(self) -> None:
        """Release the driver's resources. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> BaseDriver:
        await self.prepare()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def flush_events(self, timeout: float | None = None) -> None:
        """Wait until the events of finished calls reached the bus (and its handlers)."""
        await self.events.flush(timeout)

    # ------------------------------------------------------------------ writing

    async def upload(
        self,
        path: str,
        data: Uploadable,
        content_type: UploadOptions | str | None = None,
        **options: Any,
    ) -> ObjectInfo:
        """Store *data* under *path* and return its info.

        Cancellation: before the driver's commit step a cancellation aborts the upload (nothing
        stored, the previous object intact, ``CancelledError``); once the commit began it runs
        to its end, the event is queued and the info returned (the cancellation is consumed).

        *data* is bytes, str (UTF-8), a binary file object (read in chunks), or an (async)
        iterator of bytes. *content_type* is a MIME type or an ``UploadOptions``; keyword
        options: ``metadata``, ``cache_control``, ``public``, ``checksum`` (``"sha256:<hex>"``,
        ``"md5:<hex>"``...), ``if_none_match="*"`` (create-only). The content type defaults to
        a guess from the key's extension, else ``application/octet-stream``.
        """
        key = validate_key(path, self.name)
        if not options and (content_type is None or type(content_type) is str):  # the common case
            request = UploadRequest(
                check_content_type(content_type, backend=self.name, key=key) if content_type
                else guess_content_type(key))
        else:
            request = UploadRequest.build(key, content_type, options, backend=self.name,
                                          extra_allowed=self.extra_upload_options)
        payload = Payload(data, request, backend=self.name, key=key, policy=self.policy)
        with self._errors(key):
            info = await self._write(key, payload)
        if self.events.active:
            await self.events.uploaded(self.name, self.bucket, info)
        return info

    async def copy(self, src: str, dst: str) -> ObjectInfo:
        """Copy *src* to *dst* (overwriting), keeping content type, metadata and cache control.
        Copying a key onto itself changes nothing."""
        src_key = validate_key(src, self.name)
        dst_key = validate_key(dst, self.name)
        with self._errors(src_key):
            if src_key == dst_key:
                return await self._info(src_key)
            info = await self._copy(src_key, dst_key)
        if self.events.active:
            await self.events.uploaded(self.name, self.bucket, info)
        return info

    async def move(self, src: str, dst: str) -> ObjectInfo:
        """Move *src* to *dst* (overwriting). Moving a key onto itself changes nothing."""
        src_key = validate_key(src, self.name)
        dst_key = validate_key(dst, self.name)
        with self._errors(src_key):
            if src_key == dst_key:
                return await self._info(src_key)
            info = await self._move(src_key, dst_key)
        if self.events.active:
            await self.events.uploaded(self.name, self.bucket, info)
            await self.events.deleted(self.name, self.bucket, src_key)
        return info

    async def copy_batch(self, operations: Iterable[tuple[str, str]]) -> list[str]:
        """Copy each ``(src, dst)`` pair in order; return the destination keys. All keys are
        validated before anything is copied; the first failure stops the batch and raises."""
        pairs = [(validate_key(s, self.name), validate_key(d, self.name)) for s, d in operations]
        return [(await self.copy(s, d)).path for s, d in pairs]

    # ------------------------------------------------------------------ reading

    async def download(self, path: str) -> bytes:
        """The whole content of *path* in memory (use ``stream()`` for large objects)."""
        key = validate_key(path, self.name)
        with self._errors(key):
            data = await self._read_all(key)
        if self.events.active:
            await self.events.downloaded(self.name, self.bucket, key, len(data))
        return data

    async def stream(
        self,
        path: str,
        chunk_size: int = 8192,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield the content of *path* (or ``length`` bytes from ``offset``) in chunks of at
        most *chunk_size* bytes. A missing object raises ``StorageFileNotFoundError`` on the
        first iteration. ``FileDownloadedEvent`` is published once the stream is consumed."""
        key = validate_key(path, self.name)
        self._validate_range(chunk_size, offset, length)
        size = 0
        chunks = self._read(key, offset, length, chunk_size)
        try:
            with self._errors(key):
                async for chunk in chunks:
                    size += len(chunk)
                    yield chunk
        finally:
            await _aclose(chunks)
        if self.events.active:
            await self.events.downloaded(self.name, self.bucket, key, size)

    async def exists(self, path: str) -> bool:
        """True when an object is stored under *path* (never for a "directory" prefix)."""
        key = validate_key(path, self.name)
        with self._errors(key):
            return await self._head(key) is not None

    async def info(self, path: str) -> ObjectInfo:
        """Size, content type, etag, metadata and cache control of the object at *path*."""
        return await self._info(validate_key(path, self.name))

    async def _info(self, key: str) -> ObjectInfo:
        with self._errors(key):
            info = await self._head(key)
        if info is None:
            raise StorageFileNotFoundError(backend=self.name, key=key)
        return info

    async def list(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[ObjectInfo]:
        """Yield the objects whose key starts with *prefix* (a plain string prefix, not a
        directory), in ascending key order, after *start_after*, at most *limit* of them.
        The listing is streamed page by page, never loaded whole."""
        validate_prefix(prefix, self.name)
        if limit is not None and limit < 0:
            raise ValueError(f"{self.name}: limit must not be negative")
        if limit == 0:
            return
        count = 0
        items = self._list(prefix, start_after)
        try:
            with self._errors(prefix):
                async for info in items:
                    yield info
                    count += 1
                    if limit is not None and count >= limit:
                        return
        finally:
            await _aclose(items)

    async def list_dir(self, prefix: str = "", delimiter: str = "/") -> DirListing:
        """The objects directly under *prefix* and the common prefixes one level down
        (``"photos/"`` -> files ``photos/a.png`` and prefixes ``photos/2024/``)."""
        validate_prefix(prefix, self.name)
        if not delimiter:
            raise ValueError(f"{self.name}: delimiter must not be empty")
        with self._errors(prefix):
            return await self._list_dir(prefix, delimiter)

    # ------------------------------------------------------------------ deleting

    async def delete(self, path: str, missing_ok: bool = False) -> None:
        """Delete *path*; a missing object raises ``StorageFileNotFoundError`` unless
        *missing_ok*."""
        key = validate_key(path, self.name)
        with self._errors(key):
            existed = await self._delete(key)
        if not existed:
            if missing_ok:
                return
            raise StorageFileNotFoundError(backend=self.name, key=key)
        if self.events.active:
            await self.events.deleted(self.name, self.bucket, key)

    async def delete_many(self, paths: Iterable[str]) -> builtins.list[str]:
        """Delete every key (missing keys count as deleted); return the keys now absent.

        All keys are validated first. When some keys fail, the others are still deleted and
        ``StoragePartialDeleteError`` reports ``failed`` (key -> reason) and ``deleted``.
        Keys go in batches of 1000; a cancellation lets the batch in progress end and queue its
        events, then ``CancelledError`` is raised and no further batch starts."""
        keys = list(dict.fromkeys(validate_key(p, self.name) for p in paths))
        deleted: builtins.list[str] = []
        failed: dict[str, str] = {}
        for start in range(0, len(keys), _BATCH):
            # a cancellation lets the batch in progress end (its events queued), then stops
            done, errors = await await_to_end(self._delete_batch(keys[start:start + _BATCH]),
                                              consume=False)
            deleted.extend(done)
            failed.update(errors)
        if failed:
            raise StoragePartialDeleteError(failed, deleted, backend=self.name)
        return deleted

    async def _delete_batch(self, batch: Sequence[str]
                            ) -> tuple[builtins.list[str], dict[str, str]]:
        """Delete *batch* (``_delete_many``) and queue an event per key it deleted."""
        with self._errors(batch[0]):
            done, errors = await self._delete_many(batch)
        if self.events.active:
            for key in done:
                await self.events.deleted(self.name, self.bucket, key)
        return done, errors

    async def clear(self, prefix: str = "") -> int:
        """Delete every object whose key starts with *prefix*; return how many.

        Lists keys only (``_list_keys``), 1000 at a time, each batch deleted with
        ``delete_many``; the next batch is listed after the last deleted key. Cancelled, it
        stops after the batch in progress, as ``delete_many`` does."""
        validate_prefix(prefix, self.name)
        total = 0
        after: str | None = None
        while True:
            batch: builtins.list[str] = []
            keys = self._list_keys(prefix, after)
            try:
                with self._errors(prefix):
                    async for key in keys:
                        batch.append(key)
                        if len(batch) >= _BATCH:
                            break
            finally:
                await _aclose(keys)
            if batch:
                total += len(await self.delete_many(batch))
            if len(batch) < _BATCH:
                return total
            after = batch[-1]

    # ------------------------------------------------------------------ URLs and health

    async def get_url(self, path: str) -> str:
        """The public URL of *path* (it works only where the object is publicly readable)."""
        return self._url(validate_key(path, self.name))

    async def get_presigned_url(
        self,
        path: str,
        expires_in: timedelta | int | float = timedelta(hours=1),
        method: str = "GET",
        **options: Any,
    ) -> str:
        """A URL granting *method* (GET or PUT) on *path* until *expires_in* from now (at most
        7 days)."""
        key = validate_key(path, self.name)
        if not isinstance(expires_in, timedelta):
            expires_in = timedelta(seconds=expires_in)
        if expires_in < MIN_PRESIGN_EXPIRY or expires_in > MAX_PRESIGN_EXPIRY:
            raise ValueError(f"{self.name}: expires_in must be between 1 second and 7 days")
        verb = method.upper()
        if verb not in ("GET", "PUT"):
            raise ValueError(f"{self.name}: method must be GET or PUT, got {method!r}")
        with self._errors(key):
            return await self._presign(key, expires_in, verb, options)

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult:
        """Probe the backend within *timeout* seconds. Never raises."""
        start = time.perf_counter()
        details: dict[str, Any] = {"driver": self.driver, "bucket": self.bucket}
        status, error = HealthStatus.HEALTHY, None
        try:
            details.update(await asyncio.wait_for(self._ping(), timeout))
        except TimeoutError:
            status, error = HealthStatus.UNHEALTHY, f"no answer within {timeout}s"
        except Exception as exc:
            status, error = HealthStatus.UNHEALTHY, self._translate(exc, None).message
        elapsed = (time.perf_counter() - start) * 1000
        details["latency_ms"] = round(elapsed, 3)
        return HealthCheckResult(
            component=f"storage.{self.name}",
            status=status,
            message=None if error else f"{self.driver} backend reachable",
            error=error,
            duration_ms=elapsed,
            details=details,
        )


class _ErrorGuard:
    """The context manager of ``BaseDriver._errors`` (a class: cheaper than a generator-based
    one on the per-call path)."""

    __slots__ = ("driver", "key")

    def __init__(self, driver: BaseDriver, key: str | None) -> None:
        self.driver = driver
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, StorageError):
            raise self.driver._translate(exc, self.key) from exc


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def create_only_conflict(backend: str, key: str) -> PreconditionFailedError:
    """The error for ``if_none_match="*"`` when *key* already exists."""
    return PreconditionFailedError(
        "object already exists and if_none_match='*' was given", backend=backend, key=key,
    )
