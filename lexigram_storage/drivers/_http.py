"""Request bodies that a hung server cannot hang: the shared piece of the aiohttp-based drivers.

aiohttp bounds connecting (``ClientTimeout.sock_connect``) and waiting for response bytes
(``sock_read``, re-armed by every byte received), but ``sock_read`` starts only once the request
body is written, and nothing bounds the writing: a body bigger than what the socket buffers
take waits in ``StreamWriter.drain()`` for a server that reads nothing, forever. (A ``bytes``
body is handed to the transport in one piece and drained once; an ``io.BytesIO`` in 64 KiB
reads, each drained without a deadline.)

:func:`idle_bounded_body` turns an in-memory body (bytes, bytearray, memoryview, ``io.BytesIO``
from its position) into an :class:`IdleBoundedPayload` that aiohttp writes in slices of
:data:`SLICE_SIZE` bytes with the same ``Content-Length``. Each slice must be accepted by the
socket within the idle timeout of the one before it, and so must the last bytes left in the
transport's buffer: a transfer that keeps moving is never cut, however long it takes. When the
deadline passes, the connection is dropped (the unsent rest discarded) and the payload raises
:class:`aiohttp.ServerTimeoutError`; aiohttp hands it to the request waiting for the response,
and the SDK reports a timeout (aiobotocore: botocore's ``ReadTimeoutError``, retried like any
read timeout). Bodies up to :data:`SMALL_BODY` are left as they are: writing them never waits,
and the small-request hot path costs nothing more. No extra task: the deadline lives in
aiohttp's own body-writing task.

So with ``sock_connect=connect_timeout`` and ``sock_read=read_timeout``, an attempt fails after
``connect_timeout`` without a connection, or ``read_timeout`` without progress: no slice of the
body accepted, then no byte of the answer. ``sock_read`` starts once the body is with the OS,
so what is still in the socket's send buffer (up to 4 MiB on Linux) must reach the server, and
its answer begin, within ``read_timeout``: the one limit, as in any HTTP client.

Use: the S3 driver through :func:`aiobotocore_session_class`; the GCS driver passes each request
body (a part's pieces as a list, without joining them) through :func:`idle_bounded_body`.

:func:`retry_delay` is the one wait between attempts of every driver that retries itself (GCS,
Azure): botocore's standard-mode rule, which the S3 driver gets from botocore.
"""

from __future__ import annotations

import asyncio
import functools
import io
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import ServerTimeoutError
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

__all__ = ["SLICE_SIZE", "SMALL_BODY", "IdleBoundedPayload", "aiobotocore_session_class",
           "idle_bounded_body", "retry_delay", "retrying"]

T = TypeVar("T")

#: the longest wait between two attempts, in seconds (botocore's standard mode)
RETRY_DELAY_CAP = 20.0


def retry_delay(failures: int) -> float:
    """Seconds to wait after the *failures*-th failed attempt before the next: a random time in
    ``[0, min(20, 2 ** (failures - 1))]`` ("full jitter"), botocore's standard retry mode, so that
    every driver backs off alike and clients that failed together do not retry together."""
    return random.uniform(0, min(RETRY_DELAY_CAP, 2.0 ** min(failures - 1, 16)))


async def retrying(attempt: Callable[[], Awaitable[T]], max_attempts: int,
                   retryable: Callable[[Exception], bool]) -> T:
    """Run *attempt* up to *max_attempts* times while it fails with an exception *retryable*
    accepts, waiting :func:`retry_delay` between attempts; the last failure is raised."""
    failures = 1
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if failures >= max_attempts or not retryable(exc):
                raise
        await asyncio.sleep(retry_delay(failures))
        failures += 1


#: bodies up to this size are sent as they are: asyncio's default high-water mark, below which
#: aiohttp never waits for the transport to drain, so writing them cannot hang
SMALL_BODY = 64 * 1024
#: bigger bodies are written in slices of this size, each under the idle deadline
SLICE_SIZE = 256 * 1024


class IdleBoundedPayload(Payload):
    """An in-memory request body (one or more byte views, sent in order) written in slices,
    each of which must be accepted by the socket within *idle_timeout* seconds of the previous
    one (else :class:`aiohttp.ServerTimeoutError`). Its size is known, so the request keeps its
    ``Content-Length`` (no chunked encoding)."""

    _value: list[memoryview]
    _autoclose = True  # nothing to release

    def __init__(self, views: list[memoryview], idle_timeout: float) -> None:
        super().__init__(views, content_type="application/octet-stream")
        self._total = sum(view.nbytes for view in views)
        self._size = self._total  # aiohttp's Content-Length
        self._idle_timeout = idle_timeout

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"".join(self._value)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        left = self._total if content_length is None else min(content_length, self._total)
        transport = getattr(writer, "transport", None)  # aiohttp's StreamWriter has one
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                for view in self._value:
                    for start in range(0, min(view.nbytes, left), SLICE_SIZE):
                        piece = view[start:start + min(SLICE_SIZE, left)]
                        deadline.reschedule(loop.time() + self._idle_timeout)
                        # returns once the transport's buffer is below its high-water mark
                        await writer.write(piece)
                        left -= piece.nbytes
                if transport is not None and transport.get_write_buffer_size():
                    deadline.reschedule(loop.time() + self._idle_timeout)
                    await _flushed(writer, transport)
        except TimeoutError as exc:
            _drop(transport)
            raise ServerTimeoutError(
                f"Timeout on writing the request body: the server took no data for "
                f"{self._idle_timeout} s") from exc
        except BaseException:  # cancelled, or the connection failed: it cannot be reused
            _drop(transport)
            raise


def _drop(transport: asyncio.WriteTransport | None) -> None:
    """Drop a connection whose request body was not sent whole, discarding the unsent rest:
    closing it would keep the socket open until that rest reaches a hung server, if ever (and
    the server would never get a complete request)."""
    if transport is not None:
        transport.abort()


async def _flushed(writer: AbstractStreamWriter, transport: asyncio.WriteTransport) -> None:
    """Wait until *transport* has handed every buffered byte to the OS. Then the wait for the
    answer (aiohttp's ``sock_read``) starts with the whole body sent, and if it times out the
    connection closes at once instead of waiting to flush the rest into a hung server."""
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)  # pauses writing until the buffer is empty
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def idle_bounded_body(body: Any, idle_timeout: float) -> Any:
    """*body* as an :class:`IdleBoundedPayload` when it is an in-memory body bigger than
    :data:`SMALL_BODY`: bytes, bytearray, a byte memoryview, an ``io.BytesIO`` from its current
    position (which does not move), or a list of those bytes-like pieces sent one after the
    other; else *body* itself (a small list joined). Nothing big is copied."""
    if isinstance(body, list):
        views = [memoryview(piece).cast("B") for piece in body]
    elif isinstance(body, bytes | bytearray):
        views = [memoryview(body)]
    elif isinstance(body, memoryview) and body.c_contiguous:
        views = [body.cast("B")]
    elif isinstance(body, io.BytesIO):
        # getvalue() shares the BytesIO's buffer; getbuffer() would lock it against resizing
        views = [memoryview(body.getvalue())[body.tell():]]
    else:
        return body
    if sum(view.nbytes for view in views) <= SMALL_BODY:
        return b"".join(views) if isinstance(body, list) else body
    return IdleBoundedPayload(views, idle_timeout)


@functools.cache
class _NoRedirects:
    """An aiohttp session whose requests never follow a 3xx answer (what ``request`` gives
    aiobotocore's ``send``, the one caller)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        return self._session.request(method, url, allow_redirects=False, **kwargs)


def aiobotocore_session_class() -> type[Any]:
    """aiobotocore's HTTP session (``AioConfig(http_session_cls=...)``) sending request bodies
    through :func:`idle_bounded_body` with the client's ``read_timeout``, and never following
    a redirect: aiohttp would by default, sending the body, without its signature, to the host
    ``Location`` names and reporting that host's answer; botocore's own HTTP session does not
    follow redirects either (it handles S3's region redirects itself, re-signed). Built on first
    use: this module must import without aiobotocore (the GCS and Azure drivers use it too)."""
    from aiobotocore.httpsession import AIOHTTPSession

    class IdleBoundedAIOHTTPSession(AIOHTTPSession):  # type: ignore[misc]  # untyped base
        def __init__(self, *, timeout: float | tuple[float, float] | None = None,
                     **kwargs: Any) -> None:
            super().__init__(timeout=timeout, **kwargs)
            read_timeout = timeout[1] if isinstance(timeout, tuple | list) else timeout
            self._idle_timeout = read_timeout

        async def _get_session(self, proxy_url: str | None) -> _NoRedirects:
            return _NoRedirects(await super()._get_session(proxy_url))

        async def send(self, request: Any) -> Any:
            body = request.body
            if self._idle_timeout is not None:
                # after signing, for this attempt only: a retry rewinds and re-signs the original
                request.body = idle_bounded_body(body, self._idle_timeout)
            try:
                return await super().send(request)
            finally:
                request.body = body

    return IdleBoundedAIOHTTPSession
