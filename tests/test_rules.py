"""The rules every driver shares: keys (surrogates), the metadata and header rule, payload
kinds (text-mode files), S3's error mapping and the commit helper of the cancellation
guarantee. The conformance suite proves each rule on every driver; these pin the rule itself."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    ParamValidationError,
    ReadTimeoutError,
)
from lexigram.contracts.infra.storage import StorageError

from lexigram_storage import MemoryDriver
from lexigram_storage.drivers.base import await_to_end
from lexigram_storage.drivers.s3 import map_s3_error
from lexigram_storage.errors import (
    InvalidPathError,
    InvalidPayloadError,
    InvalidUploadOptionError,
    PreconditionFailedError,
    StorageBucketNotFoundError,
    StorageFileNotFoundError,
    StoragePermissionError,
    StorageRequestRejectedError,
    StorageUnavailableError,
)
from lexigram_storage.keys import validate_key, validate_prefix
from lexigram_storage.payload import (
    MAX_HEADER_VALUE_CHARS,
    MAX_METADATA_BYTES,
    Payload,
    UploadRequest,
)

# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["a\ud800b", "\udfff", "dir/\udc80.txt", "ok/" + "\ud83d"])
def test_lone_surrogates_break_the_key_rule(key: str) -> None:
    with pytest.raises(InvalidPathError, match="lone surrogates") as exc:
        validate_key(key, "mem")
    assert exc.value.message.startswith("mem: ")
    with pytest.raises(InvalidPathError, match="lone surrogates"):
        validate_prefix(key, "mem")


def test_paired_surrogates_are_ordinary_characters() -> None:
    assert validate_key("smile/😁.png") == "smile/😁.png"
    assert validate_prefix("smile/😁") == "smile/😁"


async def test_surrogate_keys_never_reach_a_driver() -> None:
    async with MemoryDriver(name="mem") as store:
        with pytest.raises(InvalidPathError):
            await store.upload("a\ud800b", b"x")
        with pytest.raises(InvalidPathError):
            _ = [i async for i in store.list("a\ud800")]
        with pytest.raises(InvalidPathError):
            await store.list_dir("a\ud800/")
        assert [i async for i in store.list()] == []


# ---------------------------------------------------------------- metadata and headers


def build(**options: Any) -> UploadRequest:
    return UploadRequest.build("k.bin", None, options, backend="mem")


def test_metadata_names_are_lower_cased_identifiers() -> None:
    request = build(metadata={"Owner": "ann", "_x9": "1", "A_B": "2", "n": 3})
    assert request.metadata == {"owner": "ann", "_x9": "1", "a_b": "2", "n": "3"}


@pytest.mark.parametrize("name", ["trace-id", "9a", "", "a b", "a.b", "é", "lexigram", "LEXIGRAM_x",
                                  "x\n"])
def test_bad_metadata_names(name: str) -> None:
    with pytest.raises(InvalidUploadOptionError) as exc:
        build(metadata={name: "v"})
    assert exc.value.details["field"] == f"metadata[{name!r}]"
    assert f"metadata[{name!r}]" in exc.value.message
    assert exc.value.message.startswith("mem: ")
    assert "(key 'k.bin')" in exc.value.message


@pytest.mark.parametrize("value", ["", " a", "a ", "a\r\nb", "a\tb", "\x00", "\x7f", "é", "€",
                                   "x" * (MAX_HEADER_VALUE_CHARS + 1), None, 1.5, b"x", True])
def test_bad_metadata_values(value: Any) -> None:
    with pytest.raises(InvalidUploadOptionError, match=r"metadata\['a'\]"):
        build(metadata={"a": value})


def test_metadata_total_size() -> None:
    exact = {"a": "x" * 1000, "b": "y" * (MAX_METADATA_BYTES - 1000 - 2)}
    assert build(metadata=exact).metadata == exact
    with pytest.raises(InvalidUploadOptionError, match=f"the limit is {MAX_METADATA_BYTES}"):
        build(metadata={**exact, "c": "z"})


def test_every_printable_ascii_character_is_a_valid_value() -> None:
    value = "".join(chr(c) for c in range(0x21, 0x7F))
    assert build(metadata={"a": value, "b": "in ner"}).metadata == {"a": value, "b": "in ner"}


@pytest.mark.parametrize("field", ["content_type", "cache_control"])
@pytest.mark.parametrize("value", [" a/b", "a/b ", "a/b\r\n", "a/\x00", "ä/b",
                                   "a/" + "b" * (MAX_HEADER_VALUE_CHARS - 1)])
def test_bad_content_type_and_cache_control(field: str, value: str) -> None:
    with pytest.raises(InvalidUploadOptionError) as exc:
        build(**{field: value})
    assert exc.value.details["field"] == field
    assert isinstance(exc.value, ValueError)


def test_header_values_at_the_limit_and_empty_ones() -> None:
    longest = "a/" + "b" * (MAX_HEADER_VALUE_CHARS - 2)
    request = build(content_type=longest, cache_control=longest)
    assert (request.content_type, request.cache_control) == (longest, longest)
    request = build(content_type="", cache_control="")
    assert (request.content_type, request.cache_control) == ("application/octet-stream", None)


async def test_positional_content_type_is_checked_too() -> None:
    async with MemoryDriver(name="mem") as store:
        with pytest.raises(InvalidUploadOptionError, match="content_type"):
            await store.upload("a.txt", b"x", "text/plain\r\nX-Injected: 1")
        assert not await store.exists("a.txt")


# ---------------------------------------------------------------- payload kinds


def test_text_mode_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\nb")
    request = UploadRequest(content_type="text/plain")
    for source in (path.open("r"), io.StringIO("x")):
        with source, pytest.raises(TypeError, match=r"binary mode \('rb'\)") as exc:
            Payload(source, request, backend="mem", key="k")
        assert isinstance(exc.value, InvalidPayloadError)
        assert isinstance(exc.value, StorageError)


async def test_files_whose_read_returns_str_are_refused_while_read() -> None:
    class StrReader:  # a file-like object that is no io.TextIOBase
        def read(self, size: int = -1) -> str:
            return "text"

    payload = Payload(StrReader(), UploadRequest(content_type="x/y"), backend="mem", key="k")
    with pytest.raises(InvalidPayloadError, match="binary mode"):
        await payload.read_all()


async def test_str_chunks_of_iterators_stay_utf8() -> None:
    payload = Payload(iter(["é", b"x"]), UploadRequest(content_type="x/y"), backend="m", key="k")
    assert await payload.read_all() == "é".encode() + b"x"


# ---------------------------------------------------------------- S3 error mapping


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("status", "code", "expected"), [
    (400, "InvalidArgument", StorageRequestRejectedError),
    (400, "MetadataTooLarge", StorageRequestRejectedError),
    (400, "InvalidRequest", StorageRequestRejectedError),
    (400, "EntityTooSmall", StorageRequestRejectedError),
    (411, "MissingContentLength", StorageRequestRejectedError),
    (416, "InvalidRange", StorageRequestRejectedError),
    (400, "RequestTimeout", StorageUnavailableError),
    (429, "TooManyRequests", StorageUnavailableError),
    (503, "SlowDown", StorageUnavailableError),
    (500, "InternalError", StorageUnavailableError),
    (502, "", StorageUnavailableError),
    (403, "AccessDenied", StoragePermissionError),
    (403, "RequestTimeTooSkewed", StoragePermissionError),
    (404, "NoSuchKey", StorageFileNotFoundError),
    (404, "NoSuchBucket", StorageBucketNotFoundError),
    (412, "PreconditionFailed", PreconditionFailedError),
])
def test_s3_error_mapping(status: int, code: str, expected: type[StorageError]) -> None:
    exc = client_error(status, code)
    mapped = map_s3_error(exc, "s3", "bkt", "k")
    assert type(mapped) is expected
    assert mapped is not None and mapped.__cause__ is exc
    assert mapped.message.startswith("s3: ") and "'k'" in mapped.message


def test_s3_404_of_a_bucket_request_is_a_missing_bucket() -> None:
    mapped = map_s3_error(client_error(404, "404"), "s3", "bkt", None, bucket_request=True)
    assert type(mapped) is StorageBucketNotFoundError


def test_s3_client_side_failures() -> None:
    refused = HTTPClientError(error=ValueError("Forbidden control character in headers"))
    assert type(map_s3_error(refused, "s3", "b", "k")) is StorageRequestRejectedError
    invalid = ParamValidationError(report="Non ascii characters found in S3 metadata")
    assert type(map_s3_error(invalid, "s3", "b", "k")) is StorageRequestRejectedError
    reset = HTTPClientError(error=ConnectionResetError("reset by peer"))
    assert type(map_s3_error(reset, "s3", "b", "k")) is StorageUnavailableError
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert type(map_s3_error(down, "s3", "b", "k")) is StorageUnavailableError
    slow = ReadTimeoutError(endpoint_url="http://127.0.0.1:1")
    assert type(map_s3_error(slow, "s3", "b", "k")) is StorageUnavailableError
    assert map_s3_error(HTTPClientError(error=RuntimeError("odd")), "s3", "b", "k") is None
    assert map_s3_error(KeyError("x"), "s3", "b", "k") is None


# ---------------------------------------------------------------- await_to_end


async def test_await_to_end_finishes_the_work_and_consumes_cancellations() -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def commit() -> str:
        started.set()
        await asyncio.sleep(0.05)
        finished.append("done")
        return "stored"

    async def call() -> str:
        result = await await_to_end(commit())
        await asyncio.sleep(0)  # the task goes on normally afterwards
        return result

    task = asyncio.ensure_future(call())
    await started.wait()
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0)
    assert await task == "stored"
    assert finished == ["done"]


async def test_await_to_end_raises_the_works_error() -> None:
    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise OSError("commit failed")

    task = asyncio.ensure_future(await_to_end(failing()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(OSError, match="commit failed"):
        await task


async def test_asyncio_timeout_around_a_commit_exits_without_timeout_error() -> None:
    async def commit() -> str:
        await asyncio.sleep(0.05)
        return "stored"

    async with asyncio.timeout(0.01):
        result = await await_to_end(commit())
    assert result == "stored"
