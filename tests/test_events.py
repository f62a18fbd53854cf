"""Event delivery policy: back-pressure (nothing lost), drop, failures, cancellation, shutdown.

Tests run in a real ``Application`` with the lexigram-events bus, or on a memory driver whose
``StorageEvents`` publishes to a publisher object; subscribers are slowed or held by ``asyncio``
primitives (a yield, an event), never by timing assumptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lexigram_storage import MemoryDriver
from lexigram_storage.events import StorageEvents


async def until_waiting(events: StorageEvents, count: int) -> None:
    """Let the loop run until *count* calls wait for room (fails rather than hangs)."""
    for _ in range(10_000):
        if events.stats()["waiting"] >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never {count} calls waiting: {events.stats()}")


class Gate:
    """A publisher (``DomainEventPublisherProtocol``) that holds every event until opened."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.published: list[str] = []

    async def publish(self, event: Any) -> None:
        await self.open.wait()
        self.published.append(event.file_key)


# --------------------------------------------------------------------- back-pressure


class SlowPublisher:
    """A publisher slower than the producers; records every event in delivery order."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    async def publish(self, event: Any) -> None:
        await asyncio.sleep(0)
        self.published.append((type(event).__name__, event.file_key))


class RecordingEvents(StorageEvents):
    """Records the order in which storage calls handed their events over."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered: list[tuple[str, str]] = []

    async def uploaded(self, backend: str, bucket: str, info: Any) -> None:
        self.entered.append(("FileUploadedEvent", info.path))
        await super().uploaded(backend, bucket, info)

    async def deleted(self, backend: str, bucket: str, key: str) -> None:
        self.entered.append(("FileDeletedEvent", key))
        await super().deleted(backend, bucket, key)


async def test_waiting_calls_keep_call_order_across_producers() -> None:
    """Under back-pressure a call arriving while others wait never overtakes them."""
    publisher = SlowPublisher()
    events = RecordingEvents(publisher=publisher, max_pending=8)
    store = MemoryDriver(name="order", events=events)

    async def producer(p: int) -> None:
        for i in range(150):
            await store.upload(f"p{p}/{i}", b"x")
            if i % 3 == 0:
                await store.delete(f"p{p}/{i}")

    await asyncio.gather(*(producer(p) for p in range(20)))
    await store.flush_events(10)
    assert events.waits > 0
    assert len(events.entered) == 20 * 200
    assert publisher.published == events.entered


async def test_cancelled_while_waiting_for_room_still_queues_the_event() -> None:
    gate = Gate()
    events = StorageEvents(publisher=gate, max_pending=2)
    store = MemoryDriver(name="cancel", events=events)
    await store.upload("a", b"x")
    await asyncio.sleep(0)  # the dispatcher takes "a" and is held by the gate
    await store.upload("b", b"x")
    await store.upload("c", b"x")  # the queue is full: [b, c]
    task = asyncio.create_task(store.upload("d", b"x"))
    await until_waiting(events, 1)
    task.cancel()
    stored = await task  # returns normally: the object was stored
    assert stored.path == "d"
    assert not task.cancelled()
    assert task.cancelling() == 0  # the cancellation request was consumed
    async with asyncio.timeout(0.01):  # expires while the call waits for room
        await store.upload("e", b"x")
    assert await store.exists("d")
    assert await store.exists("e")
    assert events.pending == 4  # max_pending exceeded by the two cancelled waiters
    gate.open.set()
    await store.flush_events(5)
    assert gate.published == ["a", "b", "c", "d", "e"]
    assert events.stats()["waiting"] == 0


async def test_cancelled_waiter_keeps_its_place() -> None:
    """A cancelled waiter's event stays ahead of later calls."""
    gate = Gate()
    events = StorageEvents(publisher=gate, max_pending=1)
    store = MemoryDriver(name="place", events=events)
    await store.upload("a", b"x")
    await asyncio.sleep(0)  # "a" taken, held by the gate
    await store.upload("b", b"x")  # queue full: [b]
    first = asyncio.create_task(store.upload("c", b"x"))
    second = asyncio.create_task(store.upload("d", b"x"))
    await until_waiting(events, 2)
    first.cancel()
    await first
    gate.open.set()
    await second
    await store.flush_events(5)
    assert gate.published == ["a", "b", "c", "d"]


async def test_shutdown_delivers_queued_events_within_its_timeout() -> None:
    publisher = SlowPublisher()
    events = StorageEvents(publisher=publisher, max_pending=5)
    store = MemoryDriver(name="close", events=events)
    producers = [asyncio.create_task(store.upload(f"s/{i}", b"x")) for i in range(50)]
    await until_waiting(events, 1)
    await events.aclose(timeout=10)
    await asyncio.gather(*producers)
    assert sorted(key for _, key in publisher.published) == sorted(f"s/{i}" for i in range(50))
    assert events.undelivered == 0


# --------------------------------------------------------------------- configuration


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        StorageEvents(max_pending=0)
    with pytest.raises(ValueError, match="overflow"):
        StorageEvents(overflow="wait")  # type: ignore[arg-type]
class Failing:
    """A publisher failing on every third event."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.raised = 0

    async def publish(self, event: Any) -> None:
        await asyncio.sleep(0)
        if int(event.file_key.rsplit("/", 1)[1]) % 3 == 0:
            self.raised += 1
            raise RuntimeError(f"subscriber failed on {event.file_key}")
        self.published.append(event.file_key)


async def test_failing_publisher_does_not_stop_delivery() -> None:
    """The failure warning used to pass ``event=`` to the logger (its message argument): the
    resulting TypeError ended the dispatcher at the first failure."""
    publisher = Failing()
    events = StorageEvents(publisher=publisher)
    store = MemoryDriver(name="failing", events=events)
    for i in range(30):
        await store.upload(f"f/{i}", b"x")
    await store.flush_events(5)
    assert publisher.raised == 10
    assert publisher.published == [f"f/{i}" for i in range(30) if i % 3]
    assert events.failures == 10
