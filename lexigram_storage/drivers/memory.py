"""In-memory driver: isolated per instance, safe under concurrent use, for tests and caches."""

from __future__ import annotations

import io
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from lexigram_storage.capabilities import Capability
from lexigram_storage.config import StorageMemoryConfig, settings_from
from lexigram_storage.drivers.base import BaseDriver, create_only_conflict
from lexigram_storage.errors import StorageFileNotFoundError, unsupported
from lexigram_storage.events import StorageEvents
from lexigram_storage.models import ObjectInfo
from lexigram_storage.payload import Payload, UploadPolicy

__all__ = ["MemoryDriver"]

_now = datetime.now


class _Object(NamedTuple):
    """One stored object: immutable, replaced whole on every write."""

    data: bytes
    content_type: str
    metadata: dict[str, str]
    cache_control: str | None
    etag: str
    last_modified: datetime
    created_at: datetime

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.data), self.content_type, self.last_modified,
                          self.created_at, self.etag, dict(self.metadata), self.cache_control)


class MemoryDriver(BaseDriver):
    """Objects live in a dict of immutable records owned by this instance.

    Every mutation replaces a whole record between two awaits, so concurrent writers to one
    key leave exactly one complete object and a listing never sees a half-written one.
    Listings walk a sorted snapshot of the keys, so writes during a listing are safe.
    """

    driver = "memory"
    capabilities = BaseDriver.capabilities - {Capability.PRESIGN_GET, Capability.PRESIGN_PUT}

    def __init__(
        self,
        bucket: str | None = None,
        *,
        name: str | None = None,
        policy: UploadPolicy | None = None,
        events: StorageEvents | None = None,
    ) -> None:
        super().__init__(name=name, policy=policy, events=events)
        self.settings = settings_from(StorageMemoryConfig, {"bucket": bucket}, backend=self.name)
        self._bucket = self.settings.bucket or self.name
        self._objects: dict[str, _Object] = {}
        self._sorted: list[str] | None = None

    @property
    def bucket(self) -> str:
        return self._bucket

    def _store(self, key: str, obj: _Object) -> None:
        if key not in self._objects:
            self._sorted = None
        self._objects[key] = obj

    async def _write(self, key: str, payload: Payload) -> ObjectInfo:
        create_only = payload.request.create_only
        if create_only and key in self._objects:
            raise create_only_conflict(self.name, key)
        data = payload.take_bytes()
        if data is None:
            data = await _collect(payload)
        if create_only and key in self._objects:  # someone else won while we were reading
            raise create_only_conflict(self.name, key)
        now = _now(UTC)
        previous = self._objects.get(key)
        request = payload.request
        obj = _Object(data, request.content_type, request.metadata, request.cache_control,
                      payload.etag, now, now if previous is None else previous.created_at)
        self._store(key, obj)
        return obj.info(key)

    def _get(self, key: str) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise StorageFileNotFoundError(backend=self.name, key=key)
        return obj

    async def _read(self, key: str, offset: int, length: int | None, chunk_size: int
                    ) -> AsyncIterator[bytes]:
        data = self._get(key).data
        end = len(data) if length is None else min(len(data), offset + length)
        view = memoryview(data)
        for start in range(offset, end, chunk_size):
            yield bytes(view[start:min(start + chunk_size, end)])

    async def _read_all(self, key: str) -> bytes:
        return self._get(key).data

    async def _head(self, key: str) -> ObjectInfo | None:
        obj = self._objects.get(key)
        return None if obj is None else obj.info(key)

    async def _delete(self, key: str) -> bool:
        if self._objects.pop(key, None) is None:
            return False
        self._sorted = None
        return True

    async def _copy(self, src: str, dst: str) -> ObjectInfo:
        obj = self._get(src)
        now = datetime.now(UTC)
        previous = self._objects.get(dst)
        copy = _Object(obj.data, obj.content_type, dict(obj.metadata), obj.cache_control,
                       obj.etag, now, previous.created_at if previous else now)
        self._store(dst, copy)
        return copy.info(dst)

    async def _move(self, src: str, dst: str) -> ObjectInfo:
        info = await self._copy(src, dst)
        await self._delete(src)
        return info

    async def _list(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        if self._sorted is None:
            self._sorted = sorted(self._objects)
        keys = self._sorted  # a snapshot: mutations build a new list
        lo = bisect_left(keys, prefix)
        if start_after is not None and start_after >= prefix:
            lo = max(lo, bisect_right(keys, start_after))
        for i in range(lo, len(keys)):
            key = keys[i]
            if not key.startswith(prefix):
                return
            obj = self._objects.get(key)
            if obj is not None:  # deleted since the snapshot
                yield obj.info(key)

    async def _presign(self, key: str, expires_in: timedelta, method: str,
                       options: dict[str, Any]) -> str:
        raise unsupported(
            self.name, "get_presigned_url",
            hint="The memory driver has no network endpoint; use the local, s3, r2, gcs or "
                 "azure driver for presigned URLs.",
        )

    async def _ping(self) -> dict[str, Any]:
        return {"objects": len(self._objects)}


async def _collect(payload: Payload) -> bytes:
    """Read the payload into one bytes object with at most ~1.125x its size in memory."""
    first: bytes | None = None
    buffer: io.BytesIO | None = None
    async for chunk in payload:
        if first is None:
            first = chunk
        else:
            if buffer is None:
                buffer = io.BytesIO()
                buffer.write(first)
            buffer.write(chunk)
    if buffer is not None:
        return buffer.getvalue()
    return first or b""
