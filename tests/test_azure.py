"""Azure driver behaviour beyond the conformance suite, against a real Azurite server."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.infra.storage import BlobStoreProtocol, StorageUnsupportedOperationError
from pydantic import ValidationError

from lexigram_storage.config import StorageAzureConfig
from lexigram_storage.drivers.azure import BATCH_DELETE, DIGEST_METADATA_KEY, AzureDriver, MiB
from lexigram_storage.errors import (
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StorageError,
    StorageFileNotFoundError,
    StoragePartialDeleteError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
)
from tests.azurite_server import ROOT, AzuriteSettings, azure_service_for, create_container
from tests.emulators import HOST


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_driver(s: AzuriteSettings, container: str, **kw: Any) -> AzureDriver:
    options: dict[str, Any] = dict(
        connection_string=s.connection_string, connect_timeout=2, read_timeout=10,
        max_attempts=1, block_upload_threshold=MiB, block_size=MiB, name="azure-test")
    options.update(kw)
    return AzureDriver(container=container, **options)


@pytest.fixture
async def store(azurite: AzuriteSettings, azure_container: str) -> AsyncIterator[AzureDriver]:
    async with make_driver(azurite, azure_container) as driver:
        yield driver


async def blocks(service: Any, container: str, key: str, kind: str = "committed") -> list[int]:
    """The sizes of a blob's committed (or uncommitted) blocks, as Azurite lists them."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        committed, uncommitted = await service.get_blob_client(container, key).get_block_list(kind)
    except ResourceNotFoundError:  # no block reached the server yet
        return []
    return [b.size for b in (committed if kind == "committed" else uncommitted)]


async def generated(total: int, chunk: int, seed: int) -> AsyncIterator[bytes]:
    """*total* pseudo-random bytes made as they are consumed (nothing held beyond one chunk)."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        await asyncio.sleep(0)
        yield rng.randbytes(size)


async def staged(service: Any, container: str, key: str, count: int) -> None:
    """Wait until *count* uncommitted blocks of *key* reached the server."""
    for _ in range(500):
        if len(await blocks(service, container, key, "uncommitted")) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} blocks of {key!r} never reached the server")


def generated_bytes(total: int, chunk: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(chunk, total - i)) for i in range(0, total, chunk))


# ---------------------------------------------------------------- uploads in blocks


async def test_streams_are_staged_blocks_in_bounded_memory(
        azurite: AzuriteSettings, azure_container: str, azure_service: Any) -> None:
    """A 24 MiB stream goes out as 1 MiB blocks, at most max_concurrency in flight: the Python
    memory traced during the upload stays a small multiple of the block size."""
    total = 24 * MiB
    async with make_driver(azurite, azure_container, max_concurrency=2) as driver:
        await driver.upload("warm.bin", b"x")  # the client and its connection pool
        tracemalloc.start()
        try:
            info = await driver.upload("big/stream.bin", generated(total, 256 * 1024, seed=1),
                                       "video/mp4", metadata={"owner": "ann"},
                                       cache_control="max-age=60")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    expected = generated_bytes(total, 256 * 1024, seed=1)
    assert info.size == total
    assert info.etag == sha256(expected)
    assert peak < 8 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a {total // MiB} MiB upload"
    assert await blocks(azure_service, azure_container, "big/stream.bin") == [MiB] * 24
    blob = azure_service.get_blob_client(azure_container, "big/stream.bin")
    props = await blob.get_blob_properties()
    assert props.content_settings.content_type == "video/mp4"
    assert props.content_settings.cache_control == "max-age=60"
    assert props.metadata == {"owner": "ann", DIGEST_METADATA_KEY: sha256(expected)}
    assert await (await blob.download_blob()).readall() == expected


async def test_small_uploads_are_one_put_blob(store: AzureDriver, azure_service: Any,
                                              azure_container: str) -> None:
    raw = os.urandom(MiB - 1)
    info = await store.upload("one.bin", generated(MiB - 1, 100_000, seed=2))
    assert info.etag == sha256(generated_bytes(MiB - 1, 100_000, seed=2))
    await store.upload("two.bin", raw)
    for key in ("one.bin", "two.bin"):  # a Put Blob leaves no block list
        assert await blocks(azure_service, azure_container, key) == []
    await store.upload("three.bin", raw + b"x")  # at the threshold: blocks
    assert await blocks(azure_service, azure_container, "three.bin") == [MiB]


async def test_a_failed_block_upload_commits_nothing(store: AzureDriver, azure_service: Any,
                                                     azure_container: str) -> None:
    await store.upload("keep.bin", b"old", metadata={"v": "1"})

    async def failing(key: str) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(MiB)
        await staged(azure_service, azure_container, key, 2)  # blocks are on the server...
        raise RuntimeError("source broke")  # ...and are never committed

    for key in ("keep.bin", "new.bin"):
        with pytest.raises(StorageError, match="source broke"):
            await store.upload(key, failing(key))
    assert await store.download("keep.bin") == b"old"
    assert (await store.info("keep.bin")).metadata == {"v": "1"}
    assert not await store.exists("new.bin")
    assert [i.path async for i in store.list()] == ["keep.bin"]


async def test_a_cancelled_block_upload_commits_nothing(store: AzureDriver, azure_service: Any,
                                                        azure_container: str) -> None:
    await store.upload("keep.bin", b"old")
    read = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(MiB)
        read.set()
        await asyncio.Event().wait()  # the rest never comes
        yield b""  # pragma: no cover

    for key in ("keep.bin", "new.bin"):
        read.clear()
        task = asyncio.ensure_future(store.upload(key, stalled()))
        await asyncio.wait_for(read.wait(), 30)
        await staged(azure_service, azure_container, key, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await store.download("keep.bin") == b"old"
    assert not await store.exists("new.bin")
    assert [i.path async for i in store.list()] == ["keep.bin"]


async def test_create_only_block_uploads_have_one_winner(store: AzureDriver) -> None:
    bodies = [bytes([i]) * (3 * MiB + i) for i in range(6)]

    async def attempt(i: int) -> int | None:
        chunks = [bodies[i][j:j + 512 * 1024] for j in range(0, len(bodies[i]), 512 * 1024)]

        async def source() -> AsyncIterator[bytes]:
            for chunk in chunks:
                await asyncio.sleep(0)
                yield chunk

        try:
            await store.upload("race.bin", source(), if_none_match="*")
        except PreconditionFailedError as exc:
            assert "race.bin" in exc.message
            return None
        return i

    results = await asyncio.gather(*(attempt(i) for i in range(6)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.download("race.bin") == bodies[winners[0]]
    assert (await store.info("race.bin")).etag == sha256(bodies[winners[0]])


async def test_a_write_committed_while_blocks_are_staged_wins(
        store: AzureDriver, azure_service: Any, azure_container: str) -> None:
    """Azure discards a blob's uncommitted blocks when another upload commits its own: the
    upload whose blocks were discarded fails with PreconditionFailedError, storing nothing."""
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * (2 * MiB)
        await release.wait()
        yield b"a" * MiB

    task = asyncio.ensure_future(store.upload("hot.bin", slow()))
    await staged(azure_service, azure_container, "hot.bin", 2)
    other = os.urandom(2 * MiB)
    await store.upload("hot.bin", other)  # staged and committed while the first one waits
    release.set()
    with pytest.raises(PreconditionFailedError, match="another write to this key committed"):
        await task
    assert await store.download("hot.bin") == other
    assert (await store.info("hot.bin")).etag == sha256(other)


# ---------------------------------------------------------------- reading


async def test_streams_read_bounded_ranged_chunks(azurite: AzuriteSettings,
                                                  azure_container: str) -> None:
    raw = os.urandom(MiB + 123)
    async with make_driver(azurite, azure_container, download_chunk_size=64 * 1024) as driver:
        await driver.upload("r.bin", raw)
        chunks = [c async for c in driver.stream("r.bin", chunk_size=MiB)]
        assert all(len(c) <= 64 * 1024 for c in chunks)  # one ranged GET per 64 KiB
        assert b"".join(chunks) == raw
        pieces = [c async for c in driver.stream("r.bin", 1000, offset=65_000, length=200_000)]
        assert all(len(c) <= 1000 for c in pieces)
        assert b"".join(pieces) == raw[65_000:265_000]
        assert await driver.download("r.bin") == raw


# ---------------------------------------------------------------- metadata and copies


async def test_metadata_names_and_the_hidden_digest(store: AzureDriver, azure_service: Any,
                                                    azure_container: str) -> None:
    await store.upload("m.txt", b"x", metadata={"Owner": "ann", "class": "c#-keyword"})
    raw = await azure_service.get_blob_client(azure_container, "m.txt").get_blob_properties()
    assert raw.metadata == {"owner": "ann", "class": "c#-keyword", DIGEST_METADATA_KEY: sha256(b"x")}
    assert (await store.info("m.txt")).metadata == {"owner": "ann", "class": "c#-keyword"}
    # a blob written by another tool: names as Azure keeps them, lower-cased here; no digest
    foreign = azure_service.get_blob_client(azure_container, "foreign.txt")
    await foreign.upload_blob(b"y", metadata={"Mixed_Case": "v"})
    info = await store.info("foreign.txt")
    assert info.metadata == {"mixed_case": "v"}
    assert info.etag == (await foreign.get_blob_properties()).etag.strip('"')


async def test_copy_is_server_side_for_any_key(store: AzureDriver) -> None:
    keys = ["with space/ünïcödé ✓.txt", "a+b=c&d?e#f%20.bin"]
    raw = os.urandom(3 * MiB)
    await store.upload(keys[0], raw, "text/csv", metadata={"m": "1"}, cache_control="no-store")
    info = await store.copy(keys[0], keys[1])
    assert (info.size, info.etag, info.metadata) == (len(raw), sha256(raw), {"m": "1"})
    stored = await store.info(keys[1])
    assert (stored.content_type, stored.cache_control, stored.etag) == (
        "text/csv", "no-store", sha256(raw))
    assert await store.download(keys[1]) == raw
    moved = await store.move(keys[1], "moved/x.bin")
    assert moved.etag == sha256(raw)
    assert not await store.exists(keys[1])


# ---------------------------------------------------------------- batch delete


async def test_batch_delete_reports_each_failed_key(store: AzureDriver, azure_service: Any,
                                                    azure_container: str) -> None:
    keys = [f"b/{i:03d}" for i in range(BATCH_DELETE + 44)]  # two batches
    limit = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with limit:
            await store.upload(key, b"x")

    await asyncio.gather(*(put(k) for k in keys))
    leased = azure_service.get_blob_client(azure_container, "b/007")
    lease = await leased.acquire_lease(lease_duration=-1)
    with pytest.raises(StoragePartialDeleteError) as exc:
        await store.delete_many([*keys, "b/missing"])
    assert list(exc.value.failed) == ["b/007"]
    assert exc.value.failed["b/007"].startswith("LeaseIdMissing")
    assert set(exc.value.deleted) == {*keys, "b/missing"} - {"b/007"}
    assert [i.path async for i in store.list()] == ["b/007"]
    await lease.release()
    assert await store.clear("b/") == 1


async def test_deletes_take_the_snapshots_along(store: AzureDriver, azure_service: Any,
                                               azure_container: str) -> None:
    """A blob with snapshots (made by other tools) is deleted with them, one by one or in a
    batch (the service refuses to delete it alone: 409 SnapshotsPresent)."""
    for key in ("snap/one", "snap/two"):
        await store.upload(key, b"x")
        await azure_service.get_blob_client(azure_container, key).create_snapshot()
    await store.delete("snap/one")
    assert await store.delete_many(["snap/two"]) == ["snap/two"]
    container = azure_service.get_container_client(azure_container)
    assert [b.name async for b in container.list_blobs(include=["snapshots"])] == []


# ---------------------------------------------------------------- signed URLs


async def test_sas_urls_with_a_real_http_client(store: AzureDriver) -> None:
    key = "sas/a b ✓.txt"
    await store.upload(key, b"hello", "text/plain")
    async with httpx.AsyncClient() as http:
        url = await store.get_presigned_url(key, timedelta(minutes=5),
                                            response_content_disposition="attachment; filename=a.txt",
                                            response_content_type="application/x-download")
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"hello"
        assert response.headers["content-disposition"] == "attachment; filename=a.txt"
        assert response.headers["content-type"] == "application/x-download"
        tampered = url.replace("sig=", "sig=A", 1)
        assert (await http.get(tampered)).status_code == 403
        # read permission only: no writes
        put_blob = {"x-ms-blob-type": "BlockBlob"}
        assert (await http.put(url, content=b"x", headers=put_blob)).status_code == 403

        put_url = await store.get_presigned_url("sas/upload.bin", method="PUT")
        assert (await http.put(put_url, content=b"no blob type")).status_code == 400
        uploaded = await http.put(put_url, content=b"uploaded",
                                  headers={**put_blob, "x-ms-blob-content-type": "image/png"})
        assert uploaded.status_code == 201
        assert (await http.get(put_url)).status_code == 403  # create + write only: no reads
        assert await store.download("sas/upload.bin") == b"uploaded"
        assert (await store.info("sas/upload.bin")).content_type == "image/png"

        short = await store.get_presigned_url(key, 1)
        await asyncio.sleep(2.5)  # past the expiry, which is rounded up to the second
        assert (await http.get(short)).status_code == 403
    with pytest.raises(StorageUnsupportedOperationError, match="content_type"):
        await store.get_presigned_url(key, method="PUT", content_type="image/png")


async def test_get_url_forms(azurite: AzuriteSettings) -> None:
    plain = AzureDriver("acct", "a2V5", "box")
    assert await plain.get_url("a b/ü.txt") == \
        "https://acct.blob.core.windows.net/box/a%20b/%C3%BC.txt"
    emulated = AzureDriver(container="box", connection_string=azurite.connection_string)
    assert await emulated.get_url("k") == f"{azurite.account_url}/box/k"
    cdn = AzureDriver("acct", "a2V5", "box", public_url="https://cdn.example.com/")
    assert await cdn.get_url("a b.txt") == "https://cdn.example.com/a%20b.txt"


# ---------------------------------------------------------------- errors, faults, health


def service_error(kind: type[Any], status: int, code: str) -> Any:
    """An SDK exception as the storage SDK raises it for an answer (status and error code)."""
    exc = kind(message=f"{code}: what the service said\nRequestId:1\nTime:now")
    exc.status_code, exc.error_code = status, code
    return exc


@pytest.mark.parametrize(("kind", "status", "code", "expected"), [
    ("ResourceNotFoundError", 404, "ContainerNotFound", StorageBucketNotFoundError),
    ("ResourceNotFoundError", 404, "BlobNotFound", StorageFileNotFoundError),
    ("ClientAuthenticationError", 403, "AuthenticationFailed", StoragePermissionError),
    ("ClientAuthenticationError", 401, "InvalidAuthenticationInfo", StoragePermissionError),
    ("HttpResponseError", 403, "AuthorizationPermissionMismatch", StoragePermissionError),
    ("ResourceExistsError", 409, "BlobAlreadyExists", PreconditionFailedError),
    ("ResourceModifiedError", 412, "ConditionNotMet", PreconditionFailedError),
    ("ResourceModifiedError", 412, "LeaseIdMissing", StorageRequestRejectedError),
    ("ResourceExistsError", 409, "LeaseAlreadyPresent", StorageRequestRejectedError),
    ("HttpResponseError", 400, "InvalidMetadata", StorageRequestRejectedError),
    ("HttpResponseError", 400, "InvalidBlockList", StorageRequestRejectedError),
    ("HttpResponseError", 416, "InvalidRange", StorageRequestRejectedError),
    ("HttpResponseError", 503, "ServerBusy", StorageUnavailableError),
    ("HttpResponseError", 500, "InternalError", StorageUnavailableError),
    ("HttpResponseError", 500, "OperationTimedOut", StorageUnavailableError),
    ("HttpResponseError", 408, "", StorageUnavailableError),
    ("HttpResponseError", 429, "", StorageUnavailableError),
])
def test_azure_error_mapping(kind: str, status: int, code: str, expected: Any) -> None:
    from azure.core import exceptions

    from lexigram_storage.drivers.azure import map_azure_error

    exc = service_error(getattr(exceptions, kind), status, code)
    mapped = map_azure_error(exc, "azure", "box", "k")
    assert type(mapped) is expected
    assert mapped is not None and mapped.__cause__ is exc
    assert mapped.message.startswith("azure: ") and "'k'" in mapped.message
    assert "RequestId" not in mapped.message  # the first line of the service's message only


def test_azure_client_side_failures() -> None:
    import aiohttp
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseTimeoutError,
    )

    from lexigram_storage.drivers.azure import map_azure_error

    for down in (ServiceRequestError("Cannot connect to host 127.0.0.1:1"),
                 ServiceResponseTimeoutError("Timeout on reading data from socket"),
                 aiohttp.ServerDisconnectedError(), ConnectionResetError("reset by peer")):
        assert type(map_azure_error(down, "azure", "b", "k")) is StorageUnavailableError
    no_token = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    denied = map_azure_error(no_token, "azure", "b", "k")
    assert type(denied) is StoragePermissionError
    assert denied.hint is not None and "DefaultAzureCredential" in denied.hint
    assert map_azure_error(KeyError("x"), "azure", "b", "k") is None
    assert map_azure_error(ValueError("odd"), "azure", "b", "k") is None


async def test_missing_container_and_wrong_key(azurite: AzuriteSettings) -> None:
    async with make_driver(azurite, "no-such-container") as driver:
        for call in (lambda: driver.upload("a.txt", b"x"), lambda: driver.download("a.txt"),
                     lambda: driver.exists("a.txt"), lambda: driver.delete("a.txt")):
            with pytest.raises(StorageBucketNotFoundError) as exc:
                await call()
            assert exc.value.__cause__ is not None
        health = await driver.health_check(timeout=5)
        assert health.status == HealthStatus.UNHEALTHY
        assert "does not exist" in (health.error or "")
    container = await create_container(azurite)
    wrong = AzureDriver(azurite.account_name, "d3Jvbmcta2V5", container,
                        account_url=azurite.account_url, max_attempts=1)
    async with wrong:
        with pytest.raises(StoragePermissionError) as denied:
            await wrong.upload("a.txt", b"x")
        assert denied.value.details["status"] == 403
        assert (await wrong.health_check(timeout=5)).status == HealthStatus.UNHEALTHY


async def test_a_refused_request_is_not_an_outage(store: AzureDriver, azure_service: Any,
                                                  azure_container: str) -> None:
    """A leased blob refuses writes and deletes without the lease (412 LeaseIdMissing): a
    rejected request, not an outage and not a failed create-only condition."""
    await store.upload("leased.bin", b"x")
    lease = await azure_service.get_blob_client(azure_container, "leased.bin").acquire_lease()
    try:
        for call in (lambda: store.upload("leased.bin", b"y"), lambda: store.delete("leased.bin"),
                     lambda: store.upload("leased.bin", os.urandom(2 * MiB))):
            with pytest.raises(StorageRequestRejectedError) as exc:
                await call()
            assert exc.value.details["status"] == 412
            assert exc.value.details["error_code"] == "LeaseIdMissing"
    finally:
        await lease.release()
    assert await store.download("leased.bin") == b"x"


async def test_paused_server_times_out_reads_and_small_writes(
        azurite_factory: Callable[[], AzuriteSettings]) -> None:
    """``read_timeout`` bounds every wait for an answer (big bodies: the next test)."""
    s = azurite_factory()
    container = await create_container(s)
    async with make_driver(s, container, connect_timeout=1, read_timeout=1.5) as driver:
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        s.emulator.pause()
        try:
            calls = [lambda: driver.download("k.txt"), lambda: driver.upload("w.txt", b"y"),
                     lambda: driver.upload("blocks.bin", os.urandom(3 * MiB)),
                     lambda: driver.info("k.txt"), lambda: driver.delete_many(["k.txt"]),
                     lambda: driver.copy("k.txt", "c.txt")]
            for call in calls:
                with pytest.raises(StorageUnavailableError) as exc:
                    await asyncio.wait_for(call(), 30)  # a safety net: it must never fire
                assert exc.value.code == "LEX_ERR_STORE_010"
            health = await driver.health_check(timeout=1)
            assert health.status == HealthStatus.UNHEALTHY
        finally:
            s.emulator.resume()
        # the server answers again (requests it took while paused run once it resumes)
        await driver.upload("after.txt", b"z")
        assert await driver.download("after.txt") == b"z"


@pytest.mark.parametrize("case", ["put blob", "block"])
async def test_a_server_that_stops_reading_never_hangs_a_big_body(
        azurite_factory: Callable[[], AzuriteSettings], case: str) -> None:
    """A 32 MiB body (more than the socket buffers take) to a server that stopped reading: one
    Put Blob, or a block staged after the upload began. The upload fails within the timeouts
    and nothing is stored."""
    s = azurite_factory()
    container = await create_container(s)
    assert s.emulator is not None
    emulator = s.emulator
    async with make_driver(s, container, connect_timeout=1, read_timeout=1.5,
                           block_upload_threshold=40 * MiB, block_size=32 * MiB) as driver:
        data: Any
        if case == "put blob":
            emulator.pause()
            data = os.urandom(32 * MiB)
        else:
            async def source() -> AsyncIterator[bytes]:
                yield os.urandom(40 * MiB)  # past the threshold: the first block goes out...
                emulator.pause()  # ...to a server that stops reading
                yield os.urandom(MiB)

            data = source()
        try:
            with pytest.raises(StorageUnavailableError):  # the 30 s safety net never fires
                await asyncio.wait_for(driver.upload("big.bin", data), 30)
        finally:
            emulator.resume()
        assert not await driver.exists("big.bin")


async def test_stopped_server_is_unavailable(
        azurite_factory: Callable[[], AzuriteSettings]) -> None:
    s = azurite_factory()
    container = await create_container(s)
    async with make_driver(s, container, connect_timeout=1, max_attempts=2) as driver:
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        s.emulator.stop()
        for call in (lambda: driver.download("k.txt"), lambda: driver.upload("k2", b"y"),
                     lambda: driver.exists("k.txt")):
            with pytest.raises(StorageUnavailableError) as exc:
                await asyncio.wait_for(call(), 30)
            assert exc.value.__cause__ is not None
        assert (await driver.health_check(timeout=5)).status == HealthStatus.UNHEALTHY


class BusyServer:
    """A real HTTP server on 127.0.0.1 answering every request ``503 ServerBusy`` (Azure's
    throttling answer), counting them."""

    def __init__(self) -> None:
        self.requests = 0
        self.bodies: list[int] = []  # the size of each request body, read to its end
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, HOST, 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://{HOST}:{port}/devstoreaccount1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.bodies.append(len(await reader.readexactly(length)))
                self.requests += 1
                writer.write(b"HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\n"
                             b"Content-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("size", [10, MiB], ids=["put-blob", "block"])
async def test_retries_are_the_shared_setting(attempts: int, size: int) -> None:
    """``max_attempts`` requests in all, not the SDK's own retry count; a retried block sends
    its whole body again."""
    busy = BusyServer()
    async with busy as url:
        driver = AzureDriver("devstoreaccount1", "a2V5", "box", account_url=url,
                             max_attempts=attempts, block_upload_threshold=MiB, block_size=MiB)
        async with driver:
            with pytest.raises(StorageUnavailableError) as exc:
                await driver.upload("k.bin", os.urandom(size))
    assert exc.value.details["error_code"] == "ServerBusy"
    assert busy.requests == attempts
    assert busy.bodies == [size] * attempts


async def test_health_check(store: AzureDriver, azurite: AzuriteSettings) -> None:
    result = await store.health_check(timeout=5)
    assert result.status == HealthStatus.HEALTHY, result.error
    assert result.details is not None
    assert result.details["endpoint"] == azurite.account_url
    assert result.details["account"] == azurite.account_name
    assert result.details["bucket"] == store.bucket


# ---------------------------------------------------------------- configuration


def test_configuration_errors() -> None:
    with pytest.raises(StorageConfigurationError, match="container"):
        AzureDriver("acct", "a2V5")
    with pytest.raises(StorageConfigurationError, match="connection_string or account_name"):
        AzureDriver(container="c")
    with pytest.raises(StorageConfigurationError, match="not several"):
        AzureDriver("acct", "a2V5", "c", credential=object())
    for bad in ({"block_size": 1}, {"block_upload_threshold": MiB - 1}, {"max_concurrency": 65},
                {"download_chunk_size": 1}, {"read_timeout": 0}, {"max_attempts": 0},
                {"container": ""}):
        values = {"container": "c", "account_name": "acct", "account_key": "a2V5", **bad}
        with pytest.raises(ValidationError):
            StorageAzureConfig(**values)
        with pytest.raises(StorageConfigurationError, match=next(iter(bad))):
            AzureDriver(**values)


def test_constructor_defaults_are_the_configuration_defaults() -> None:
    block = StorageAzureConfig(container="c", account_name="acct", account_key="a2V5")
    built = AzureDriver.from_config(block, name="x")
    direct = AzureDriver("acct", "a2V5", "c", name="x")
    assert built.settings == direct.settings == block
    defaults = {name: p.default for name, p in inspect.signature(AzureDriver).parameters.items()
                if p.default is not inspect.Parameter.empty and p.default is not None}
    for name, value in defaults.items():
        if name in block.model_fields:
            assert getattr(block, name) == value, name
    secret = AzureDriver(container="c", connection_string="AccountName=acct;"
                         "AccountKey=very-secret-value;BlobEndpoint=http://h/acct")
    assert "very-secret-value" not in repr(secret) + repr(vars(secret))
    assert secret.account_url == "http://h/acct"


MISSING_IDENTITY = """\
import sys
sys.modules["azure.identity"] = None  # as if the azure-identity extra were not installed
from lexigram_storage import AzureDriver
AzureDriver(container="c", account_name="acct", account_key="a2V5")  # a key needs no identity
try:
    AzureDriver(container="c", account_name="acct")
except Exception as exc:
    print(type(exc).__name__ + ":", exc.message, "|", exc.hint)
"""

MISSING_SDK = """\
import sys
sys.modules["azure.storage.blob"] = None  # as if the azure extra were not installed
from lexigram_storage import DriverRegistry, NamedStorageConfig, StorageAzureConfig
try:
    DriverRegistry().create(NamedStorageConfig(
        name="files", driver="azure", azure=StorageAzureConfig(container="c", account_name="a")))
except Exception as exc:
    print(type(exc).__name__ + ":", exc.message, "|", exc.hint)
"""


@pytest.mark.parametrize(("script", "expected"), [
    (MISSING_IDENTITY, "StorageConfigurationError: azure: without account_key or connection_string "
                       "the azure driver authenticates with Entra ID, which needs azure-identity "
                       '| pip install "lexigram_storage[azure-identity]"'),
    (MISSING_SDK, "StorageConfigurationError: driver 'azure' needs an optional dependency that is "
                  'not installed (azure.storage.blob) | pip install "lexigram_storage[azure]"'),
], ids=["identity", "sdk"])
def test_missing_extras_are_named(script: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEX_", "PYTEST_"))}
    env["LEX_QUIET"] = "1"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


ENTRA_ID = """\
import asyncio, base64, json, ssl, sys, time
from datetime import timedelta
from pathlib import Path
import httpx
from azure.core.credentials import AccessToken
from azure.storage.blob.aio import BlobServiceClient
from lexigram_storage import AzureDriver, StoragePermissionError

url, cert = sys.argv[1], sys.argv[2]


def part(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class Token:
    \"\"\"An Entra ID credential whose tokens carry the claims Azurite checks (it does not check
    the signature: these tokens are not signed).\"\"\"

    def __init__(self, audience):
        self.audience = audience

    async def get_token(self, *scopes, **options):
        now = int(time.time())
        claims = {"aud": self.audience, "iss": "https://sts.windows.net/" + "1" * 8 + "-1111-1111"
                  "-1111-" + "1" * 12 + "/", "nbf": now - 60, "iat": now - 60, "exp": now + 3600,
                  "oid": "2" * 8 + "-2222-2222-2222-" + "2" * 12,
                  "tid": "1" * 8 + "-1111-1111-1111-" + "1" * 12}
        return AccessToken(part({"alg": "RS256", "typ": "JWT"}) + "." + part(claims) + ".c2ln",
                           now + 3600)

    async def close(self):
        pass


async def main():
    storage = Token("https://storage.azure.com")
    async with BlobServiceClient(url, credential=storage) as service:
        await service.create_container("entra")
    async with AzureDriver("devstoreaccount1", container="entra", account_url=url,
                           credential=storage, max_attempts=1) as store:
        await store.upload("a.txt", b"hello")
        print("download", (await store.download("a.txt")).decode())
        get_url = await store.get_presigned_url("a.txt", timedelta(minutes=5))
        print("user delegation SAS", "skoid=" in get_url and "sp=r&" in get_url)
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
            print("get", (await http.get(get_url)).status_code)
            print("tampered", (await http.get(get_url.replace("sig=", "sig=A", 1))).status_code)
            put_url = await store.get_presigned_url("b.txt", method="PUT")
            answer = await http.put(put_url, content=b"up", headers={"x-ms-blob-type": "BlockBlob"})
            print("put", answer.status_code)
        print("uploaded", (await store.download("b.txt")).decode())
        print("copied", (await store.copy("a.txt", "c.txt")).size)
        print("deleted", await store.delete_many(["a.txt", "b.txt", "c.txt"]))
    async with AzureDriver("devstoreaccount1", container="entra", account_url=url,
                           credential=Token("https://example.com"), max_attempts=1) as other:
        try:
            await other.download("a.txt")
        except StoragePermissionError as exc:
            print("wrong audience", exc.details["status"])


asyncio.run(main())
"""


def test_entra_id_credential_and_user_delegation_sas(
        azurite_entra: tuple[AzuriteSettings, Path]) -> None:
    """A token credential authenticates every request (server-side copies and batch deletes
    too); SAS URLs are then signed with a user delegation key. Azurite over HTTPS checks the
    tokens' audience, issuer and validity, and the SAS signatures. Run in a fresh interpreter
    that trusts the test certificate (aiohttp reads the CA settings when it is imported)."""
    settings, cert = azurite_entra
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEX_", "PYTEST_"))}
    env.update(LEX_QUIET="1", SSL_CERT_FILE=str(cert), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", ENTRA_ID, settings.account_url, str(cert)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if not line.startswith("20")]
    assert lines == ["download hello", "user delegation SAS True", "get 200", "tampered 403",
                     "put 201", "uploaded up", "copied 5", "deleted ['a.txt', 'b.txt', 'c.txt']",
                     "wrong audience 403"]


async def test_named_azure_backend_in_an_application(azurite: AzuriteSettings) -> None:
    from lexigram import Application
    from lexigram.di.markers import Named
    from lexigram.di.module import Module, module

    from lexigram_storage import NamedStorageConfig, StorageConfig
    from lexigram_storage.module import StorageModule

    container = await create_container(azurite)
    config = StorageConfig(backends=[NamedStorageConfig(
        name="files", driver="azure", primary=True,
        azure=StorageAzureConfig(container=container,
                                 connection_string=azurite.connection_string,  # type: ignore[arg-type]
                                 max_attempts=1))])

    @module(imports=[StorageModule.configure(config)])
    class AppModule(Module):
        pass

    app = Application(name="azure-di")
    app.add_module(AppModule)
    await app.start()
    try:
        files = await app.container.resolve(Annotated[BlobStoreProtocol, Named("files")])
        assert files is await app.container.resolve(BlobStoreProtocol)
        assert type(files) is AzureDriver and files.name == "files"
        await files.upload("x.txt", b"from azure")
        async with azure_service_for(azurite) as service:
            blob = service.get_blob_client(container, "x.txt")
            assert await (await blob.download_blob()).readall() == b"from azure"
    finally:
        await app.stop()
    assert files._container is None


async def test_entra_id_by_default_without_a_key() -> None:
    """Without key or connection string the driver makes its own DefaultAzureCredential when it
    opens its client, and closes it with the client."""
    from azure.identity.aio import DefaultAzureCredential

    driver = AzureDriver("acct", container="box")
    await driver.prepare()
    assert isinstance(driver._owned_credential, DefaultAzureCredential)
    await driver.close()
    assert driver._owned_credential is None


async def test_close_releases_the_client(store: AzureDriver) -> None:
    await store.upload("c.txt", b"x")
    assert store._container is not None
    await store.close()
    assert store._container is None
    await store.close()  # idempotent
    with pytest.raises(StorageUnavailableError, match="closed"):
        await store.upload("d.txt", b"x")
