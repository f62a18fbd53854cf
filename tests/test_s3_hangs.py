"""A hung S3 server never hangs a call: every request fails with ``StorageUnavailableError``
once the server stops making progress, while a slow transfer that keeps moving is never cut.

The server is paused (SIGSTOP) before or in the middle of a request body, a response body, a
multipart upload. The kernel keeps accepting connections and buffering bytes for a stopped
process, so only the driver's own timeouts can end these calls. Each call runs under a safety net far above
the bound the settings give (``within``): if the net is what ends the wait, the test fails. (It
does not use ``asyncio.wait_for``, which waits for the cancelled call to end, and a commit runs
to its end even when cancelled.)

Every test takes its server from the ``pausable_server`` fixture: any object with
``endpoint_url``, ``access_key``, ``secret_key``, ``region`` and ``emulator.pause()`` /
``emulator.resume()`` will do: each test runs on moto and on SeaweedFS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lexigram_storage.drivers.s3 import MiB, S3Driver
from lexigram_storage.errors import StorageUnavailableError
from tests.emulators import HOST, S3Settings, create_bucket, s3_client_for

#: far above any bound the settings below give; firing means the driver hung
SAFETY_NET = 60.0
BACKEND = "s3-hang"
T = TypeVar("T")


@pytest.fixture(params=["moto", "seaweedfs"])
def pausable_server(request: pytest.FixtureRequest,
                    emulator_factory: Callable[[str], S3Settings]) -> S3Settings:
    """An S3 server this test may pause (and always resumes): a private moto server, and the
    session's SeaweedFS (a real S3 implementation, with its own buffering and timing)."""
    if request.param == "moto":
        return emulator_factory("s3")
    settings: S3Settings = request.getfixturevalue("seaweedfs_server")
    return settings


@pytest.fixture
async def bucket(pausable_server: S3Settings, unique_name: str) -> str:
    await create_bucket(pausable_server, unique_name)
    return unique_name


def hang_driver(s: S3Settings, bucket: str, **kw: Any) -> S3Driver:
    options: dict[str, Any] = dict(
        region=s.region, access_key=s.access_key, secret_key=s.secret_key,
        endpoint_url=s.endpoint_url, addressing_style="path", connect_timeout=1,
        read_timeout=2, max_attempts=2, multipart_threshold=5 * MiB,
        multipart_chunk_size=5 * MiB, name=BACKEND,
    )
    options.update(kw)
    return S3Driver(bucket, **options)


@contextlib.contextmanager
def paused(s: S3Settings) -> Any:
    assert s.emulator is not None
    s.emulator.pause()
    try:
        yield
    finally:
        s.emulator.resume()


async def within(call: Awaitable[T]) -> T:
    """The result of *call*, which must end before the safety net (else the test fails and the
    call is left running: it ends once the server is resumed)."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=SAFETY_NET)
    assert done, f"hung for {SAFETY_NET} s"
    return task.result()


async def fails_unavailable(call: Awaitable[Any], key: str | None) -> StorageUnavailableError:
    """*call* must raise StorageUnavailableError about *key*, before the safety net."""
    with pytest.raises(StorageUnavailableError) as caught:
        await within(call)
    error = caught.value
    assert error.backend == BACKEND
    assert error.key == key
    assert error.__cause__ is not None
    return error


async def stored_or_absent(driver: S3Driver, key: str, data: bytes) -> bool:
    """Whether *key* is either absent or holds exactly *data*."""
    return not await driver.exists(key) or await driver.download(key) == data


def stalled_connections(s: S3Settings) -> int:
    """How many TCP connections to the server this process still holds with bytes the server
    has not taken (Linux: /proc; elsewhere 0). A request that failed on a hung server must not
    leave one behind, kept open to flush the rest of its body."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    port = int(s.endpoint_url.rsplit(":", 1)[1].split("/")[0])
    stalled = 0
    for row in table:
        fields = row.split()  # sl local remote state tx_queue:rx_queue ... inode
        if (int(fields[2].split(":")[1], 16) == port and fields[9] in inodes
                and int(fields[4].split(":")[0], 16) > 0):
            stalled += 1
    return stalled


async def committed(s: S3Settings, bucket: str, key: str) -> bool:
    async with s3_client_for(s) as client:
        response = await client.list_objects_v2(Bucket=bucket, Prefix=key)
    return any(item["Key"] == key for item in response.get("Contents") or [])


# ---------------------------------------------------------------- writes


@pytest.mark.parametrize("mib", [4, 12])
async def test_single_put_to_a_paused_server(pausable_server: S3Settings, bucket: str,
                                             mib: int) -> None:
    """4 MiB is about what the socket buffers take on Linux (the body write stalls near its
    end, or the whole body fits and the answer never comes); 12 MiB stalls a third of the way."""
    raw = os.urandom(mib * MiB)
    async with hang_driver(pausable_server, bucket, multipart_threshold=16 * MiB) as driver:
        await driver.upload("warm.txt", b"the client and a pooled connection exist")
        with paused(pausable_server):
            await fails_unavailable(driver.upload("single.bin", raw), "single.bin")
            assert stalled_connections(pausable_server) == 0
        # a request the server had received whole may still run once it resumes: never a
        # truncated object
        assert await stored_or_absent(driver, "single.bin", raw)
        await driver.upload("single.bin", b"after")
        assert await driver.download("single.bin") == b"after"


async def test_multipart_upload_paused_midway(pausable_server: S3Settings, bucket: str) -> None:
    """30 MiB in 5 MiB parts; the server stops while the third part is being cut, with the
    first parts in flight."""
    assert pausable_server.emulator is not None
    emulator = pausable_server.emulator

    async def source() -> AsyncIterator[bytes]:
        for n in range(30):
            if n == 12:
                emulator.pause()
            yield os.urandom(MiB)

    async with hang_driver(pausable_server, bucket) as driver:
        try:
            await fails_unavailable(driver.upload("multi.bin", source()), "multi.bin")
            assert stalled_connections(pausable_server) == 0  # timed out or cancelled parts
        finally:
            emulator.resume()
        assert not await committed(pausable_server, bucket, "multi.bin")


async def test_multipart_upload_of_bytes_paused_before_the_parts(pausable_server: S3Settings,
                                                                 bucket: str) -> None:
    """The parts of an in-memory payload go out as soon as CreateMultipartUpload returns."""
    assert pausable_server.emulator is not None
    emulator = pausable_server.emulator
    async with hang_driver(pausable_server, bucket, max_concurrency=2) as driver:
        client = await driver._get_client()

        def pause_after_create(**kwargs: Any) -> None:
            emulator.pause()

        client.meta.events.register("after-call.s3.CreateMultipartUpload", pause_after_create)
        try:
            await fails_unavailable(driver.upload("parts.bin", os.urandom(30 * MiB)),
                                    "parts.bin")
            assert stalled_connections(pausable_server) == 0
        finally:
            emulator.resume()
        assert not await committed(pausable_server, bucket, "parts.bin")


# ---------------------------------------------------------------- reads


async def test_download_paused_mid_stream(pausable_server: S3Settings, bucket: str) -> None:
    """32 MiB is more than the socket buffers and aiohttp's read buffer hold."""
    raw = os.urandom(32 * MiB)
    async with hang_driver(pausable_server, bucket) as driver:
        await driver.upload("big.bin", raw)

        assert pausable_server.emulator is not None
        emulator = pausable_server.emulator

        async def read_pausing_after_first_chunk() -> None:
            async for _ in driver.stream("big.bin", chunk_size=MiB):
                emulator.pause()

        try:
            await fails_unavailable(read_pausing_after_first_chunk(), "big.bin")
        finally:
            emulator.resume()
        assert await driver.download("big.bin") == raw


async def test_every_other_request_on_a_paused_server(pausable_server: S3Settings,
                                                      bucket: str) -> None:
    """Requests without a body (and small ones), all at once on the stopped server."""
    async with hang_driver(pausable_server, bucket, max_attempts=1) as driver:
        await driver.upload("a.txt", b"a")

        async def listing() -> None:
            async for _ in driver.list():
                pass

        async def streaming() -> None:
            async for _ in driver.stream("a.txt"):
                pass

        calls = {
            "download": (driver.download("a.txt"), "a.txt"),
            "stream": (streaming(), "a.txt"),
            "info": (driver.info("a.txt"), "a.txt"),
            "exists": (driver.exists("a.txt"), "a.txt"),
            "small upload": (driver.upload("b.txt", b"b" * 1000), "b.txt"),
            "copy": (driver.copy("a.txt", "c.txt"), "a.txt"),
            "delete": (driver.delete("a.txt"), "a.txt"),
            "delete_many": (driver.delete_many(["a.txt"]), "a.txt"),
            "list": (listing(), ""),
            "list_dir": (driver.list_dir(""), ""),
        }
        with paused(pausable_server):
            results = await asyncio.gather(*(within(call) for call, _ in calls.values()),
                                           return_exceptions=True)
        for (label, (_, key)), result in zip(calls.items(), results, strict=True):
            assert isinstance(result, StorageUnavailableError), (label, result)
            assert result.backend == BACKEND, label
            assert result.__cause__ is not None, label
            if label not in ("list", "list_dir"):
                assert result.key == key, label
        # the server may still run the requests it had received (the deletes among them)
        await driver.upload("after.txt", b"back")
        assert await driver.download("after.txt") == b"back"


# ---------------------------------------------------------------- slow but moving


class ThrottlingProxy:
    """A TCP proxy on 127.0.0.1 forwarding both directions at about *rate* bytes/s per
    connection, in small steps: a slow link that never stops moving."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._step = 256 * 1024
        self._pause = self._step / rate
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ThrottlingProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.ensure_future(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(self._step):
                sink.write(data)
                await sink.drain()
                await asyncio.sleep(self._pause)
        except ConnectionError:
            pass
        finally:
            sink.close()


async def test_a_slow_transfer_that_keeps_moving_is_not_cut(pausable_server: S3Settings,
                                                            bucket: str) -> None:
    """Through an 8 MiB/s link, sending a 24 MiB body (one PutObject, and each of two parts)
    and receiving one take at least 3 s, more than ``read_timeout``; they never stall for it.

    After the last byte is handed to the kernel, the send buffer (up to 4 MiB on Linux) must
    still drain before the server can answer, within ``read_timeout`` (0.5 s here)."""
    raw = os.urandom(24 * MiB)
    async with ThrottlingProxy(pausable_server.endpoint_url, rate=8 * MiB) as proxy:
        slow = dataclasses.replace(pausable_server, endpoint_url=proxy.endpoint)
        async with hang_driver(slow, bucket, read_timeout=2, max_attempts=1,
                               multipart_threshold=32 * MiB,
                               multipart_chunk_size=24 * MiB) as driver:
            info = await within(driver.upload("slow.bin", raw))
            assert info.size == len(raw)
            got = await within(read_all(driver.stream("slow.bin", chunk_size=MiB)))
            assert got == raw
            info = await within(driver.upload("slow-mp.bin", raw + raw))  # two parts at once
            assert info.size == 2 * len(raw)
    assert await committed(pausable_server, bucket, "slow-mp.bin")


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
