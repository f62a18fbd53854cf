"""Event delivery policy: back-pressure (nothing lost), drop, failures, cancellation, shutdown.

Tests run in a real ``Application`` with the lexigram-events bus, or on a memory driver whose
``StorageEvents`` publishes to a publisher object; subscribers are slowed or held by ``asyncio``
primitives (a yield, an event), never by timing assumptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lexigram import Application
from lexigram.contracts.events import DomainEventPublisherProtocol, EventBusProtocol
from lexigram.contracts.infra.storage import BlobStoreProtocol
from lexigram.di.provider import Provider
from lexigram.events.buses.event import EventBusImpl
from lexigram.events.config import EventBusConfig, EventsConfig
from lexigram.events.module import EventsModule

from lexigram_storage import (
    FileDeletedEvent,
    FileUploadedEvent,
    LocalDriver,
    MemoryDriver,
    StorageConfig,
    StorageModule,
    StorageProvider,
)
from lexigram_storage.config import StorageEventsConfig
from lexigram_storage.events import Overflow, StorageEvents
from tests.support import app_with, start


def config(max_pending: int, overflow: Overflow = "block") -> StorageConfig:
    return StorageConfig(default_driver="memory",
                         events=StorageEventsConfig(max_pending=max_pending, overflow=overflow))




async def event_stats(app: Application) -> dict[str, Any]:
    """The ``events`` details of the application's ``storage`` health component."""
    result = await app.health_check()
    storage = next(c for c in result.components if c.component == "storage")
    stats: dict[str, Any] = (storage.details or {})["events"]
    return stats


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


async def test_burst_through_slow_subscriber_loses_nothing() -> None:
    """50,000 uploads, max_pending=100, a bus subscriber slower than the producer: every event
    arrives, in order, and the calls really waited for room.

    The driver's StorageEvents publishes to a lexigram-events bus, as the provider sets it up
    (the Application version below is smaller: the framework's per-event overhead there
    doubles the cost). Sequential handler dispatch, because the bus's parallel dispatch costs
    ~3x more per event and the subscriber is slower than the producer either way.
    """
    bus: Any = EventBusImpl(config=EventBusConfig(parallel_dispatch=False))
    received: list[str] = []

    async def slow(event: FileUploadedEvent) -> None:
        await asyncio.sleep(0)
        received.append(event.file_key)

    bus.subscribe(FileUploadedEvent, slow)
    events = StorageEvents(bus=bus, max_pending=100)
    store = MemoryDriver(name="burst", events=events)
    keys = [f"burst/{i:05d}" for i in range(50_000)]
    try:
        for key in keys:
            await store.upload(key, b"x")
            assert events.pending <= 100
        await store.flush_events(30)
    finally:
        await events.aclose()
        for task in list(bus._background_tasks):  # the bus has no public close()
            task.cancel()
    assert received == keys
    assert events.stats() | {"waits": 0, "waited_seconds": 0} == {
        "overflow": "block", "max_pending": 100, "pending": 0, "waiting": 0, "waits": 0,
        "waited_seconds": 0, "dropped": 0, "failures": 0, "undelivered": 0}
    assert events.waits > 40_000  # back-pressure engaged for most calls


async def test_back_pressure_in_an_application(running: list[Application]) -> None:
    """The same through StorageModule and EventsModule, with the policy from StorageConfig and
    the counters in the storage health details."""
    bus_config = EventsConfig(event_bus=EventBusConfig(parallel_dispatch=False))
    app = await start(running, app_with(EventsModule.configure(bus_config),
                                     StorageModule.configure(config(max_pending=100))))
    bus = await app.container.resolve(EventBusProtocol)
    received: list[str] = []

    async def slow(event: FileUploadedEvent) -> None:
        await asyncio.sleep(0)
        received.append(event.file_key)

    bus.subscribe(FileUploadedEvent, slow)
    store = await app.container.resolve(BlobStoreProtocol)
    keys = [f"app/{i:04d}" for i in range(5_000)]
    for key in keys:
        await store.upload(key, b"x")
    await store.flush_events(30)
    assert received == keys
    stats = await event_stats(app)
    assert (stats["overflow"], stats["max_pending"], stats["pending"]) == ("block", 100, 0)
    assert (stats["dropped"], stats["failures"], stats["undelivered"]) == (0, 0, 0)
    assert stats["waits"] > 0
    assert stats["waited_seconds"] > 0


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


# --------------------------------------------------------------------- cancelled batch deletes

KEYS = [f"k/{i:04d}" for i in range(1500)]  # two batches of clear() and delete_many()


async def filled(kind: str, tmp_path: Path) -> MemoryDriver | LocalDriver:
    store = MemoryDriver(name="batches") if kind == "memory" else LocalDriver(
        tmp_path / "root", name="batches")
    for key in KEYS:
        await store.upload(key, b"x")
    return store


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until *condition* holds (fails rather than hangs); local deletes run
    in worker threads, so this may take many turns."""
    for _ in range(1_000_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never {what}")


async def remaining(store: MemoryDriver | LocalDriver) -> list[str]:
    return [info.path async for info in store.list()]


@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_cancelled_clear_stops_after_the_batch_whose_events_wait(
        kind: str, tmp_path: Path) -> None:
    """Cancelled while the first batch's events wait for room, clear() queues them all, lists
    and deletes nothing more, and raises ``CancelledError``."""
    store = await filled(kind, tmp_path)
    gate = Gate()
    events = StorageEvents(publisher=gate, max_pending=10)
    store.events = events
    task = asyncio.create_task(store.clear("k/"))
    await until(lambda: events.stats()["waiting"] > 0, "a deleted event waiting for room")
    task.cancel()
    for _ in range(100):
        await asyncio.sleep(0)
    assert not task.done()  # its batch's events still wait for room
    assert await remaining(store) == KEYS[1000:]
    gate.open.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await remaining(store) == KEYS[1000:]
    await store.flush_events(10)
    assert gate.published == KEYS[:1000]


async def test_delete_many_under_an_expired_timeout_stops_after_its_batch() -> None:
    store = await filled("memory", Path())
    gate = Gate()
    events = StorageEvents(publisher=gate, max_pending=10)
    store.events = events
    scopes: list[asyncio.Timeout] = []

    async def call() -> None:
        async with asyncio.timeout(None) as scope:
            scopes.append(scope)
            await store.delete_many(KEYS)

    task = asyncio.create_task(call())
    await until(lambda: events.stats()["waiting"] > 0, "a deleted event waiting for room")
    scopes[0].reschedule(asyncio.get_running_loop().time())  # expires now
    for _ in range(100):
        await asyncio.sleep(0)
    gate.open.set()
    with pytest.raises(TimeoutError):
        await task
    assert await remaining(store) == KEYS[1000:]
    await store.flush_events(10)
    assert gate.published == KEYS[:1000]


async def test_cancelled_delete_many_ends_its_batch_and_publishes_every_deleted_key(
        tmp_path: Path) -> None:
    """Cancelled in the middle of a batch of one-by-one deletes (the local driver's), the batch
    still ends: every key it deleted has its event, and no further batch starts."""
    store = await filled("local", tmp_path)
    publisher = SlowPublisher()
    store.events = StorageEvents(publisher=publisher)
    first = tmp_path / "root" / KEYS[0]
    task = asyncio.create_task(store.delete_many(KEYS))
    await until(lambda: not first.exists(), "the first key deleted")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await remaining(store) == KEYS[1000:]
    await store.flush_events(10)
    assert publisher.published == [("FileDeletedEvent", key) for key in KEYS[:1000]]


class Flaky:
    """A slow publisher failing every third event (and raising CancelledError once)."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.raised = 0

    async def publish(self, event: Any) -> None:
        await asyncio.sleep(0)
        n = int(event.file_key.rsplit("/", 1)[1])
        if event.file_key == "f0/7":
            self.raised += 1
            raise asyncio.CancelledError  # a subscriber's own cancellation, not ours
        if n % 3 == 0:
            self.raised += 1
            raise RuntimeError(f"subscriber failed on {event.file_key}")
        self.published.append(event.file_key)


class FlakyProvider(Provider):
    name = "flaky-publisher"

    def __init__(self) -> None:
        super().__init__()
        self.publisher = Flaky()

    async def register(self, container: Any) -> None:
        container.singleton(DomainEventPublisherProtocol, self.publisher)


async def test_failing_subscriber_under_back_pressure_never_fails_calls(
    running: list[Application],
) -> None:
    flaky = FlakyProvider()
    app = await start(running, app_with(StorageModule.configure(config(max_pending=10)),
                                     providers=[flaky]))
    store = await app.container.resolve(BlobStoreProtocol)

    async def producer(p: int) -> None:
        for i in range(300):
            await store.upload(f"f{p}/{i}", b"x")

    await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(4))), 30)
    await store.flush_events(10)
    publisher = flaky.publisher
    assert publisher.raised == 4 * 100 + 1
    assert len(publisher.published) == 4 * 300 - publisher.raised
    stats = await event_stats(app)
    assert stats["failures"] == publisher.raised
    assert stats["waits"] > 0
    assert stats["dropped"] == 0
    assert stats["pending"] == 0


# --------------------------------------------------------------------- drop policy


async def test_drop_policy_counts_drops_and_reports_them(running: list[Application]) -> None:
    app = await start(running, app_with(EventsModule.configure(),
                                     StorageModule.configure(config(100, "drop"))))
    bus = await app.container.resolve(EventBusProtocol)
    gate = asyncio.Event()
    received: list[str] = []

    async def held(event: FileUploadedEvent) -> None:
        await gate.wait()
        received.append(event.file_key)

    bus.subscribe(FileUploadedEvent, held)
    store = await app.container.resolve(BlobStoreProtocol)
    keys = [f"d/{i:04d}" for i in range(3000)]
    for key in keys:
        await store.upload(key, b"x")  # never waits: the bus holds at most ~1,000
    stats = await event_stats(app)
    assert stats["overflow"] == "drop"
    assert stats["waits"] == 0
    assert stats["dropped"] > 0
    gate.set()
    await store.flush_events(30)
    assert len(received) + stats["dropped"] == len(keys)
    assert received == [k for k in keys if k in set(received)]  # order kept
    assert (await event_stats(app))["dropped"] == stats["dropped"]


# --------------------------------------------------------------------- shutdown


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


async def test_shutdown_releases_calls_blocked_by_a_stuck_subscriber(
    running: list[Application],
) -> None:
    """A subscriber that never returns: shutdown gives up after events.shutdown_timeout,
    counts the undelivered events and the blocked uploads return normally."""
    class GateProvider(Provider):
        name = "gate-publisher"

        def __init__(self) -> None:
            super().__init__()
            self.gate = Gate()

        async def register(self, container: Any) -> None:
            container.singleton(DomainEventPublisherProtocol, self.gate)

    gates = GateProvider()
    provider = StorageProvider(StorageConfig(
        default_driver="memory", events=StorageEventsConfig(max_pending=3, shutdown_timeout=0.2)))
    app = await start(running, app_with(providers=[gates, provider]))
    store = await app.container.resolve(BlobStoreProtocol)
    uploads = [asyncio.create_task(store.upload(f"u/{i}", b"x")) for i in range(10)]
    await until_waiting(provider.events, 6)  # 1 held by the gate, 3 queued, 6 waiting
    await asyncio.wait_for(provider.shutdown(), 10)
    results = await asyncio.wait_for(asyncio.gather(*uploads), 10)
    assert [r.path for r in results] == [f"u/{i}" for i in range(10)]
    stats = provider.events.stats()
    assert stats["undelivered"] == 9  # everything but the event held by the stuck subscriber
    assert stats["pending"] == 0
    assert stats["waiting"] == 0
    assert gates.gate.published == []


# --------------------------------------------------------------------- configuration


def test_policy_from_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StorageConfig().events == StorageEventsConfig(
        overflow="block", max_pending=10_000, shutdown_timeout=5.0)
    monkeypatch.setenv("LEX_STORAGE__EVENTS__OVERFLOW", "drop")
    monkeypatch.setenv("LEX_STORAGE__EVENTS__MAX_PENDING", "250")
    from_env = StorageConfig()
    assert (from_env.events.overflow, from_env.events.max_pending) == ("drop", 250)
    with pytest.raises(ValueError, match="max_pending"):
        StorageEventsConfig(max_pending=0)
    with pytest.raises(ValueError, match="overflow"):
        StorageEventsConfig(overflow="wait")
    with pytest.raises(ValueError, match="shutdown_timeout"):
        StorageEventsConfig(shutdown_timeout=0)
    with pytest.raises(ValueError, match="max_pending"):
        StorageEvents(max_pending=0)
    with pytest.raises(ValueError, match="overflow"):
        StorageEvents(overflow="wait")  # type: ignore[arg-type]


async def test_policy_from_yaml_and_env_reaches_the_events(
    running: list[Application], tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "application.yaml").write_text(
        "storage:\n"
        "  default_driver: memory\n"
        "  events:\n"
        "    max_pending: 42\n"
        "    overflow: block\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEX_STORAGE__EVENTS__OVERFLOW", "drop")  # env wins
    app = await start(running, app_with(EventsModule.configure(), StorageModule.configure()))
    store = await app.container.resolve(BlobStoreProtocol)
    assert (store.events.max_pending, store.events.overflow) == (42, "drop")
    stats = await event_stats(app)
    assert (stats["max_pending"], stats["overflow"]) == (42, "drop")


async def test_room_in_the_queue_means_no_wait(running: list[Application]) -> None:
    app = await start(running, app_with(EventsModule.configure(),
                                     StorageModule.configure(config(max_pending=10_000))))
    bus = await app.container.resolve(EventBusProtocol)
    seen: list[Any] = []
    bus.subscribe(FileUploadedEvent, seen.append)
    bus.subscribe(FileDeletedEvent, seen.append)
    store = await app.container.resolve(BlobStoreProtocol)
    for i in range(500):
        await store.upload(f"r/{i}", b"x")
        await store.delete(f"r/{i}")
    await store.flush_events(10)
    assert len(seen) == 1000
    stats = await event_stats(app)
    assert (stats["waits"], stats["dropped"], stats["failures"]) == (0, 0, 0)


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
