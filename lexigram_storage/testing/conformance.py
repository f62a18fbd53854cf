"""The conformance suite: the definition of how every lexigram_storage store behaves.

Subclass :class:`DriverConformance` in a pytest module and provide an async ``store`` fixture
that yields a prepared, empty driver::

    import pytest_asyncio

    class TestMyDriver(DriverConformance):
        large_payload_size = 20 * 1024 * 1024 + 7  # above the multipart threshold

        @pytest_asyncio.fixture
        async def store(self, tmp_path):
            async with MyDriver(...) as driver:
                yield driver

The suite is made of mixins, one per area: :class:`WritingConformance`,
:class:`ReadingConformance`, :class:`ListingConformance`, :class:`CopyMoveConformance`,
:class:`DeletingConformance`, :class:`UrlConformance` and :class:`LargePayloadConformance`
(large payloads, cancellation, concurrency) call only the store API
(:class:`ConformanceStore`), so :class:`StoreConformance`, which combines them, runs over any
store that has it, ``BaseDriver`` or not. :class:`EventsConformance` and
:class:`PolicyConformance` need a ``BaseDriver`` (they set its ``events`` and ``policy``);
:class:`DriverConformance` is all of them.

What is checked depends on the store's capabilities (:class:`~lexigram_storage.Capability`):
the class attribute ``capabilities``, by default the store's own ``capabilities`` attribute
(every capability when it has none). An operation the store lacks must be refused with
``StorageUnsupportedOperationError``; a guarantee it lacks skips its checks. ``server_gaps``
names what a driver can do but the server behind it cannot (capability -> reason): those checks
are skipped with the reason.

``large_payload_size`` (bytes) is the size of the large uploads: set it to more than twice the
driver's multipart or staging threshold, so that a large upload has several parts and the
checks that stop one after three quarters of it stop it midway. ``pending_uploads(store)``
(default 0) reports the unfinished multipart uploads or staged files the store keeps: after
every large upload, failed or cancelled, it must be 0.

Requires pytest with pytest-asyncio; works in its default strict mode (every test carries the
``asyncio`` mark and the suite's own async fixtures are ``pytest_asyncio`` fixtures) and in auto
mode. Event tests use the real lexigram-events bus and are skipped when it is not installed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import importlib.util
import io
import os
import random
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
import pytest_asyncio
from lexigram.contracts.core.health import HealthCheckResult, HealthStatus
from lexigram.contracts.infra.storage import (
    BlobStoreProtocol,
    FileInfo,
    StorageDriverProtocol,
    StorageError,
    StorageUnsupportedOperationError,
    Uploadable,
    UploadOptions,
)

from lexigram_storage.capabilities import Capability
from lexigram_storage.drivers.base import BaseDriver
from lexigram_storage.errors import (
    ChecksumMismatchError,
    InvalidPathError,
    InvalidPayloadError,
    InvalidUploadOptionError,
    PreconditionFailedError,
    QuotaExceededError,
    StorageFileNotFoundError,
)
from lexigram_storage.events import (
    HOOK_OBJECT_DELETED,
    HOOK_OBJECT_STORED,
    FileDeletedEvent,
    FileDownloadedEvent,
    FileUploadedEvent,
    ObjectDeletedHook,
    ObjectStoredHook,
    StorageEvents,
)
from lexigram_storage.models import DirListing
from lexigram_storage.payload import MAX_HEADER_VALUE_CHARS, MAX_METADATA_BYTES, UploadPolicy

__all__ = [
    "BAD_KEYS",
    "ConformanceStore",
    "CopyMoveConformance",
    "DeletingConformance",
    "DriverConformance",
    "EventsConformance",
    "LargePayloadConformance",
    "ListingConformance",
    "PolicyConformance",
    "ReadingConformance",
    "StoreConformance",
    "UrlConformance",
    "WritingConformance",
]

BAD_KEYS = ["", "/abs", "a/../b", "../x", "./a", "a/./b", "a//b", "a/", "a\\b", "a\x00b",
            "tab\there", "x" * 1025, "é" * 513, "a\ud800b", "\udfff"]

_MiB = 1024 * 1024


class ConformanceStore(Protocol):
    """The store API the store mixins call: ``BlobStoreProtocol``, copy/move/copy_batch of
    ``StorageDriverProtocol`` (returning the new object's info), and lexigram_storage's
    ranged streams, paged listings, ``list_dir``, ``delete(missing_ok=)``, ``delete_many`` and
    ``clear``. Every ``BaseDriver`` has it."""

    async def upload(self, path: str, data: Uploadable,
                     content_type: UploadOptions | str | None = None, **options: Any) -> FileInfo: ...

    async def download(self, path: str) -> bytes: ...

    def stream(self, path: str, chunk_size: int = 8192, *, offset: int = 0,
               length: int | None = None) -> AsyncIterator[bytes]: ...

    async def exists(self, path: str) -> bool: ...

    async def info(self, path: str) -> FileInfo: ...

    def list(self, prefix: str = "", *, start_after: str | None = None,
             limit: int | None = None) -> AsyncIterator[FileInfo]: ...

    async def list_dir(self, prefix: str = "", delimiter: str = "/") -> DirListing: ...

    async def copy(self, src: str, dst: str) -> FileInfo: ...

    async def move(self, src: str, dst: str) -> FileInfo: ...

    async def copy_batch(self, operations: Iterable[tuple[str, str]]) -> builtins.list[str]: ...

    async def delete(self, path: str, missing_ok: bool = False) -> None: ...

    async def delete_many(self, paths: Iterable[str]) -> builtins.list[str]: ...

    async def clear(self, prefix: str = "") -> int: ...

    async def get_url(self, path: str) -> str: ...

    async def get_presigned_url(self, path: str,
                                expires_in: timedelta | int | float = timedelta(hours=1),
                                method: str = "GET", **options: Any) -> str: ...

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult: ...


def etag_of(data: bytes) -> str:
    """The etag every driver must report for *data* (its hex SHA-256)."""
    return hashlib.sha256(data).hexdigest()


async def agen(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


def sgen(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks


def pieces(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def read(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def names_store(store: Any, message: str) -> bool:
    """Whether *message* names the store (stores without a ``name`` pass)."""
    name = getattr(store, "name", None)
    return name is None or name in message


def caused_by(error: BaseException, cause: BaseException) -> bool:
    """Whether *cause* is *error* or in its chain of causes and contexts."""
    seen: BaseException | None = error
    while seen is not None:
        if seen is cause:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _SourceFailed(Exception):
    """Raised by a test's payload iterator midway."""


async def _stopping_source(data: bytes, stop_at: int, *, failure: BaseException | None = None,
                           stalled: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """Yield ``data[:stop_at]`` in 256 KiB chunks, then raise *failure*, or set *stalled* and
    wait until cancelled."""
    for start in range(0, stop_at, 256 * 1024):
        await asyncio.sleep(0)
        yield data[start:min(start + 256 * 1024, stop_at)]
    if failure is not None:
        raise failure
    assert stalled is not None
    stalled.set()
    await asyncio.Event().wait()


class _Recorder:
    """A real lexigram-events bus with subscribers recording what they received."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.received: list[Any] = []
        for event_type in (FileUploadedEvent, FileDownloadedEvent, FileDeletedEvent):
            self.bus.subscribe(event_type, self.received.append)

    def of(self, event_type: type) -> list[Any]:
        return [e for e in self.received if isinstance(e, event_type)]


@contextlib.asynccontextmanager
async def _recording(store: BaseDriver, bus: Any) -> AsyncIterator[_Recorder]:
    """Send the driver's events to *bus*, recorded, for the duration of the block."""
    recorder = _Recorder(bus)
    previous = store.events
    store.events = StorageEvents(bus=recorder.bus)
    try:
        yield recorder
    finally:
        await store.events.aclose()
        store.events = previous


def _event_bus() -> Any:
    return pytest.importorskip("lexigram.events.buses.event").EventBusImpl()


# Upload options the metadata and header rule refuses (payload.py), on every driver.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
BAD_UPLOAD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("name-hyphen", {"metadata": {"trace-id": "7"}}),
    ("name-digit-first", {"metadata": {"1st": "x"}}),
    ("name-empty", {"metadata": {"": "x"}}),
    ("name-space", {"metadata": {"a b": "x"}}),
    ("name-non-ascii", {"metadata": {"naïve": "x"}}),
    ("name-reserved", {"metadata": {"lexigram_sha256": "0" * 64}}),
    ("name-case-duplicate", {"metadata": {"Owner": "a", "owner": "b"}}),
    ("name-not-str", {"metadata": {1: "x"}}),
    ("value-non-ascii", {"metadata": {"city": "Zürich"}}),
    ("value-crlf", {"metadata": {"a": "x\r\nX-Injected: 1"}}),
    ("value-lf", {"metadata": {"a": "x\ny"}}),
    ("value-tab", {"metadata": {"a": "x\ty"}}),
    ("value-nul", {"metadata": {"a": "x\x00y"}}),
    ("value-del", {"metadata": {"a": "x\x7fy"}}),
    ("value-leading-space", {"metadata": {"a": " x"}}),
    ("value-trailing-space", {"metadata": {"a": "x "}}),
    ("value-empty", {"metadata": {"a": ""}}),
    ("value-none", {"metadata": {"a": None}}),
    ("value-too-long", {"metadata": {"a": "x" * (MAX_HEADER_VALUE_CHARS + 1)}}),
    ("metadata-10kb", {"metadata": {f"k{i}": "x" * 1000 for i in range(10)}}),
    ("metadata-total-plus-one", {"metadata": {"a": "x" * 1000,
                                              "b": "y" * (MAX_METADATA_BYTES - 1000 - 1)}}),
    ("content-type-crlf", {"content_type": "text/plain\r\nX-Injected: 1"}),
    ("content-type-non-ascii", {"content_type": "text/plàin"}),
    ("content-type-padded", {"content_type": " text/plain"}),
    ("content-type-too-long", {"content_type": "a/" + "b" * (MAX_HEADER_VALUE_CHARS - 1)}),
    ("cache-control-crlf", {"cache_control": "no-cache\r\nX-Injected: 1"}),
    ("cache-control-non-ascii", {"cache_control": "max-age=60, ünïcode"}),
    ("cache-control-padded", {"cache_control": "max-age=60 "}),
    ("cache-control-too-long", {"cache_control": "x" * (MAX_HEADER_VALUE_CHARS + 1)}),
    ("options-metadata", {"options": UploadOptions(metadata={"a": "x\ny"})}),
    ("options-content-type", {"options": UploadOptions(content_type="text/plain\n")}),
    ("options-cache-control", {"options": UploadOptions(cache_control="\x01")}),
    ("positional-content-type", {"positional": "image/png\r\n"}),
]


class ConformanceBase:
    """What every mixin shares: the capability model, the large payload size, the hooks."""

    pytestmark = [pytest.mark.asyncio]  # strict mode: no reliance on asyncio_mode = "auto"

    #: the capabilities to check; ``None``: the store's ``capabilities`` attribute, or every
    #: capability when it has none
    capabilities: ClassVar[frozenset[Capability] | None] = None
    #: capabilities the driver has but the server behind it lacks, with the reason: their
    #: checks are skipped, printing the reason
    server_gaps: ClassVar[Mapping[Capability, str]] = {}
    #: bytes of the large uploads: more than twice the multipart or staging threshold
    large_payload_size: ClassVar[int] = 3 * _MiB + 7

    def has(self, store: Any, capability: Capability) -> bool:
        """Whether the store has *capability*; skips the test when it is a server gap."""
        reason = self.server_gaps.get(capability)
        if reason is not None:
            pytest.skip(f"{capability.value}: {reason}")
        declared = self.capabilities
        if declared is None:
            declared = getattr(store, "capabilities", frozenset(Capability))
        return capability in declared

    def require(self, store: Any, capability: Capability) -> None:
        """Skip the test unless the store has the guarantee *capability*."""
        if not self.has(store, capability):
            pytest.skip(f"{capability.value}: not among the store's capabilities")

    async def refused(self, store: Any, call: Awaitable[Any]) -> None:
        """*call* (an operation the store lacks) raises StorageUnsupportedOperationError."""
        with pytest.raises(StorageUnsupportedOperationError) as exc:
            await call
        assert names_store(store, exc.value.message)

    async def pending_uploads(self, store: Any) -> int:
        """Unfinished multipart uploads (or staged temp files) the store keeps: 0 unless a
        test class counts them."""
        return 0


class WritingConformance(ConformanceBase):
    """Payload kinds, keys, content types, metadata and the header rule, checksums,
    create-only, text-mode files."""

    @pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "str", "bytesio",
                                      "file", "async_iter", "sync_iter", "empty"])
    async def test_round_trip_every_payload_kind(self, store: ConformanceStore, kind: str,
                                                 tmp_path: Path) -> None:
        raw = os.urandom(70_000)
        text = "héllo wörld ✓ " * 100
        expected = text.encode() if kind == "str" else (b"" if kind == "empty" else raw)
        chunks = pieces(raw, 1000)
        data: Any
        if kind == "bytes":
            data = raw
        elif kind == "bytearray":
            data = bytearray(raw)
        elif kind == "memoryview":
            data = memoryview(raw)
        elif kind == "str":
            data = text
        elif kind == "bytesio":
            data = io.BytesIO(raw)
        elif kind == "file":
            path = tmp_path / "src.bin"
            path.write_bytes(raw)
            data = path.open("rb")
        elif kind == "async_iter":
            data = agen(chunks)
        elif kind == "sync_iter":
            data = sgen(chunks)
        else:
            data = b""
        try:
            info = await store.upload(f"kinds/{kind}.bin", data)
        finally:
            if kind == "file":
                data.close()
        assert isinstance(info, FileInfo)
        assert info.path == f"kinds/{kind}.bin"
        assert info.size == len(expected)
        assert info.etag == etag_of(expected)
        assert await store.download(f"kinds/{kind}.bin") == expected
        assert await read(store.stream(f"kinds/{kind}.bin")) == expected

    async def test_overwrite_replaces_content_and_metadata(self, store: ConformanceStore) -> None:
        await store.upload("o.txt", b"first", metadata={"a": "1"}, cache_control="no-cache")
        await store.upload("o.txt", b"second")
        info = await store.info("o.txt")
        assert await store.download("o.txt") == b"second"
        assert info.size == 6
        assert info.etag == etag_of(b"second")
        assert not info.metadata
        assert getattr(info, "cache_control", None) is None

    async def test_info_fields(self, store: ConformanceStore) -> None:
        up = await store.upload("info/file.json", b'{"a": 1}')
        info = await store.info("info/file.json")
        assert info.path == "info/file.json"
        assert info.size == 8
        assert info.content_type == "application/json"
        assert info.etag == up.etag == etag_of(b'{"a": 1}')
        assert isinstance(info.last_modified, datetime)
        assert info.last_modified.tzinfo is not None

    async def test_unusual_valid_keys(self, store: ConformanceStore) -> None:
        keys = ["with space/ünïcödé ✓.txt", "..a/b..", "a/.hidden", "a+b=c&d?e#f%20.bin",
                "deep/" * 20 + "leaf", "x/" * 511 + "y"]
        for key in keys:
            await store.upload(key, key.encode())
        for key in keys:
            assert await store.exists(key)
            assert await store.download(key) == key.encode()
        # (their order is checked by test_listing_is_in_byte_order)
        assert sorted([i.path async for i in store.list()]) == sorted(keys)

    async def test_long_path_segments(self, store: ConformanceStore) -> None:
        self.require(store, Capability.LONG_SEGMENTS)
        keys = ["x" * 1024, "long/" + "é" * 200 + "/leaf.txt", "s" * 256 + "/" + "t" * 300]
        for key in keys:
            assert (await store.upload(key, key.encode())).path == key
        for key in keys:
            assert await store.exists(key)
            assert (await store.info(key)).size == len(key.encode())
            assert await store.download(key) == key.encode()
        assert sorted([i.path async for i in store.list()]) == sorted(keys)
        await store.delete(keys[0])
        assert not await store.exists(keys[0])

    @pytest.mark.parametrize(("key", "expected"), [
        ("a.png", "image/png"), ("a.JSON", "application/json"), ("d/a.html", "text/html"),
        ("a.unknownext", "application/octet-stream"), ("noext", "application/octet-stream"),
        (".bashrc", "application/octet-stream"),
    ])
    async def test_content_type_guessed_from_extension(self, store: ConformanceStore, key: str,
                                                       expected: str) -> None:
        info = await store.upload(key, b"x")
        assert info.content_type == expected
        assert (await store.info(key)).content_type == expected

    async def test_explicit_content_type_forms(self, store: ConformanceStore) -> None:
        assert (await store.upload("a.png", b"x", "text/plain")).content_type == "text/plain"
        opts = UploadOptions(content_type="application/pdf", metadata={"Dept": "fin"},
                             cache_control="max-age=60")
        info = await store.upload("b.bin", b"x", opts)
        assert info.content_type == "application/pdf"
        stored = await store.info("b.bin")
        assert stored.content_type == "application/pdf"
        assert stored.metadata == {"dept": "fin"}
        assert getattr(stored, "cache_control", None) == "max-age=60"
        kw = await store.upload("c.bin", b"x", content_type="image/gif")
        assert kw.content_type == "image/gif"

    async def test_metadata_round_trip_and_copy_semantics(self, store: ConformanceStore) -> None:
        await store.upload("m.txt", b"x", metadata={"Owner": "ann", "trace_id": "7"},
                           cache_control="public, max-age=3600")
        info = await store.info("m.txt")
        assert info.metadata == {"owner": "ann", "trace_id": "7"}
        assert getattr(info, "cache_control", None) == "public, max-age=3600"
        assert info.metadata is not None
        info.metadata["owner"] = "mallory"  # a copy: stored state must not change
        assert (await store.info("m.txt")).metadata == {"owner": "ann", "trace_id": "7"}
        listed = [i async for i in store.list("m.")]
        assert listed[0].metadata == {"owner": "ann", "trace_id": "7"}
        assert listed[0].content_type == "text/plain"

    async def test_unknown_upload_option_is_rejected(self, store: ConformanceStore) -> None:
        with pytest.raises(TypeError, match="unknown upload option"):
            await store.upload("x.bin", b"x", colour="blue")
        assert not await store.exists("x.bin")

    @pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(k)[:20] for k in BAD_KEYS])
    async def test_bad_keys_rejected_everywhere(self, store: ConformanceStore, key: str) -> None:
        calls = [
            store.upload(key, b"x"), store.download(key), store.exists(key), store.info(key),
            store.delete(key), store.get_url(key), store.copy("src.bin", key),
            store.copy(key, "dst.bin"), store.move(key, "dst.bin"),
        ]
        for call in calls:
            with pytest.raises(InvalidPathError) as exc:
                await call
            assert exc.value.code == "LEX_ERR_STORE_004"
            assert names_store(store, exc.value.message)
        with pytest.raises(InvalidPathError):
            await read(store.stream(key))
        assert [i async for i in store.list()] == []

    async def test_checksum_verified(self, store: ConformanceStore) -> None:
        data = b"payload" * 1000
        sha = hashlib.sha256(data).hexdigest()
        assert (await store.upload("c.bin", data, checksum=f"sha256:{sha}")).size == len(data)
        # a bare hex digest: its length names the algorithm
        assert (await store.upload("d.bin", agen([data]), checksum=etag_of(data))).size == len(data)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert (await store.upload("f.bin", io.BytesIO(data), checksum=md5)).size == len(data)
        with pytest.raises(ValueError, match="sha256:<hex>"):
            await store.upload("g.bin", data, checksum="abc123")
        with pytest.raises(ChecksumMismatchError) as exc:
            await store.upload("c.bin", agen([b"other", b"bytes"]), checksum=f"sha256:{sha}")
        assert exc.value.code == "LEX_ERR_STORE_006"
        with pytest.raises(ChecksumMismatchError):
            await store.upload("e.bin", b"x", checksum="md5:" + "0" * 32)
        assert await store.download("c.bin") == data
        assert not await store.exists("e.bin")
        assert not await store.exists("g.bin")

    async def test_create_only(self, store: ConformanceStore) -> None:
        with pytest.raises(ValueError):
            await store.upload("co2.txt", b"x", if_none_match="etag")
        if not self.has(store, Capability.CREATE_ONLY):
            await self.refused(store, store.upload("co.txt", b"first", if_none_match="*"))
            assert not await store.exists("co.txt")
            return
        info = await store.upload("co.txt", b"first", if_none_match="*")
        assert info.size == 5
        with pytest.raises(PreconditionFailedError) as exc:
            await store.upload("co.txt", b"second", if_none_match="*")
        assert exc.value.code == "LEX_ERR_STORE_007"
        assert "co.txt" in exc.value.message
        with pytest.raises(PreconditionFailedError):
            await store.upload("co.txt", agen([b"third"]), if_none_match="*")
        assert await store.download("co.txt") == b"first"

    async def test_concurrent_create_only_has_one_winner(self, store: ConformanceStore) -> None:
        if not self.has(store, Capability.CREATE_ONLY):
            await self.refused(store, store.upload("race.txt", agen([b"x"]), if_none_match="*"))
            assert not await store.exists("race.txt")
            return

        async def attempt(i: int) -> int | None:
            try:
                await store.upload("race.txt", agen([f"writer-{i}".encode()] * 3),
                                   if_none_match="*")
                return i
            except PreconditionFailedError:
                return None

        results = await asyncio.gather(*(attempt(i) for i in range(8)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await store.download("race.txt") == f"writer-{winners[0]}".encode() * 3

    @pytest.mark.parametrize(("case", "options"), BAD_UPLOAD_OPTIONS,
                             ids=[case for case, _ in BAD_UPLOAD_OPTIONS])
    async def test_upload_options_outside_the_rule_are_rejected(
            self, store: ConformanceStore, case: str, options: dict[str, Any]) -> None:
        await store.upload("rule/key.bin", b"old", metadata={"kept": "yes"})
        kwargs = dict(options)
        positional: Any = kwargs.pop("options", None) or kwargs.pop("positional", None)
        for key in ("rule/key.bin", "rule/new.bin"):
            with pytest.raises(InvalidUploadOptionError) as exc:
                if positional is None:
                    await store.upload(key, agen([b"new"]), **kwargs)
                else:
                    await store.upload(key, agen([b"new"]), positional, **kwargs)
            err = exc.value
            assert isinstance(err, ValueError)
            assert err.code == "LEX_ERR_STORE_014"
            assert names_store(store, err.message)
            assert key in err.message
            field = err.details["field"]
            assert field.split("[")[0] in ("metadata", "content_type", "cache_control")
            assert field in err.message
        assert await store.download("rule/key.bin") == b"old"
        assert (await store.info("rule/key.bin")).metadata == {"kept": "yes"}
        assert not await store.exists("rule/new.bin")
        assert [i.path async for i in store.list("rule/")] == ["rule/key.bin"]

    async def test_upload_options_at_the_limits_round_trip_exactly(
            self, store: ConformanceStore) -> None:
        metadata = {"Mixed_Case_9": "A", "_under": _PRINTABLE[:40] + " " + _PRINTABLE[40:],
                    "n": "x" * MAX_HEADER_VALUE_CHARS, "count": 7}
        used = sum(len(k) + len(str(v)) for k, v in metadata.items())
        metadata["fill"] = "f" * (MAX_METADATA_BYTES - used - len("fill"))
        expected = {k.lower(): str(v) for k, v in metadata.items()}
        assert sum(len(k) + len(v) for k, v in expected.items()) == MAX_METADATA_BYTES
        content_type = "application/x-limit; q=\"a b\"; p=" + "z" * MAX_HEADER_VALUE_CHARS
        content_type = content_type[:MAX_HEADER_VALUE_CHARS]
        cache_control = ("public, max-age=60, " + "x" * MAX_HEADER_VALUE_CHARS)[
            :MAX_HEADER_VALUE_CHARS]
        data = b"limits"
        info = await store.upload("lim/a.bin", data, content_type, metadata=metadata,
                                  cache_control=cache_control)
        listed = [i async for i in store.list("lim/")]
        assert len(listed) == 1
        for got in (info, await store.info("lim/a.bin"), listed[0],
                    await store.copy("lim/a.bin", "lim/b.bin"), await store.info("lim/b.bin")):
            assert got.metadata == expected
            assert got.content_type == content_type
            assert getattr(got, "cache_control", None) == cache_control
        assert await store.download("lim/b.bin") == data
        # an empty content type is guessed; an empty cache control means none
        plain = await store.upload("lim/c.txt", b"x", "", cache_control="")
        assert plain.content_type == "text/plain"
        stored = await store.info("lim/c.txt")
        assert stored.content_type == "text/plain"
        assert getattr(stored, "cache_control", None) is None

    async def test_text_mode_files_are_refused(self, store: ConformanceStore,
                                               tmp_path: Path) -> None:
        path = tmp_path / "crlf.txt"
        path.write_bytes(b"a\r\nb")

        class AsyncTextFile:
            """An async file whose read returns str: text mode."""

            def __init__(self) -> None:
                self.parts = ["a\r\n", "b"]

            async def read(self, size: int = -1) -> str:
                return self.parts.pop(0) if self.parts else ""

        await store.upload("tm/key.bin", b"old")
        makers: list[Any] = [lambda: path.open("r"), lambda: path.open("r", newline=""),
                             lambda: io.StringIO("a\r\nb"), AsyncTextFile]
        for make in makers:
            source = make()
            try:
                for key in ("tm/key.bin", "tm/new.bin"):
                    with pytest.raises(TypeError, match="binary mode") as exc:
                        await store.upload(key, source)
                    assert isinstance(exc.value, InvalidPayloadError)
                    assert names_store(store, exc.value.message)
                    assert key in exc.value.message
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        assert await store.download("tm/key.bin") == b"old"
        assert not await store.exists("tm/new.bin")
        # binary files are stored byte for byte, str payloads as UTF-8
        with path.open("rb") as binary:
            await store.upload("tm/binary.bin", binary)
        assert await store.download("tm/binary.bin") == b"a\r\nb"
        await store.upload("tm/str.txt", "a\r\nb ✓")
        assert await store.download("tm/str.txt") == "a\r\nb ✓".encode()


class ReadingConformance(ConformanceBase):
    """Downloads, streams and byte ranges, existence, missing objects."""

    async def test_exists_is_true_only_for_objects(self, store: ConformanceStore) -> None:
        await store.upload("dir/sub/file.txt", b"x")
        assert await store.exists("dir/sub/file.txt")
        assert not await store.exists("dir")
        assert not await store.exists("dir/sub")
        assert not await store.exists("dir/sub/file")
        with pytest.raises(StorageFileNotFoundError):
            await store.info("dir/sub")

    async def test_missing_object_errors(self, store: ConformanceStore) -> None:
        for call in (store.download("nope/x.bin"), store.info("nope/x.bin"),
                     store.delete("nope/x.bin"), store.copy("nope/x.bin", "y"),
                     store.move("nope/x.bin", "y")):
            with pytest.raises(StorageFileNotFoundError) as exc:
                await call
            err = exc.value
            assert err.code == "LEX_ERR_STORE_002"
            assert names_store(store, err.message)
            assert "nope/x.bin" in err.message
        with pytest.raises(StorageFileNotFoundError):
            await read(store.stream("nope/x.bin"))
        assert not await store.exists("y")

    async def test_stream_chunks(self, store: ConformanceStore) -> None:
        raw = os.urandom(100_000)
        await store.upload("s.bin", raw)
        chunks = [c async for c in store.stream("s.bin", chunk_size=4096)]
        assert all(0 < len(c) <= 4096 for c in chunks)
        assert b"".join(chunks) == raw
        assert await read(store.stream("s.bin")) == raw
        with pytest.raises(ValueError):
            await read(store.stream("s.bin", chunk_size=0))

    async def test_stream_of_empty_object(self, store: ConformanceStore) -> None:
        await store.upload("empty", b"")
        assert [c async for c in store.stream("empty")] == []
        assert await store.download("empty") == b""

    async def test_ranges(self, store: ConformanceStore) -> None:
        raw = os.urandom(100_000)
        await store.upload("s.bin", raw)
        if not self.has(store, Capability.RANGED_READ):
            await self.refused(store, read(store.stream("s.bin", offset=10, length=5000)))
            return

        async def ranged(offset: int, length: int | None) -> bytes:
            return await read(store.stream("s.bin", 1000, offset=offset, length=length))

        assert await ranged(10, 5000) == raw[10:5010]
        assert await ranged(99_990, None) == raw[99_990:]
        assert await ranged(99_990, 1000) == raw[99_990:]
        assert await ranged(0, 0) == b""
        assert await ranged(200_000, None) == b""
        chunks = [c async for c in store.stream("s.bin", 4096, offset=1, length=10_000)]
        assert all(0 < len(c) <= 4096 for c in chunks)
        with pytest.raises(ValueError):
            await read(store.stream("s.bin", offset=-1))
        with pytest.raises(ValueError):
            await read(store.stream("s.bin", length=-1))

    async def test_huge_offsets_and_lengths(self, store: ConformanceStore) -> None:
        raw = os.urandom(5000)
        await store.upload("huge.bin", raw)
        if not self.has(store, Capability.RANGED_READ):
            await self.refused(store, read(store.stream("huge.bin", offset=10**20)))
            return

        async def ranged(offset: int, length: int | None) -> bytes:
            return await read(store.stream("huge.bin", 1000, offset=offset, length=length))

        assert await ranged(10**20, None) == b""
        assert await ranged(10**20, 10**20) == b""
        assert await ranged(2**63, 1) == b""
        assert await ranged(0, 10**20) == raw
        assert await ranged(4990, 10**20) == raw[4990:]
        assert await ranged(2**63 - 1, None) == b""
        assert await ranged(1, 2**64) == raw[1:]
        with pytest.raises(StorageFileNotFoundError):
            await read(store.stream("huge-missing.bin", offset=10**20))


class ListingConformance(ConformanceBase):
    """``list`` (order, prefix, paging), full infos, ``list_dir``, listing while writing."""

    async def test_list_prefix_and_paging(self, store: ConformanceStore) -> None:
        # no "directory" here has a sibling extending its name with a character below "/",
        # and no start_after names one: the byte order is also the order name by name (the
        # next test has the keys where they differ)
        keys = ["A", "b", "docs/a.txt", "docs/b/c.txt", "docs/d.txt", "photo.png",
                "photos/1.png", "photos/2/3.png", "z/ü", "zz"]
        for key in random.sample(keys, len(keys)):
            await store.upload(key, b"x")

        async def listed(prefix: str = "", **kwargs: Any) -> list[str]:
            return [i.path async for i in store.list(prefix, **kwargs)]

        assert await listed() == sorted(keys)
        assert await listed("photo") == ["photo.png", "photos/1.png", "photos/2/3.png"]
        assert await listed("photos/") == ["photos/1.png", "photos/2/3.png"]
        assert await listed("docs/") == ["docs/a.txt", "docs/b/c.txt", "docs/d.txt"]
        assert await listed("nothing") == []
        assert await listed(limit=3) == sorted(keys)[:3]
        assert await listed(start_after="docs/a.txt") == [
            k for k in sorted(keys) if k > "docs/a.txt"]
        assert await listed("docs/", start_after="docs/a.txt", limit=1) == ["docs/b/c.txt"]
        assert await listed("photos/", start_after="a") == ["photos/1.png", "photos/2/3.png"]
        assert await listed("docs/", start_after="docs/d.txt") == []
        assert await listed(limit=0) == []
        with pytest.raises(InvalidPathError):
            await listed("/abs")
        with pytest.raises(ValueError):
            await listed(limit=-1)

    async def test_listing_is_in_byte_order(self, store: ConformanceStore) -> None:
        self.require(store, Capability.BYTE_ORDER_LISTING)
        keys = ["a-b", "a/b", "a.b", "a0", "a/b/c", "a/a", "b", "photo.png", "photos/1.png",
                "photos/2/3.png", "A", "z/ü", "a b", "a!", "ab", "with space/ünïcödé ✓.txt",
                "..a/b..", "a/.hidden", "a+b=c&d?e#f%20.bin", "é", "z"]
        for key in random.sample(keys, len(keys)):
            await store.upload(key, b"x")
        ordered = sorted(keys)  # code point order: the byte order of the UTF-8 keys
        assert [i.path async for i in store.list()] == ordered
        assert [i.path async for i in store.list("a")] == [k for k in ordered if k[0] == "a"]
        assert [i.path async for i in store.list(start_after="a0")] == [
            k for k in ordered if k > "a0"]
        assert [i.path async for i in store.list(start_after="a", limit=4)] == [
            k for k in ordered if k > "a"][:4]
        for after in ("a/b", "photos", "photos/2"):  # keys or "directories": keys come after
            assert [i.path async for i in store.list(start_after=after)] == [
                k for k in ordered if k > after]
        top = await store.list_dir("")
        assert [f.path for f in top.files] == [k for k in ordered if "/" not in k]
        assert top.prefixes == sorted({k.split("/")[0] + "/" for k in keys if "/" in k})

    async def test_list_items_are_full_infos(self, store: ConformanceStore) -> None:
        await store.upload("l/a.png", b"abc", metadata={"k": "v"})
        [item] = [i async for i in store.list("l/")]
        assert item.size == 3
        assert item.etag == etag_of(b"abc")
        assert item.content_type == "image/png"
        assert item.metadata == {"k": "v"}

    async def test_list_dir(self, store: ConformanceStore) -> None:
        for key in ["p/a.txt", "p/b.txt", "p/sub/c.txt", "p/sub/deeper/d.txt", "p/z/e.txt",
                    "q.txt"]:
            await store.upload(key, b"x")
        listing = await store.list_dir("p/")
        assert [f.path for f in listing.files] == ["p/a.txt", "p/b.txt"]
        assert listing.prefixes == ["p/sub/", "p/z/"]
        top = await store.list_dir("")
        assert [f.path for f in top.files] == ["q.txt"]
        assert top.prefixes == ["p/"]
        assert (await store.list_dir("nothing/")).files == []

    async def test_list_while_writing(self, store: ConformanceStore) -> None:
        for i in range(50):
            await store.upload(f"w/{i:03d}", b"x")

        async def writer() -> None:
            for i in range(50, 100):
                await store.upload(f"w/{i:03d}", b"x")
                if i % 2:
                    await store.delete(f"w/{i - 50:03d}")

        async def lister() -> list[str]:
            return [i.path async for i in store.list("w/")]

        _, seen = await asyncio.gather(writer(), lister())
        assert seen == sorted(seen)
        assert len(set(seen)) == len(seen)
        final = [i.path async for i in store.list("w/")]
        assert len(final) == 75


class CopyMoveConformance(ConformanceBase):
    """``copy``, ``move`` and ``copy_batch``."""

    async def test_copy_keeps_content_type_and_metadata(self, store: ConformanceStore) -> None:
        await store.upload("src.dat", b"data", "text/csv", metadata={"m": "1"},
                           cache_control="no-store")
        await store.upload("dst.dat", b"old")
        info = await store.copy("src.dat", "dst.dat")
        assert info.path == "dst.dat"
        assert info.size == 4
        assert info.content_type == "text/csv"
        stored = await store.info("dst.dat")
        assert stored.content_type == "text/csv"
        assert stored.metadata == {"m": "1"}
        assert getattr(stored, "cache_control", None) == "no-store"
        assert stored.etag == etag_of(b"data")
        assert await store.download("dst.dat") == b"data"
        assert await store.download("src.dat") == b"data"

    async def test_move(self, store: ConformanceStore) -> None:
        await store.upload("mv/a.txt", b"data", metadata={"m": "2"})
        info = await store.move("mv/a.txt", "mv/b/c.txt")
        assert info.path == "mv/b/c.txt"
        assert not await store.exists("mv/a.txt")
        stored = await store.info("mv/b/c.txt")
        assert stored.metadata == {"m": "2"}
        assert stored.content_type == "text/plain"
        assert await store.download("mv/b/c.txt") == b"data"

    async def test_copy_and_move_onto_itself_change_nothing(self, store: ConformanceStore) -> None:
        up = await store.upload("self.txt", b"same", metadata={"k": "v"})
        assert (await store.copy("self.txt", "self.txt")).etag == up.etag
        assert (await store.move("self.txt", "self.txt")).etag == up.etag
        assert await store.download("self.txt") == b"same"
        assert (await store.info("self.txt")).metadata == {"k": "v"}

    async def test_copy_batch(self, store: ConformanceStore) -> None:
        await store.upload("cb/1", b"1")
        await store.upload("cb/2", b"2")
        assert await store.copy_batch([("cb/1", "cb/x"), ("cb/2", "cb/y")]) == ["cb/x", "cb/y"]
        assert await store.download("cb/y") == b"2"
        with pytest.raises(InvalidPathError):
            await store.copy_batch([("cb/1", "cb/z"), ("cb/2", "../bad")])
        assert not await store.exists("cb/z")


class DeletingConformance(ConformanceBase):
    """``delete``, ``delete_many`` and ``clear``."""

    async def test_delete_missing_ok(self, store: ConformanceStore) -> None:
        await store.delete("never.bin", missing_ok=True)
        await store.upload("once.bin", b"1")
        await store.delete("once.bin")
        assert not await store.exists("once.bin")
        with pytest.raises(StorageFileNotFoundError):
            await store.delete("once.bin")

    async def test_delete_many_and_clear(self, store: ConformanceStore) -> None:
        for key in ["d/1", "d/2", "d/3", "e/1"]:
            await store.upload(key, b"x")
        deleted = await store.delete_many(["d/1", "d/2", "d/missing", "d/1"])
        assert deleted == ["d/1", "d/2", "d/missing"]
        assert [i.path async for i in store.list()] == ["d/3", "e/1"]
        with pytest.raises(InvalidPathError):
            await store.delete_many(["d/3", "/bad"])
        assert await store.exists("d/3")
        assert await store.clear("d/") == 1
        assert [i.path async for i in store.list()] == ["e/1"]
        assert await store.clear() == 1
        assert [i.path async for i in store.list()] == []


class UrlConformance(ConformanceBase):
    """Public and presigned URLs, and the bounds of their arguments."""

    async def test_public_url(self, store: ConformanceStore) -> None:
        await store.upload("u/a b.txt", b"x")
        url = await store.get_url("u/a b.txt")
        assert isinstance(url, str)
        assert "a%20b.txt" in url
        with pytest.raises(ValueError):
            await store.get_presigned_url("u/a b.txt", method="DELETE")
        with pytest.raises(ValueError):
            await store.get_presigned_url("u/a b.txt", timedelta(days=8))

    async def test_presigned_get_url(self, store: ConformanceStore) -> None:
        await store.upload("u/a b.txt", b"x")
        if not self.has(store, Capability.PRESIGN_GET):
            await self.refused(store, store.get_presigned_url("u/a b.txt", timedelta(minutes=5)))
            return
        signed = await store.get_presigned_url("u/a b.txt", timedelta(minutes=5))
        assert isinstance(signed, str)
        assert signed != await store.get_url("u/a b.txt")
        assert await store.get_presigned_url("u/a b.txt", 300, "get")

    async def test_presigned_put_url(self, store: ConformanceStore) -> None:
        if not self.has(store, Capability.PRESIGN_PUT):
            await self.refused(store, store.get_presigned_url("u/new.txt", method="PUT"))
            return
        signed = await store.get_presigned_url("u/new.txt", timedelta(minutes=5), "PUT")
        assert isinstance(signed, str)
        assert signed != await store.get_url("u/new.txt")
        if self.has(store, Capability.PRESIGN_GET):
            assert signed != await store.get_presigned_url("u/new.txt", timedelta(minutes=5))
        assert not await store.exists("u/new.txt")  # signing stores nothing

    @pytest.mark.parametrize("expires_in", [0.5, timedelta(milliseconds=999), 0, -1,
                                            timedelta(days=7, seconds=1)])
    async def test_presigned_expiry_outside_one_second_to_seven_days(
            self, store: ConformanceStore, expires_in: Any) -> None:
        await store.upload("pu.txt", b"x")
        with pytest.raises(ValueError, match="between 1 second and 7 days"):
            await store.get_presigned_url("pu.txt", expires_in)
        for shortest in (1, timedelta(seconds=1)):
            if self.has(store, Capability.PRESIGN_GET):
                assert isinstance(await store.get_presigned_url("pu.txt", shortest), str)
            else:
                await self.refused(store, store.get_presigned_url("pu.txt", shortest))


class LargePayloadConformance(ConformanceBase):
    """Uploads above the multipart threshold, cancellation, failing sources, concurrency."""

    @pytest_asyncio.fixture
    async def upload_events(self, store: ConformanceStore) -> AsyncIterator[_Recorder | None]:
        """The store's upload events, recorded, when it is a driver and lexigram-events is
        installed (else ``None``)."""
        if not isinstance(store, BaseDriver) or importlib.util.find_spec("lexigram.events") is None:
            yield None
            return
        async with _recording(store, _event_bus()) as recorder:
            yield recorder

    @pytest.mark.parametrize("kind", ["bytes", "file", "async_iter"])
    async def test_large_round_trip(self, store: ConformanceStore, kind: str,
                                    tmp_path: Path) -> None:
        raw = os.urandom(self.large_payload_size)
        data: Any = raw
        if kind == "file":
            path = tmp_path / "large.bin"
            path.write_bytes(raw)
            data = path.open("rb")
        elif kind == "async_iter":
            data = agen(pieces(raw, 65536))
        try:
            info = await store.upload(f"large/{kind}.bin", data)
        finally:
            if kind == "file":
                data.close()
        assert info.size == len(raw)
        assert info.etag == etag_of(raw)
        stored = await store.info(f"large/{kind}.bin")
        assert (stored.size, stored.etag) == (len(raw), etag_of(raw))
        assert await store.download(f"large/{kind}.bin") == raw
        if self.has(store, Capability.RANGED_READ):
            middle = len(raw) // 2 - 1000
            got = await read(store.stream(f"large/{kind}.bin", offset=middle, length=100_000))
            assert got == raw[middle:middle + 100_000]
        assert await self.pending_uploads(store) == 0

    @pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
    async def test_large_upload_whose_source_fails_midway_stores_nothing(
            self, store: ConformanceStore, existing: bool) -> None:
        key = "large/fails.bin"
        if existing:
            await store.upload(key, b"previous object")
        data = os.urandom(self.large_payload_size)
        failure = _SourceFailed("the source failed midway")
        with pytest.raises((StorageError, _SourceFailed)) as exc:
            await store.upload(key, _stopping_source(data, len(data) * 3 // 4, failure=failure))
        assert caused_by(exc.value, failure)
        if existing:
            assert await store.download(key) == b"previous object"
        else:
            assert not await store.exists(key)
        assert [i.path async for i in store.list("large/")] == ([key] if existing else [])
        assert await self.pending_uploads(store) == 0

    @pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
    async def test_large_upload_cancelled_midway_stores_nothing(
            self, store: ConformanceStore, existing: bool) -> None:
        key = "large/cancelled.bin"
        if existing:
            await store.upload(key, b"previous object")
        data = os.urandom(self.large_payload_size)
        stalled = asyncio.Event()
        task = asyncio.ensure_future(
            store.upload(key, _stopping_source(data, len(data) * 3 // 4, stalled=stalled)))
        waiting = asyncio.ensure_future(stalled.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()  # the upload failed: that error is the test's failure
            pytest.fail("the upload ended before its source did")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if existing:
            assert await store.download(key) == b"previous object"
        else:
            assert not await store.exists(key)
        assert [i.path async for i in store.list("large/")] == ([key] if existing else [])
        assert await self.pending_uploads(store) == 0

    @pytest.mark.parametrize("size", ["small", "large"])
    async def test_cancelled_uploads_store_all_or_nothing(
            self, store: ConformanceStore, upload_events: _Recorder | None, size: str) -> None:
        """The cancellation guarantee: an upload cancelled at a random moment either raised
        ``CancelledError`` and the previous object is intact (and no event was published), or
        it returned, the new object is stored and exactly one upload event names it."""
        rng = random.Random(20261201)
        small = size == "small"
        length = 2000 if small else self.large_payload_size
        rounds = 40 if small else 8
        key = "cancel/key.bin"
        current = b"old object"
        await store.upload(key, current)

        async def published(etag: str) -> int:
            assert upload_events is not None and isinstance(store, BaseDriver)
            await store.flush_events(5)
            return len([e for e in upload_events.of(FileUploadedEvent) if e.etag == etag])

        outcomes = {"cancelled": 0, "stored": 0}
        base = os.urandom(length)
        for i in range(rounds):
            new = i.to_bytes(4, "big") + base[4:]
            data: Any = new if i % 2 == 0 else agen(pieces(new))
            task = asyncio.ensure_future(store.upload(key, data))
            if i % 3 == 0:
                for _ in range(rng.randrange(0, 30)):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.004 if small else 0.05))
            task.cancel()
            try:
                info = await task
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
                assert await store.download(key) == current, f"round {i}: partial or new object"
            else:
                outcomes["stored"] += 1
                assert info.etag == etag_of(new)
                assert await store.download(key) == new, f"round {i}: returned but not stored"
                current = new
            assert (await store.info(key)).etag == etag_of(current), f"round {i}: info"
            if upload_events is not None:
                expected = 1 if current == new else 0
                assert await published(etag_of(new)) == expected, f"round {i}: events"
        assert [i.path async for i in store.list("cancel/")] == [key]
        assert outcomes["cancelled"] + outcomes["stored"] == rounds
        assert await self.pending_uploads(store) == 0

    async def test_concurrent_large_writers_to_one_key(self, store: ConformanceStore) -> None:
        bodies = [os.urandom(self.large_payload_size) for _ in range(3)]
        results = await asyncio.gather(*(store.upload("large/hot.bin", agen(pieces(body)))
                                         for body in bodies), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if self.has(store, Capability.CONCURRENT_LARGE_WRITES):
            if failures:
                raise failures[0]
        else:  # a commit may discard the others' staged parts: those fail, storing nothing
            assert len(failures) < len(bodies), failures
            for failure in failures:
                if not isinstance(failure, PreconditionFailedError):
                    raise failure
        data = await store.download("large/hot.bin")
        assert data in bodies, "the object mixes the writers' contents"
        assert [i.path async for i in store.list("large/")] == ["large/hot.bin"]
        assert await self.pending_uploads(store) == 0
        self.require(store, Capability.RACE_SAFE_ETAG)
        assert (await store.info("large/hot.bin")).etag == etag_of(data)

    async def test_concurrent_writers_to_one_key(self, store: ConformanceStore) -> None:
        bodies = [bytes([i]) * (50_000 + i) for i in range(10)]
        await asyncio.gather(*(store.upload("hot.bin", agen([b[:25_000], b[25_000:]]))
                               for b in bodies))
        data = await store.download("hot.bin")
        assert data in bodies
        assert (await store.info("hot.bin")).etag == etag_of(data)

    async def test_many_concurrent_uploads(self, store: ConformanceStore) -> None:
        await asyncio.gather(*(store.upload(f"many/{i:03d}.bin", os.urandom(100))
                               for i in range(64)))
        assert len([i async for i in store.list("many/")]) == 64


class EventsConformance(ConformanceBase):
    """Domain events and hooks (a ``BaseDriver``: the tests set its ``events``)."""

    @pytest_asyncio.fixture
    async def events(self, store: BaseDriver) -> AsyncIterator[_Recorder]:
        async with _recording(store, _event_bus()) as recorder:
            yield recorder

    async def test_events_for_every_operation(self, store: BaseDriver, events: _Recorder) -> None:
        await store.upload("ev/a.txt", b"abc")
        await store.download("ev/a.txt")
        _ = [c async for c in store.stream("ev/a.txt", 1)]
        await store.copy("ev/a.txt", "ev/b.txt")
        await store.move("ev/b.txt", "ev/c.txt")
        await store.delete("ev/a.txt")
        await store.delete_many(["ev/c.txt"])
        await store.upload("ev/d.txt", b"d")
        await store.clear("ev/")
        await store.flush_events(5)
        up = events.of(FileUploadedEvent)
        assert [(e.file_key, e.size_bytes) for e in up] == [
            ("ev/a.txt", 3), ("ev/b.txt", 3), ("ev/c.txt", 3), ("ev/d.txt", 1)]
        assert all(e.bucket == store.bucket and e.backend == store.name for e in up)
        assert up[0].etag == etag_of(b"abc")
        assert up[0].content_type == "text/plain"
        down = events.of(FileDownloadedEvent)
        assert [(e.file_key, e.size_bytes) for e in down] == [("ev/a.txt", 3), ("ev/a.txt", 3)]
        deleted = [e.file_key for e in events.of(FileDeletedEvent)]
        assert deleted == ["ev/b.txt", "ev/a.txt", "ev/c.txt", "ev/d.txt"]

    async def test_no_events_for_failures_or_partial_streams(self, store: BaseDriver,
                                                             events: _Recorder) -> None:
        await store.upload("pe.bin", b"x" * 10_000)
        async for _ in store.stream("pe.bin", 100):
            break
        with pytest.raises(StorageFileNotFoundError):
            await store.download("missing")
        await store.delete("missing", missing_ok=True)
        store.policy = UploadPolicy(max_bytes=5)
        try:
            with pytest.raises(QuotaExceededError):
                await store.upload("big", b"123456")
        finally:
            store.policy = None
        await store.flush_events(5)
        assert [type(e).__name__ for e in events.received] == ["FileUploadedEvent"]

    async def test_failing_subscriber_never_fails_the_call(self, store: BaseDriver,
                                                          events: _Recorder) -> None:
        def explode(event: Any) -> None:
            raise RuntimeError("subscriber failed")

        events.bus.subscribe(FileUploadedEvent, explode)
        info = await store.upload("f.txt", b"ok")
        assert info.size == 2
        await store.flush_events(10)
        assert [e.file_key for e in events.of(FileUploadedEvent)] == ["f.txt"]

    async def test_hooks_fire(self, store: BaseDriver) -> None:
        hooks_mod = pytest.importorskip("lexigram.hooks")
        registry = hooks_mod.HookRegistry("conformance")
        seen: list[Any] = []

        async def record(**kwargs: Any) -> None:
            seen.append(kwargs["payload"])

        registry.register_action(HOOK_OBJECT_STORED, record)
        registry.register_action(HOOK_OBJECT_DELETED, record)
        previous = store.events
        store.events = StorageEvents(hooks=registry)
        try:
            await store.upload("h.txt", b"xy")
            await store.delete("h.txt")
            await store.flush_events(5)
        finally:
            await store.events.aclose()
            store.events = previous
        assert seen == [
            ObjectStoredHook(bucket=store.bucket, key="h.txt", size=2, content_type="text/plain",
                             backend=store.name),
            ObjectDeletedHook(bucket=store.bucket, key="h.txt", backend=store.name),
        ]


class PolicyConformance(ConformanceBase):
    """The upload policy (a ``BaseDriver``: the tests set its ``policy``)."""

    async def test_size_limit_enforced_while_streaming(self, store: BaseDriver) -> None:
        store.policy = UploadPolicy(max_bytes=10_000)
        try:
            await store.upload("keep.bin", b"old")
            for data in (os.urandom(10_001), agen([b"x" * 4000] * 3), io.BytesIO(b"y" * 20_000)):
                with pytest.raises(QuotaExceededError) as exc:
                    await store.upload("keep.bin", data)
                assert "keep.bin" in exc.value.message
                with pytest.raises(QuotaExceededError):
                    await store.upload("new.bin", data if isinstance(data, bytes) else b"z" * 10_001)
            assert await store.download("keep.bin") == b"old"
            assert not await store.exists("new.bin")
            assert (await store.upload("ok.bin", b"z" * 10_000)).size == 10_000
        finally:
            store.policy = None

    async def test_mime_policy(self, store: BaseDriver) -> None:
        store.policy = UploadPolicy(allowed_mime_types=("image/*", "application/pdf"))
        try:
            await store.upload("a.png", b"x")
            await store.upload("doc", b"x", "application/pdf")
            with pytest.raises(QuotaExceededError, match="not allowed"):
                await store.upload("a.exe", b"x")
            with pytest.raises(QuotaExceededError):
                await store.upload("b.png", b"x", "text/html")
            assert not await store.exists("a.exe")
            assert not await store.exists("b.png")
        finally:
            store.policy = None


class StoreConformance(WritingConformance, ReadingConformance, ListingConformance,
                       CopyMoveConformance, DeletingConformance, UrlConformance,
                       LargePayloadConformance):
    """Every check that needs only the store API: runs over any :class:`ConformanceStore`."""

    async def test_implements_protocols(self, store: ConformanceStore) -> None:
        assert isinstance(store, BlobStoreProtocol)
        assert isinstance(store, StorageDriverProtocol)

    async def test_health_check(self, store: ConformanceStore) -> None:
        result = await store.health_check(timeout=5.0)
        assert result.status == HealthStatus.HEALTHY, result.error
        assert names_store(store, result.component)
        assert result.details is not None
        assert "latency_ms" in result.details


class DriverConformance(StoreConformance, EventsConformance, PolicyConformance):
    """Behaviour every driver must have. Provide the ``store`` fixture in a subclass."""
