"""GCS driver behaviour beyond the conformance suite, against a real fake-gcs-server.

Requests are watched (and faults injected) through ``FaultProxy``, an HTTP proxy in front of
the server: it records what the driver sends and, for chosen requests, answers what real GCS
or a real network does and the emulator never does (503, 429, 403, a rewrite that needs a
second call, a chunk corrupted on the way, a 412 when a resumable upload is finalized).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lexigram.contracts.core.health import HealthStatus
from lexigram.contracts.infra.storage import StorageUnsupportedOperationError
from pydantic import ValidationError

from lexigram_storage.config import StorageGCSConfig
from lexigram_storage.drivers.gcs import DIGEST_METADATA_KEY, GCSDriver
from lexigram_storage.errors import (
    ChecksumMismatchError,
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageConfigurationError,
    StoragePartialDeleteError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
)
from tests.gcs_server import (
    ACCESS_TOKEN,
    IMPERSONATED_TOKEN,
    FaultProxy,
    GcsSettings,
    Seen,
    TokenServer,
    create_gcs_bucket,
    make_impersonated_credentials_file,
)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_driver(endpoint: str, bucket: str, service_file: str | None, **kw: Any) -> GCSDriver:
    options: dict[str, Any] = dict(
        credentials_path=service_file, endpoint_url=endpoint, resumable_threshold=CHUNK,
        chunk_size=CHUNK, connect_timeout=2, read_timeout=10, max_attempts=3, name="gcs-test")
    options.update(kw)
    return GCSDriver(bucket, **options)


@pytest.fixture
async def store(gcs_server: GcsSettings, gcs_bucket: str) -> AsyncIterator[GCSDriver]:
    async with make_driver(gcs_server.endpoint_url, gcs_bucket, gcs_server.service_file) as driver:
        yield driver


@pytest.fixture
async def watched(gcs_proxy: FaultProxy, gcs_server: GcsSettings, gcs_bucket: str
                  ) -> AsyncIterator[GCSDriver]:
    """A driver whose requests go through the proxy."""
    async with make_driver(gcs_proxy.endpoint, gcs_bucket, gcs_server.service_file) as driver:
        yield driver


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def chunk_puts(proxy: FaultProxy) -> list[str]:
    """The Content-Range of every chunk sent to an upload session."""
    return [s.headers["content-range"] for s in proxy.requests("PUT", "/upload/")]


def is_chunk(seen: Seen) -> bool:
    return seen.method == "PUT" and "upload_id" in seen.query


# ---------------------------------------------------------------- resumable uploads


async def test_a_stream_goes_in_chunks_and_the_short_last_one_finalizes(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(3 * CHUNK + 100)
    info = await watched.upload("r/stream.bin", chunked(raw, 64 * KiB), "application/x-r",
                                metadata={"owner": "ann"}, cache_control="no-cache")
    assert (info.size, info.etag) == (len(raw), sha256(raw))
    [start] = gcs_proxy.requests("POST", "/upload/")
    assert start.query["uploadType"] == "resumable"
    resource = json.loads(start.body)
    assert resource == {"name": "r/stream.bin", "contentType": "application/x-r",
                        "metadata": {"owner": "ann"}, "cacheControl": "no-cache"}
    assert chunk_puts(gcs_proxy) == [
        f"bytes 0-{CHUNK - 1}/*", f"bytes {CHUNK}-{2 * CHUNK - 1}/*",
        f"bytes {2 * CHUNK}-{3 * CHUNK - 1}/*", f"bytes {3 * CHUNK}-{len(raw) - 1}/{len(raw)}"]
    # the digest of a stream is known at the end: one metadata patch records it
    [patch] = gcs_proxy.requests("PATCH")
    assert json.loads(patch.body) == {"metadata": {DIGEST_METADATA_KEY: sha256(raw)}}
    assert patch.query["ifGenerationMatch"].isdigit()
    stored = await watched.info("r/stream.bin")
    assert (stored.etag, stored.content_type, stored.metadata, stored.cache_control) == \
        (sha256(raw), "application/x-r", {"owner": "ann"}, "no-cache")
    assert await watched.download("r/stream.bin") == raw


async def test_an_aligned_stream_ends_with_an_empty_finalize(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(2 * CHUNK)
    await watched.upload("r/aligned.bin", chunked(raw, 100 * KiB))
    assert chunk_puts(gcs_proxy) == [f"bytes 0-{CHUNK - 1}/*", f"bytes {CHUNK}-{2 * CHUNK - 1}/*",
                                     f"bytes */{2 * CHUNK}"]
    assert await watched.download("r/aligned.bin") == raw
    assert (await watched.info("r/aligned.bin")).etag == sha256(raw)


async def test_a_file_starts_its_session_with_its_digest(
        watched: GCSDriver, gcs_proxy: FaultProxy, tmp_path: Path) -> None:
    raw = os.urandom(5 * CHUNK // 2)
    path = tmp_path / "f.bin"
    path.write_bytes(raw)
    with path.open("rb") as f:
        info = await watched.upload("r/file.bin", f)
    assert info.etag == sha256(raw)
    [start] = gcs_proxy.requests("POST", "/upload/")
    assert json.loads(start.body)["metadata"] == {DIGEST_METADATA_KEY: sha256(raw)}
    assert gcs_proxy.requests("PATCH") == []  # nothing left to record
    assert (await watched.info("r/file.bin")).etag == sha256(raw)


async def test_small_payloads_are_one_multipart_request_with_their_md5(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(1000)
    await watched.upload("s/one.bin", raw, metadata={"k": "v"})
    [post] = gcs_proxy.requests("POST", "/upload/")
    assert post.query == {"uploadType": "multipart"}
    assert post.headers["content-type"].startswith("multipart/related; boundary=")
    md5 = base64.b64encode(hashlib.md5(raw).digest()).decode()
    assert f'"md5Hash": "{md5}"'.encode() in post.body
    assert f'"{DIGEST_METADATA_KEY}": "{sha256(raw)}"'.encode() in post.body
    assert gcs_proxy.requests("PUT") == []


async def test_memory_stays_bounded_while_a_stream_is_uploaded(
        gcs_server: GcsSettings, gcs_bucket: str) -> None:
    """48 MiB from an async iterator in 4 MiB chunks: the driver holds a few chunks at most."""
    async def fresh_chunks() -> AsyncIterator[bytes]:
        for i in range(48):
            yield bytes([i]) * MiB

    async with make_driver(gcs_server.endpoint_url, gcs_bucket, gcs_server.service_file,
                           chunk_size=4 * MiB, resumable_threshold=4 * MiB) as driver:
        tracemalloc.start()
        try:
            info = await driver.upload("big/stream.bin", fresh_chunks())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.size == 48 * MiB
        assert peak < 6 * 4 * MiB, f"peak {peak / MiB:.1f} MiB"
        head = b"".join([c async for c in driver.stream("big/stream.bin", MiB, length=2 * MiB)])
        assert head == bytes([0]) * MiB + bytes([1]) * MiB


async def test_memory_stays_bounded_while_a_file_streams(
        gcs_server: GcsSettings, gcs_bucket: str, tmp_path: Path) -> None:
    """A 48 MiB file in one streamed PUT, 4 MiB parts: a few parts in memory at most."""
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        for i in range(48):
            f.write(bytes([i]) * MiB)
    async with make_driver(gcs_server.endpoint_url, gcs_bucket, gcs_server.service_file,
                           chunk_size=4 * MiB, resumable_threshold=4 * MiB) as driver:
        tracemalloc.start()
        try:
            with path.open("rb") as f:
                info = await driver.upload("big/file.bin", f)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.size == 48 * MiB
        assert peak < 4 * 4 * MiB, f"peak {peak / MiB:.1f} MiB"
        tail = b"".join([c async for c in driver.stream("big/file.bin", MiB, offset=47 * MiB)])
        assert tail == bytes([47]) * MiB


# ---------------------------------------------------------------- failures and cancellation


async def test_a_failing_stream_deletes_the_session_and_keeps_the_old_object(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    await watched.upload("a/key.bin", b"old object")

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(2 * CHUNK)
        raise OSError("source broke")

    with pytest.raises(Exception, match="source broke"):
        await watched.upload("a/key.bin", broken())
    session = gcs_proxy.requests("PUT", "/upload/")[0]
    deletes = [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert [d.query["upload_id"] for d in deletes] == [session.query["upload_id"]]
    assert all(not r.endswith(("/*", "*/")) or "/*" in r for r in chunk_puts(gcs_proxy))
    assert await watched.download("a/key.bin") == b"old object"


async def test_a_cancelled_upload_deletes_the_session(watched: GCSDriver,
                                                      gcs_proxy: FaultProxy) -> None:
    await watched.upload("a/key.bin", b"old object")
    forever = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK)
        yield os.urandom(CHUNK)
        await forever.wait()
        yield b"never"

    task = asyncio.ensure_future(watched.upload("a/key.bin", slow()))
    for _ in range(400):
        if gcs_proxy.requests("PUT", "/upload/"):
            break
        await asyncio.sleep(0.025)
    assert chunk_puts(gcs_proxy)[:1] == [f"bytes 0-{CHUNK - 1}/*"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert all(r.endswith("/*") for r in chunk_puts(gcs_proxy))  # never finalized
    assert await watched.download("a/key.bin") == b"old object"


async def test_a_file_is_one_streamed_put_carrying_its_md5(
        watched: GCSDriver, gcs_proxy: FaultProxy, tmp_path: Path) -> None:
    raw = os.urandom(5 * CHUNK + 100)
    path = tmp_path / "f.bin"
    path.write_bytes(raw)
    with path.open("rb") as f:
        info = await watched.upload("k/file.bin", f)
    [put] = gcs_proxy.requests("PUT", "/upload/")
    assert put.headers["content-range"] == f"bytes 0-{len(raw) - 1}/{len(raw)}"
    assert put.headers["x-goog-hash"] == f"md5={md5_b64(raw)}"
    assert put.body == raw
    assert info.etag == sha256(raw)
    assert await watched.download("k/file.bin") == raw


async def test_bytes_are_one_streamed_put_and_a_small_finalize(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(5 * CHUNK + 100)
    info = await watched.upload("k/bytes.bin", raw)
    assert chunk_puts(gcs_proxy) == [f"bytes 0-{5 * CHUNK - 1}/*",
                                     f"bytes {5 * CHUNK}-{len(raw) - 1}/{len(raw)}"]
    streamed, final = gcs_proxy.requests("PUT", "/upload/")
    assert streamed.body == raw[:5 * CHUNK] and "x-goog-hash" not in streamed.headers
    assert final.headers["x-goog-hash"] == f"md5={md5_b64(raw)}"
    assert info.etag == sha256(raw)
    assert await watched.download("k/bytes.bin") == raw


@pytest.mark.parametrize("source", ["bytes", "file"])
async def test_a_streamed_put_cut_midway_resumes_where_the_session_ends(
        watched: GCSDriver, gcs_proxy: FaultProxy, tmp_path: Path, source: str) -> None:
    """The connection drops after 2 of 6 blocks; the rest is read again (from the caller's
    bytes, or from the file at its offset) and sent from where the session ends."""
    raw = os.urandom(6 * CHUNK + 9)
    size = len(raw)
    path = tmp_path / "f.bin"
    path.write_bytes(b"skipped" + raw)
    gcs_proxy.cut(lambda s: is_chunk(s) and s.headers["content-range"].startswith("bytes 0-"),
                  keep=2 * CHUNK)
    if source == "file":
        with path.open("rb") as f:
            f.seek(7)
            info = await watched.upload("k/cut.bin", f)
        # the streamed PUT of a file finalizes the upload: its status query names the size
        assert chunk_puts(gcs_proxy) == [
            f"bytes 0-{size - 1}/{size}", f"bytes */{size}", f"bytes {2 * CHUNK}-{size - 1}/{size}"]
        assert gcs_proxy.requests("PUT", "/upload/")[2].body == raw[2 * CHUNK:]
        assert {s.headers["x-goog-hash"] for s in gcs_proxy.requests("PUT", "/upload/")} == \
            {f"md5={md5_b64(raw)}"}
    else:
        info = await watched.upload("k/cut.bin", raw)
        assert chunk_puts(gcs_proxy) == [
            f"bytes 0-{6 * CHUNK - 1}/*", "bytes */*", f"bytes {2 * CHUNK}-{6 * CHUNK - 1}/*",
            f"bytes {6 * CHUNK}-{size - 1}/{size}"]
        assert gcs_proxy.requests("PUT", "/upload/")[2].body == raw[2 * CHUNK:6 * CHUNK]
    assert info.etag == sha256(raw)
    assert sha256(await watched.download("k/cut.bin")) == sha256(raw)


async def test_a_streamed_put_that_keeps_failing_ends_the_upload(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    await watched.upload("k/key.bin", b"old object")
    gcs_proxy.answer(lambda s: is_chunk(s) and s.headers["content-range"].endswith("/*")
                     and not s.headers["content-range"].startswith("bytes */"), 503,
                     {"error": {"code": 503, "message": "backend error"}}, times=9)
    with pytest.raises(StorageUnavailableError) as exc:
        await watched.upload("k/key.bin", os.urandom(4 * CHUNK))
    assert exc.value.details["status"] == 503
    assert chunk_puts(gcs_proxy) == [f"bytes 0-{3 * CHUNK - 1}/*", "bytes */*"] * 2 + [
        f"bytes 0-{3 * CHUNK - 1}/*"]
    assert [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert await watched.download("k/key.bin") == b"old object"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def finalizes(seen: Seen) -> bool:
    return is_chunk(seen) and not seen.headers["content-range"].endswith("/*")


GCS_MD5_MISMATCH = {"error": {"code": 400, "message": (
    'Provided MD5 hash "n8mVlrc0lmnHu7J8Ye81iA==" doesn\'t match calculated MD5 hash '
    '"1B2M2Y8AsgTpgAmY7PhCfg==".'), "errors": [{"domain": "global", "reason": "invalid",
    "message": 'Provided MD5 hash "n8mVlrc0lmnHu7J8Ye81iA==" doesn\'t match calculated MD5 '
               'hash "1B2M2Y8AsgTpgAmY7PhCfg==".'}]}}


async def test_a_chunk_answered_503_is_resent_after_a_status_query(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(3 * CHUNK + 10)
    gcs_proxy.answer(lambda s: is_chunk(s) and s.headers["content-range"].startswith(
        f"bytes {CHUNK}-"), 503, {"error": {"code": 503, "message": "backend error"}})
    info = await watched.upload("a/resent.bin", chunked(raw, 64 * KiB))
    assert chunk_puts(gcs_proxy) == [
        f"bytes 0-{CHUNK - 1}/*", f"bytes {CHUNK}-{2 * CHUNK - 1}/*",  # the 503
        "bytes */*",  # the status query: the session holds the first chunk
        f"bytes {CHUNK}-{2 * CHUNK - 1}/*", f"bytes {2 * CHUNK}-{3 * CHUNK - 1}/*",
        f"bytes {3 * CHUNK}-{len(raw) - 1}/{len(raw)}"]
    assert info.etag == sha256(raw)
    assert sha256(await watched.download("a/resent.bin")) == sha256(raw)


async def test_a_chunk_cut_mid_body_resends_only_what_the_server_lacks(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    """The connection drops after the server persisted half of a 512 KiB chunk, then again
    during the finalize: each time the status query says where the session ends, and only
    the rest is sent (from the chunk still in memory)."""
    raw = os.urandom(5 * CHUNK + 123)
    async with make_driver(gcs_proxy.endpoint, watched.bucket, None, chunk_size=2 * CHUNK,
                           resumable_threshold=2 * CHUNK) as driver:
        gcs_proxy.cut(lambda s: is_chunk(s) and s.headers["content-range"].startswith(
            f"bytes {2 * CHUNK}-"), keep=CHUNK)
        gcs_proxy.cut(finalizes, keep=0)
        info = await driver.upload("a/cut.bin", chunked(raw, 100 * KiB), "text/x-cut")
    size = len(raw)
    assert chunk_puts(gcs_proxy) == [
        f"bytes 0-{2 * CHUNK - 1}/*",
        f"bytes {2 * CHUNK}-{4 * CHUNK - 1}/*", "bytes */*",  # cut after 256 KiB
        f"bytes {3 * CHUNK}-{4 * CHUNK - 1}/*",  # only the second half again
        f"bytes {4 * CHUNK}-{size - 1}/{size}", f"bytes */{size}",  # cut before any byte
        f"bytes {4 * CHUNK}-{size - 1}/{size}"]
    assert info.size == size
    assert sha256(await watched.download("a/cut.bin")) == sha256(raw) == info.etag
    assert (await watched.info("a/cut.bin")).content_type == "text/x-cut"


async def test_a_chunk_that_keeps_failing_ends_the_upload_after_max_attempts(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    await watched.upload("a/key.bin", b"old object")
    gcs_proxy.answer(lambda s: is_chunk(s) and s.headers["content-range"].startswith(
        f"bytes {CHUNK}-"), 503, {"error": {"code": 503, "message": "backend error"}}, times=9)
    with pytest.raises(StorageUnavailableError) as exc:
        await watched.upload("a/key.bin", chunked(os.urandom(3 * CHUNK), CHUNK))
    assert exc.value.details["status"] == 503
    sends = [r for r in chunk_puts(gcs_proxy) if r.startswith(f"bytes {CHUNK}-")]
    assert len(sends) == watched.max_attempts
    assert chunk_puts(gcs_proxy).count("bytes */*") == watched.max_attempts - 1
    assert [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert await watched.download("a/key.bin") == b"old object"


async def test_the_finalize_carries_the_md5_of_the_whole_content(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    for raw in (os.urandom(2 * CHUNK + 77), os.urandom(2 * CHUNK)):  # short last chunk, aligned
        gcs_proxy.seen.clear()
        await watched.upload("h/hashed.bin", chunked(raw, 50 * KiB))
        [final] = [s for s in gcs_proxy.seen if finalizes(s)]
        assert final.headers["x-goog-hash"] == f"md5={md5_b64(raw)}"
        assert all("x-goog-hash" not in s.headers for s in gcs_proxy.seen if s is not final)


async def test_a_finalize_rejected_for_its_md5_keeps_the_previous_object(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    """GCS compares the X-Goog-Hash of the finalize with what it received and refuses to
    store the object (400 invalid); the proxy answers as GCS does."""
    await watched.upload("h/key.bin", b"previous version")
    gcs_proxy.answer(finalizes, 400, GCS_MD5_MISMATCH)
    raw = os.urandom(2 * CHUNK + 5)
    with pytest.raises(ChecksumMismatchError) as exc:
        await watched.upload("h/key.bin", raw)
    assert (exc.value.backend, exc.value.key) == ("gcs-test", "h/key.bin")
    assert exc.value.details["algorithm"] == "md5"
    assert exc.value.details["status"] == 400
    assert "doesn't match calculated MD5" in str(exc.value)
    [final] = [s for s in gcs_proxy.seen if finalizes(s)]
    assert final.headers["x-goog-hash"] == f"md5={md5_b64(raw)}"
    assert [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert not [s for s in gcs_proxy.requests("DELETE") if "upload_id" not in s.query]
    assert await watched.download("h/key.bin") == b"previous version"


async def test_a_single_upload_rejected_for_its_md5_is_a_checksum_mismatch(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    await watched.upload("h/small.txt", b"previous")
    gcs_proxy.answer(lambda s: s.method == "POST" and "/upload/" in s.path, 400,
                     GCS_MD5_MISMATCH)
    with pytest.raises(ChecksumMismatchError) as exc:
        await watched.upload("h/small.txt", b"new bytes")
    assert exc.value.key == "h/small.txt"
    assert len(gcs_proxy.requests("POST", "/upload/")) == 2  # a 400 is not retried
    assert await watched.download("h/small.txt") == b"previous"


async def test_a_corrupted_chunk_is_detected_by_the_servers_md5(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    """The second line, for a server that ignores X-Goog-Hash (fake-gcs-server 1.54 stores
    the corrupted bytes): the MD5 it reports for them differs, and the object is removed."""
    gcs_proxy.corrupt(is_chunk)
    with pytest.raises(ChecksumMismatchError, match="md5") as exc:
        await watched.upload("a/corrupt.bin", os.urandom(2 * CHUNK + 1))
    assert exc.value.details["algorithm"] == "md5"
    assert not await watched.exists("a/corrupt.bin")  # the stored object was removed


# ---------------------------------------------------------------- create-only


async def test_create_only_single_requests_have_one_winner(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    async def attempt(i: int) -> int | None:
        try:
            await watched.upload("co/race.txt", f"writer {i}".encode(), if_none_match="*")
            return i
        except PreconditionFailedError:
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(16)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await watched.download("co/race.txt") == f"writer {winners[0]}".encode()
    posts = gcs_proxy.requests("POST", "/upload/")
    assert len(posts) == 16 and all(p.query["ifGenerationMatch"] == "0" for p in posts)


async def test_create_only_resumable_upload_is_conditional_at_its_finalize(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    """The session is started with ifGenerationMatch=0; real GCS answers its finalize with
    412 when the object appeared meanwhile (fake-gcs-server does not check it on sessions,
    so the proxy answers as GCS would)."""
    await watched.upload("co/big.bin", b"first")
    gcs_proxy.answer(lambda s: is_chunk(s) and not s.headers["content-range"].endswith("/*"),
                     412, {"error": {"code": 412, "message": "At least one of the pre-conditions"
                                     " you specified did not hold.",
                                     "errors": [{"reason": "conditionNotMet"}]}})
    with pytest.raises(PreconditionFailedError) as exc:
        await watched.upload("co/big.bin", os.urandom(2 * CHUNK + 5), if_none_match="*")
    assert exc.value.code == "LEX_ERR_STORE_007"
    [start] = [s for s in gcs_proxy.requests("POST", "/upload/")
               if s.query.get("uploadType") == "resumable"]
    assert start.query["ifGenerationMatch"] == "0"
    assert [s for s in gcs_proxy.requests("DELETE") if "upload_id" in s.query]
    assert await watched.download("co/big.bin") == b"first"


# ---------------------------------------------------------------- reading, listing, copy, delete


async def test_a_ranged_stream_asks_for_the_range_and_arrives_in_chunks(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(3 * MiB)
    await watched.upload("big.bin", raw)
    gcs_proxy.seen.clear()
    chunks = [c async for c in watched.stream("big.bin", 64 * KiB, offset=10, length=2 * MiB)]
    assert b"".join(chunks) == raw[10:10 + 2 * MiB]
    assert len(chunks) >= 32 and all(len(c) <= 64 * KiB for c in chunks)
    [read] = gcs_proxy.seen
    assert (read.query, read.headers["range"]) == ({"alt": "media"}, f"bytes=10-{2 * MiB + 9}")



async def test_listing_follows_page_tokens_and_reads_no_object(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    keys = [f"p/{i:02d}" for i in range(10)] + ["p/sub/a", "p/sub/b", "q"]
    await asyncio.gather(*(watched.upload(k, k.encode(), metadata={"n": k[-1]}) for k in keys))
    watched.list_page_size = 3
    gcs_proxy.seen.clear()
    listed = [i async for i in watched.list("p/")]
    assert [i.path for i in listed] == sorted(k for k in keys if k.startswith("p/"))
    assert all(i.metadata == {"n": i.path[-1]} and i.etag == sha256(i.path.encode())
               for i in listed)
    pages = gcs_proxy.requests("GET", "/o")
    assert len(pages) == 4  # 12 objects, 3 per page
    assert all(p.path.endswith("/o") for p in pages)  # no request per object
    assert "pageToken" not in pages[0].query and all("pageToken" in p.query for p in pages[1:])
    after = [i.path async for i in watched.list("p/", start_after="p/04", limit=4)]
    assert after == ["p/05", "p/06", "p/07", "p/08"]
    listing = await watched.list_dir("p/")
    assert [f.path for f in listing.files] == [f"p/{i:02d}" for i in range(10)]
    assert listing.prefixes == ["p/sub/"]


async def test_clear_and_delete_many_delete_concurrently_and_report_failures(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    keys = [f"d/{i:02d}" for i in range(12)]
    await asyncio.gather(*(watched.upload(k, b"x") for k in keys))
    gcs_proxy.answer(lambda s: s.method == "DELETE" and s.path.endswith("/d%2F03"), 403,
                     {"error": {"code": 403, "message": "denied"}}, times=99)
    with pytest.raises(StoragePartialDeleteError) as exc:
        await watched.delete_many([*keys[:6], "d/missing"])
    assert list(exc.value.failed) == ["d/03"]
    assert "denied" in exc.value.failed["d/03"]
    assert exc.value.deleted == ["d/00", "d/01", "d/02", "d/04", "d/05", "d/missing"]
    gcs_proxy.seen.clear()
    with pytest.raises(StoragePartialDeleteError):
        await watched.clear("d/")
    assert [i.path async for i in watched.list()] == ["d/03"]
    assert not [s for s in gcs_proxy.seen if s.method == "GET" and "/o/" in s.path]


async def test_copy_continues_a_rewrite_until_done(watched: GCSDriver,
                                                   gcs_proxy: FaultProxy) -> None:
    raw = os.urandom(3000)
    await watched.upload("c/src.bin", raw, "image/png", metadata={"k": "v"},
                         cache_control="max-age=5")
    gcs_proxy.answer(lambda s: "/rewriteTo/" in s.path, 200,
                     {"kind": "storage#rewriteResponse", "done": False, "rewriteToken": "tok-1",
                      "totalBytesRewritten": "1024", "objectSize": "3000"})
    info = await watched.copy("c/src.bin", "c/dst.bin")
    calls = gcs_proxy.requests("POST", "/rewriteTo/")
    assert [c.query.get("rewriteToken") for c in calls] == [None, "tok-1"]
    assert (info.etag, info.metadata, info.content_type) == (sha256(raw), {"k": "v"}, "image/png")
    stored = await watched.info("c/dst.bin")
    assert (stored.etag, stored.metadata, stored.cache_control) == \
        (sha256(raw), {"k": "v"}, "max-age=5")
    assert await watched.download("c/dst.bin") == raw


# ---------------------------------------------------------------- signed URLs


def public_key_of(service_file: str) -> rsa.RSAPublicKey:
    pem = json.loads(Path(service_file).read_text())["private_key"].encode()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


def verify_v4_signature(url: str, method: str, key: rsa.RSAPublicKey,
                        headers: dict[str, str] | None = None) -> dict[str, str]:
    """Recompute the V4 string to sign from the URL alone (Google's canonical request rules)
    and check the signature with the public key; return the query parameters."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Goog-Signature")
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted(query.items()))
    signed = query["X-Goog-SignedHeaders"].split(";")
    sent = {"host": parts.netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
    canonical_request = "\n".join([
        method, parts.path, canonical_query, "".join(f"{h}:{sent[h]}\n" for h in signed),
        ";".join(signed), "UNSIGNED-PAYLOAD"])
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope,
                         hashlib.sha256(canonical_request.encode()).hexdigest()])
    key.verify(bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    return query


async def test_signed_get_and_put_urls(store: GCSDriver, gcs_server: GcsSettings,
                                       gcs_bucket: str) -> None:
    key = public_key_of(gcs_server.service_file)
    await store.upload("p/report 1.csv", b"a,b\n1,2\n")
    url = await store.get_presigned_url(
        "p/report 1.csv", 300, response_content_disposition='attachment; filename="r.csv"',
        response_content_type="text/plain")
    assert url.startswith(f"{gcs_server.endpoint_url}/{gcs_bucket}/p/report%201.csv?")
    query = verify_v4_signature(url, "GET", key)
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == "300"
    assert query["X-Goog-SignedHeaders"] == "host"
    assert query["response-content-disposition"] == 'attachment; filename="r.csv"'
    email, date, region, service, kind = query["X-Goog-Credential"].split("/")
    assert (email, region, service, kind) == \
        ("tester@test.iam.gserviceaccount.com", "auto", "storage", "goog4_request")
    assert query["X-Goog-Date"].startswith(date)
    tampered = url.replace("X-Goog-Expires=300", "X-Goog-Expires=600")
    with pytest.raises(InvalidSignature):
        verify_v4_signature(tampered, "GET", key)
    put_url = await store.get_presigned_url("p/up load.json", timedelta(minutes=5), "PUT",
                                            content_type="application/json")
    put_query = verify_v4_signature(put_url, "PUT", key, {"Content-Type": "application/json"})
    assert put_query["X-Goog-SignedHeaders"] == "content-type;host"
    with pytest.raises(InvalidSignature):  # the signed content type is part of the signature
        verify_v4_signature(put_url, "PUT", key, {"Content-Type": "text/html"})
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:  # the emulator serves it (it checks no signature)
            assert response.status == 200
            assert await response.read() == b"a,b\n1,2\n"
        async with http.put(put_url, data=b'{"x": 1}',
                            headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200
    assert await store.download("p/up load.json") == b'{"x": 1}'
    with pytest.raises(StorageUnsupportedOperationError, match="response_content_type"):
        await store.get_presigned_url("p/report 1.csv", 60, "PUT", response_content_type="x")


async def test_no_signed_url_without_a_key(gcs_server: GcsSettings, gcs_bucket: str) -> None:
    async with make_driver(gcs_server.endpoint_url, gcs_bucket, None) as anonymous:
        await anonymous.upload("k.txt", b"x")
        with pytest.raises(StorageUnsupportedOperationError) as exc:
            await anonymous.get_presigned_url("k.txt", 60)
        assert "no credentials to sign with" in exc.value.message
        assert "credentials_path" in (exc.value.hint or "")


async def test_urls_signed_through_iam_sign_blob_under_keyless_credentials(
        gcs_server: GcsSettings, gcs_bucket: str, tmp_path: Path) -> None:
    """Impersonated Application Default Credentials hold no private key: the driver asks the
    IAM Credentials API (a local one, signing with a key the test made) to sign as the service
    account; the signature is checked with that key's public half, and the emulator serves
    the URLs."""
    email = "signer@test.iam.gserviceaccount.com"
    iam = TokenServer()
    try:
        adc = make_impersonated_credentials_file(tmp_path / "adc.json", iam, email)
        async with make_driver(gcs_server.endpoint_url, gcs_bucket, str(adc),
                               iam_endpoint_url=iam.base_url) as driver:
            await driver.upload("iam/report.csv", b"a,b\n")
            url = await driver.get_presigned_url("iam/report.csv", 120,
                                                 response_content_type="text/plain")
            put_url = await driver.get_presigned_url("iam/up.txt", 120, "PUT",
                                                     content_type="text/plain")
            assert driver._private_key is None  # nothing was signed locally
        public = iam.signing_key.public_key()
        query = verify_v4_signature(url, "GET", public)
        assert query["X-Goog-Credential"].split("/")[0] == email
        assert query["response-content-type"] == "text/plain"
        verify_v4_signature(put_url, "PUT", public, {"Content-Type": "text/plain"})
        with pytest.raises(InvalidSignature):  # another key did not sign it
            verify_v4_signature(url, "GET", rsa.generate_private_key(
                public_exponent=65537, key_size=2048).public_key())
        # as the service account, with the token its impersonation granted
        assert iam.sign_requests == [(email, f"Bearer {IMPERSONATED_TOKEN}")] * 2
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert (response.status, await response.read()) == (200, b"a,b\n")
            async with http.put(put_url, data=b"put through IAM",
                                headers={"Content-Type": "text/plain"}) as response:
                assert response.status == 200
        async with make_driver(gcs_server.endpoint_url, gcs_bucket, None) as reader:
            assert await reader.download("iam/up.txt") == b"put through IAM"
    finally:
        iam.close()


async def test_iam_refusing_to_sign_gives_no_url(
        gcs_server: GcsSettings, gcs_bucket: str, tmp_path: Path) -> None:
    email = "signer@test.iam.gserviceaccount.com"
    iam = TokenServer()
    iam.deny_signing()
    try:
        adc = make_impersonated_credentials_file(tmp_path / "adc.json", iam, email)
        async with make_driver(gcs_server.endpoint_url, gcs_bucket, str(adc),
                               iam_endpoint_url=iam.base_url) as driver:
            with pytest.raises(StoragePermissionError) as exc:
                await driver.get_presigned_url("iam/report.csv", 120)
        assert "signBlob" in str(exc.value) and email in str(exc.value)
        assert "403" in str(exc.value) and "denied" in str(exc.value)
        assert "roles/iam.serviceAccountTokenCreator" in (exc.value.hint or "")
        assert exc.value.details["status"] == 403
        assert isinstance(exc.value.__cause__, aiohttp.ClientResponseError)
        assert len(iam.sign_requests) == 1  # a refusal is not retried
    finally:
        iam.close()


async def test_get_url_forms(gcs_server: GcsSettings) -> None:
    emulator = make_driver(gcs_server.endpoint_url, "my-bucket", None)
    assert await emulator.get_url("a b/c.txt") == \
        f"{gcs_server.endpoint_url}/my-bucket/a%20b/c.txt"
    cdn = GCSDriver("my-bucket", public_url="https://cdn.example.com/")
    assert await cdn.get_url("img/1 2.png") == "https://cdn.example.com/img/1%202.png"
    google = GCSDriver("my-bucket")
    assert await google.get_url("k") == "https://storage.googleapis.com/my-bucket/k"


# ---------------------------------------------------------------- credentials


async def test_requests_carry_the_service_accounts_token(
        watched: GCSDriver, gcs_proxy: FaultProxy, gcs_token_server: TokenServer,
        gcs_server: GcsSettings, gcs_bucket: str) -> None:
    grants = gcs_token_server.grants
    await watched.upload("t.txt", b"x")
    await watched.download("t.txt")
    assert gcs_proxy.seen
    assert {s.headers.get("authorization") for s in gcs_proxy.seen} == {f"Bearer {ACCESS_TOKEN}"}
    assert gcs_token_server.grants == grants + 1  # one token, reused
    async with make_driver(gcs_proxy.endpoint, gcs_bucket, None) as anonymous:
        gcs_proxy.seen.clear()
        assert await anonymous.download("t.txt") == b"x"
        assert "authorization" not in gcs_proxy.seen[0].headers


async def test_unreadable_credentials_fail_at_boot(gcs_server: GcsSettings, tmp_path: Path) -> None:
    driver = make_driver(gcs_server.endpoint_url, "b", str(tmp_path / "missing.json"))
    with pytest.raises(StorageConfigurationError, match=r"missing\.json"):
        await driver.prepare()
    await driver.close()


# ---------------------------------------------------------------- errors and retries


async def test_missing_bucket(gcs_server: GcsSettings) -> None:
    async with make_driver(gcs_server.endpoint_url, "no-such-bucket", None) as driver:
        for call in (driver.upload("a.txt", b"x"), driver.upload("b.bin", os.urandom(CHUNK + 1))):
            with pytest.raises(StorageBucketNotFoundError) as exc:
                await call
            assert exc.value.__cause__ is not None
        with pytest.raises(StorageBucketNotFoundError):
            _ = [i async for i in driver.list()]
        health = await driver.health_check(timeout=5)
        assert health.status == HealthStatus.UNHEALTHY
        assert "does not exist" in (health.error or "")


async def test_transient_answers_are_retried_with_backoff(
        watched: GCSDriver, gcs_proxy: FaultProxy) -> None:
    await watched.upload("r.txt", b"data")
    gcs_proxy.seen.clear()
    reads = lambda s: s.method == "GET" and s.query.get("alt") == "media"  # noqa: E731
    gcs_proxy.answer(reads, 503, {"error": {"code": 503, "message": "try again"}})
    gcs_proxy.answer(reads, 429, {"error": {"code": 429, "message": "slow down"}})
    assert await watched.download("r.txt") == b"data"
    assert len(gcs_proxy.seen) == 3
    gcs_proxy.answer(reads, 503, {"error": {"code": 503, "message": "still down"}}, times=3)
    with pytest.raises(StorageUnavailableError, match="still down") as exc:
        await watched.download("r.txt")
    assert exc.value.details["status"] == 503
    assert isinstance(exc.value.__cause__, aiohttp.ClientResponseError)
    assert len(gcs_proxy.seen) == 3 + watched.max_attempts


@pytest.mark.parametrize(("status", "error"), [
    (403, StoragePermissionError), (401, StoragePermissionError),
    (400, StorageRequestRejectedError), (412, PreconditionFailedError),
])
async def test_definite_answers_are_not_retried(watched: GCSDriver, gcs_proxy: FaultProxy,
                                                status: int, error: type[Exception]) -> None:
    await watched.upload("r.txt", b"data")
    gcs_proxy.seen.clear()
    gcs_proxy.answer(lambda s: s.method == "GET", status,
                     {"error": {"code": status, "message": "no way",
                                "errors": [{"reason": "someReason"}]}}, times=9)
    with pytest.raises(error) as exc:
        await watched.download("r.txt")
    assert not isinstance(exc.value, StorageUnavailableError)
    assert exc.value.details["status"] == status  # type: ignore[attr-defined]
    assert exc.value.details["error_code"] == "someReason"  # type: ignore[attr-defined]
    assert "r.txt" in str(exc.value) and "no way" in str(exc.value)
    assert len(gcs_proxy.seen) == 1


async def test_a_create_only_upload_is_never_resent(watched: GCSDriver,
                                                    gcs_proxy: FaultProxy) -> None:
    """A resent create-only request whose first copy was stored would fail with 412."""
    gcs_proxy.answer(lambda s: s.method == "POST", 503, {"error": {"code": 503}}, times=9)
    with pytest.raises(StorageUnavailableError):
        await watched.upload("co.txt", b"x", if_none_match="*")
    assert len(gcs_proxy.requests("POST")) == 1
    gcs_proxy.seen.clear()
    with pytest.raises(StorageUnavailableError):
        await watched.upload("plain.txt", b"x")
    assert len(gcs_proxy.requests("POST")) == watched.max_attempts


async def test_stopped_server_is_unavailable(gcs_server_factory: Callable[[], GcsSettings]
                                             ) -> None:
    s = gcs_server_factory()
    create_gcs_bucket(s, "bkt")
    async with make_driver(s.endpoint_url, "bkt", None, max_attempts=2) as driver:
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        s.emulator.stop()
        for call in (driver.download("k.txt"), driver.upload("k2.txt", b"y"),
                     driver.exists("k.txt")):
            with pytest.raises(StorageUnavailableError) as exc:
                await asyncio.wait_for(call, 20)
            assert exc.value.code == "LEX_ERR_STORE_010"
            assert isinstance(exc.value.__cause__, aiohttp.ClientConnectorError)
        health = await driver.health_check(timeout=3)
        assert health.status == HealthStatus.UNHEALTHY


async def test_paused_server_never_hangs_a_read_or_a_write(
        gcs_server_factory: Callable[[], GcsSettings]) -> None:
    s = gcs_server_factory()
    create_gcs_bucket(s, "bkt")
    async with make_driver(s.endpoint_url, "bkt", None, connect_timeout=1, read_timeout=1,
                           max_attempts=2, chunk_size=8 * MiB) as driver:
        big = os.urandom(48 * MiB)
        await driver.upload("big.bin", big)
        await driver.upload("k.txt", b"x")
        assert s.emulator is not None
        stream = driver.stream("big.bin", chunk_size=64 * KiB)
        assert len(await anext(stream)) > 0  # the answer's body is flowing
        s.emulator.pause()
        try:
            async def rest_of_stream() -> None:
                async for _ in stream:
                    pass

            calls: list[tuple[str, Callable[[], Any]]] = [
                ("stream mid-body", rest_of_stream),
                ("read", lambda: driver.download("k.txt")),
                ("write", lambda: driver.upload("w.txt", b"y" * 1000)),
                ("resumable write", lambda: driver.upload("m.bin", os.urandom(3 * CHUNK))),
                ("info", lambda: driver.info("k.txt")),
                ("list", lambda: driver.list_dir("")),
            ]
            for label, call in calls:
                t0 = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    await asyncio.wait_for(call(), 20)  # the safety net must never fire
                assert time.monotonic() - t0 < 8, label
            health = await driver.health_check(timeout=1)
            assert health.status == HealthStatus.UNHEALTHY
        finally:
            s.emulator.resume()
            await stream.aclose()
        assert await driver.download("k.txt") == b"x"  # back once the server is


async def test_a_server_paused_mid_upload_never_hangs_a_chunk(
        gcs_server_factory: Callable[[], GcsSettings]) -> None:
    """The session is open and a 32 MiB chunk (more than the socket buffers take) goes to a
    server that stopped reading: the upload fails within the timeouts, and nothing is stored."""
    s = gcs_server_factory()
    create_gcs_bucket(s, "bkt")
    assert s.emulator is not None
    emulator = s.emulator
    async with make_driver(s.endpoint_url, "bkt", None, connect_timeout=1, read_timeout=1,
                           max_attempts=1, chunk_size=32 * MiB) as driver:
        async def source() -> AsyncIterator[bytes]:
            yield os.urandom(32 * MiB)  # the session starts, the first chunk is on its way...
            emulator.pause()  # ...to a server that stops reading
            yield os.urandom(MiB)

        try:
            with pytest.raises(StorageUnavailableError):  # the 30 s safety net never fires
                await asyncio.wait_for(driver.upload("p.bin", source()), 30)
        finally:
            emulator.resume()
        assert not await driver.exists("p.bin")


# ---------------------------------------------------------------- objects written by others


async def test_objects_without_our_digest_report_the_servers_md5(
        store: GCSDriver, gcs_server: GcsSettings, gcs_bucket: str) -> None:
    raw = b"written by another client"
    async with aiohttp.ClientSession() as http, http.post(
            f"{gcs_server.endpoint_url}/upload/storage/v1/b/{gcs_bucket}/o",
            params={"uploadType": "media", "name": "foreign.txt"}, data=raw,
            headers={"Content-Type": "text/plain"}) as response:
        assert response.status == 200
    info = await store.info("foreign.txt")
    assert info.etag == hashlib.md5(raw).hexdigest()
    assert info.metadata == {}
    [listed] = [i async for i in store.list("foreign")]
    assert listed.etag == info.etag
    mine = await store.upload("mine.txt", raw, metadata={"a": "1"})
    assert (await store.info("mine.txt")).metadata == {"a": "1"} == mine.metadata


# ---------------------------------------------------------------- health, configuration, lifecycle


async def test_health_check_reads_the_bucket(store: GCSDriver, gcs_server: GcsSettings) -> None:
    result = await store.health_check()
    assert result.status == HealthStatus.HEALTHY, result.error
    assert result.details is not None
    assert result.details["endpoint"] == gcs_server.endpoint_url
    assert result.details["bucket"] == store.bucket
    assert result.details["latency_ms"] >= 0


def test_configuration_errors() -> None:
    for bad in ({"chunk_size": 300 * KiB}, {"chunk_size": 128 * KiB}, {"max_concurrency": 0},
                {"read_timeout": 0}, {"max_attempts": 0}, {"resumable_threshold": 0},
                {"bucket": ""}):
        values = {"bucket": "b", **bad}
        with pytest.raises(ValidationError):
            StorageGCSConfig(**values)
        with pytest.raises(StorageConfigurationError, match=next(iter(bad))):
            GCSDriver(**values)  # type: ignore[arg-type]
    with pytest.raises(StorageConfigurationError, match="timeout"):
        GCSDriver("b", timeout=5)  # the network block's connect_timeout/read_timeout instead


def test_constructor_defaults_are_the_configuration_defaults() -> None:
    block = StorageGCSConfig(bucket="b", credentials_path="/sa.json")
    built = GCSDriver.from_config(block, name="x")
    direct = GCSDriver("b", credentials_path="/sa.json", name="x")
    assert built.settings == direct.settings == block
    defaults = {name: p.default for name, p in inspect.signature(GCSDriver).parameters.items()
                if p.default is not inspect.Parameter.empty and p.default is not None}
    for name, value in defaults.items():
        if name in block.model_fields:
            assert getattr(block, name) == value, name


async def test_close_releases_the_session(gcs_server: GcsSettings, gcs_bucket: str) -> None:
    driver = make_driver(gcs_server.endpoint_url, gcs_bucket, gcs_server.service_file)
    await driver.upload("c.txt", b"x")
    session = driver._session
    assert session is not None and not session.closed
    await driver.close()
    assert session.closed and driver._session is None
    await driver.close()  # idempotent
    with pytest.raises(StorageUnavailableError, match="closed"):
        await driver.download("c.txt")


async def test_gcs_backend_from_configuration_in_an_application(
        gcs_server: GcsSettings, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lexigram import Application
    from lexigram.contracts.infra.storage import BlobStoreProtocol
    from lexigram.di.module import Module, module

    from lexigram_storage.config import StorageConfig
    from lexigram_storage.module import StorageModule

    monkeypatch.setenv("LEX_STORAGE__DEFAULT_DRIVER", "gcs")
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__GCS__BUCKET", gcs_bucket)
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__GCS__ENDPOINT_URL", gcs_server.endpoint_url)
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__GCS__CREDENTIALS_PATH", gcs_server.service_file)
    monkeypatch.setenv("LEX_STORAGE__DRIVERS__GCS__CHUNK_SIZE", str(CHUNK))
    config = StorageConfig()

    @module(imports=[StorageModule.configure(config)])
    class AppModule(Module):
        pass

    app = Application(name="gcs-di")
    app.add_module(AppModule)
    await app.start()
    try:
        store = await app.container.resolve(BlobStoreProtocol)
        assert type(store) is GCSDriver
        assert (store.name, store.bucket, store.chunk_size) == ("gcs", gcs_bucket, CHUNK)
        await store.upload("x.txt", b"from gcs")
        assert await store.download("x.txt") == b"from gcs"
    finally:
        await app.stop()
    assert store._session is None
