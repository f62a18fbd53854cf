"""The upload engine of the network drivers: a ``Payload`` goes out as one request or in parts.

A driver describes its backend's limits (``PartRules``) and implements two things for one
upload: ``put_whole`` (a single request) and a ``PartSink`` (start a multipart upload, send a
part, commit the parts, abort). ``upload()`` does the rest, the same way for every backend:

* In-memory payloads below the threshold, and streams that end below it, are one request.
  Streams of unknown size are buffered up to the threshold to decide.
* Larger payloads are cut into parts (a chunk may end one part and start the next). The part
  size starts at the configured size, grows to keep a known size under the part-count limit
  and, for an unknown size, doubles every 900 parts; at most ``max_concurrency`` parts are in
  flight (peak memory about ``max_concurrency x part size``).
* A seekable file is hashed in a worker thread while its first parts are read, so the sink
  usually starts knowing the content's SHA-256; otherwise ``record_digest`` stores it after the
  commit (S3: a guarded self-copy; GCS: a metadata patch). A backend whose commit carries the
  metadata (Azure) turns that pre-hash off (``PartRules.prehash``): ``complete`` runs after the
  payload ended, when ``payload.etag`` is known, and ``record_digest`` has nothing left to do.
* The commit (``complete``, then ``record_digest``) runs to its end even if the caller is
  cancelled meanwhile; any failure or cancellation before it aborts the multipart upload: parts
  in flight are cancelled and ``abort`` runs, bounded by ``PartRules.abort_timeout`` when the
  caller is being cancelled. A ``start`` cancelled in flight is awaited and aborted too, so no
  orphaned upload is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from lexigram.contracts.infra.storage import StorageError

from lexigram_storage.drivers.base import await_to_end
from lexigram_storage.payload import Payload

__all__ = ["PartRules", "PartSink", "abort_upload", "start_upload", "upload"]

R = TypeVar("R")


@dataclass(frozen=True)
class PartRules:
    """How a backend takes an upload in parts."""

    #: uploads of at least this many bytes go in parts
    threshold: int
    #: the configured part size (the smallest a part is, except the last)
    part_size: int
    #: parts in flight at once
    max_concurrency: int
    #: the backend's largest part and largest number of parts
    max_part_size: int
    max_parts: int
    #: part sizes are rounded up to a multiple of this (GCS: 256 KiB)
    align: int = 1
    #: seconds an abort may take while the caller is being cancelled
    abort_timeout: float = 30.0
    #: hash a seekable file before the upload starts (for backends that set the digest at
    #: ``start``); ``False`` when ``complete`` can store it (the pass over the file is saved)
    prehash: bool = True
    #: bytes of a file read per chunk; ``None``: a whole part, so a sink that needs a part in
    #: one buffer gets it without a copy. A sink that sends a part as the pieces it arrived in
    #: (Azure) reads less at a time: fewer large buffers allocated in worker threads, whose
    #: freed memory the C allocator does not always hand back, so a lower peak RSS
    file_read_size: int | None = None

    def size_of(self, number: int, size_hint: int | None) -> int:
        """The size of part *number* (1-based): at least ``part_size``, big enough for a known
        size to fit in ``max_parts`` parts; for an unknown size it doubles every 900 parts
        (from 5 MiB, 10,000 parts then hold more than S3's 5 TiB object limit)."""
        size = self.part_size
        if size_hint is not None:
            size = max(size, math.ceil(size_hint / (self.max_parts - 1)))
        else:
            size <<= min((number - 1) // 900, 10)
        size = -(-size // self.align) * self.align
        return min(size, self.max_part_size)


class PartSink(Protocol[R]):
    """One multipart upload on a backend (S3 multipart, GCS resumable, Azure blocks)."""

    async def start(self, digest: str | None) -> None:
        """Begin the upload; *digest* is the content's hex SHA-256 when known upfront."""

    async def put_part(self, number: int, pieces: list[bytes | memoryview]) -> str:
        """Send part *number* (1-based; the bytes are the concatenation of *pieces*, which the
        sink may clear once it holds its own copy); return the token the commit needs (S3:
        the part's ETag)."""
        ...

    async def complete(self, parts: list[tuple[int, str]], create_only: bool) -> R:
        """Commit the parts in order; ``create_only``: fail if the key exists."""
        ...

    async def abort(self) -> None:
        """Discard the upload and its parts."""

    async def record_digest(self, result: R, digest: str) -> None:
        """Store *digest*, known only after the last part, on the committed object."""


async def upload(payload: Payload, rules: PartRules,
                 put_whole: Callable[[bytes], Awaitable[R]], sink: PartSink[R]) -> R:
    """Send *payload* with ``put_whole`` or in parts through *sink*; return the result of the
    single request or of ``complete``."""
    threshold = rules.threshold
    raw = payload.take_bytes()  # in-memory payloads: checked at once, digest known upfront
    if raw is not None:
        if len(raw) < threshold:
            return await put_whole(raw)
        return await _in_parts(payload, rules, sink, _nothing(), [raw], payload.etag)
    hint = payload.size_hint
    digest = None
    chunks = payload.__aiter__()
    buffered: list[bytes] = []
    total = 0
    try:
        if hint is not None and hint >= threshold:
            # an OS file is read (and hashed) a whole part (or file_read_size) per thread hop
            payload.chunk_size = max(payload.chunk_size,
                                     rules.file_read_size or rules.size_of(1, hint))
            job = payload.prehash_job() if rules.prehash else None
            if job is not None:
                digest, buffered = await _hash_reading_ahead(job, chunks, rules.max_concurrency)
                total = sum(len(chunk) for chunk in buffered)
        if hint is None or hint >= threshold:
            # buffer up to the threshold: a small stream of unknown size is one request
            while total < threshold:
                chunk = await anext(chunks, None)
                if chunk is None:
                    break
                buffered.append(chunk)
                total += len(chunk)
            if total >= threshold:
                return await _in_parts(payload, rules, sink, chunks, buffered, digest)
        else:
            buffered = [chunk async for chunk in chunks]
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
    # the payload is consumed and verified: commit it in one request
    return await put_whole(buffered[0] if len(buffered) == 1 else b"".join(buffered))


async def _hash_reading_ahead(job: Callable[[], str | None], chunks: AsyncIterator[bytes],
                              limit: int) -> tuple[str | None, list[bytes]]:
    """Run the pre-hash of a file (*job*, in a worker thread) while its first parts, at most
    *limit*, are read: they go out as soon as the upload has started."""
    prehash = asyncio.ensure_future(asyncio.to_thread(job))
    ahead: list[bytes] = []
    try:
        while not prehash.done() and len(ahead) < limit:
            chunk = await anext(chunks, None)
            if chunk is None:
                break
            ahead.append(chunk)
        return await prehash, ahead
    except BaseException:
        prehash.cancel()  # the thread ends on its own (it only reads); its result is dropped
        raise


async def _in_parts(payload: Payload, rules: PartRules, sink: PartSink[R],
                    chunks: AsyncIterator[bytes], buffered: list[bytes],
                    digest: str | None) -> R:
    await start_upload(sink, digest, rules)
    hint = payload.size_hint
    tokens: dict[int, str] = {}
    in_flight: set[asyncio.Task[None]] = set()

    async def send(number: int, pieces: list[bytes | memoryview]) -> None:
        tokens[number] = await sink.put_part(number, pieces)

    async def submit(number: int, pieces: list[bytes | memoryview]) -> None:
        while len(in_flight) >= rules.max_concurrency:
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.difference_update(done)
            for task in done:
                task.result()  # re-raise the first part failure
        if number > rules.max_parts:
            raise StorageError(f"{payload.backend}: upload of {payload.key!r} needs more than "
                               f"{rules.max_parts} parts")
        in_flight.add(asyncio.ensure_future(send(number, pieces)))

    number = 1
    part_size = rules.size_of(1, hint)
    pending: list[bytes | memoryview] = []
    pending_size = 0

    async def flush() -> None:
        nonlocal number, part_size, pending, pending_size
        pieces, pending, pending_size = pending, [], 0
        await submit(number, pieces)
        number += 1
        part_size = rules.size_of(number, hint)

    async def push(chunk: bytes) -> None:
        nonlocal pending_size
        view = memoryview(chunk)
        pos, end = 0, len(chunk)
        while pos < end:
            take = min(part_size - pending_size, end - pos)
            pending.append(view[pos:pos + take] if take < end else chunk)
            pending_size += take
            pos += take
            if pending_size == part_size:
                await flush()

    try:
        for chunk in buffered:
            await push(chunk)
        buffered.clear()
        async for chunk in chunks:
            await push(chunk)
        # the payload ended normally, so its size limit and checksum passed
        if pending_size:
            await flush()
        if in_flight:
            await asyncio.gather(*in_flight)
            in_flight.clear()
        # the commit: runs to its end even if the call is cancelled meanwhile
        result = await await_to_end(sink.complete(sorted(tokens.items()),
                                                  payload.request.create_only))
    except BaseException:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        await abort_upload(sink, rules)
        raise
    if digest != payload.etag:
        # the digest is known only now (a stream, or a file that changed while it was read);
        # the object is stored: recording it runs to its end too
        await await_to_end(sink.record_digest(result, payload.etag))
    return result


async def start_upload(sink: PartSink[R], digest: str | None, rules: PartRules) -> None:
    """``sink.start``; a cancellation while it is in flight waits for its answer and aborts
    the upload it may have created, then propagates."""
    start = asyncio.ensure_future(sink.start(digest))
    try:
        await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await await_to_end(start)
            await abort_upload(sink, rules)
        raise


async def abort_upload(sink: PartSink[R], rules: PartRules) -> None:
    """``sink.abort``, even while the caller is being cancelled (then bounded by
    ``abort_timeout``). A failed abort is dropped: the original error wins, and backends
    expire unfinished uploads by their own rules."""
    task = asyncio.ensure_future(sink.abort())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, rules.abort_timeout)
        raise
    except Exception:
        return


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover
