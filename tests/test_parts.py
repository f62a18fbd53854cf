"""The shared upload engine (drivers/_parts.py) over an in-memory part sink.

The sink below is a backend of our own protocol (no SDK involved): it keeps parts in a dict,
so every rule of the engine can be checked exactly — part sizes, parts in flight, the digest
hand-over, and abort on failure or cancellation at each step."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from lexigram_storage.drivers._parts import PartRules, upload
from lexigram_storage.payload import Payload, UploadRequest

KiB = 1024
RULES = PartRules(threshold=64 * KiB, part_size=64 * KiB, max_concurrency=3,
                  max_part_size=1024 * KiB, max_parts=10_000, abort_timeout=5)


class MemorySink:
    """Parts in a dict; ``gate`` (when set) holds every put_part until it is set."""

    def __init__(self, fail_part: int | None = None, gate: asyncio.Event | None = None,
                 slow_start: asyncio.Event | None = None) -> None:
        self.parts: dict[int, bytes] = {}
        self.started_with: list[str | None] = []
        self.committed: bytes | None = None
        self.recorded: str | None = None
        self.aborted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.sending = asyncio.Event()  # set once a part is in flight
        self.fail_part = fail_part
        self.gate = gate
        self.slow_start = slow_start

    async def start(self, digest: str | None) -> None:
        if self.slow_start is not None:
            await self.slow_start.wait()
        self.started_with.append(digest)

    async def put_part(self, number: int, pieces: list[bytes | memoryview]) -> str:
        self.in_flight += 1
        self.sending.set()
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if number == self.fail_part:
                raise OSError(f"part {number} failed")
            self.parts[number] = b"".join(bytes(p) for p in pieces)
            return f"etag-{number}"
        finally:
            self.in_flight -= 1

    async def complete(self, parts: list[tuple[int, str]], create_only: bool) -> str:
        assert [n for n, _ in parts] == list(range(1, len(parts) + 1))
        assert all(token == f"etag-{n}" for n, token in parts)
        self.committed = b"".join(self.parts[n] for n, _ in parts)
        return "done"

    async def abort(self) -> None:
        self.aborted += 1

    async def record_digest(self, result: str, digest: str) -> None:
        self.recorded = digest


async def whole_not_expected(body: bytes) -> str:
    raise AssertionError("a single request was not expected")


def payload(data: object) -> Payload:
    return Payload(data, UploadRequest("application/octet-stream"), backend="t", key="k")


async def chunks(raw: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


async def test_a_stream_is_cut_into_parts_of_the_rule_size() -> None:
    raw = os.urandom(300 * KiB + 5)
    sink = MemorySink()
    assert await upload(payload(chunks(raw)), RULES, whole_not_expected, sink) == "done"
    assert sink.committed == raw
    assert [len(sink.parts[n]) for n in sorted(sink.parts)] == [64 * KiB] * 4 + [44 * KiB + 5]
    assert sink.started_with == [None]  # a stream's digest is known only at the end...
    assert sink.recorded == hashlib.sha256(raw).hexdigest()  # ...and recorded then
    assert sink.aborted == 0


async def test_a_seekable_file_starts_with_its_digest(tmp_path: Path) -> None:
    raw = os.urandom(200 * KiB)
    path = tmp_path / "f"
    path.write_bytes(b"skip" + raw)
    sink = MemorySink()
    with path.open("rb") as f:
        f.seek(4)
        await upload(payload(f), RULES, whole_not_expected, sink)
    assert sink.committed == raw
    assert sink.started_with == [hashlib.sha256(raw).hexdigest()]
    assert sink.recorded is None  # nothing left to record


async def test_without_prehash_a_file_starts_without_its_digest(tmp_path: Path) -> None:
    """``prehash=False`` (a backend whose commit carries the digest): no pass over the file
    before the upload; the digest reaches the sink after the commit."""
    raw = os.urandom(200 * KiB)
    path = tmp_path / "f"
    path.write_bytes(raw)
    sink = MemorySink()
    with path.open("rb") as f:
        await upload(payload(f), replace(RULES, prehash=False), whole_not_expected, sink)
    assert sink.committed == raw
    assert sink.started_with == [None]
    assert sink.recorded == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(("read_size", "pieces"), [(None, 1), (32 * KiB, 2)])
async def test_a_file_is_read_a_part_or_file_read_size_at_a_time(
        tmp_path: Path, read_size: int | None, pieces: int) -> None:
    raw = os.urandom(256 * KiB)
    path = tmp_path / "f"
    path.write_bytes(raw)
    counts: list[int] = []

    class Counting(MemorySink):
        async def put_part(self, number: int, parts: list[bytes | memoryview]) -> str:
            counts.append(len(parts))
            return await super().put_part(number, parts)

    sink = Counting()
    with path.open("rb") as f:
        data = Payload(f, UploadRequest("application/octet-stream"), backend="t", key="k",
                       chunk_size=16 * KiB)
        await upload(data, replace(RULES, file_read_size=read_size), whole_not_expected, sink)
    assert sink.committed == raw
    assert counts == [pieces] * 4  # 64 KiB parts


async def test_small_payloads_are_one_request() -> None:
    sent: list[bytes] = []

    async def whole(body: bytes) -> str:
        sent.append(body)
        return "one"

    for data in (b"x" * 100, chunks(b"y" * (64 * KiB - 1)), io.BytesIO(b"z" * 5000)):
        sink = MemorySink()
        assert await upload(payload(data), RULES, whole, sink) == "one"
        assert sink.started_with == [] and sink.parts == {}
    assert [len(b) for b in sent] == [100, 64 * KiB - 1, 5000]


async def test_at_most_max_concurrency_parts_in_flight() -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    task = asyncio.ensure_future(
        upload(payload(chunks(os.urandom(640 * KiB))), RULES, whole_not_expected, sink))
    for _ in range(50):
        await asyncio.sleep(0)
    assert sink.in_flight == RULES.max_concurrency  # the reader waits for room
    gate.set()
    await task
    assert sink.max_in_flight == RULES.max_concurrency and len(sink.parts) == 10


async def test_a_failed_part_aborts_and_commits_nothing() -> None:
    sink = MemorySink(fail_part=2)
    with pytest.raises(OSError, match="part 2 failed"):
        await upload(payload(chunks(os.urandom(400 * KiB))), RULES, whole_not_expected, sink)
    assert sink.aborted == 1 and sink.committed is None


async def test_a_failing_stream_aborts_and_commits_nothing() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(200 * KiB)
        raise ValueError("source broke")

    sink = MemorySink()
    with pytest.raises(ValueError, match="source broke"):
        await upload(payload(broken()), RULES, whole_not_expected, sink)
    assert sink.aborted == 1 and sink.committed is None


async def test_cancelled_mid_upload_aborts() -> None:
    gate = asyncio.Event()
    sink = MemorySink(gate=gate)
    task = asyncio.ensure_future(
        upload(payload(chunks(os.urandom(400 * KiB))), RULES, whole_not_expected, sink))
    await sink.sending.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.aborted == 1 and sink.committed is None and sink.in_flight == 0


async def test_cancelled_while_starting_waits_for_the_start_and_aborts_it() -> None:
    slow = asyncio.Event()
    sink = MemorySink(slow_start=slow)
    task = asyncio.ensure_future(
        upload(payload(chunks(os.urandom(200 * KiB))), RULES, whole_not_expected, sink))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # the start may have created an upload: its answer is awaited
    slow.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.started_with == [None] and sink.aborted == 1 and sink.parts == {}


def test_part_sizes_grow_and_align() -> None:
    rules = PartRules(threshold=1, part_size=5 * 1024 * KiB, max_concurrency=1,
                      max_part_size=5 * 1024 * 1024 * KiB, max_parts=10_000, align=256 * KiB)
    assert rules.size_of(1, None) == 5 * 1024 * KiB
    assert rules.size_of(901, None) == 10 * 1024 * KiB
    huge = rules.size_of(1, 20 * 1024 ** 4)  # 20 TiB in 9,999 parts
    assert huge % (256 * KiB) == 0 and huge * 9_999 >= 20 * 1024 ** 4
    assert rules.size_of(1, 100 * 1024 ** 4) == 5 * 1024 ** 3  # never above the largest part
    odd = PartRules(threshold=1, part_size=300 * KiB, max_concurrency=1, max_part_size=10 ** 9,
                    max_parts=10, align=256 * KiB)
    assert odd.size_of(1, None) == 512 * KiB
