"""S3/R2 driver behaviour beyond the conformance suite, against a real moto server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import io
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from aiohttp import web
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.infra.storage import StorageUnsupportedOperationError
from pydantic import ValidationError

from lexigram_storage.config import EncryptionConfig, StorageS3Config
from lexigram_storage.drivers.s3 import DIGEST_METADATA_KEY, MiB, R2Driver, S3Driver
from lexigram_storage.errors import (
    ChecksumMismatchError,
    InvalidUploadOptionError,
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StorageFileNotFoundError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
)
from lexigram_storage.payload import Payload, UploadRequest
from tests.emulators import S3Settings, create_bucket, s3_client_for


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_md5_etag(data: bytes) -> str:
    """S3's own ETag of a single-PUT object (not ours: ours is the SHA-256)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def make_driver(s: S3Settings, bucket: str, **kw: Any) -> S3Driver:
    options: dict[str, Any] = dict(
        region="us-east-1", access_key=s.access_key, secret_key=s.secret_key,
        endpoint_url=s.endpoint_url, addressing_style="path", connect_timeout=2,
        read_timeout=10, max_attempts=1, multipart_threshold=5 * MiB,
        multipart_chunk_size=5 * MiB, name="s3-test",
    )
    options.update(kw)
    return S3Driver(bucket, **options)


@pytest.fixture
async def store(s3_server: S3Settings, s3_bucket: str) -> AsyncIterator[S3Driver]:
    async with make_driver(s3_server, s3_bucket) as driver:
        yield driver


async def uploads_in_progress(client: Any, bucket: str) -> list[str]:
    response = await client.list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in response.get("Uploads") or []]


def server_log(s: S3Settings) -> str:
    """The moto server's access log so far."""
    assert s.emulator is not None
    return Path(s.emulator.workdir, "server.log").read_text(errors="replace")


def part_uploads(s: S3Settings, bucket: str, key: str) -> int:
    """How many UploadPart requests the moto server logged for *key* (its access log)."""
    log = server_log(s)
    return sum(1 for line in log.splitlines()
               if f"PUT /{bucket}/{key}?partNumber=" in line or
               (f"PUT /{bucket}/{key}?" in line and "partNumber=" in line))


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# ---------------------------------------------------------------- multipart uploads


async def test_multipart_from_bytes(store: S3Driver, s3_client: Any, s3_bucket: str,
                                    s3_server: S3Settings) -> None:
    raw = os.urandom(17 * MiB + 3)
    info = await store.upload("mp/bytes.bin", raw, "application/x-test", metadata={"a": "1"},
                              cache_control="no-cache")
    assert info.size == len(raw)
    assert info.etag == sha256(raw)
    head = await s3_client.head_object(Bucket=s3_bucket, Key="mp/bytes.bin")
    assert part_uploads(s3_server, s3_bucket, "mp/bytes.bin") == 4  # 3 x 5 MiB + 2 MiB
    assert head["Metadata"][DIGEST_METADATA_KEY] == sha256(raw)
    stored = await store.info("mp/bytes.bin")
    assert stored.etag == sha256(raw)
    assert stored.metadata == {"a": "1"}
    assert stored.content_type == "application/x-test"
    assert stored.cache_control == "no-cache"
    assert await store.download("mp/bytes.bin") == raw
    assert await uploads_in_progress(s3_client, s3_bucket) == []


async def test_multipart_from_async_iterator_of_small_chunks(
        store: S3Driver, s3_client: Any, s3_bucket: str, s3_server: S3Settings) -> None:
    raw = os.urandom(12 * MiB + 12345)
    info = await store.upload("mp/iter.bin", chunked(raw, 64 * 1024))
    assert (info.size, info.etag) == (len(raw), sha256(raw))
    assert part_uploads(s3_server, s3_bucket, "mp/iter.bin") == 3  # 64 KiB chunks -> 5+5+2 MiB
    got = b"".join([c async for c in store.stream("mp/iter.bin", chunk_size=MiB)])
    assert got == raw


async def test_multipart_from_64_mib_file(s3_server: S3Settings, s3_bucket: str,
                                          s3_client: Any, tmp_path: Path) -> None:
    raw = os.urandom(64 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(raw)
    async with make_driver(s3_server, s3_bucket, multipart_threshold=8 * MiB,
                           multipart_chunk_size=8 * MiB, max_concurrency=4) as driver:
        with path.open("rb") as f:
            info = await driver.upload("mp/file.bin", f)
        assert (info.size, info.etag) == (len(raw), sha256(raw))
        assert part_uploads(s3_server, s3_bucket, "mp/file.bin") == 8
        head = await s3_client.head_object(Bucket=s3_bucket, Key="mp/file.bin")
        assert head["ContentLength"] == len(raw)
        assert (await driver.info("mp/file.bin")).etag == sha256(raw)
        assert await driver.download("mp/file.bin") == raw
    assert await uploads_in_progress(s3_client, s3_bucket) == []


async def test_small_unknown_size_stream_is_one_put(store: S3Driver, s3_client: Any,
                                                    s3_bucket: str) -> None:
    raw = os.urandom(MiB)
    await store.upload("small.bin", chunked(raw, 1000))
    head = await s3_client.head_object(Bucket=s3_bucket, Key="small.bin")
    assert head["ETag"].strip('"') == s3_md5_etag(raw)


def test_part_size_grows_to_stay_under_10000_parts() -> None:
    rules = S3Driver("bucket", multipart_chunk_size=5 * MiB).part_rules
    assert rules.size_of(1, None) == 5 * MiB
    assert rules.size_of(901, None) == 10 * MiB
    assert rules.size_of(10_000, None) == 5 * 1024 * MiB
    five_tib = 5 * 1024 * 1024 * MiB
    size = rules.size_of(1, five_tib)
    assert size * 9999 >= five_tib and size <= 5 * 1024 * MiB
    # unknown size: 10,000 growing parts hold about 5 TiB
    assert sum(rules.size_of(n, None) for n in range(1, 10_001)) >= 5 * 1024 * 1024 * MiB


async def test_cancellation_mid_multipart_aborts_the_upload(
        store: S3Driver, s3_client: Any, s3_bucket: str) -> None:
    parts_sent = asyncio.Event()
    forever = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(12):  # 12 MiB: two parts go out
            yield os.urandom(MiB)
        parts_sent.set()
        await forever.wait()
        yield b"never"

    task = asyncio.create_task(store.upload("mp/cancelled.bin", slow()))
    await asyncio.wait_for(parts_sent.wait(), 20)
    for _ in range(200):  # up to 10 s on a loaded machine for CreateMultipartUpload to show
        if await uploads_in_progress(s3_client, s3_bucket):
            break
        await asyncio.sleep(0.05)
    assert await uploads_in_progress(s3_client, s3_bucket) == ["mp/cancelled.bin"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await uploads_in_progress(s3_client, s3_bucket) == []
    assert not await store.exists("mp/cancelled.bin")


async def test_failing_source_and_bad_checksum_abort_the_upload(
        store: S3Driver, s3_client: Any, s3_bucket: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"x" * MiB
        raise OSError("source broke")

    with pytest.raises(Exception, match="source broke"):
        await store.upload("mp/broken.bin", broken())
    raw = os.urandom(11 * MiB)
    with pytest.raises(ChecksumMismatchError):
        await store.upload("mp/bad.bin", chunked(raw, MiB), checksum="md5:" + "0" * 32)
    assert await uploads_in_progress(s3_client, s3_bucket) == []
    assert not await store.exists("mp/broken.bin")
    assert not await store.exists("mp/bad.bin")


async def test_create_only_multipart_uses_conditional_complete(
        store: S3Driver, s3_client: Any, s3_bucket: str) -> None:
    first = os.urandom(6 * MiB)
    await store.upload("mp/co.bin", first, if_none_match="*")
    with pytest.raises(PreconditionFailedError):
        await store.upload("mp/co.bin", chunked(os.urandom(6 * MiB), MiB), if_none_match="*")
    assert await store.download("mp/co.bin") == first
    assert await uploads_in_progress(s3_client, s3_bucket) == []


# ---------------------------------------------------------------- copy


def head_etag_parts(head: dict[str, Any]) -> int:
    etag = head["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


async def test_copy_is_server_side_and_multipart_above_the_limit(
        s3_server: S3Settings, s3_bucket: str, s3_client: Any) -> None:
    raw = os.urandom(11 * MiB)
    async with make_driver(s3_server, s3_bucket) as driver:
        await driver.upload("c/src.bin", raw, "image/png", metadata={"k": "v"},
                            cache_control="max-age=5")
        small = await driver.copy("c/src.bin", "c/plain.bin")
        assert small.etag == sha256(raw)
        driver.max_single_copy = 5 * MiB  # force the multipart copy (used above 5 GiB)
        driver.copy_part_size = 5 * MiB
        info = await driver.copy("c/src.bin", "c/dst.bin")
        assert info.etag == sha256(raw)
        assert head_etag_parts(await s3_client.head_object(Bucket=s3_bucket, Key="c/dst.bin")) == 3
        stored = await driver.info("c/dst.bin")
        assert (stored.content_type, stored.metadata, stored.cache_control, stored.etag) == \
            ("image/png", {"k": "v"}, "max-age=5", sha256(raw))
        assert await driver.download("c/dst.bin") == raw
        with pytest.raises(StorageFileNotFoundError):
            await driver.copy("c/none.bin", "c/x.bin")
    assert await uploads_in_progress(s3_client, s3_bucket) == []


# ---------------------------------------------------------------- URLs


async def test_presigned_get_and_put_with_a_real_http_client(store: S3Driver) -> None:
    await store.upload("p/report.csv", b"a,b\n1,2\n")
    url = await store.get_presigned_url(
        "p/report.csv", 300, response_content_disposition='attachment; filename="r.csv"',
        response_content_type="text/plain")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Signature=" in url and "AWSAccessKeyId" not in url
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"a,b\n1,2\n"
        assert response.headers["content-disposition"] == 'attachment; filename="r.csv"'
        assert response.headers["content-type"].startswith("text/plain")
        put_url = await store.get_presigned_url("p/up load.json", 300, "PUT",
                                                content_type="application/json")
        assert "content-type" in put_url.lower()
        response = await http.put(put_url, content=b'{"x": 1}',
                                  headers={"Content-Type": "application/json"})
        assert response.status_code == 200
    info = await store.info("p/up load.json")
    assert info.content_type == "application/json"
    assert await store.download("p/up load.json") == b'{"x": 1}'
    with pytest.raises(StorageUnsupportedOperationError, match="response_content_type"):
        await store.get_presigned_url("p/report.csv", 60, "PUT", response_content_type="x")


@pytest.mark.parametrize("direct_requests", [True, False], ids=["direct", "aioboto3"])
@pytest.mark.parametrize("server", ["rgw_server", "seaweedfs_server"])
async def test_presigned_put_content_type_is_signed_on_a_real_server(
        request: pytest.FixtureRequest, server: str, direct_requests: bool,
        unique_name: str) -> None:
    """A server that checks signatures accepts the signed ``Content-Type`` and refuses another
    one; the stored object has the signed type."""
    settings: S3Settings = request.getfixturevalue(server)
    await create_bucket(settings, unique_name)
    async with make_driver(settings, unique_name, region=settings.region,
                           direct_requests=direct_requests) as driver:
        await driver.prepare()
        assert (driver._direct is not None) is direct_requests  # the path under test
        url = await driver.get_presigned_url("p/doc.json", 300, "PUT",
                                             content_type="application/json")
        async with httpx.AsyncClient(timeout=10) as http:
            other = await http.put(url, content=b"{}", headers={"Content-Type": "text/html"})
            assert other.status_code == 403, other.text
            assert not await driver.exists("p/doc.json")
            signed = await http.put(url, content=b'{"a": 1}',
                                    headers={"Content-Type": "application/json"})
            assert signed.status_code == 200, signed.text
        info = await driver.info("p/doc.json")
        assert info.content_type == "application/json"
        assert await driver.download("p/doc.json") == b'{"a": 1}'
        await driver.delete("p/doc.json")
    async with s3_client_for(settings) as client:
        await client.delete_bucket(Bucket=unique_name)


async def test_get_url_forms(s3_server: S3Settings) -> None:
    path_style = make_driver(s3_server, "my-bucket")
    assert await path_style.get_url("a b/c.txt") == f"{s3_server.endpoint_url}/my-bucket/a%20b/c.txt"
    cdn = S3Driver("my-bucket", public_url="https://cdn.example.com/")
    assert await cdn.get_url("img/1 2.png") == "https://cdn.example.com/img/1%202.png"
    aws = S3Driver("my-bucket", region="eu-west-1")
    assert await aws.get_url("k") == "https://my-bucket.s3.eu-west-1.amazonaws.com/k"


# ---------------------------------------------------------------- encryption


@pytest.mark.parametrize(("encryption", "force", "expected"), [
    (EncryptionConfig(enabled=True, type="aws:kms", kms_key_id="key-1"), False,
     ("aws:kms", "key-1")),
    (EncryptionConfig(enabled=True), False, ("AES256", None)),
    (None, True, ("AES256", None)),
    (EncryptionConfig(enabled=False), False, (None, None)),
])
async def test_encryption_reaches_every_write(
        s3_server: S3Settings, s3_bucket: str, s3_client: Any,
        encryption: EncryptionConfig | None, force: bool,
        expected: tuple[str | None, str | None]) -> None:
    async with make_driver(s3_server, s3_bucket, encryption=encryption,
                           enable_encryption=force) as driver:
        await driver.upload("e/single.txt", b"secret")
        await driver.upload("e/multi.bin", os.urandom(6 * MiB))
        await driver.copy("e/single.txt", "e/copied.txt")
        for key in ("e/single.txt", "e/multi.bin", "e/copied.txt"):
            head = await s3_client.head_object(Bucket=s3_bucket, Key=key)
            assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == expected, key
        assert (await driver.info("e/multi.bin")).metadata == {}


# ---------------------------------------------------------------- errors and faults


async def test_missing_bucket(s3_server: S3Settings) -> None:
    async with make_driver(s3_server, "no-such-bucket-here") as driver:
        with pytest.raises(StorageBucketNotFoundError) as exc:
            await driver.upload("a.txt", b"x")
        assert exc.value.__cause__ is not None
        with pytest.raises(StorageBucketNotFoundError):
            await driver.download("a.txt")
        health = await driver.health_check(timeout=5)
        assert health.status == HealthStatus.UNHEALTHY
        assert "does not exist" in (health.error or "")


async def test_server_stopped_raises_unavailable_within_the_timeout(
        emulator_factory: Callable[[str], S3Settings], unique_name: str) -> None:
    s = emulator_factory("s3")
    await create_bucket(s, unique_name)
    async with make_driver(s, unique_name, connect_timeout=1, read_timeout=2) as driver:
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        s.emulator.stop()
        for call in (driver.download("k.txt"), driver.upload("k2.txt", b"y"),
                     driver.exists("k.txt")):
            t0 = time.monotonic()
            with pytest.raises(StorageUnavailableError) as exc:
                await call
            assert time.monotonic() - t0 < 3
            assert exc.value.__cause__ is not None
            assert exc.value.code == "LEX_ERR_STORE_010"
        health = await driver.health_check(timeout=3)
        assert health.status == HealthStatus.UNHEALTHY


async def test_paused_server_never_hangs_a_read_or_a_write(
        emulator_factory: Callable[[str], S3Settings], unique_name: str) -> None:
    s = emulator_factory("s3")
    await create_bucket(s, unique_name)
    async with make_driver(s, unique_name, connect_timeout=1, read_timeout=1.5) as driver:
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        s.emulator.pause()
        try:
            calls = [("read", lambda: driver.download("k.txt")),
                     ("write", lambda: driver.upload("w.txt", b"y" * 1000)),
                     ("multipart write", lambda: driver.upload("m.bin", os.urandom(6 * MiB))),
                     ("health", lambda: driver.info("k.txt"))]
            for label, call in calls:
                t0 = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    await asyncio.wait_for(call(), 15)  # the safety net must never fire
                assert time.monotonic() - t0 < 8, label
            health = await driver.health_check(timeout=1)
            assert health.status == HealthStatus.UNHEALTHY
        finally:
            s.emulator.resume()


def test_configuration_errors() -> None:
    with pytest.raises(StorageConfigurationError):
        S3Driver("b", access_key="only-key")
    with pytest.raises(StorageConfigurationError):
        S3Driver("b", multipart_chunk_size=MiB)
    with pytest.raises(StorageConfigurationError, match="endpoint_url"):
        R2Driver("b")
    # the constructor runs the configuration model's checks: the two cannot drift
    for bad in ({"multipart_threshold": 1}, {"max_concurrency": 65}, {"max_concurrency": 0},
                {"multipart_chunk_size": 6 * 1024 * MiB}, {"read_timeout": 0},
                {"addressing_style": "sideways"}, {"bucket": ""}):
        values = {"bucket": "b", **bad}
        with pytest.raises(ValidationError):
            StorageS3Config(**values)
        with pytest.raises(StorageConfigurationError, match=next(iter(bad))):
            S3Driver(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("driver_cls", [S3Driver, R2Driver])
def test_constructor_defaults_are_the_configuration_defaults(driver_cls: type[S3Driver]) -> None:
    """``S3Driver(...)`` and ``driver: s3`` with the same settings build the same driver."""
    block = driver_cls.config_model(bucket="b", endpoint_url="https://r2.example")
    built = driver_cls.from_config(block, name="x")
    direct = driver_cls("b", endpoint_url="https://r2.example", name="x")
    assert built.settings == direct.settings == block
    defaults = {name: p.default for name, p in inspect.signature(driver_cls).parameters.items()
                if p.default is not inspect.Parameter.empty and p.default is not None}
    for name, value in defaults.items():
        if name in block.model_fields:
            assert getattr(block, name) == value, name
    driver = S3Driver("b", access_key="AKIA", secret_key="very-secret-value")
    assert "very-secret-value" not in repr(driver) + repr(vars(driver))


async def test_close_releases_the_client(s3_server: S3Settings, s3_bucket: str) -> None:
    driver = make_driver(s3_server, s3_bucket)
    await driver.upload("c.txt", b"x")
    assert driver._client is not None
    await driver.close()
    assert driver._client is None
    await driver.close()  # idempotent


# ---------------------------------------------------------------- DI wiring


async def test_named_s3_and_r2_backends_side_by_side(s3_server: S3Settings,
                                                     unique_name: str) -> None:
    from lexigram import Application
    from lexigram.contracts.infra.storage import BlobStoreProtocol
    from lexigram.di.markers import Named
    from lexigram.di.module import Module, module

    from lexigram_storage.config import (
        NamedStorageConfig,
        StorageConfig,
        StorageR2Config,
        StorageS3Config,
    )
    from lexigram_storage.module import StorageModule

    await create_bucket(s3_server, unique_name + "-s3")
    await create_bucket(s3_server, unique_name + "-r2")
    common: dict[str, Any] = dict(endpoint_url=s3_server.endpoint_url, addressing_style="path",
                                  access_key=s3_server.access_key,
                                  secret_key=s3_server.secret_key, max_attempts=1,
                                  connect_timeout=2, read_timeout=10)
    config = StorageConfig(backends=[
        NamedStorageConfig(name="files", driver="s3", primary=True,
                           s3=StorageS3Config(bucket=unique_name + "-s3", region="us-east-1",
                                              **common)),
        NamedStorageConfig(name="cdn", driver="r2",
                           r2=StorageR2Config(bucket=unique_name + "-r2", **common)),
    ])

    @module(imports=[StorageModule.configure(config)])
    class AppModule(Module):
        pass

    app = Application(name="s3-di")
    app.add_module(AppModule)
    await app.start()
    try:
        default = await app.container.resolve(BlobStoreProtocol)
        files = await app.container.resolve(Annotated[BlobStoreProtocol, Named("files")])
        cdn = await app.container.resolve(Annotated[BlobStoreProtocol, Named("cdn")])
        assert default is files
        assert type(files) is S3Driver and type(cdn) is R2Driver
        assert (files.name, cdn.name, cdn.region) == ("files", "cdn", "auto")
        await files.upload("x.txt", b"from s3")
        await cdn.upload("x.txt", b"from r2")
        assert await files.download("x.txt") == b"from s3"
        assert await cdn.download("x.txt") == b"from r2"
        assert cdn.checksum_mode == "when_required"
    finally:
        await app.stop()
    assert files._client is None and cdn._client is None


async def test_io_bytes_and_sizes_known_upfront_use_one_put(store: S3Driver, s3_client: Any,
                                                            s3_bucket: str) -> None:
    raw = os.urandom(4 * MiB)
    await store.upload("one.bin", io.BytesIO(raw))
    head = await s3_client.head_object(Bucket=s3_bucket, Key="one.bin")
    assert "-" not in head["ETag"]


async def test_file_digest_known_upfront_or_recorded_after(store: S3Driver, s3_client: Any,
                                                        s3_bucket: str, s3_server: S3Settings,
                                                        tmp_path: Path) -> None:
    """A seekable file is hashed before CreateMultipartUpload (no self-copy), from its current
    position although its first parts are read meanwhile; if it changes while it is read, the
    digest of the bytes actually sent is recorded afterwards (one self-copy)."""

    class Changing(io.BytesIO):
        def getbuffer(self) -> memoryview:  # what the pre-hash sees differs from the upload
            return memoryview(b"z" * len(super().getvalue()))

    class ChangedFile(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:  # the pre-hash reads the fd directly
            return b"y" * len(super().read(size))

    copies: list[str] = []
    client = await store._get_client()
    client.meta.events.register("before-send.s3.CopyObject",
                                lambda request, **_: copies.append(request.url))
    raw = os.urandom(6 * MiB)
    path = tmp_path / "f.bin"
    path.write_bytes(raw)
    with path.open("rb") as f:
        f.seek(MiB)  # the upload starts at the current position
        info = await store.upload("pre/file.bin", f)
    assert (info.size, info.etag) == (5 * MiB, sha256(raw[MiB:]))
    assert (await store.info("pre/file.bin")).etag == sha256(raw[MiB:])
    assert await store.download("pre/file.bin") == raw[MiB:]
    assert copies == []
    with ChangedFile(io.FileIO(path)) as f:
        info = await store.upload("pre/changed-file.bin", f)
    assert info.etag == sha256(b"y" * len(raw))
    assert (await store.info("pre/changed-file.bin")).etag == info.etag
    assert len(copies) == 1
    info = await store.upload("pre/changing.bin", Changing(raw))
    assert info.etag == sha256(raw)
    head = await s3_client.head_object(Bucket=s3_bucket, Key="pre/changing.bin")
    assert head["Metadata"][DIGEST_METADATA_KEY] == sha256(raw)
    assert (await store.info("pre/changing.bin")).etag == sha256(raw)
    assert len(copies) == 2


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aioboto3"])
async def test_single_put_sends_the_sha256_checksum_header(
        s3_server: S3Settings, s3_client: Any, s3_bucket: str, direct: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest goes out as x-amz-checksum-sha256 (base64 of the raw SHA-256), which the
    server checks the body against, instead of botocore's default CRC32 and Content-MD5: on
    the direct path (the headers it signs and sends) and through aioboto3 (botocore's hook)."""
    sent: list[dict[str, str]] = []
    async with make_driver(s3_server, s3_bucket, direct_requests=direct) as store:
        client = await store._get_client()
        if direct:
            assert store._direct is not None
            signed = store._direct._signed

            async def recording(*args: Any) -> dict[str, str]:
                headers = await signed(*args)
                sent.append(headers)
                return headers

            monkeypatch.setattr(store._direct, "_signed", recording)
        else:
            assert store._direct is None

            def capture(request: Any, **_: Any) -> None:
                sent.append({k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                             for k, v in request.headers.items()})

            client.meta.events.register("before-send.s3.PutObject", capture)
        raw = os.urandom(1000)
        info = await store.upload("ck/one.bin", raw)
    assert info.etag == sha256(raw)
    assert len(sent) == 1
    assert sent[0]["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(raw).digest()).decode()
    assert "content-md5" not in sent[0] and "x-amz-checksum-crc32" not in sent[0]
    head = await s3_client.head_object(Bucket=s3_bucket, Key="ck/one.bin")
    assert head["Metadata"] == {DIGEST_METADATA_KEY: sha256(raw)}


async def test_digest_entries_are_hidden_from_user_metadata(store: S3Driver, s3_client: Any,
                                                            s3_bucket: str) -> None:
    """Our entry cannot be spoofed through user metadata, and the MD5 entry that earlier
    versions wrote is hidden too (such objects report S3's own ETag)."""
    raw = b"old object"
    for name in (DIGEST_METADATA_KEY, "lexigram_sha256", "Lexigram_SHA256"):
        with pytest.raises(InvalidUploadOptionError, match=r"reserved|not a valid metadata name"):
            await store.upload("meta/spoof.txt", raw, metadata={name: "f" * 64})
    assert not await store.exists("meta/spoof.txt")
    info = await store.upload("meta/spoof.txt", raw, metadata={"sha256": "f" * 64})
    assert info.etag == sha256(raw) and info.metadata == {"sha256": "f" * 64}
    assert (await store.info("meta/spoof.txt")).etag == sha256(raw)
    await s3_client.put_object(Bucket=s3_bucket, Key="meta/legacy.txt", Body=raw,
                               Metadata={"lexigram-md5": s3_md5_etag(raw), "owner": "me"})
    legacy = await store.info("meta/legacy.txt")
    assert legacy.metadata == {"owner": "me"}
    assert legacy.etag == s3_md5_etag(raw)


async def test_metadata_names_read_back_with_underscores(store: S3Driver, s3_client: Any,
                                                         s3_bucket: str) -> None:
    """Ceph RGW stores ``x-amz-meta-trace_id`` as ``trace-id``; names never contain "-", so
    the driver reads it back as written (as it would a name another client set with "-")."""
    await s3_client.put_object(Bucket=s3_bucket, Key="meta/rgw.txt", Body=b"x",
                               Metadata={"trace-id": "7", "-under": "u", "Owner": "ann"})
    expected = {"trace_id": "7", "_under": "u", "owner": "ann"}
    assert (await store.info("meta/rgw.txt")).metadata == expected
    assert [i.metadata async for i in store.list("meta/")] == [expected]
    assert (await store.copy("meta/rgw.txt", "meta/copy.txt")).metadata == expected


async def test_parts_cut_across_chunk_boundaries_carry_botocores_crc32(
        store: S3Driver, s3_server: S3Settings, s3_bucket: str) -> None:
    """Chunks that straddle part boundaries are cut into exact parts; each part carries the
    CRC32 header botocore would add itself (computed off the loop), and none on R2."""
    sent: list[tuple[int, int, dict[str, str]]] = []

    def capture(request: Any, **_: Any) -> None:
        body = request.body
        size = len(body.getbuffer()) if hasattr(body, "getbuffer") else len(body)
        number = int(request.url.split("partNumber=")[1].split("&")[0])
        sent.append((number, size, {k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                                    for k, v in request.headers.items()}))

    raw = os.urandom(13 * MiB + 7)
    client = await store._get_client()
    client.meta.events.register("before-send.s3.UploadPart", capture)
    try:
        info = await store.upload("mp/straddle.bin", chunked(raw, 3 * MiB))
    finally:
        client.meta.events.unregister("before-send.s3.UploadPart", capture)
    assert (info.size, info.etag) == (len(raw), sha256(raw))
    assert await store.download("mp/straddle.bin") == raw
    sent.sort()
    assert [(number, size) for number, size, _ in sent] == \
        [(1, 5 * MiB), (2, 5 * MiB), (3, 3 * MiB + 7)]
    for (_, _, headers), start in zip(sent, range(0, len(raw), 5 * MiB), strict=True):
        part = raw[start:start + 5 * MiB]
        expected = base64.b64encode(zlib.crc32(part).to_bytes(4, "big")).decode()
        assert headers["x-amz-checksum-crc32"] == expected
        assert headers["x-amz-sdk-checksum-algorithm"] == "CRC32"

    sent.clear()
    async with R2Driver(s3_bucket, access_key=s3_server.access_key,
                        secret_key=s3_server.secret_key, endpoint_url=s3_server.endpoint_url,
                        addressing_style="path", multipart_threshold=5 * MiB,
                        multipart_chunk_size=5 * MiB, name="r2-test") as r2:
        r2_client = await r2._get_client()
        r2_client.meta.events.register("before-send.s3.UploadPart", capture)
        await r2.upload("mp/r2.bin", raw)
        assert (await r2.info("mp/r2.bin")).etag == sha256(raw)
    assert len(sent) == 3
    assert not any(k.startswith("x-amz-checksum-") for _, _, headers in sent for k in headers)


async def test_clear_lists_keys_only(store: S3Driver, s3_client: Any, s3_bucket: str,
                                     s3_server: S3Settings) -> None:
    """clear() deletes page by page from a keys-only listing: no HEAD per object, and more
    than one listing page (1000 keys) is handled."""
    sem = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with sem:
            await s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    await asyncio.gather(*(put(f"gone/{i:04d}") for i in range(1003)), put("kept/one"),
                         put("gone")  # the prefix is a plain string prefix: "gone" matches too
                         )
    assert await store.clear("gone") == 1004
    assert [info.path async for info in store.list()] == ["kept/one"]
    log = server_log(s3_server)
    assert f"/{s3_bucket}/gone" in log
    assert not [line for line in log.splitlines() if f"HEAD /{s3_bucket}/gone" in line]
    assert await store.clear("gone") == 0


@pytest.mark.parametrize(("encryption", "headers"), [
    (EncryptionConfig(enabled=True), {"x-amz-server-side-encryption": "AES256"}),
    (EncryptionConfig(enabled=True, type="aws:kms", kms_key_id="key-9"),
     {"x-amz-server-side-encryption": "aws:kms",
      "x-amz-server-side-encryption-aws-kms-key-id": "key-9"}),
    (None, {}),
])
async def test_presigned_put_signs_the_encryption_headers(
        s3_server: S3Settings, s3_bucket: str, s3_client: Any,
        encryption: EncryptionConfig | None, headers: dict[str, str]) -> None:
    async with make_driver(s3_server, s3_bucket, encryption=encryption) as driver:
        assert driver.presigned_put_headers == headers
        url = await driver.get_presigned_url("p/enc.txt", 300, "PUT", content_type="text/plain")
        signed = url.split("X-Amz-SignedHeaders=")[1].split("&")[0].replace("%3B", ";")
        assert sorted(signed.split(";")) == sorted(["content-type", "host", *headers])
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.put(url, content=b"secret",
                                      headers={"Content-Type": "text/plain",
                                               **driver.presigned_put_headers})
            assert response.status_code == 200
        head = await s3_client.head_object(Bucket=s3_bucket, Key="p/enc.txt")
        assert head.get("ServerSideEncryption") == headers.get("x-amz-server-side-encryption")
        assert head.get("SSEKMSKeyId") == headers.get(
            "x-amz-server-side-encryption-aws-kms-key-id")
        assert await driver.download("p/enc.txt") == b"secret"


# ---------------------------------------------------------------- 4xx answers are not outages


async def test_server_4xx_is_a_rejected_request_not_an_outage(store: S3Driver) -> None:
    """A request the server refuses with a 400 is a StorageRequestRejectedError: the backend
    was reachable, so never a StorageUnavailableError. moto answers a CopyObject of an object
    onto itself without new metadata with 400 InvalidRequest (as S3 does); ``copy()`` never
    sends that request, so call the driver primitive (under the public methods' error guard)."""
    await store.upload("rej/a.txt", b"x")
    with pytest.raises(StorageRequestRejectedError) as exc, store._errors("rej/a.txt"):
        await store._copy("rej/a.txt", "rej/a.txt")
    err = exc.value
    assert not isinstance(err, StorageUnavailableError)
    assert err.code == "LEX_ERR_STORE_015"
    assert err.details["status"] == 400
    assert err.details["error_code"] == "InvalidRequest"
    assert store.name in err.message and "rej/a.txt" in err.message
    assert err.__cause__ is not None


@pytest.mark.parametrize(("case", "request_options"), [
    ("crlf-metadata", {"metadata": {"a": "x\r\nX-Injected: 1"}}),
    ("crlf-content-type", {"content_type": "text/plain\r\nX-Injected: 1"}),
    ("crlf-cache-control", {"cache_control": "no-cache\nX-Injected: 1"}),
    ("non-ascii-metadata", {"metadata": {"a": "Zürich"}}),
])
async def test_requests_refused_before_sending_are_not_outages(
        store: S3Driver, case: str, request_options: dict[str, Any]) -> None:
    """Past our validation (a driver primitive called directly), a request the SDK or the HTTP
    client refuses to send is a rejected request, not unavailability (CR/LF used to be)."""
    request = UploadRequest(content_type=request_options.get("content_type", "text/plain"),
                            metadata=request_options.get("metadata", {}),
                            cache_control=request_options.get("cache_control"))
    payload = Payload(b"data", request, backend=store.name, key="rej/b.txt")
    with pytest.raises(StorageRequestRejectedError), store._errors("rej/b.txt"):
        await store._write("rej/b.txt", payload)
    assert not await store.exists("rej/b.txt")


async def test_cancelled_multipart_uploads_leave_no_orphans(
        s3_server: S3Settings, s3_client: Any, s3_bucket: str) -> None:
    """Cancelled at random moments (while CreateMultipartUpload, a part or the completion is in
    flight), a multipart upload either completes or is aborted: none is left behind."""
    import random

    rng = random.Random(8)
    raw = os.urandom(5 * MiB + MiB // 2)
    async with make_driver(s3_server, s3_bucket, multipart_threshold=5 * MiB) as driver:
        outcomes = []
        for i in range(16):
            task = asyncio.ensure_future(driver.upload(f"orph/{i}.bin", raw))
            await asyncio.sleep(rng.uniform(0, 0.03))
            task.cancel()
            try:
                await task
                outcomes.append("stored")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
                assert not await driver.exists(f"orph/{i}.bin")
            assert await uploads_in_progress(s3_client, s3_bucket) == [], f"round {i}"
        assert "cancelled" in outcomes


# ---------------------------------------------------------------- both request paths alike

@contextlib.asynccontextmanager
async def answering(*answers: tuple[int, str]) -> AsyncIterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 giving *answers* (status, S3 error code or "") in turn,
    then 200: its endpoint and the requests it got ("METHOD /path")."""
    seen: list[str] = []
    queue = list(answers)

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(f"{request.method} {request.path}")
        status, code = queue.pop(0) if queue else (200, "")
        body = (f"<Error><Code>{code}</Code><Message>told to</Message></Error>"
                if code and request.method != "HEAD" else "")
        return web.Response(status=status, body=body.encode(),
                            headers={"ETag": '"e"', "Content-Type": "application/xml"})

    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("*", "/{tail:.*}", handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aioboto3"])
async def test_retries_and_error_mapping_are_the_same_on_both_paths(direct: bool) -> None:
    """Both request paths retry the same answers (botocore's standard mode: 5xx, throttling)
    up to max_attempts, never a 4xx, and map the final answer to the same error."""
    def driver(endpoint: str, attempts: int) -> S3Driver:
        return S3Driver("b", region="us-east-1", access_key="k", secret_key="s",
                        endpoint_url=endpoint, addressing_style="path", max_attempts=attempts,
                        connect_timeout=2, read_timeout=5, direct_requests=direct)

    async with answering((503, "SlowDown"), (500, "InternalError")) as (endpoint, seen), \
            driver(endpoint, 3) as store:
        await store.upload("r/a.txt", b"x")
        assert (store._direct is not None) is direct
    assert seen == ["PUT /b/r/a.txt"] * 3
    async with answering((503, "SlowDown"), (503, "SlowDown")) as (endpoint, seen), \
            driver(endpoint, 2) as store:
        with pytest.raises(StorageUnavailableError) as unavailable:
            await store.download("r/a.txt")
    assert seen == ["GET /b/r/a.txt"] * 2
    assert unavailable.value.details["error_code"] == "SlowDown"
    async with answering((400, "InvalidArgument"), (403, ""), (404, "")) as (endpoint, seen), \
            driver(endpoint, 3) as store:
        with pytest.raises(StorageRequestRejectedError) as rejected:
            await store.upload("r/a.txt", b"x")
        assert rejected.value.details["status"] == 400
        assert rejected.value.details["error_code"] == "InvalidArgument"
        with pytest.raises(StoragePermissionError):
            await store.info("r/a.txt")
        assert not await store.exists("r/a.txt")
    assert seen == ["PUT /b/r/a.txt", "HEAD /b/r/a.txt", "HEAD /b/r/a.txt"]


@pytest.mark.parametrize("options", [
    {"retry_mode": "legacy"}, {"retry_mode": "adaptive"}, {"direct_requests": False},
    {"endpoint_url": None, "region": None}, {"bucket": "data--usw2-az1--x-s3"},
    {"bucket": "arn:aws:s3:eu-west-1:123456789012:accesspoint/ap"}])
def test_direct_requests_only_where_they_match_botocore(options: dict[str, Any]) -> None:
    """The direct path needs the standard retry mode (the one it reproduces), a known region or
    endpoint (botocore follows region redirects) and a plain bucket name."""
    settings: dict[str, Any] = {"bucket": "b", "region": "eu-west-1",
                                "endpoint_url": "http://127.0.0.1:9"}
    assert S3Driver(**settings).direct_requests
    assert not S3Driver(**{**settings, **options}).direct_requests
